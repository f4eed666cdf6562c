"""ImageNet ILSVRC2012: ``train/<wnid>/*.JPEG`` and a validation set labelled one of three ways.

Classes are the sorted wnids of ``train/`` (torchvision/timm order; ``val/<wnid>/`` when there is no train/).
Validation labels, first found wins (or ``val_labels`` names the CSV or the devkit folder):

1. ``val/<wnid>/`` sub-folders;
2. ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token of PredictionString is the wnid)
   for a flat ``val/`` folder;
3. the devkit ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (line i holds the
   ILSVRC2012_ID of ``ILSVRC2012_val_<i:08d>``; these ids are NOT the sorted-wnid order) mapped through
   ``meta.mat``'s synsets (ILSVRC2012_ID -> WNID -> sorted index).

Keys are file stems with dots replaced by underscores (``n01440764_10026``, ``ILSVRC2012_val_00000001``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from data_prep.records import DataPrepError, DatasetSpec, Record, class_folders, error_at, parse_int, text_lines
from data_prep.shards import ShardOptions, write_dataset

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
CSV_NAME = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "data/meta.mat"


def read_imagenet(src: str | Path, splits: tuple[str, ...] = ("train", "val"), val_labels: str | Path | None = None) -> DatasetSpec:
    """Reads the ImageNet layout into records.

    Args:
        src: folder holding ``train/`` and ``val/`` (and the CSV or devkit for a flat val folder).
        splits: which of "train" and "val" to shard.
        val_labels: ``LOC_val_solution.csv`` or the ``ILSVRC2012_devkit_t12`` folder; found under src if None.

    Returns:
        The dataset spec.

    Raises:
        DataPrepError: missing folders, unknown wnids, malformed label files (file:line), unlabelled files.
    """
    root = Path(src).resolve()
    unknown = set(splits) - {"train", "val"}
    if unknown or not splits:
        raise DataPrepError(f"--splits must be a subset of train,val; got {','.join(splits)}")
    wnids = _class_wnids(root)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    records: dict[str, list[Record]] = {}
    options: dict[str, Any] = {"src": str(root), "splits": list(splits)}
    if "train" in splits:
        records["train"] = [
            _record(root, f"train/{wnid}/{name}", index[wnid], wnid) for wnid in wnids for name in _image_files(root / "train" / wnid)
        ]
    if "val" in splits:
        records["val"], options["val_labels"] = _val_records(root, index, Path(val_labels) if val_labels else None)
    return DatasetSpec("imagenet", "cls", wnids, records, [], options)


def _class_wnids(root: Path) -> list[str]:
    for folder in (root / "train", root / "val"):
        if folder.is_dir():
            wnids = class_folders(folder)
            if wnids:
                for wnid in wnids:
                    if not _image_files(folder / wnid):
                        raise DataPrepError(
                            f"{folder / wnid}: holds no images ({', '.join(IMAGE_EXTENSIONS)}), so it cannot be a class; "
                            "remove the folder (every folder of train/ becomes a class)"
                        )
                return wnids
    raise DataPrepError(
        f"{root}: cannot find the class list; expected train/<wnid>/ folders (or val/<wnid>/). Check --src"
    )


def _image_files(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _record(root: Path, relative: str, label: int, wnid: str) -> Record:
    key = Path(relative).stem.replace(".", "_")
    return Record(key, str(root / relative), relative, label, {"wnid": wnid})


def _val_records(root: Path, index: dict[str, int], val_labels: Path | None) -> tuple[list[Record], str]:
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise DataPrepError(f"{val_dir}: validation folder not found; add it or pass --splits train")
    subfolders = class_folders(val_dir)
    if subfolders and val_labels is None:
        records = []
        for wnid in subfolders:
            if wnid not in index:
                raise DataPrepError(f"{val_dir / wnid}: wnid {wnid!r} is not a class of train/; remove the folder")
            records += [_record(root, f"val/{wnid}/{name}", index[wnid], wnid) for name in _image_files(val_dir / wnid)]
        return records, "folders"

    if val_labels is None:
        candidates = [root / CSV_NAME, root / "ILSVRC2012_devkit_t12"]
        val_labels = next((c for c in candidates if c.exists()), None)
        if val_labels is None:
            raise DataPrepError(
                f"{val_dir}: flat validation folder but no labels; put {CSV_NAME} or ILSVRC2012_devkit_t12/ in {root}, "
                "or pass --val-labels"
            )
    if val_labels.is_dir():
        labels = _devkit_labels(val_labels, index)
    else:
        labels = _csv_labels(val_labels, index)
    files = {Path(name).stem: name for name in _image_files(val_dir)}
    for stem, name in files.items():
        if stem not in labels:
            raise DataPrepError(f"{val_dir / name}: no label for this image in {val_labels}; remove the file or fix the labels")
    records = []
    for image_id, wnid in labels.items():
        name = files.get(image_id, image_id + ".JPEG")  # a listed id with no file is skipped as missing later
        records.append(_record(root, f"val/{name}", index[wnid], wnid))
    return records, str(val_labels)


def _csv_labels(path: Path, index: dict[str, int]) -> dict[str, str]:
    labels: dict[str, str] = {}
    lines: dict[str, int] = {}
    if not path.is_file():
        raise DataPrepError(f"{path}: validation label file not found; check --val-labels")
    rows = csv.reader(line for _, line in text_lines(path))
    for line_number, row in enumerate(rows, start=1):
        if line_number == 1 and row and row[0] == "ImageId":
            continue
        if not row:
            continue
        if len(row) != 2 or not row[1].split():
            raise error_at(path, line_number, f"expected 'ImageId,PredictionString', got {row}", "fix the line")
        image_id, wnid = row[0].strip(), row[1].split()[0]
        if not image_id or image_id != Path(image_id).name or image_id in (".", ".."):
            raise error_at(path, line_number, f"ImageId {image_id!r} is not a file name", "ImageIds are file stems in val/")
        if wnid not in index:
            raise error_at(path, line_number, f"wnid {wnid!r} is not a class of train/")
        if image_id in labels:
            raise error_at(path, line_number, f"duplicate image id {image_id!r} (first on line {lines[image_id]})")
        labels[image_id], lines[image_id] = wnid, line_number
    return labels


def _devkit_labels(devkit: Path, index: dict[str, int]) -> dict[str, str]:
    import scipy.io  # only this layout needs scipy

    meta_path, truth_path = devkit / DEVKIT_META, devkit / DEVKIT_GROUND_TRUTH
    for path in (meta_path, truth_path):
        if not path.is_file():
            raise DataPrepError(f"{path}: devkit file not found; check the devkit folder")
    synsets = scipy.io.loadmat(str(meta_path), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    labels: dict[str, str] = {}
    with open(truth_path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            ilsvrc_id = parse_int(truth_path, line_number, line.strip(), "ILSVRC2012_ID")
            wnid = id_to_wnid.get(ilsvrc_id)
            if wnid is None:
                raise error_at(truth_path, line_number, f"ILSVRC2012_ID {ilsvrc_id} is not in {meta_path}")
            if wnid not in index:
                raise error_at(truth_path, line_number, f"wnid {wnid!r} (ILSVRC2012_ID {ilsvrc_id}) is not a class of train/")
            labels[f"ILSVRC2012_val_{line_number:08d}"] = wnid
    return labels


def shard_imagenet(
    src: str | Path,
    out: str,
    options: ShardOptions | None = None,
    splits: tuple[str, ...] = ("train", "val"),
    val_labels: str | Path | None = None,
) -> dict[str, Any]:
    """Shards ImageNet; see `read_imagenet` for the accepted layouts.

    Args:
        src: folder holding train/ and val/.
        out: output folder or fsspec URI.
        options: sharding options.
        splits: which of train and val to shard.
        val_labels: the CSV or devkit folder for a flat val folder (found under src if None).

    Returns:
        The manifest.
    """
    return write_dataset(read_imagenet(src, splits, val_labels), out, options or ShardOptions())
