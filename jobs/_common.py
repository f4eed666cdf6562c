"""What every job shares: its command line, the demo dataset cache, connecting to Ray, the summary."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from pipeline.config import JobConfig, apply_overrides
from pipeline.resizer import RESIZER_KINDS

DEMO_CACHE_ENV = "LEARNED_RESIZER_CACHE"
C = TypeVar("C", bound=JobConfig)


def cli(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A job's `main` as its command line: a configuration or input error (a ValueError: a bad `--set`,
    an unknown field, a non-finite float, a missing shard folder) becomes one line `error: ...` on stderr
    and exit code 2, not a traceback. `--verbose` keeps the traceback."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except ValueError as err:
            if "--verbose" in (sys.argv[1:] if argv is None else argv):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


def job_parser(description: str) -> argparse.ArgumentParser:
    """The options every training job takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="shard folder or URI written by `python -m data_prep` (sets data.path)")
    parser.add_argument("--storage", help="folder or URI for checkpoints, TensorBoard logs and reports (run.storage)")
    parser.add_argument("--name", help="run name; rerunning with the same name and storage resumes (run.name)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers, one per GPU (run.num_workers)")
    parser.add_argument(
        "--min-workers",
        type=int,
        help="train elastically on --num-workers down to this many: survive losing nodes (run.min_workers)",
    )
    parser.add_argument(
        "--resizer",
        choices=RESIZER_KINDS,
        help="learned resizer or a fixed baseline (resizer.kind)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="typed config override, e.g. --set optim.lr=1e-5"
    )
    parser.add_argument("--demo", action="store_true", help="laptop run: local Ray, CPU, generated data, small model")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and DeepSpeed's own log lines, with worker prefixes")
    return parser


def resolve_config(cfg: C, args: argparse.Namespace) -> C:
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
    if args.min_workers is not None:
        overrides.append(f"run.min_workers={args.min_workers}")
    if args.resizer:
        overrides.append(f"resizer.kind={args.resizer}")
    return apply_overrides(cfg, overrides + list(args.set))


def demo_reference(args: argparse.Namespace, kind: str, references: dict[str, str]) -> str | None:
    """The measured figure a demo run's final metric reads against (`references`, by resizer kind), for the
    default demo only: `--demo` on other data (`--data`, `--set data.path=...`) has no measured reference."""
    own_data = args.data or any(override.split("=", 1)[0].strip() == "data.path" for override in args.set)
    return references.get(kind) if args.demo and not own_data else None


def demo_cache() -> Path:
    """Where demo datasets are generated once: $LEARNED_RESIZER_CACHE or ~/.cache/learned-resizer."""
    return Path(os.environ.get(DEMO_CACHE_ENV, Path.home() / ".cache" / "learned-resizer"))


DEMO_LAYOUTS = ("cub", "imagenet", "ava")

# No horizontal flip on the demo's classes: they include mirror pairs (diagonal / anti-diagonal grating,
# steep / mirrored steep grating), which a flip turns into each other, so with flips on half of those
# training crops carry the other class's label. (AVA's demo score is texture contrast: flips keep it.)
DEMO_CLASS_HFLIP = False


