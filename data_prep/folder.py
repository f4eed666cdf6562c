"""Your own images, one folder per class: ``DIR/train/<class>/`` with ``DIR/val/<class>/`` (or ``test/``),
or one ``DIR/<class>/`` tree split into train and val by ``--val-fraction`` (per class, seeded).

Classes are the folder names, sorted (spaces and non-ASCII names work), kept in the manifest; with separate
splits they come from ``train/`` and every evaluation class must be one of them. Hidden entries (``.*``,
``__MACOSX``) are never a class or a sample; a class folder without images is refused naming it; a file that
is not an image (by extension) is listed as skipped. Keys are the path inside the class folder, made
key-safe, plus a short hash of it, so two classes may hold files of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_prep.records import DataPrepError, DatasetSpec, Record, class_folders, is_hidden, path_key, split_by_fraction
from data_prep.shards import ShardOptions, write_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EVAL_SPLITS = ("val", "test")


def read_folder(src: str | Path, val_fraction: float | None = None, seed: int = 0) -> DatasetSpec:
    """Reads a class-per-folder tree into records.

    Args:
        src: the folder (``train/`` + ``val/`` or ``test/``, or one folder per class).
        val_fraction: share of each class held out as ``val`` for a tree without splits; must be None
            when the tree has its own splits.
        seed: seed of that split.

    Raises:
        DataPrepError: no classes, an empty class folder, an evaluation class that train/ lacks, a bad fraction.
    """
    root = Path(src).resolve()
    if not root.is_dir():
        raise DataPrepError(f"--src {root}: no such folder")
    eval_split = next((s for s in EVAL_SPLITS if (root / s).is_dir()), None)
    skipped: list[dict[str, str]] = []
    if (root / "train").is_dir() and eval_split:
        if val_fraction is not None:
            raise DataPrepError(f"{root} has train/ and {eval_split}/ already; drop --val-fraction")
        classes = class_folders(root / "train")
        index = {name: i for i, name in enumerate(classes)}
        splits = {}
        for split in ("train", eval_split):
            splits[split] = []
            for name in class_folders(root / split):
                if name not in index:
                    raise DataPrepError(f"{root / split / name}: class {name!r} is not a class of train/; remove or rename the folder")
                splits[split] += _class_records(root, f"{split}/{name}", index[name], name, split, skipped)
        options: dict[str, Any] = {"src": str(root), "layout": f"train+{eval_split}"}
    else:
        fraction = 0.2 if val_fraction is None else val_fraction
        classes = class_folders(root)
        by_class = [_class_records(root, name, label, name, "train", skipped) for label, name in enumerate(classes)]
        splits = split_by_fraction(by_class, fraction, seed)
        options = {"src": str(root), "layout": "classes", "val_fraction": fraction}
    if not classes:
        raise DataPrepError(f"{root}: no class folders; expected DIR/<class>/ or DIR/train/<class>/ with DIR/val/<class>/")
    if len(classes) < 2:
        raise DataPrepError(f"{root}: one class folder ({classes[0]!r}); a classifier needs at least 2")
    return DatasetSpec("folder", "cls", classes, splits, skipped, options)


def _class_records(root: Path, relative: str, label: int, name: str, split: str, skipped: list[dict[str, str]]) -> list[Record]:
    """The images under one class folder (recursively); other files go to `skipped`."""
    folder = root / relative
    records = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for filename in sorted(filenames):
            if is_hidden(filename):
                continue
            path = Path(dirpath) / filename
            source = path.relative_to(root).as_posix()
            if not filename.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append({"split": split, "key": path_key(source), "path": source, "reason": "not an image file (by extension)"})
                continue
            records.append(Record(path_key(source), str(path), source, label, {"class_name": name}))
    if not records:
        raise DataPrepError(
            f"{folder}: class folder without images ({', '.join(IMAGE_EXTENSIONS)}); add its images or remove the folder"
        )
    return records


def shard_folder(src: str | Path, out: str, options: ShardOptions | None = None, val_fraction: float | None = None) -> dict[str, Any]:
    """Shards a class-per-folder tree; see `read_folder`. Returns the manifest."""
    options = options or ShardOptions()
    return write_dataset(read_folder(src, val_fraction, options.seed), out, options)
