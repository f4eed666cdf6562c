"""The plain data every source hands to the sharding engine, and the one error type.

A source (``cub.py``, ``imagenet.py``, ``ava.py``) turns a raw layout into a `DatasetSpec`: per split, a list
of `Record` (one image each) plus the items already known to be unusable (an id listed with no file, an AVA
image with no votes). Structural problems in the metadata raise `DataPrepError` naming file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class DataPrepError(ValueError):
    """A problem with the input or the options that stops the run; the message says what, where and what to do."""


def error_at(path: str | Path, line_number: int, what: str, todo: str = "") -> DataPrepError:
    """Builds a `DataPrepError` for a line of a metadata file.

    Args:
        path: the metadata file.
        line_number: 1-based line number in that file.
        what: what is wrong on that line.
        todo: what the user should do about it.

    Returns:
        The error, to be raised by the caller.
    """
    message = f"{path}:{line_number}: {what}"
    if todo:
        message += f". {todo}"
    return DataPrepError(message)


@dataclasses.dataclass(frozen=True, slots=True)  # slots: ImageNet holds 1.33M of these
class Record:
    """One image to put into a shard.

    Attributes:
        key: sample key in the shard (no dots: webdataset splits member names on the first dot).
        path: absolute path of the source image file.
        source: the path as reported in the sample json and the skip list (relative to the dataset root).
        label: 0-based class index, or None for datasets without classes (AVA).
        meta: dataset-specific JSON-serialisable fields copied into the sample json.
    """

    key: str
    path: str
    source: str
    label: int | None
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a source hands to the sharding engine.

    Attributes:
        dataset: dataset name written to the manifest ("cub", "imagenet", "ava").
        target: "cls" when samples carry a class index, "votes" for AVA's score distribution, "value" for a
            number per image (its json's "target").
        class_names: class names, index = cls (empty for AVA).
        splits: split name to its records, in any order (the engine sorts by key, then shuffles with the seed).
        skipped: items dropped before sharding, as manifest skip entries {split, key, path, reason}.
        options: dataset-specific options recorded in the manifest's created_by.
        target_stats: for target "value": {"mean", "std", "min", "max"} of the train split's targets.
    """

    dataset: str
    target: str
    class_names: list[str]
    splits: dict[str, list[Record]]
    skipped: list[dict[str, str]]
    options: dict[str, Any]
    target_stats: dict[str, float] | None = None


def check_unique_keys(splits: dict[str, list[Record]]) -> None:
    """Raises `DataPrepError` if two records share a key (they would collide in webdataset).

    Args:
        splits: split name to records.
    """
    seen: dict[str, str] = {}
    for records in splits.values():
        for record in records:
            if "." in record.key:
                raise DataPrepError(f"{record.source}: sample key {record.key!r} contains a dot; keys must not")
            if record.key in seen:
                raise DataPrepError(
                    f"{record.source}: sample key {record.key!r} is also used by {seen[record.key]}; "
                    "rename one of the files so that file stems are unique"
                )
            seen[record.key] = record.source


def read_table(path: Path, num_columns: int, columns: str, *, maxsplit: int = -1) -> list[tuple[int, list[str]]]:
    """Reads a whitespace-separated metadata file, checking the column count of every non-blank line.

    Args:
        path: the file.
        num_columns: columns each line must have.
        columns: the expected line format, for error messages (e.g. "<image_id> <class_id>").
        maxsplit: passed to str.split (lets a last column contain spaces).

    Returns:
        (1-based line number, fields) for each non-blank line.

    Raises:
        DataPrepError: the file is missing or a line has the wrong number of columns.
    """
    if not path.is_file():
        raise DataPrepError(f"{path}: metadata file not found; check --src points at the dataset root")
    rows = []
    for line_number, line in text_lines(path):
        if not line.strip():
            continue
        fields = line.split(None, maxsplit) if maxsplit >= 0 else line.split()
        if len(fields) != num_columns:
            raise error_at(
                path, line_number, f"expected {num_columns} columns {columns}, got {len(fields)}: {line.rstrip()!r}",
                "fix or remove the line",
            )
        rows.append((line_number, fields))
    return rows


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 text file; a line that is not UTF-8 raises `DataPrepError`
    naming the file, the line and the byte (metadata written in Latin-1 or another code page)."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise error_at(
                    path, line_number, f"not UTF-8 text: byte 0x{raw[error.start]:02x} at column {error.start + 1}",
                    "save the file as UTF-8",
                ) from None


def confined(root: Path, relative: str, path: Path, line_number: int) -> Path:
    """`root / relative`, refused (naming file and line) when `relative` is absolute or climbs out of `root`
    with `..`: metadata must not make data_prep read files outside the dataset. The check is on the
    path as written; symlinks the user put inside the dataset are followed as usual."""
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        raise error_at(path, line_number, f"path {relative!r} leaves {root}", "paths must be relative and stay inside it")
    return root / normal


def is_hidden(name: str) -> bool:
    """A name no dataset means: ``.ipynb_checkpoints``, ``.DS_Store``, ``__MACOSX`` and the like."""
    return name.startswith((".", "__"))


def class_folders(folder: Path) -> list[str]:
    """The sorted sub-folders of `folder` that are classes: hidden ones never are, so a notebook or an
    unzip tool cannot add a class and shift every label by one."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not is_hidden(e.name))


def split_by_fraction(by_class: list[list[Record]], fraction: float, seed: int) -> dict[str, list[Record]]:
    """{"train", "val"}: of each class (in the order given) a seeded `fraction` goes to val, at least one
    image of any class that has two.

    Raises:
        DataPrepError: `fraction` is not between 0 and 1.
    """
    if not 0.0 < fraction < 1.0:
        raise DataPrepError(f"--val-fraction must be between 0 and 1, got {fraction}")
    splits: dict[str, list[Record]] = {"train": [], "val": []}
    for label, records in enumerate(by_class):
        order = np.random.default_rng([seed, label]).permutation(len(records))
        held_out = set(order[: max(1, round(fraction * len(records)))].tolist()) if len(records) > 1 else set()
        for i, record in enumerate(records):
            splits["val" if i in held_out else "train"].append(record)
    return splits


def path_key(source: str) -> str:
    """A webdataset key for a file path: its letters and digits (the last 80), then 8 hex digits of its SHA-1,
    so keys stay unique, dot-free and readable for files of the same name in different folders."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_")[-80:]
    return f"{stem}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def parse_int(path: Path, line_number: int, text: str, what: str) -> int:
    """Parses an integer field, raising `DataPrepError` naming file and line if it is not one."""
    try:
        return int(text)
    except ValueError:
        raise error_at(path, line_number, f"{what} must be an integer, got {text!r}", "fix the line") from None
