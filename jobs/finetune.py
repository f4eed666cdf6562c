"""Fine-tune any timm backbone behind a learned resizer on your own shards: does the resizer help on YOUR data?

    python -m data_prep folder --src photos --out shards/photos          # one folder per class (or train/ + val/)
    python jobs/finetune.py --data shards/photos --backbone convnext_tiny
    python jobs/finetune.py --data shards/photos --backbone convnext_tiny --resizer bilinear --name photos_bilinear
    python jobs/compare_resizers.py --recipe finetune --data shards/photos --backbone convnext_tiny   # arms x seeds

The backbone keeps its own input side S and normalization (its pretrained config) and starts from its pretrained
weights with a new head; the resizer takes `--ratio` x S (default 2, the paper's setting: crop 2S of the image
resized to 2S x 256/224) and starts as plain bilinear (zero-initialised last conv), as in the ImageNet recipe
(`jobs/imagenet_resnet50.py`). The task follows the shards: classes (`cls`) train a classifier, AVA-style vote
distributions (`votes`) the quality head, a number per image (`value`, `data_prep csv --target-column`) a
regression in the target's units; the evaluation split is `val`, else `test`. Schedule: AdamW, backbone
lr 5e-5, resizer lr 1e-3, 10 epochs, 1 warm-up epoch, batch 32 per worker, bf16 on GPUs.

Laptop (`--demo`, 2 CPU cores): the same code path on the 4-class demo shards, with a small ResNet at 32 px from
scratch (no pretrained weights offline) behind a 64 → 32 resizer.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir wins

from jobs import cub_swinl  # noqa: E402
from jobs._common import (  # noqa: E402
    DEMO_RESNET_KWARGS,
    RESIZE_PER_CROP,
    cli,
    job_parser,
    resolve_backbone,
    resolve_config,
    run_job,
)
from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig, RunConfig  # noqa: E402


def sizes(backbone: str, ratio: float) -> tuple[int, int]:
    """(resize side, crop side): the crop is `ratio` x the backbone's input side S, the resize 256/224 of it."""
    import timm

    side = int(timm.get_pretrained_cfg(backbone).input_size[-1])
    crop = round(ratio * side)
    return round(crop * RESIZE_PER_CROP), crop


def data_for(path: str | None) -> tuple[str, str]:
    """(task, evaluation split) of a shard folder, from its manifest; classification / val without one."""
    if not path:
        return "classification", "val"
    from pipeline.manifest import read_manifest
    from pipeline.tasks import task_for_target

    manifest = read_manifest(path)
    task = task_for_target(manifest.get("target"))
    if task is None:
        raise ValueError(f"--data {path}: shards with target {manifest.get('target')!r} fit no task (cls, votes or value)")
    split = next((s for s in ("val", "test") if s in manifest.get("splits", {})), None)
    if split is None:
        raise ValueError(f"--data {path}: the manifest has no val or test split (splits: {sorted(manifest.get('splits', {}))})")
    return task.name, split


def config(backbone: str = "resnet50", *, data_path: str | None = None, ratio: float = 2.0) -> JobConfig:
    """The generic recipe for `backbone` (a timm name or one of the paper's families) on the shards at `data_path`."""
    timm_name = resolve_backbone(backbone)
    if not ratio >= 1.0:
        raise ValueError(f"--ratio {ratio} must be at least 1: the resizer takes ratio x the backbone's input side")
    resize_size, crop_size = sizes(timm_name, ratio)
    task, eval_split = data_for(data_path)
    return JobConfig(
        task=task,
        resizer=ResizerConfig(kind="learned", num_filters=16, num_res_blocks=1, zero_init_last=True),
        model=ModelConfig(backbone=timm_name, pretrained=True),
        data=DataConfig(path=data_path or "", eval_split=eval_split, resize_size=resize_size, crop_size=crop_size, batch_size=32),
        optim=OptimConfig(lr=5e-5, resizer_lr=1e-3, weight_decay=0.05, epochs=10, warmup_epochs=1, min_lr_factor=0.01),
        deepspeed=DeepSpeedConfig(zero_stage=1, precision="bf16"),
        run=RunConfig(name=f"finetune_{timm_name}", storage="outputs", num_workers=1, use_gpu=None, log_every=100),
    )


def demo_config(data_path: str) -> JobConfig:
    """The recipe on the demo shards: a small ResNet at 32 px from scratch behind a 64 → 32 resizer, 2 CPU workers."""
    cfg = config("resnet50", data_path=data_path)
    return dataclasses.replace(
        cfg,
        model=ModelConfig(backbone="resnet50", pretrained=False, img_size=32, backbone_kwargs=DEMO_RESNET_KWARGS),
        data=dataclasses.replace(cfg.data, resize_size=None, crop_size=64, batch_size=8, shuffle_buffer=64, hflip=False),
        optim=dataclasses.replace(cfg.optim, lr=1e-3, epochs=8, min_lr_factor=0.0),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
        run=RunConfig(name="finetune_demo", storage="outputs", num_workers=2, log_every=0),
    )


def demo_data() -> str:
    """The 4-class demo shards of the quickstart."""
    return cub_swinl.demo_data()


@cli
def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--backbone", default="resnet50", help="any timm model name (or resnet50, densenet121, ...); default resnet50")
    parser.add_argument("--ratio", type=float, default=2.0, help="the resizer's input side / the backbone's; default 2")
    args = parser.parse_args(argv)
    if args.demo:
        cfg = demo_config(args.data or demo_data())
    else:
        cfg = config(args.backbone, data_path=args.data, ratio=args.ratio)
    return run_job(resolve_config(cfg, args), demo=args.demo, print_config=args.print_config, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
