"""The plan of a run: what it checks on the driver before any worker (or GPU) is asked for."""

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
