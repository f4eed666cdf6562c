"""Does a learned resizer help? The learned CNN and MULLER vs bilinear, bicubic and area, side by side over seeds.

Every arm trains through the same pipeline with the same backbone, data, input size, budget and
seeds; only the resizer differs. The arms x seeds grid runs as Ray Tune trials in parallel across
the cluster, each to the end (no early stopping). The report (`pipeline.compare`) gives per arm the
final metric's mean ± std and t-interval over seeds, the paired difference to bilinear, and the per-image
evidence: McNemar per seed and bootstrap intervals over seeds and images (`pipeline.paired`).

Cluster (15 GPUs: 5 arms x 3 seeds, each the reference recipe at 1xb8; shards from `python -m data_prep cub`):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/compare_resizers.py --data s3://BUCKET/cub-shards --storage s3://BUCKET/compare

    Each trial is the reference recipe on one GPU at batch 8 (Swin-L, 768 → 384, 100 epochs): the setting in
    which its author measured the resizer losing (91.66 → 90.58, docs/method.md). Expected runtime: 4.2 h of training
    per trial (5,994 images x 100 epochs at the 40 img/s measured on one H100, bench/results/train_step_h100.json),
    about 5.5 h with evaluation; all 15 trials at once on 15+ GPUs. Expected result: learned within about
    ±1 point of bilinear top-1.

Options: more seeds `--set compare.seeds=[0,1,2,3,4]`; more learned arms `--set compare.learned=[[16,1],[32,2]]`
and `--set compare.muller=[1,2,3]` (MULLER layers; `[]` drops the MULLER arm);
other fixed arms `--set 'compare.fixed_arms=["bilinear","bicubic","area","bicubic_aa"]'`; the backbone at the
full input resolution as an upper reference `--full-res` (Swin-L at 768: windows of 12 divide every stage's
token grid 192/96/48/24, so timm builds it). It has 4x the FLOPs of 384, yet on one H100 at batch 8 a
step took 1.28x as long (336 vs 264 ms) with 1.49x the peak memory (6.6 vs 4.5 GiB) of bilinear 768 → 384
(`python bench/bench_train_step.py --gpu --full-res`): at batch 8 the step is bound by kernel launches,
not FLOPs, so the upper reference costs little there.

Other recipes: `--recipe imagenet` (the 2x ImageNet recipe of imagenet_resnet50.py, top-1) and `--recipe ava`
(NIMA on AVA, ava_nima.py; the report compares SRCC, the task's target metric), each with `--backbone` and
its own workers per trial:

    python jobs/compare_resizers.py --recipe ava --data s3://BUCKET/ava-shards --storage s3://BUCKET/compare

Resume an interrupted comparison (finished trials are not rerun; unfinished ones continue from checkpoints):

    python jobs/compare_resizers.py --storage ... --name compare_resizers --resume

Report on demand (also while it runs):

    python -m pipeline.compare outputs/compare_resizers

Laptop (2 CPU cores, 14.5 min measured): 5 arms x 3 seeds on the 4-class demo dataset; learned CNN top-1
0.84 ± 0.10, MULLER 0.28 ± 0.02, bilinear 0.24 ± 0.01 (chance 0.25), see README. The AVA demo compares SRCC:

    python jobs/compare_resizers.py --demo
    python jobs/compare_resizers.py --demo --recipe ava
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir wins

from jobs import ava_nima, cub_swinl, finetune, imagenet_resnet50  # noqa: E402
from jobs._common import cli, init_ray, job_parser, resolve_config, show_config  # noqa: E402
from pipeline.config import CompareConfig, CompareJobConfig, JobConfig, RunConfig  # noqa: E402

RECIPES = ("cub", "imagenet", "ava", "finetune")
# job modules with config(backbone), demo_config, demo_data; finetune reads its task from the shards
OTHER_RECIPES = {"imagenet": imagenet_resnet50, "ava": ava_nima, "finetune": finetune}
ARMS = CompareConfig(learned=((16, 1),), muller=(2,), fixed_arms=("bilinear", "bicubic", "area"), seeds=(0, 1, 2))


def _comparison(cfg: JobConfig, run: RunConfig) -> CompareJobConfig:
    """The recipe's training config with the comparison's run settings and arms."""
    return CompareJobConfig.extend(cfg, run=run, compare=ARMS)


def config(recipe: str = "cub", backbone: str | None = None, data_path: str | None = None) -> CompareJobConfig:
    """A recipe's job, learned CNN and MULLER vs bilinear, bicubic, area, 3 seeds.

    cub: the reference recipe at 1xb8 (one GPU per trial). imagenet and ava: the 2x recipes of
    `imagenet_resnet50.py` and `ava_nima.py` (their default backbone or `backbone`) with their own
    worker count per trial; the metric is the task's (top-1; SRCC for AVA).
    """
    if recipe == "cub":
        cfg = cub_swinl.config()
        run = dataclasses.replace(cfg.run, name="compare_resizers", num_workers=1, checkpoint_every=10)
    else:
        module = OTHER_RECIPES[recipe]
        if recipe == "finetune":
            cfg = module.config(backbone or "resnet50", data_path=data_path)
        else:
            cfg = module.config(backbone) if backbone else module.config()
        run = dataclasses.replace(cfg.run, name=f"compare_resizers_{recipe}", checkpoint_every=5)
    return _comparison(cfg, run)


def demo_config(data_path: str, recipe: str = "cub") -> CompareJobConfig:
    """The recipe's demo model, shrunk so that 15 trials fit about 20 minutes on 2 cores.

    One worker per trial (two trials at a time). cub: the cub_swinl demo (64 px crops into a 32 px
    backbone, no flips) at batch 16, the global batch of its 2 x 8, for 10 epochs. imagenet and ava:
    their demos (128 → 64, a small ResNet) at fewer epochs.
    """
    if recipe == "cub":
        cfg = cub_swinl.demo_config(data_path)
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, batch_size=16),
            optim=dataclasses.replace(cfg.optim, epochs=10, warmup_epochs=1),
        )
        return _comparison(cfg, dataclasses.replace(cfg.run, name="compare_resizers_demo", num_workers=1, checkpoint_every=100))
    cfg = OTHER_RECIPES[recipe].demo_config(data_path)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=6))
    return _comparison(
        cfg, dataclasses.replace(cfg.run, name=f"compare_resizers_{recipe}_demo", num_workers=1, checkpoint_every=100)
    )


def demo_data(recipe: str) -> str:
    """The recipe job's demo shards."""
    return (OTHER_RECIPES[recipe] if recipe != "cub" else cub_swinl).demo_data()


