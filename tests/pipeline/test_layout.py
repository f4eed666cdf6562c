"""Where runs go: a relative storage is never resolved inside Ray's package cache."""

import os
from pathlib import Path

import pytest

from pipeline.config import JobConfig, RunConfig
from pipeline.layout import absolute_storage, in_ray_package_cache, run_dir
from pipeline.runs import with_absolute_storage


def test_relative_storage_is_taken_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_storage("outputs") == str(tmp_path / "outputs")
    assert absolute_storage("s3://bucket/runs") == "s3://bucket/runs" and absolute_storage("/abs/runs") == "/abs/runs"
    assert run_dir("outputs", "cub") == str(tmp_path / "outputs" / "cub")


def test_in_a_submitted_jobs_package_cache_relative_storage_goes_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what `ray job submit --working-dir .` gives the driver as its working directory
    package = tmp_path / "session_latest" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert in_ray_package_cache(os.getcwd()) and not in_ray_package_cache(str(tmp_path))
    assert absolute_storage("outputs") == str(tmp_path / "home" / "learned-resizer" / "outputs")
    cfg = with_absolute_storage(JobConfig(run=RunConfig(name="cub_swinl")))  # the default storage, "outputs"
    assert cfg.run.storage == str(tmp_path / "home" / "learned-resizer" / "outputs")
    assert absolute_storage("/data/runs") == "/data/runs"  # an absolute folder is the user's choice
