"""What every job shares: its command line, the demo dataset cache, connecting to Ray, the summary."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.config import FIXED_RESIZER_KINDS, JobConfig, apply_overrides

DEMO_CACHE_ENV = "LEARNED_RESIZER_CACHE"


def job_parser(description: str) -> argparse.ArgumentParser:
    """The options every training job takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="shard folder or URI written by `python -m data_prep` (sets data.path)")
    parser.add_argument("--storage", help="folder or URI for checkpoints, TensorBoard logs and reports (run.storage)")
    parser.add_argument("--name", help="run name; rerunning with the same name and storage resumes (run.name)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers, one per GPU (run.num_workers)")
    parser.add_argument(
        "--resizer",
        choices=["learned", *FIXED_RESIZER_KINDS],
        help="learned resizer or a fixed baseline (resizer.kind)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="typed config override, e.g. --set optim.lr=1e-5"
    )
    parser.add_argument("--demo", action="store_true", help="laptop run: local Ray, CPU, generated data, small model")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def resolve_config(cfg: JobConfig, args: argparse.Namespace) -> JobConfig:
    """Applies the named options, then `--set` overrides (which win)."""
    overrides = []
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.storage:
        overrides.append(f"run.storage={args.storage}")
    if args.name:
        overrides.append(f"run.name={args.name}")
    if args.num_workers is not None:
        overrides.append(f"run.num_workers={args.num_workers}")
    if args.resizer:
        overrides.append(f"resizer.kind={args.resizer}")
    return apply_overrides(cfg, overrides + list(args.set))


def demo_cache() -> Path:
    """Where demo datasets are generated once: $LEARNED_RESIZER_CACHE or ~/.cache/learned-resizer."""
    return Path(os.environ.get(DEMO_CACHE_ENV, Path.home() / ".cache" / "learned-resizer"))


def ensure_demo_shards(name: str = "demo-cub", *, num_classes: int = 10, num_images: int = 600, seed: int = 0) -> str:
    """Generates the demo dataset (CUB layout) and shards it through data_prep, once; returns the shard folder."""
    from data_prep.cub import shard_cub
    from data_prep.demo import generate_demo
    from data_prep.shards import ShardOptions

    root = demo_cache() / f"{name}-c{num_classes}-n{num_images}-s{seed}"
    shards = root / "shards"
    if not (shards / "manifest.json").is_file():
        print(f"generating the demo dataset into {root} (once)", flush=True)
        src = generate_demo(root / "raw", num_classes=num_classes, num_images=num_images, seed=seed)
        shard_cub(src, str(shards), ShardOptions(seed=seed, shard_size=100))
    return str(shards)


def init_ray(demo: bool) -> None:
    """Connects to the cluster (`ray job submit`, RAY_ADDRESS) or starts a local Ray for a demo."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints once, not twice
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS") or not demo:
        ray.init(runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    else:
        # Logical CPUs: 2 Train workers plus Ray Data read tasks on a 2-core laptop (see README).
        ray.init(num_cpus=max(8, os.cpu_count() or 1), runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})


def print_summary(result: Any, cfg: JobConfig, metric: str) -> None:
    """Per-epoch table and where the outputs went."""
    print(f"\n{'epoch':>5}  {'train loss':>10}  {metric:>8}  {'img/s':>7}  skipped")
    for record in result.history:
        skipped = record.get("skipped_train", 0) + record.get("skipped_eval", 0)
        print(
            f"{record['epoch']:>5}  {record['train_loss']:>10.4f}  {record[metric]:>8.4f}  "
            f"{record['images_per_second']:>7.1f}  {skipped}"
        )
    print(f"\nrun folder:        {result.run_dir}")
    print(f"best checkpoint:   {result.best_checkpoint}")
    print(f"latest checkpoint: {result.latest_checkpoint}")
    print(f"TensorBoard:       tensorboard --logdir {result.run_dir}/tensorboard")
    print(f"rerun the same command to resume; another run: --name {cfg.run.name}-2")


def write_grid(result: Any, cfg: JobConfig) -> str | None:
    """The resizer grid PNG of the best checkpoint, next to the run (local storage)."""
    if cfg.resizer.kind != "learned" or result.best_checkpoint is None or "://" in result.run_dir:
        return None
    from pipeline.resizer_grid import load_model, resizer_grid, sample_images

    model, saved_cfg = load_model(result.best_checkpoint, cfg)
    crops = sample_images(saved_cfg, data=cfg.data.path, split=cfg.data.eval_split, images=[], count=4)
    return str(resizer_grid(model, crops, Path(result.run_dir) / "resizer_grid.png"))


def run_job(cfg: JobConfig, *, demo: bool, print_config: bool = False) -> int:
    """Launches a job and prints its summary; exits 2 on a configuration or data error."""
    from pipeline.config import to_dict
    from pipeline.launch import launch
    from pipeline.tasks import get_task

    if print_config:
        import json

        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    init_ray(demo)
    try:
        result = launch(cfg)
    except ValueError as err:  # bad config or data: fail fast with the field and the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(result, cfg, get_task(cfg.task).target_metric)
    grid = write_grid(result, cfg)
    if grid:
        print(f"resizer grid:      {grid}")
    return 0

