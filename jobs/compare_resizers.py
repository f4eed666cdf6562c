"""Does the learned resizer help? Learned vs bilinear, bicubic and area, side by side over seeds.

Every arm trains through the same pipeline with the same backbone, data, input size, budget and
seeds; only the resizer differs. The arms x seeds grid runs as Ray Tune trials in parallel across
the cluster, each to the end (no early stopping). The report (`pipeline.compare`) gives per arm the
final metric's mean ± std and t-interval over seeds, and the paired difference to bilinear.

Cluster (12 GPUs: 4 arms x 3 seeds, each the reference recipe at 1xb8; shards from `python -m data_prep cub`):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/compare_resizers.py --data s3://BUCKET/cub-shards --storage s3://BUCKET/compare

    Each trial is the reference recipe on one GPU at batch 8 (Swin-L, 768 → 384, 100 epochs): the setting in
    which its author measured the resizer losing (91.66 → 90.58, BRIEF.md). Expected runtime: ~1.7 h of pure
    compute per trial (5,994 images x 100 epochs at ~100 img/s on an A100), 3-4 h with decoding and evaluation;
    all 12 trials at once on 12+ GPUs. Expected result: learned within about ±1 point of bilinear top-1.

Options: more seeds `--set compare.seeds=[0,1,2,3,4]`; more learned arms `--set compare.learned=[[16,1],[32,2]]`;
other fixed arms `--set 'compare.fixed_arms=["bilinear","bicubic","area","bicubic_aa"]'`; the backbone at the
full input resolution as an upper reference `--full-res` (Swin-L at 768: windows of 12 divide every stage's
token grid 192/96/48/24, so timm builds it; ~4x the FLOPs and memory of 384). AVA: build the job from a quality
config (task="quality"); the report then compares SRCC, the task's target metric.

Resume an interrupted comparison (finished trials are not rerun; unfinished ones continue from checkpoints):

    python jobs/compare_resizers.py --storage ... --name compare_resizers --resume

Report on demand (also while it runs):

    python -m pipeline.compare outputs/compare_resizers

Laptop (2 CPU cores, 16 min measured while shared with other jobs): 4 arms x 3 seeds on the demo dataset;
learned top-1 0.39 ± 0.02 vs bilinear 0.10 ± 0.02 (chance 0.10), see README:

    python jobs/compare_resizers.py --demo
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir wins

from jobs import cub_swinl  # noqa: E402
from jobs._common import ensure_demo_shards, init_ray, job_parser, resolve_config  # noqa: E402
from pipeline.config import CompareConfig, DataConfig, JobConfig  # noqa: E402

# The demo dataset: see demo_config.
DEMO_CLASSES = 10
DEMO_IMAGES = 600


def config() -> JobConfig:
    """The reference recipe at 1xb8 (one GPU per trial), learned vs bilinear, bicubic, area, 3 seeds."""
    cfg = cub_swinl.config()
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, name="compare_resizers", num_workers=1, checkpoint_every=10),
        compare=CompareConfig(learned=((16, 1),), fixed_arms=("bilinear", "bicubic", "area"), seeds=(0, 1, 2)),
    )


def demo_config(data_path: str) -> JobConfig:
    """The cub_swinl demo model, shrunk so that 12 trials fit 15 minutes on 2 cores.

    One worker per trial (two trials at a time), 64 px crops into a 32 px backbone: the class lives
    in a 2.0-2.15 px texture, which any crop size keeps, and the resizer's full-resolution 7x7 conv
    costs a quarter of the 128 px demo's.
    """
    cfg = cub_swinl.demo_config(data_path)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, img_size=32),
        data=DataConfig(path=data_path, resize_size=None, crop_size=64, batch_size=16, shuffle_buffer=64),
        optim=dataclasses.replace(cfg.optim, epochs=10, warmup_epochs=1),
        run=dataclasses.replace(cfg.run, name="compare_resizers_demo", num_workers=1, checkpoint_every=100),
        compare=CompareConfig(learned=((16, 1),), fixed_arms=("bilinear", "bicubic", "area"), seeds=(0, 1, 2)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue the interrupted comparison of this --name")
    parser.add_argument("--full-res", action="store_true", help="add the backbone at the full input resolution (costly)")
    args = parser.parse_args(argv)
    cfg = demo_config(args.data or ensure_demo_shards(num_classes=DEMO_CLASSES, num_images=DEMO_IMAGES)) if args.demo else config()
    cfg = resolve_config(cfg, args)
    if args.full_res:
        cfg = dataclasses.replace(cfg, compare=dataclasses.replace(cfg.compare, full_res=True))
    if args.print_config:
        import json

        from pipeline.config import to_dict

        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    import time

    from pipeline.compare import format_table, write_comparison
    from pipeline.launch import with_absolute_storage
    from pipeline.tune import experiment_dir, run_comparison

    init_ray(args.demo)
    started = time.perf_counter()
    try:
        run_comparison(cfg, resume=args.resume)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - started) / 60
    directory = experiment_dir(with_absolute_storage(cfg))
    if "://" in directory:
        print(f"comparison in {directory}; sync it and run: python -m pipeline.compare <local folder>")
        return 0
    summary = write_comparison(directory)
    print(f"\ncomparison of {len(summary['arms'])} arms, {minutes:.1f} min of training\n")
    print(format_table(summary))
    print("\n".join(summary["verdicts"]))
    print(f"\nreport:      {directory}/comparison.md, comparison.html, accuracy_per_arm.png, learning_curves.png, resizer_grid_all.png")
    print(f"TensorBoard: tensorboard --logdir {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