@cli
def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue the interrupted comparison of this --name")
    parser.add_argument("--full-res", action="store_true", help="add the backbone at the crop's full resolution, behind no resize (an upper reference)")
    parser.add_argument(
        "--recipe", choices=RECIPES, default="cub",
        help="cub (default: Swin-L, top-1), imagenet (ResNet-50 2x, top-1), ava (NIMA 2x, SRCC) or finetune "
        "(any --backbone on your shards, jobs/finetune.py)",
    )
    parser.add_argument("--backbone", help="imagenet and ava recipes: the backbone (as in their jobs)")
    args = parser.parse_args(argv)
    if args.backbone and (args.recipe == "cub" or args.demo):
        parser.error("--backbone applies to the imagenet and ava recipes, not to cub or --demo; use --set model.backbone=...")
    if args.demo:
        cfg = demo_config(args.data or demo_data(args.recipe), args.recipe)
    else:
        cfg = config(args.recipe, args.backbone, args.data)  # an unknown --backbone: `error: ...`, exit code 2 (cli)
    cfg = resolve_config(cfg, args)
    if args.full_res:
        cfg = dataclasses.replace(cfg, compare=dataclasses.replace(cfg.compare, full_res=True))
    if args.print_config:
        return show_config(cfg)
    import time

    from pipeline.compare import format_table, write_comparison
    from pipeline.tune import run_comparison

    init_ray(args.demo, verbose=args.verbose)
    started = time.perf_counter()
    directory = run_comparison(cfg, resume=args.resume, verbose=args.verbose).directory
    minutes = (time.perf_counter() - started) / 60
    summary = write_comparison(directory)
    print(f"\ncomparison of {len(summary['arms'])} arms, {minutes:.1f} min of training\n")
    print(format_table(summary))
    print("\n".join(summary["verdicts"]))
    print(f"\nreport:      {summary['report']}, comparison.md, accuracy_per_arm.png, learning_curves.png, resizer_grid_all.png")
    print(f"TensorBoard: tensorboard --logdir {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
