"""Predictions of a trained model: ``python -m pipeline.predict --checkpoint CKPT --out predictions.csv INPUT...``

CKPT is a run folder (its best checkpoint), a checkpoint folder or a weights file (`pipeline.trained`).
INPUT is image files or folders (searched recursively), or ``--shards DIR [--split NAME]`` for a split of
data_prep shards, which also prints the split's metrics as the training loop computes them. Every image
goes through the run's evaluation transform (resize → centre crop) and the training loop's decoder; the
model runs batched, on the GPU when there is one. One CSV row per image: the top-5 classes and their
probabilities, for a quality model the predicted mean score, for a regression model the predicted value
(in the target's units). Images that cannot be read are listed
and counted, never fatal.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class Predictions:
    """What a prediction pass produced.

    Attributes:
        rows: one dict per predicted image (the CSV rows).
        skipped: (image, reason) for every image that could not be used.
        metrics: for a shard split, the task's metrics over it (as the training loop logs them).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def image_files(inputs: list[str]) -> list[str]:
    """Image files among `inputs`, folders searched recursively (hidden entries skipped), sorted per folder.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    files = []
    for item in inputs:
        if os.path.isfile(item):
            files.append(item)
        elif os.path.isdir(item):
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    return files


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows as the batch of columns `decode_batch` takes."""
    return {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}


def _image_batches(paths: list[str], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows as the shards give them (key, jpg bytes, no label) from image files; unreadable files carry an error."""
    for start in range(0, len(paths), batch_size):
        rows = []
        for path in paths[start : start + batch_size]:
            try:
                with open(path, "rb") as f:
                    data, error = f.read(), ""
            except OSError as err:
                data, error = b"", f"unreadable file: {err.strerror}"
            rows.append({"key": path, "jpg": data, "label": -1, "meta": "{}", "error": error})
        yield _columns(rows)


def _shard_batches(data_path: str, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    import fsspec

    from pipeline.decode import iter_tar_samples
    from pipeline.manifest import read_manifest, shard_urls

    rows: list[dict[str, Any]] = []
    for url in shard_urls(data_path, read_manifest(data_path), split):
        with fsspec.open(url, "rb") as f:
            for sample in iter_tar_samples(f, url):
                rows.append(sample)
                if len(rows) == batch_size:
                    yield _columns(rows)
                    rows = []
    if rows:
        yield _columns(rows)


def predict(
    trained: Any,
    *,
    images: list[str] | None = None,
    shards: str | None = None,
    split: str | None = None,
    batch_size: int = 32,
    top: int = 5,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Predictions:
    """Runs a trained model (`pipeline.trained.load_trained`) over image files or a shard split.

    Args:
        images: image files (see `image_files`).
        shards: a data_prep shard folder; `split` (default: the run's eval split) is predicted and scored.
        top: classes per row for a classification model.
        device: default the GPU when there is one.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    from pipeline.decode import decode_batch

    cfg, task = trained.cfg, trained.task
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = trained.model.to(device).eval()
    if shards is not None:
        from pipeline.manifest import read_manifest

        target = read_manifest(shards).get("target")
        if target != task.target:
            raise ValueError(f"--shards {shards} holds samples with target {target!r}; this {task.name} model needs {task.target!r}")
        split = split or cfg.data.eval_split
        batches, total = _shard_batches(shards, split, batch_size), None
    else:
        images = images or []
        batches, total = _image_batches(images, batch_size), len(images)
    out = Predictions()
    outputs: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=total, unit="img", disable=not progress)
    with torch.no_grad():
        for rows in batches:
            batch = decode_batch(
                rows, resize_size=cfg.data.resize_size, crop_size=cfg.data.crop_size, train=False,
                task=task if shards is not None else None, hflip=False, max_pixels=cfg.data.max_pixels,
            )
            bar.update(len(batch["key"]))
            keep = batch["valid"]
            out.skipped += [(str(k), str(e)) for k, e, ok in zip(batch["key"], batch["error"], keep) if not ok]
            if not keep.any():
                continue
            logits = model(torch.as_tensor(batch["pixels"][keep], device=device)).float()
            rows = task.prediction_rows(logits, trained.class_names, top)
            out.rows += [{"image": str(key), **row} for key, row in zip(batch["key"][keep], rows)]
            if shards is not None:
                targets = {c: torch.as_tensor(batch[c][keep], device=device) for c in task.columns}
                for name, value in task.eval_outputs(logits, targets).items():
                    outputs.setdefault(name, []).append(value)
    bar.close()
    if shards is not None and outputs:
        out.metrics = task.eval_metrics({k: np.concatenate(v) for k, v in outputs.items()})
    return out


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """The rows as CSV (header from the first row); refuses to replace an existing file."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; pass another --out (predictions never overwrite a file)")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    parser.add_argument("--checkpoint", required=True, help="run folder (its best checkpoint), checkpoint folder or weights file")
    parser.add_argument("--out", required=True, help="CSV file to write (must not exist)")
    parser.add_argument("--shards", help="a data_prep shard folder: predict and score one of its splits instead")
    parser.add_argument("--split", help="with --shards: the split (default: the run's evaluation split)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=5, help="classes per row (classification)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ...; default the GPU when there is one")
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.shards):
        parser.error("give image files or folders, or --shards DIR, not both")
    from pipeline.trained import load_trained

    try:
        if os.path.exists(args.out):  # said before an hour of predicting, not after
            raise FileExistsError(f"{args.out} exists; pass another --out (predictions never overwrite a file)")
        trained = load_trained(args.checkpoint)
        images = image_files(args.inputs) if args.inputs else None
        result = predict(
            trained, images=images, shards=args.shards, split=args.split, batch_size=args.batch_size,
            top=args.top, device=args.device, progress=True,
        )
        write_csv(result.rows, args.out)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, reason in result.skipped:
        print(f"skipped {key}: {reason}", file=sys.stderr)
    print(f"{len(result.rows)} predictions -> {args.out} ({len(result.skipped)} skipped) from {trained.checkpoint}")
    if result.metrics:
        print("  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
