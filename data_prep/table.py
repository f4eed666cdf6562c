"""Your own images listed in a CSV table: one row per image, a path column and a class or numeric target column.

    python -m data_prep csv --src labels.csv --root images/ --out shards/mine [--split-column split | --val-fraction 0.2]
    python -m data_prep csv --src scores.csv --root images/ --out shards/mine --target-column score

The header names the columns: ``--image-column`` (default ``image``; paths relative to ``--root``, never leaving
it), ``--class-column`` (default ``label``; any text, classes are the sorted distinct values) or, for a
regression, ``--target-column`` (a number per row, like AVA's mean score: manifest target ``value``, the
number in each sample's json as ``target``, the train split's mean/std/min/max in the manifest's
``target_stats``), and, if the table has one, ``--split-column`` (default ``split``: ``train`` and one of
``val``/``test`` per row). Without a split column, ``--val-fraction`` (default 0.2) of each class (of all rows,
for a regression) is held out as ``val``, seeded. Every problem with a row names the file and line; a listed
image that does not exist is skipped and listed, like the other datasets.
"""

from __future__ import annotations

import csv
import math
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
    target_column: str | None = None,
    split_column: str = "split",
    val_fraction: float | None = None,
    seed: int = 0,
) -> DatasetSpec:
    """Reads the CSV into records (see the module docstring); `target_column` makes it a regression table.

    Raises:
        DataPrepError: a missing file or column, a bad row (file:line), one class only, a constant target, a
            bad fraction.
    """
    path, base = Path(src).resolve(), Path(root).resolve()
    if not path.is_file():
        raise DataPrepError(f"--src {path}: no such CSV file")
    if not base.is_dir():
        raise DataPrepError(f"--root {base}: no such folder")
    entries, has_split = _rows(path, base, image_column, target_column or class_column, split_column, numeric=bool(target_column))
    if has_split and val_fraction is not None:
        raise error_at(path, 1, f"the table has a {split_column!r} column", "drop --val-fraction")
    if target_column:
        records = [(Record(path_key(image), str(base / image), image, None, {"target": value}), split) for image, value, split in entries]
        groups, classes = [[record for record, _ in records]], []
    else:
        classes = sorted({label for _, label, _ in entries})
        if len(classes) < 2:
            raise DataPrepError(f"{path}: {len(classes)} distinct value(s) in {class_column!r}; a classifier needs at least 2")
        index = {name: i for i, name in enumerate(classes)}
        records = [
            (Record(path_key(image), str(base / image), image, index[label], {"class_name": label}), split)
            for image, label, split in entries
        ]
        groups = [[record for record, _ in records if record.label == label] for label in range(len(classes))]
    options: dict[str, Any] = {"src": str(base), "table": str(path)}
    if has_split:
        splits = _by_split_column(path, records, split_column)
        options["split_column"] = split_column
    else:
        options["val_fraction"] = 0.2 if val_fraction is None else val_fraction
        splits = split_by_fraction(groups, options["val_fraction"], seed)  # per class, or all rows of a regression
    if not target_column:
        return DatasetSpec("csv", "cls", classes, splits, [], options)
    return DatasetSpec("csv", "value", [], splits, [], options, target_stats=_target_stats(path, splits["train"]))


def _target_stats(path: Path, train: list[Record]) -> dict[str, float]:
    """Mean, population std, min and max of the train split's targets (what a regression model is scaled by)."""
    values = [record.meta["target"] for record in train]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if std == 0.0:
        raise DataPrepError(f"{path}: every train row has the target {values[0]}; a regression needs targets that vary")
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def _by_split_column(path: Path, records: list[tuple[Record, str | None]], split_column: str) -> dict[str, list[Record]]:
    splits: dict[str, list[Record]] = {}
    for record, split in records:
        splits.setdefault(str(split), []).append(record)
    if "train" not in splits or not any(s in splits for s in ("val", "test")):
        raise DataPrepError(f"{path}: column {split_column!r} must hold train and val (or test) rows; it has {sorted(splits)}")
    return splits


def _rows(
    path: Path, base: Path, image_column: str, class_column: str, split_column: str, *, numeric: bool = False
) -> tuple[list[tuple[str, Any, str | None]], bool]:
    """(image, class or number, split or None) per row, and whether the table has the split column; every bad
    row names its line. `numeric`: `class_column` is a regression target column (finite numbers)."""
    rows = csv.reader(line for _, line in text_lines(path))
    header = [h.strip() for h in next(rows, [])]
    if not header:
        raise DataPrepError(f"{path}: empty; the first line must name the columns")
    for name, option in ((image_column, "--image-column"), (class_column, "--target-column" if numeric else "--class-column")):
        if name not in header:
            raise error_at(path, 1, f"no column {name!r} in the header {header}", f"name it with {option}")
    has_split = split_column in header
    col = {name: header.index(name) for name in header}
    entries: list[tuple[str, Any, str | None]] = []
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
        entries.append((image, _number(path, line_number, class_column, label) if numeric else label, split))
    return entries, has_split


def _number(path: Path, line_number: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise error_at(path, line_number, f"{column} {text!r} is not a number", "fix the value or remove the line") from None
    if not math.isfinite(value):
        raise error_at(path, line_number, f"{column} {text!r} is not a finite number", "fix the value or remove the line")
    return value


def shard_table(src: str | Path, root: str | Path, out: str, options: ShardOptions | None = None, **columns: Any) -> dict[str, Any]:
    """Shards the images a CSV table lists; see `read_csv_table`. Returns the manifest."""
    options = options or ShardOptions()
    return write_dataset(read_csv_table(src, root, seed=options.seed, **columns), out, options)
