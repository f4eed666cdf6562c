"""What the job tests share: running a job as a user does (a subprocess with its own local Ray, or its
`main(args)` in this process on the suite's local Ray), tiny settings."""

import contextlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]

# A 1/4-width, one-block-per-stage ResNet-50 at 16 px behind a 32 → 16 resizer: seconds per epoch on 2 cores.
TINY_RESNET = [
    "--set", "model.img_size=16",
    "--set", "data.crop_size=32",
    "--set", "data.batch_size=4",
    "--set", "resizer.num_filters=8",
    "--set", "optim.epochs=2",
]


def run_job_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


def run_job_main(script: str, *args: str) -> tuple[int, str, str]:
    """`main(args)` of a job in this process: (exit code, stdout, stderr). For the commands that stop
    before Ray (--print-config, argument errors): the same code path as the script, without paying
    for a fresh interpreter's torch and timm imports in every test."""
    module = importlib.import_module(f"jobs.{Path(script).stem}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(list(args))
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def run_job_here(script: str, *args: str) -> subprocess.CompletedProcess:
    """`main(args)` of a job in this process, on the suite's local Ray (`start_local_ray`, which the job
    joins as it joins a cluster): the script's code path after its Ray start, without a new interpreter's
    imports, Ray's start and stop, and cold Ray workers (about 12 s a run on 2 cores). A job that must
    start its own Ray (or be killed) runs as a subprocess (`run_job_script`) after `no_local_ray`."""
    from tests.conftest import start_local_ray

    start_local_ray()
    code, out, err = run_job_main(script, *args)
    return subprocess.CompletedProcess([script, *args], code, out, err)


def check_reported(history_file: Path, output: str, metrics: tuple[str, ...], epochs: int) -> list[dict]:
    """Every epoch's record holds every metric, finite; the results table at the end names them all."""
    records = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    for record in records:
        for name in metrics:
            assert math.isfinite(record[name]), (name, record)
    table = output[output.rindex("train loss"):]
    header = table.splitlines()[0].split()
    assert all(name in header for name in metrics), header
    rows = [line.split()[0] for line in table.splitlines()[1:] if line.split()[:1] and line.split()[0].isdigit()]
    assert rows == [str(epoch) for epoch in range(1, epochs + 1)], table
    return records
