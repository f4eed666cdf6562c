"""The headline job as a user runs it: a subprocess, its own local Ray, real shards."""

import json

import pytest

from tests.jobs.conftest import run_job_script

TINY = [
    "--set", "model.img_size=16",
    "--set", 'model.backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2}',
    "--set", "data.crop_size=32",
    "--set", "data.batch_size=4",
    "--set", "resizer.num_filters=8",
]


def run_job(*args: str, timeout: int = 600):
    return run_job_script("cub_swinl.py", *args, timeout=timeout)


def test_print_config_shows_the_reference_recipe():
    result = run_job("--print-config", "--set", "optim.lr=1e-5")
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["model"]["backbone"] == "swin_large_patch4_window12_384"
    assert (cfg["data"]["resize_size"], cfg["data"]["crop_size"]) == (1020, 768)
    assert cfg["optim"]["lr"] == 1e-5 and cfg["optim"]["epochs"] == 100


def test_a_typo_in_an_override_fails_before_anything_runs():
    result = run_job("--print-config", "--set", "optim.learning_rate=1e-5")
    assert result.returncode != 0 and "unknown config field 'optim.learning_rate'" in result.stderr


@pytest.mark.slow
def test_missing_data_fails_fast_with_the_fix(tmp_path):
    result = run_job("--demo", "--data", str(tmp_path / "nowhere"), "--storage", str(tmp_path), timeout=180)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "python -m data_prep" in result.stderr


@pytest.mark.slow
def test_rerun_resumes_and_continues_the_step_count(tiny_shards, tmp_path):
    common = ["--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path), "--name", "resume", *TINY]
    first = run_job(*common, "--set", "optim.epochs=2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    history_file = tmp_path / "resume" / "history.jsonl"
    steps_after_first = [json.loads(line)["step"] for line in history_file.read_text().splitlines()]
    per_epoch = steps_after_first[0]
    assert steps_after_first == [per_epoch, 2 * per_epoch]

    second = run_job(*common, "--set", "optim.epochs=3")
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"resumed from epoch 2 (step {2 * per_epoch})" in output
    records = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, per_epoch), (2, 2 * per_epoch), (3, 3 * per_epoch)]
    assert "resizer grid:" in output and (tmp_path / "resume" / "resizer_grid.png").is_file()