def ensure_demo_shards(
    layout: str = "cub",
    *,
    num_classes: int = 10,
    num_images: int = 600,
    seed: int = 0,
    image_size: tuple[int, int] = (500, 375),
    name: str | None = None,
) -> str:
    """Generates a demo dataset in a real layout and shards it through data_prep, once; returns the shard folder.

    Args:
        layout: "cub" (classes, CUB_200_2011), "imagenet" (classes, ILSVRC2012 with a flat val/ and
            LOC_val_solution.csv) or "ava" (vote distributions, AVA.txt; `num_classes` is not used).
        num_classes: texture classes (cub, imagenet).
        num_images: images generated (about half train for cub and imagenet; 80% for ava).
        seed: seed of the images and of the sharding.
        image_size: (width, height) of the generated images.
        name: cache folder prefix; default `demo-<layout>`.
    """
    from data_prep.ava import shard_ava
    from data_prep.cub import shard_cub
    from data_prep.demo import generate_demo
    from data_prep.demo_layouts import generate_ava_demo, generate_imagenet_demo
    from data_prep.imagenet import shard_imagenet
    from data_prep.shards import ShardOptions

    if layout not in DEMO_LAYOUTS:
        raise ValueError(f"demo layout {layout!r} is not allowed; choose one of {list(DEMO_LAYOUTS)}")
    classes = "" if layout == "ava" else f"-c{num_classes}"
    size = "" if image_size == (500, 375) else f"-{image_size[0]}x{image_size[1]}"
    root = demo_cache() / f"{name or 'demo-' + layout}{classes}-n{num_images}-s{seed}{size}"
    shards = root / "shards"
    if not (shards / "manifest.json").is_file():
        print(f"generating the {layout} demo dataset into {root} (once)", flush=True)
        options = ShardOptions(seed=seed, shard_size=100)
        if layout == "cub":
            src = generate_demo(root / "raw", num_classes, num_images, seed, image_size)
            shard_cub(src, str(shards), options)
        elif layout == "imagenet":
            src = generate_imagenet_demo(root / "raw", num_classes, num_images, seed, image_size)
            shard_imagenet(src, str(shards), options)
        else:
            shard_ava(generate_ava_demo(root / "raw", num_images, seed, image_size), str(shards), options)
    return str(shards)


# The paper's classifier families by the names `--backbone` takes; any other timm name passes through.
BACKBONES = {
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "inception_v3": "inception_v3",
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet_b0": "efficientnet_b0",
}
# Resize side / crop side of the standard ImageNet evaluation (256 → 224), kept at 2x (512 → 448).
RESIZE_PER_CROP = 256 / 224


# The demos' backbone: the ResNet-50 family (bottleneck blocks) cut to one block per stage and 1/4 width,
# which trains at 64 px on a laptop CPU (0.5M parameters).
DEMO_RESNET_KWARGS = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16}


def resolve_backbone(name: str) -> str:
    """The timm model name for a `--backbone` value.

    Raises:
        ValueError: neither one of `BACKBONES` nor a timm model name.
    """
    import timm

    backbone = BACKBONES.get(name, name)
    if not timm.is_model(backbone):
        raise ValueError(f"--backbone {name!r} is not a timm model; use one of {sorted(BACKBONES)} or a timm name")
    return backbone


def paper_2x_sizes(backbone: str) -> tuple[int, int]:
    """(resize side, crop side) of the paper's 2x setting for a timm backbone.

    The backbone keeps its own input side S from its pretrained data config (224 for ResNet-50,
    DenseNet-121, MobileNetV2, EfficientNet-B0; 299 for Inception-v3), so its pretrained weights see
    the scale they were trained at; the resizer takes a 2S crop (448, or 598 for Inception-v3) of the
    image resized to 2S x 256/224 (512, or 683), the standard 256 → 224 ratio at twice the scale.
    """
    import timm

    side = int(timm.get_pretrained_cfg(backbone).input_size[-1])
    return round(2 * side * RESIZE_PER_CROP), 2 * side


TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_TRAIN_POLL_S = "0.25"


def init_ray(demo: bool, *, verbose: bool = False) -> None:
    """Connects to the cluster (`ray job submit`, RAY_ADDRESS) or starts a local Ray for a demo.

    Unless `verbose`, the console shows the job's own lines only: the plan, the loop's lines (sent
    to this process, see `pipeline.launch.console_lines`) and the summary. Workers' output (Ray's,
    DeepSpeed's, torch's) stays in their log files (the dashboard shows them); `verbose` forwards it
    here, each line prefixed with its process, and keeps Ray's INFO lines.
    """
    import logging

    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints once, not twice
    if ray.is_initialized():
        return
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if os.environ.get("RAY_ADDRESS") or not demo:
        ray.init(**options)
    else:
        # Logical CPUs: 2 Train workers plus Ray Data read tasks on a 2-core laptop (see README).
        # Train's controller polls its workers every 2 s by default, which adds ~5 s to the end of every
        # run; on one machine a 0.25 s poll costs nothing. The Ray processes started here inherit it.
        os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
        ray.init(num_cpus=max(8, os.cpu_count() or 1), **options)


