"""CUB-200-2011: five space-separated text files and ``images/<class folder>/<file>.jpg``.

``images.txt`` (<image_id> <path>), ``image_class_labels.txt`` (<image_id> <class_id 1..K>),
``train_test_split.txt`` (<image_id> <1=train, 0=test>), ``classes.txt`` (<class_id> <name>),
``bounding_boxes.txt`` (<image_id> <x> <y> <w> <h>). Every file must list exactly the ids of ``images.txt``;
the first disagreement stops the run naming file and line. cls = class_id - 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.records import DataPrepError, DatasetSpec, Record, confined, error_at, parse_int, read_table
from data_prep.shards import ShardOptions, write_dataset

SPLIT_NAMES = {1: "train", 0: "test"}


def read_cub(src: str | Path) -> DatasetSpec:
    """Reads the CUB-200-2011 metadata into records.

    Args:
        src: the ``CUB_200_2011`` folder (holding images.txt and images/).

    Returns:
        The dataset spec with train and test splits.

    Raises:
        DataPrepError: a metadata file is missing or malformed, or the files disagree on ids (file:line).
    """
    root = Path(src).resolve()
    images_txt = root / "images.txt"
    paths: dict[int, str] = {}
    image_lines: dict[int, int] = {}
    for line_number, (id_text, path) in read_table(images_txt, 2, "<image_id> <path>", maxsplit=1):
        image_id = parse_int(images_txt, line_number, id_text, "image_id")
        if image_id in paths:
            raise error_at(images_txt, line_number, f"duplicate image id {image_id} (first on line {image_lines[image_id]})")
        confined(root / "images", path.strip(), images_txt, line_number)
        paths[image_id] = path.strip()
        image_lines[image_id] = line_number
    if not paths:
        raise DataPrepError(f"{images_txt}: no images listed")

    classes_txt = root / "classes.txt"
    class_names: list[str] = []
    for line_number, (id_text, name) in read_table(classes_txt, 2, "<class_id> <name>", maxsplit=1):
        class_id = parse_int(classes_txt, line_number, id_text, "class_id")
        if class_id != len(class_names) + 1:
            raise error_at(
                classes_txt, line_number, f"class id {class_id} where {len(class_names) + 1} was expected",
                "class ids must run 1, 2, 3, ... in order",
            )
        class_names.append(name.strip())

    def per_image(name: str, num_columns: int, columns: str) -> dict[int, tuple[int, list[str]]]:
        path = root / name
        values: dict[int, tuple[int, list[str]]] = {}
        for line_number, fields in read_table(path, num_columns, columns):
            image_id = parse_int(path, line_number, fields[0], "image_id")
            if image_id not in paths:
                raise error_at(path, line_number, f"image id {image_id} is not in images.txt", "the files must list the same ids")
            if image_id in values:
                raise error_at(path, line_number, f"duplicate image id {image_id} (first on line {values[image_id][0]})")
            values[image_id] = (line_number, fields[1:])
        for image_id in paths:
            if image_id not in values:
                raise DataPrepError(
                    f"{path}: image id {image_id} (images.txt:{image_lines[image_id]}) is missing from this file; "
                    "the files must list the same ids"
                )
        return values

    labels = per_image("image_class_labels.txt", 2, "<image_id> <class_id>")
    is_train = per_image("train_test_split.txt", 2, "<image_id> <is_training_image>")
    boxes = per_image("bounding_boxes.txt", 5, "<image_id> <x> <y> <width> <height>")

    splits: dict[str, list[Record]] = {"train": [], "test": []}
    for image_id, path in paths.items():
        label_line, (class_text,) = labels[image_id]
        class_id = parse_int(root / "image_class_labels.txt", label_line, class_text, "class_id")
        if not 1 <= class_id <= len(class_names):
            raise error_at(
                root / "image_class_labels.txt", label_line, f"class id {class_id} is not in classes.txt (1..{len(class_names)})"
            )
        split_line, (split_text,) = is_train[image_id]
        flag = parse_int(root / "train_test_split.txt", split_line, split_text, "is_training_image")
        if flag not in SPLIT_NAMES:
            raise error_at(root / "train_test_split.txt", split_line, f"is_training_image must be 1 or 0, got {flag}")
        box_line, box_fields = boxes[image_id]
        try:
            bbox = [float(v) for v in box_fields]
        except ValueError:
            raise error_at(root / "bounding_boxes.txt", box_line, f"box values must be numbers, got {box_fields}") from None
        meta: dict[str, Any] = {"image_id": image_id, "class_name": class_names[class_id - 1], "bbox": bbox}
        record = Record(f"cub_{image_id:06d}", str(root / "images" / path), f"images/{path}", class_id - 1, meta)
        splits[SPLIT_NAMES[flag]].append(record)
    return DatasetSpec("cub", "cls", class_names, splits, [], {"src": str(root)})


def shard_cub(src: str | Path, out: str, options: ShardOptions | None = None) -> dict[str, Any]:
    """Shards CUB-200-2011 (or the demo dataset, which has the same layout).

    Args:
        src: the ``CUB_200_2011`` folder.
        out: output folder or fsspec URI.
        options: sharding options (defaults: seed 0, 1000 samples per shard, all cores).

    Returns:
        The manifest, also written to ``out/manifest.json``.
    """
    return write_dataset(read_cub(src), out, options or ShardOptions())
