import dataclasses
import json

import pytest

from pipeline.config import (
    DataConfig,
    DeepSpeedConfig,
    JobConfig,
    OptimConfig,
    ResizerConfig,
    apply_overrides,
    from_dict,
    to_dict,
)


def test_overrides_are_typed():
    cfg = apply_overrides(
        JobConfig(),
        [
            "optim.lr=1e-5",
            "resizer.num_filters=32",
            "resizer.zero_init_last=false",
            "optim.resizer_lr=3e-4",
            "optim.betas=[0.9, 0.99]",
            "data.resize_size=none",
            'model.backbone_kwargs={"embed_dim": 32, "depths": [1, 1]}',
            "deepspeed.precision=fp16",
        ],
    )
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.resizer.num_filters == 32 and isinstance(cfg.resizer.num_filters, int)
    assert cfg.resizer.zero_init_last is False
    assert cfg.optim.resizer_lr == 3e-4
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.data.resize_size is None
    assert cfg.model.backbone_kwargs == {"embed_dim": 32, "depths": [1, 1]}
    assert cfg.deepspeed.precision == "fp16"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1e-5", "unknown config field 'optim.lrr'"),
        ("optimm.lr=1e-5", "unknown config field 'optimm.lr'"),
        ("resizer.num_filters=3.5", "resizer.num_filters='3.5' must be an integer"),
        ("resizer.kind=lanczos", r"resizer.kind='lanczos' is not allowed; choose one of \['learned'"),
        ("deepspeed.zero_stage=4", r"deepspeed.zero_stage=4 is not allowed; choose one of \[0, 1, 2, 3\]"),
        ("optim.lr=-1", "optim.lr=-1.0 must be > 0"),
        ("optim.lr", "must look like section.field=value"),
        ("optim=1", "names a section"),
        ("resizer.antialias=maybe", "must be true or false"),
        ("data.crop_size=2000", "data.resize_size=1020 is smaller than data.crop_size=2000"),
        ("model.weights_url=/models/r50.pth", "must be an http\\(s\\) URL; for a file use model.checkpoint_path"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(JobConfig(), [override])


def test_validation_in_constructors():
    with pytest.raises(ValueError, match="resizer.num_filters=0 must be > 0"):
        ResizerConfig(num_filters=0)
    with pytest.raises(ValueError, match="deepspeed.offload_optimizer=True needs"):
        DeepSpeedConfig(zero_stage=0, offload_optimizer=True)
    with pytest.raises(ValueError, match="optim.betas"):
        OptimConfig(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="data.batch_size=0"):
        DataConfig(batch_size=0)


def test_round_trip_through_plain_json():
    cfg = apply_overrides(JobConfig(), ["optim.betas=[0.8,0.9]", "model.img_size=224", "run.use_gpu=true"])
    plain = json.loads(json.dumps(to_dict(cfg)))  # what crosses the Ray boundary
    assert from_dict(JobConfig, plain) == cfg


def test_from_dict_rejects_unknown_keys():
    plain = to_dict(JobConfig())
    plain["optim"]["lr_typo"] = 1.0
    with pytest.raises(ValueError, match=r"optim.lr_typo"):
        from_dict(JobConfig, plain)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        JobConfig().optim.lr = 1.0  # type: ignore[misc]
