"""Command line: ``python -m data_prep {cub,imagenet,ava,folder,csv,demo,verify} ...``; ``--help`` on each."""

from __future__ import annotations

import argparse
import re
import sys

from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
DEMO_LAYOUTS = ("cub", "imagenet", "ava")


def parse_bytes(text: str) -> int:
    """Parses a byte count such as ``268435456``, ``256M`` or ``1G`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a byte count like 256M or 1G, got {text!r}")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def parse_image_size(text: str) -> tuple[int, int]:
    """Parses ``WIDTHxHEIGHT``."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 500x375, got {text!r}")
    return int(match[1]), int(match[2])


def _add_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder or URI (s3://, gs://, memory:// via fsspec)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (AVA: also the split); default 0")
    parser.add_argument("--shard-size", type=int, default=1000, help="most samples per shard; default 1000")
    parser.add_argument(
        "--shard-bytes", type=parse_bytes, default=256 * 2**20,
        help="most source bytes per shard, e.g. 256M or 1G; default 256M",
    )
    parser.add_argument(
        "--max-side", type=int, default=None,
        help="downscale images whose longer side exceeds this many pixels (re-encoded, recorded); default off",
    )
    parser.add_argument(
        "--no-decode-check", dest="decode_check", action="store_false",
        help="do not fully decode images that are kept as their original bytes (faster, misses truncated files)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first missing or undecodable image instead of skipping it")
    parser.add_argument("--workers", type=int, default=None, help="worker processes; default every available core")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subcommand per dataset plus demo and verify."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Raw datasets in, webdataset shards + manifest.json out. Reruns resume an interrupted run.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cub = commands.add_parser("cub", help="shard CUB-200-2011 (train/test)", description="Shard CUB-200-2011 into train/test.")
    cub.add_argument("--src", required=True, help="the CUB_200_2011 folder (images.txt, classes.txt, ..., images/)")
    _add_shard_options(cub)

    imagenet = commands.add_parser("imagenet", help="shard ImageNet ILSVRC2012 (train/val)", description="Shard ImageNet into train/val.")
    imagenet.add_argument("--src", required=True, help="folder holding train/<wnid>/ and val/ (flat or val/<wnid>/)")
    imagenet.add_argument("--splits", default="train,val", help="comma-separated subset of train,val; default train,val")
    imagenet.add_argument(
        "--val-labels", default=None,
        help="LOC_val_solution.csv or the ILSVRC2012_devkit_t12 folder for a flat val/; default: found under --src",
    )
    _add_shard_options(imagenet)

    ava = commands.add_parser("ava", help="shard AVA (train/test, score votes)", description="Shard AVA into train/test.")
    ava.add_argument("--src", required=True, help="folder holding AVA.txt and images/<id>.jpg")
    split = ava.add_mutually_exclusive_group()
    split.add_argument("--test-fraction", type=float, default=0.2, help="share of ids held out (seeded by --seed); default 0.2")
    split.add_argument("--test-ids", default=None, help="file of test image ids, one per line (instead of --test-fraction)")
    _add_shard_options(ava)

    folder = commands.add_parser(
        "folder", help="shard your own images, one folder per class",
        description="Shard DIR/train/<class>/ with DIR/val/<class>/ (or test/), or DIR/<class>/ split by --val-fraction.",
    )
    folder.add_argument("--src", required=True, help="DIR: train/ and val/ (or test/) of class folders, or class folders")
    folder.add_argument(
        "--val-fraction", type=float, default=None,
        help="DIR/<class>/ trees: share of each class held out as val (seeded by --seed); default 0.2",
    )
    _add_shard_options(folder)

    table = commands.add_parser(
        "csv", help="shard images listed in a CSV table (path and class columns, or a numeric target column)",
        description="Shard the images a CSV lists: a header, an image path column (relative to --root) and a class "
        "column, and a split column or --val-fraction.",
    )
    table.add_argument("--src", required=True, help="the CSV file")
    table.add_argument("--root", required=True, help="the folder the image paths are relative to")
    table.add_argument("--image-column", default="image", help="column of image paths; default image")
    table.add_argument("--class-column", default="label", help="column of class names; default label")
    table.add_argument("--target-column", help="column of numbers to regress (instead of --class-column), e.g. a score")
    table.add_argument("--split-column", default="split", help="column of train/val/test, if the table has one; default split")
    table.add_argument("--val-fraction", type=float, default=None, help="without a split column: share of each class held out as val; default 0.2")
    _add_shard_options(table)

    demo = commands.add_parser(
        "demo", help="generate the demo dataset (CUB, ImageNet or AVA layout)",
        description="Generate the demo texture dataset as OUT/CUB_200_2011 (shard it with `cub`), "
        "OUT/ILSVRC2012 (`imagenet`) or OUT/AVA_dataset (`ava`).",
    )
    demo.add_argument("--out", required=True, help="parent folder; the dataset goes to OUT/<layout's folder>")
    demo.add_argument(
        "--layout", choices=DEMO_LAYOUTS, default="cub",
        help="cub: classes in CUB_200_2011; imagenet: classes in ILSVRC2012 with a flat val/ and LOC_val_solution.csv; "
        "ava: vote distributions in AVA.txt; default cub",
    )
    demo.add_argument("--num-classes", type=int, default=10, help="texture classes, 2..12 (cub, imagenet); default 10")
    demo.add_argument("--num-images", type=int, default=600, help="total images (about half train); default 600")
    demo.add_argument("--seed", type=int, default=0, help="seed of everything random; default 0")
    demo.add_argument("--image-size", type=parse_image_size, default=(500, 375), help="WIDTHxHEIGHT; default 500x375")
    demo.add_argument("--workers", type=int, default=None, help="worker processes; default every available core")

    verify = commands.add_parser(
        "verify", help="check shards against the manifest",
        description="Read every shard back; check counts, sha256, member layout and that every image decodes.",
    )
    verify.add_argument("out", help="output folder or URI of a finished run")
    verify.add_argument("--workers", type=int, default=None, help="worker processes; default every available core")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 verify found problems, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from data_prep.demo import generate_demo
            from data_prep.demo_layouts import generate_ava_demo, generate_imagenet_demo

            if args.layout == "ava":
                root = generate_ava_demo(args.out, args.num_images, args.seed, args.image_size, args.workers)
            else:
                generate = generate_imagenet_demo if args.layout == "imagenet" else generate_demo
                root = generate(args.out, args.num_classes, args.num_images, args.seed, args.image_size, args.workers)
            print(f"demo dataset: {root}  (next: python -m data_prep {args.layout} --src {root} --out SHARDS)", file=sys.stderr)
            return 0
        if args.command == "verify":
            from data_prep.verify import verify

            problems = verify(args.out, args.workers)
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"verify {args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
            return 1 if problems else 0

        options = ShardOptions(
            seed=args.seed, shard_size=args.shard_size, shard_bytes=args.shard_bytes, max_side=args.max_side,
            decode_check=args.decode_check, strict=args.strict, workers=args.workers, verbose=not args.quiet,
        )
        if args.command == "cub":
            from data_prep.cub import shard_cub

            shard_cub(args.src, args.out, options)
        elif args.command == "imagenet":
            from data_prep.imagenet import shard_imagenet

            splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
            shard_imagenet(args.src, args.out, options, splits, args.val_labels)
        elif args.command == "folder":
            from data_prep.folder import shard_folder

            shard_folder(args.src, args.out, options, args.val_fraction)
        elif args.command == "csv":
            from data_prep.table import shard_table

            shard_table(
                args.src, args.root, args.out, options, image_column=args.image_column, class_column=args.class_column,
                target_column=args.target_column, split_column=args.split_column, val_fraction=args.val_fraction,
            )
        elif args.command == "ava":
            from data_prep.ava import shard_ava

            shard_ava(args.src, args.out, options, args.test_fraction, args.test_ids)
        return 0
    except (DataPrepError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an --out that cannot be written, a --src that cannot be read
        print(f"error: {error.filename or ''}: {error.strerror or error}; check --src and --out", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
