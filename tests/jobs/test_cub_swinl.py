"""The headline job as a user runs it: a subprocess, its own local Ray, real shards.

Its full runs are in tests/test_fault_tolerance.py (killed, rerun, extended: three invocations of this
job on one run folder) and tests/test_cluster.py (submitted to a head with two worker nodes).
"""

import json

import pytest

from tests.jobs.conftest import run_job_main, run_job_script


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


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "optim.lr=abc"], "optim.lr='abc' must be a number"),
        (["--set", "optim.lr=nan"], "optim.lr='nan' must be a finite number"),
        (["--set", "optim.warmup_epochs=inf"], "optim.warmup_epochs='inf' must be a finite number"),
        (["--set", "data.num_cpus_per_read=-inf"], "data.num_cpus_per_read='-inf' must be a finite number"),
        (["--num-workers", "0"], "run.num_workers=0 must be > 0"),
        (["--name", "../../elsewhere"], "run.name='../../elsewhere' must be a folder name"),
        (["--name", ".hidden"], "run.name='.hidden' must be a folder name"),
        (["--set", "optim.learning_rate=1e-5"], "unknown config field 'optim.learning_rate'"),
    ],
)
def test_a_bad_value_is_one_error_line_and_exit_code_2(args, message):
    code, out, err = run_job_main("cub_swinl.py", "--print-config", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_missing_data_fails_fast_with_the_fix(tmp_path):
    result = run_job("--demo", "--data", str(tmp_path / "nowhere"), "--storage", str(tmp_path), timeout=180)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "python -m data_prep" in result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr  # said before Ray starts


def test_a_demo_reads_its_result_against_a_measured_reference_only_on_its_own_data():
    """The default demo's final metric is printed next to the other resizer's measured figure; `--demo` on other
    data has no such figure, so it prints none."""
    from jobs import ava_nima, cub_swinl, imagenet_resnet50
    from jobs._common import demo_reference, job_parser

    parse = job_parser("demo").parse_args
    for job in (cub_swinl, imagenet_resnet50, ava_nima):
        references = job.DEMO_REFERENCE
        assert demo_reference(parse(["--demo"]), "learned", references).startswith("bilinear on this demo ended at")
        assert demo_reference(parse(["--demo"]), "bilinear", references).startswith("the learned resizer on this demo")
        assert demo_reference(parse(["--demo"]), "muller", references) is None  # not measured
        assert demo_reference(parse(["--demo", "--data", "shards/mine"]), "learned", references) is None
        assert demo_reference(parse(["--demo", "--set", "data.path=shards/mine"]), "learned", references) is None
        assert demo_reference(parse([]), "learned", references) is None
