"""Your own images listed in a CSV table: one row per image, a path column and a class column.

    python -m data_prep csv --src labels.csv --root images/ --out shards/mine [--split-column split | --val-fraction 0.2]

The header names the columns: ``--image-column`` (default ``image``; paths relative to ``--root``, never leaving
it), ``--class-column`` (default ``label``; any text, classes are the sorted distinct values) and, if the table
has one, ``--split-column`` (default ``split``: ``train`` and one of ``val``/``test`` per row). Without a split
column, ``--val-fraction`` (default 0.2) of each class is held out as ``val``, seeded. Every problem with a row
names the file and line; a listed image that does not exist is skipped and listed, like the other datasets.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.records import DataPrepError, DatasetSpec, Record, confined, error_at, path_key, text_lines
from data_prep.shards import ShardOptions, write_dataset

SPLITS = ("train", "val", "test")


def read_csv_table(
    src: str | Path,
    root: str | Path,
    *,
    image_column: str = "image",
    class_column: str = "label",
    split_column: str = "split",
    val_fraction: float | None = None,
    seed: int = 0,
) -> DatasetSpec:
    """Reads the CSV into records (see the module docstring).

    Raises:
        DataPrepError: a missing file or column, a bad row (file:line), one class only, a bad fraction.
    """
    path, base = Path(src).resolve(), Path(root).resolve()
    if not path.is_file():
        raise DataPrepError(f"--src {path}: no such CSV file")
    if not base.is_dir():
        raise DataPrepError(f"--root {base}: no such folder")
    rows = csv.reader(line for _, line in text_lines(path))
    header = next(rows, None)
    if not header:
        raise DataPrepError(f"{path}: empty; the first line must name the columns")
    header = [h.strip() for h in header]
    for name, option in ((image_column, "--image-column"), (class_column, "--class-column")):
        if name not in header:
            raise error_at(path, 1, f"no column {name!r} in the header {header}", f"name it with {option}")
    has_split = split_column in header
    if has_split and val_fraction is not None:
        raise error_at(path, 1, f"the table has a {split_column!r} column", "drop --val-fraction")
    col = {name: header.index(name) for name in header}
    entries: list[tuple[int, str, str, str | None]] = []
    seen: dict[str, int] = {}
    for line_number, row in enumerate(rows, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise error_at(path, line_number, f"{len(row)} columns, the header has {len(header)}", "fix the line")
        image, label = row[col[image_column]].strip(), row[col[class_column]].strip()
        if not image or not label:
            raise error_at(path, line_number, f"empty {image_column if not image else class_column!r}", "fill it in or remove the line")
        confined(base, image, path, line_number)
        if image in seen:
            raise error_at(path, line_number, f"image {image!r} is listed twice (first on line {seen[image]})")
        seen[image] = line_number
        split = None
        if has_split:
            split = row[col[split_column]].strip().lower()
            if split not in SPLITS:
                raise error_at(path, line_number, f"split {split!r} is not one of {list(SPLITS)}")
        entries.append((line_number, image, label, split))
    classes = sorted({label for _, _, label, _ in entries})
    if len(classes) < 2:
        raise DataPrepError(f"{path}: {len(classes)} distinct value(s) in {class_column!r}; a classifier needs at least 2")
    index = {name: i for i, name in enumerate(classes)}

    def record(image: str, label: str) -> Record:
        return Record(path_key(image), str(base / image), image, index[label], {"class_name": label})

    splits: dict[str, list[Record]] = {}
    if has_split:
        for _, image, label, split in entries:
            splits.setdefault(split, []).append(record(image, label))
        eval_splits = [s for s in ("val", "test") if s in splits]
        if "train" not in splits or not eval_splits:
            raise DataPrepError(f"{path}: column {split_column!r} must hold train and val (or test) rows; it has {sorted(splits)}")
        options: dict[str, Any] = {"src": str(base), "table": str(path), "split_column": split_column}
    else:
        fraction = 0.2 if val_fraction is None else val_fraction
        if not 0.0 < fraction < 1.0:
            raise DataPrepError(f"--val-fraction must be between 0 and 1, got {fraction}")
        splits = {"train": [], "val": []}
        for label in classes:
            members = [image for _, image, value, _ in entries if value == label]
            held_out = set(np.random.default_rng([seed, index[label]]).permutation(len(members))[: round(fraction * len(members))].tolist())
            for i, image in enumerate(members):
                splits["val" if i in held_out else "train"].append(record(image, label))
        options = {"src": str(base), "table": str(path), "val_fraction": fraction}
    return DatasetSpec("csv", "cls", classes, splits, [], options)


def shard_table(src: str | Path, root: str | Path, out: str, options: ShardOptions | None = None, **columns: Any) -> dict[str, Any]:
    """Shards the images a CSV table lists; see `read_csv_table`. Returns the manifest."""
    options = options or ShardOptions()
    return write_dataset(read_csv_table(src, root, seed=options.seed, **columns), out, options)
