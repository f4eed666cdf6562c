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

from data_prep.records import DataPrepError, DatasetSpec, Record, confined, error_at, path_key, split_by_fraction, text_lines
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
    entries, has_split = _rows(path, base, image_column, class_column, split_column)
    if has_split and val_fraction is not None:
        raise error_at(path, 1, f"the table has a {split_column!r} column", "drop --val-fraction")
    classes = sorted({label for _, label, _ in entries})
    if len(classes) < 2:
        raise DataPrepError(f"{path}: {len(classes)} distinct value(s) in {class_column!r}; a classifier needs at least 2")
    index = {name: i for i, name in enumerate(classes)}
    records = [
        (Record(path_key(image), str(base / image), image, index[label], {"class_name": label}), split)
        for image, label, split in entries
    ]
    options: dict[str, Any] = {"src": str(base), "table": str(path)}
    if has_split:
        splits: dict[str, list[Record]] = {}
        for record, split in records:
            splits.setdefault(split, []).append(record)
        if "train" not in splits or not any(s in splits for s in ("val", "test")):
            raise DataPrepError(f"{path}: column {split_column!r} must hold train and val (or test) rows; it has {sorted(splits)}")
        options["split_column"] = split_column
    else:
        fraction = 0.2 if val_fraction is None else val_fraction
        by_class = [[record for record, _ in records if record.label == label] for label in range(len(classes))]
        splits = split_by_fraction(by_class, fraction, seed)
        options["val_fraction"] = fraction
    return DatasetSpec("csv", "cls", classes, splits, [], options)


def _rows(path: Path, base: Path, image_column: str, class_column: str, split_column: str) -> tuple[list[tuple[str, str, str | None]], bool]:
    """(image, class, split or None) per row, and whether the table has the split column; every bad row names its line."""
    rows = csv.reader(line for _, line in text_lines(path))
    header = [h.strip() for h in next(rows, [])]
    if not header:
        raise DataPrepError(f"{path}: empty; the first line must name the columns")
    for name, option in ((image_column, "--image-column"), (class_column, "--class-column")):
        if name not in header:
            raise error_at(path, 1, f"no column {name!r} in the header {header}", f"name it with {option}")
    has_split = split_column in header
    col = {name: header.index(name) for name in header}
    entries: list[tuple[str, str, str | None]] = []
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
        split = row[col[split_column]].strip().lower() if has_split else None
        if has_split and split not in SPLITS:
            raise error_at(path, line_number, f"split {split!r} is not one of {list(SPLITS)}")
        entries.append((image, label, split))
    return entries, has_split


def shard_table(src: str | Path, root: str | Path, out: str, options: ShardOptions | None = None, **columns: Any) -> dict[str, Any]:
    """Shards the images a CSV table lists; see `read_csv_table`. Returns the manifest."""
    options = options or ShardOptions()
    return write_dataset(read_csv_table(src, root, seed=options.seed, **columns), out, options)
