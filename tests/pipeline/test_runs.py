"""The plan of a run: what it checks on the driver before any worker (or GPU) is asked for."""

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.config import DataConfig, JobConfig, ModelConfig, ResizerConfig
from pipeline.runs import plan

CPUS = {"CPU": 8}


def tiny(path: str, **model) -> JobConfig:
    return JobConfig(
        resizer=ResizerConfig(num_filters=4),
        model=ModelConfig(backbone="resnet18", pretrained=False, img_size=16, **model),
        data=DataConfig(path=path, resize_size=None, crop_size=32),
    )


def test_a_weights_file_is_checked_and_made_absolute_before_workers_start(tiny_shards, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"model.checkpoint_path='weights/r18.pth' is not a file on this node .*shared filesystem"):
        plan(tiny(tiny_shards["path"], checkpoint_path="weights/r18.pth"), resources=CPUS)
    (tmp_path / "weights").mkdir()
    torch.save({}, tmp_path / "weights" / "r18.pth")
    monkeypatch.chdir(tmp_path)  # a path relative to the driver: the workers run elsewhere
    run = plan(tiny(tiny_shards["path"], checkpoint_path="weights/r18.pth"), resources=CPUS)
    assert run.cfg.model.checkpoint_path == str(tmp_path / "weights" / "r18.pth")


def test_a_job_json_written_before_a_field_existed_resumes_without_a_change_listed() -> None:
    """A run started by an older version has no `optim.fused` in its job.json: a missing field is its default,
    and switching the optimizer's kernel (the same update within rounding) may change on a rerun."""
    from pipeline.config import OptimConfig, to_dict
    from pipeline.runs import config_changes

    cfg = tiny("/data/shards")
    saved = to_dict(cfg)
    del saved["optim"]["fused"]
    assert config_changes(saved, cfg) == {}
    assert config_changes(saved, dataclasses.replace(cfg, optim=OptimConfig(fused=False))) == {}
    del saved["optim"]["lr"]  # a missing field is its default, not a wildcard
    assert config_changes(saved, dataclasses.replace(cfg, optim=OptimConfig(lr=1e-3))) == {"optim.lr": (5e-6, 1e-3)}
