"""A run killed with SIGKILL mid-way, then rerun, must end byte-identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from data_prep.shards import KILL_AFTER_SHARDS_ENV
from data_prep.verify import verify

from tests.data_prep.conftest import make_cub, tree_bytes

REPO = Path(__file__).resolve().parents[2]


def run_cub(src: Path, out: Path, kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if kill_after is not None:
        env[KILL_AFTER_SHARDS_ENV] = str(kill_after)
    command = [sys.executable, "-m", "data_prep", "cub", "--src", str(src), "--out", str(out), "--shard-size", "2", "--workers", "2"]
    # own session: the kill hook takes the whole process group (main and workers), like a preempted machine
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, start_new_session=True)


def test_killed_run_resumes_to_identical_bytes(tmp_path: Path) -> None:
    src = make_cub(tmp_path / "raw", num_classes=4, per_class=10)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_cub(src, reference).returncode == 0

    killed = run_cub(src, resumed, kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (resumed / "manifest.json").exists()
    finished = sorted(p.name for p in resumed.glob("*.tar"))
    assert 3 <= len(finished) < len(list(reference.glob("*.tar")))
    # a shard damaged after its commit is caught by its size and rewritten
    damaged = resumed / finished[0]
    damaged.write_bytes(damaged.read_bytes()[:1000])

    rerun = run_cub(src, resumed)
    assert rerun.returncode == 0, rerun.stderr
    assert "kept from an earlier run" in rerun.stderr and "(0 kept" not in rerun.stderr
    assert tree_bytes(resumed) == tree_bytes(reference)
    assert not list(resumed.glob("*.tmp"))
    assert verify(str(resumed)) == []
