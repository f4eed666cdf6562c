"""bench/bench_peak_step.py: its arithmetic, its whole code path on the CPU (`--smoke`), and the row
`python -m bench` makes of a stored run. The figures themselves come from a GPU (bench/device_check.sh)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.bench_peak_step import (
    NOT_MEASURED,
    TARGET_IMAGES_PER_SECOND,
    guarded,
    largest_fitting_batch,
    main,
    model_tflops,
    power_of_two_at_most,
    stored_rows,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_largest_batch_comes_from_the_line_through_two_measured_peaks():
    # 6 GiB that do not grow with the batch (weights, fp32 master copy, Adam state), 0.5 GiB per image
    assert largest_fitting_batch({8: 10.0, 16: 14.0}, 80.0) == math.floor((0.92 * 80 - 6) / 0.5)
    assert largest_fitting_batch({16: 14.0, 8: 10.0}, 80.0, share=1.0) == 148  # order of the probes does not matter
    assert largest_fitting_batch({8: 79.0, 16: 80.0}, 80.0) == 1  # the fixed part alone is over the share: the floor
    with pytest.raises(ValueError, match="did not grow"):
        largest_fitting_batch({8: 10.0, 16: 10.0}, 80.0)
    assert [power_of_two_at_most(n) for n in (1, 2, 135, 256, 600)] == [1, 2, 128, 256, 512]
    assert model_tflops(100.0, 200e9) == pytest.approx(60.0)  # 100 img/s x 3 x 200 GFLOP


def test_an_out_of_memory_step_is_logged_and_skipped_and_other_errors_stop_the_run():
    def timed(batch, *, warmup, steps):
        if batch > 64:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} GiB")
        if batch == 3:
            raise ValueError("a bug, not a batch too large")
        return {"batch": batch}

    log = []
    assert guarded(timed, 32, warmup=1, steps=1, log=log) == {"batch": 32} and log == []
    assert guarded(timed, 128, warmup=1, steps=1, log=log) is None
    assert log == ["batch 128: OutOfMemoryError: CUDA out of memory. Tried to allocate 128 GiB"]
    with pytest.raises(ValueError, match="a bug"):
        guarded(timed, 3, warmup=1, steps=1, log=log)
    assert guarded(timed, 3, warmup=1, steps=1, log=log, any_error=True) is None  # a compile error: logged
    assert log[-1] == "batch 3: ValueError: a bug, not a batch too large"


def test_without_a_gpu_it_says_so_in_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "peak.json")]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err and not (tmp_path / "peak.json").exists()


def test_the_smoke_run_measures_every_phase_and_its_stored_row(tmp_path):
    out = tmp_path / "results" / "train_step_peak_smoke.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_peak_step.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"] == "cpu" and report["bf16_tflops"]["measured"] > 0
    assert report["adamw_ms"]["num_params"] > 10_000_000 and report["adamw_ms"]["fused"] > 0
    assert set(report["settings"]) == {"no_checkpointing", "checkpointing"}
    for setting in report["settings"].values():
        assert setting["forward_gflops_per_image"] > 0
        assert [run["batch"] for run in setting["eager"]] == [2, 4]
        for run in setting["eager"]:
            assert run["images_per_second"] == pytest.approx(run["batch"] / run["step_ms"] * 1000)
            assert run["model_tflops"] == pytest.approx(model_tflops(run["images_per_second"], setting["forward_gflops_per_image"] * 1e9))
    every_run = [run for setting in report["settings"].values() for run in setting["eager"]]
    assert report["best"]["images_per_second"] == max(run["images_per_second"] for run in every_run)
    assert "best: " in done.stdout

    # a smoke run stored with the GPU runs is not one of them
    assert [row.figure for row in stored_rows(out.parent)] == [NOT_MEASURED]
    report["smoke"] = False  # read as a stored run: the rows are its own figures
    out.write_text(json.dumps(report))
    step, optimizer = stored_rows(out.parent)
    assert step.ratio == pytest.approx(report["best"]["images_per_second"] / TARGET_IMAGES_PER_SECOND)
    assert step.met is (step.ratio >= 1) and f"batch {report['best']['batch']}" in step.figure
    assert optimizer.ratio == pytest.approx(report["adamw_ms"]["fused"] / report["adamw_ms"]["foreach"])


def test_a_deadline_cuts_the_eager_sweep_short_and_says_where(tmp_path):
    """device_check.sh gives each setting a few minutes; with checkpointing a batch of several hundred fits and
    each of its steps takes seconds, so the sweep gives way before the compiled run loses its time."""
    out = tmp_path / "peak.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_peak_step.py"), "--smoke", "--checkpointing", "off",
                           "--deadline-s", "0", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    setting = json.loads(out.read_text())["settings"]["no_checkpointing"]
    assert setting["eager"] == [] and setting["log"] == ["eager sweep stopped before batch 2: 0 s kept for what follows"]
