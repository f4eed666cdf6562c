"""Search the learned resizer's hyperparameters on CUB with Ray Tune + ASHA, with a fixed-bilinear arm.

Cluster (16 GPUs: 8 trials of 2 GPUs at a time; shards from `python -m data_prep cub`):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/tune_cub_resizer.py --data s3://BUCKET/cub-shards --storage s3://BUCKET/tune --num-workers 2

    Searches n in {16, 32}, r in {1..4}, the resizer's input (768 or 640 px for the 384 px backbone), the resizer
    and backbone learning rates, zero-init of the last conv and the interpolation; 24 trials of up to 30 epochs,
    ASHA (grace 3 epochs, reduction 3) on validation top-1. The first two trials are a pair: the recipe's learned
    resizer and plain bilinear with the same values. Expected runtime: a full 30-epoch trial of Swin-L on
    2 A100s takes ~1.5 h; with ASHA stopping most trials after 3-9 epochs, ~25% of 24 x 30 trial-epochs run:
    about 6-8 h on 16 GPUs. Expected result: learned within ±1 point of bilinear top-1 on CUB (docs/method.md).

Resume an interrupted search (finished trials are not rerun; unfinished ones continue from their checkpoints):

    python jobs/tune_cub_resizer.py --storage ... --name tune_cub_resizer --resume

Report on demand (also while it runs; TensorBoard on the folder is the live view of every trial):

    python -m pipeline.report outputs/tune_cub_resizer
    tensorboard --logdir outputs/tune_cub_resizer

Laptop (2 CPU cores): 6 trials on the demo dataset, ASHA stopping some, under 10 minutes:

    python jobs/tune_cub_resizer.py --demo
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir wins

from jobs import cub_swinl  # noqa: E402
from jobs._common import cli, ensure_demo_shards, init_ray, job_parser, resolve_config, show_config  # noqa: E402
from pipeline.config import SearchConfig, SearchJobConfig  # noqa: E402


def config() -> SearchJobConfig:
    """The reference recipe with a search over the resizer, 30-epoch trials, 2 GPUs each."""
    cfg = cub_swinl.config()
    return SearchJobConfig.extend(
        cfg,
        optim=dataclasses.replace(cfg.optim, epochs=30, warmup_epochs=2),
        run=dataclasses.replace(cfg.run, name="tune_cub_resizer", num_workers=2, checkpoint_every=3),
        search=SearchConfig(
            num_samples=24,
            num_filters=(16, 32),
            num_res_blocks=(1, 2, 3, 4),
            input_sizes=(768, 640),
            lr=(2e-6, 2e-5),
            resizer_lr=(5e-6, 5e-4),
            grace_period=3,
            reduction_factor=3,
        ),
    )


def demo_config(data_path: str) -> SearchJobConfig:
    """The laptop demo: the cub_swinl demo model at 64 px behind 128 or 96 px crops (batch 16), 6 short
    trials of one worker, ASHA from epoch 1, on the 10-class demo set."""
    cfg = cub_swinl.demo_config(data_path)
    return SearchJobConfig.extend(
        cfg,
        model=dataclasses.replace(cfg.model, img_size=64),
        data=dataclasses.replace(cfg.data, crop_size=128, batch_size=16),
        optim=dataclasses.replace(cfg.optim, epochs=5, warmup_epochs=1),
        run=dataclasses.replace(cfg.run, name="tune_cub_resizer_demo", num_workers=1, checkpoint_every=2),
        search=SearchConfig(
            num_samples=6,
            num_filters=(8, 16),
            num_res_blocks=(1, 2),
            input_sizes=(128, 96),
            lr=(1e-3, 1e-3),
            resizer_lr=(3e-4, 3e-3),
            grace_period=1,
            reduction_factor=2,
        ),
    )


@cli
def main(argv: list[str] | None = None) -> int:
    from pipeline.report import format_table, write_report
    from pipeline.tune import run_search

    parser = job_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search of this --name")
    args = parser.parse_args(argv)
    cfg = demo_config(args.data or ensure_demo_shards()) if args.demo else config()
    cfg = resolve_config(cfg, args)
    if args.print_config:
        return show_config(cfg)
    init_ray(args.demo, verbose=args.verbose)
    directory = run_search(cfg, resume=args.resume, verbose=args.verbose).directory
    summary = write_report(directory)
    print(format_table(summary))
    print(f"report:      {summary['report']}, curves.png, hyperparameters.png, trials.csv")
    print(f"TensorBoard: tensorboard --logdir {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