def print_summary(result: Any, cfg: JobConfig, *, reference: str | None = None) -> None:
    """The results table (one row per epoch, every metric of the task), what the final metric means
    (next to chance, and to `reference`, a measured figure of another resizer), and where the outputs went."""
    task = result.run.task
    metrics = task.metric_names
    # 4 decimals for scores and losses; a regression's errors in large units keep 1
    cell = {(i, m): f"{r[m]:.4f}" if abs(r[m]) < 1000 else f"{r[m]:.1f}" for i, r in enumerate(result.history) for m in metrics}
    widths = [max([8, len(m)] + [len(cell[i, m]) for i in range(len(result.history))]) for m in metrics]
    header = "  ".join(f"{m:>{w}}" for m, w in zip(metrics, widths))
    print(f"\n{'epoch':>5}  {'train loss':>10}  {header}  {'img/s':>7}  skipped")
    for i, record in enumerate(result.history):
        skipped = record.get("skipped_train", 0) + record.get("skipped_eval", 0)
        values = "  ".join(f"{cell[i, m]:>{w}}" for m, w in zip(metrics, widths))
        print(f"{record['epoch']:>5}  {record['train_loss']:>10.4f}  {values}  {record['images_per_second']:>7.1f}  {skipped}")
    if result.history:
        final = result.history[-1][task.target_metric]
        print(
            f"\nfinal {task.target_metric} {final:.3f} with the {cfg.resizer.kind} resizer; "
            f"chance: {task.chance(result.run.num_outputs):.3f} ({task.chance_meaning(result.run.num_outputs)})"
        )
        if reference:
            print(reference)
    print(f"\nrun folder:        {result.run_dir}")
    if result.best_checkpoint:
        print(f"best checkpoint:   {result.best_checkpoint}")
    print(f"latest checkpoint: {result.latest_checkpoint}")
    print(f"TensorBoard:       tensorboard --logdir {result.run_dir}/tensorboard")
    print(f"rerun the same command to resume; another run: --name {cfg.run.name}-2")


def write_grid(result: Any, cfg: JobConfig) -> str | None:
    """The resizer grid PNG of the best checkpoint, next to the run (uploaded there for a URI)."""
    from pipeline.layout import GRID_FILE
    from pipeline.resizer import resizer_kind
    from pipeline.storage import local_copy

    if not resizer_kind(cfg.resizer.kind).learned or result.best_checkpoint is None:
        return None
    from pipeline.resizer_grid import load_model, resizer_grid, sample_images

    model, saved_cfg = load_model(result.best_checkpoint, cfg)
    crops = sample_images(saved_cfg, urls=result.run.eval_urls, images=[], count=4)
    with local_copy(result.run_dir, include=lambda relative: False) as local:
        return local.where(resizer_grid(model, crops, local.path / GRID_FILE, kind=saved_cfg.resizer.kind))


def show_config(cfg: JobConfig) -> int:
    """`--print-config`: the resolved config as JSON."""
    import json

    from pipeline.config import to_dict

    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def run_job(
    cfg: JobConfig, *, demo: bool, print_config: bool = False, verbose: bool = False, reference: str | None = None
) -> int:
    """Launches a job and prints its summary; a configuration or data error raises ValueError (`cli`).

    Args:
        reference: a measured figure to read the result against (e.g. bilinear on the demo), printed last.
    """
    from pipeline.launch import launch
    from pipeline.manifest import read_manifest

    if print_config:
        return show_config(cfg)
    manifest = read_manifest(cfg.data.path)  # missing or bad shards: said before Ray starts
    init_ray(demo, verbose=verbose)
    result = launch(cfg, manifest=manifest, verbose=verbose)  # a bad config or data: ValueError, see `cli`
    print_summary(result, cfg, reference=reference)
    grid = write_grid(result, cfg)
    if grid:
        print(f"resizer grid:      {grid}")
    if cfg.run.mlflow:
        from pipeline.layout import HISTORY_FILE
        from pipeline.tracking import log_artifacts

        log_artifacts(cfg, result.run_dir, [grid or "", os.path.join(result.run_dir, HISTORY_FILE)])
        print(f"MLflow:            {cfg.run.mlflow} (experiment {cfg.run.mlflow_experiment or 'learned_resizer'}, run {cfg.run.name})")
    return 0

