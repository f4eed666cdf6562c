"""AVA (aesthetic visual analysis): ``AVA.txt`` and ``images/<image id>.jpg``.

``AVA.txt`` has 15 space-separated integer columns: index, image id, vote counts for scores 1..10, two
semantic tag ids (0 = none), challenge id. There is no class: samples carry the votes (and mean score) in
their json for the score-distribution (EMD) task. Images with no votes are skipped.

Split: ``test_ids`` (a file of image ids, one per line) or a seeded permutation of all listed ids holding out
``test_fraction``; the split is drawn over the listed ids, so it does not depend on which files exist.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.records import DataPrepError, DatasetSpec, Record, error_at, parse_int, read_table
from data_prep.shards import ShardOptions, write_dataset

NUM_COLUMNS = 15
COLUMNS = "<index> <image_id> <votes for 1..10 (10 columns)> <tag1> <tag2> <challenge>"


def read_ava(
    src: str | Path, test_fraction: float = 0.2, test_ids: str | Path | None = None, seed: int = 0
) -> DatasetSpec:
    """Reads AVA.txt into train and test records.

    Args:
        src: folder holding AVA.txt and images/.
        test_fraction: share of ids held out for test when ``test_ids`` is not given.
        test_ids: file listing the test image ids, one per line.
        seed: seed of the held-out permutation.

    Returns:
        The dataset spec (target "votes", no classes).

    Raises:
        DataPrepError: missing AVA.txt, a line without 15 integer columns, duplicate or unknown ids (file:line).
    """
    root = Path(src).resolve()
    ava_txt = root / "AVA.txt"
    entries: dict[int, Record | None] = {}  # None: listed with no votes
    lines: dict[int, int] = {}
    for line_number, fields in read_table(ava_txt, NUM_COLUMNS, COLUMNS):
        values = [parse_int(ava_txt, line_number, text, "every column") for text in fields]
        image_id, votes, tags, challenge = values[1], values[2:12], values[12:14], values[14]
        if image_id in entries:
            raise error_at(ava_txt, line_number, f"duplicate image id {image_id} (first on line {lines[image_id]})")
        if min(votes) < 0:
            raise error_at(ava_txt, line_number, f"negative vote count in {votes}")
        num_votes = sum(votes)
        mean_score = sum(score * count for score, count in enumerate(votes, start=1)) / num_votes if num_votes else math.nan
        meta = {
            "image_id": image_id,
            "votes": votes,
            "mean_score": round(mean_score, 6) if num_votes else None,
            "tags": [tag for tag in tags if tag != 0],
            "challenge": challenge,
        }
        relative = f"images/{image_id}.jpg"
        record = Record(f"ava_{image_id}", str(root / relative), relative, None, meta) if num_votes else None
        entries[image_id] = record
        lines[image_id] = line_number
    if not entries:
        raise DataPrepError(f"{ava_txt}: no images listed")

    test = _test_ids(entries, lines, test_fraction, test_ids, seed)
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    skipped = []
    for image_id, record in entries.items():
        split = "test" if image_id in test else "train"
        if record is None:
            skipped.append({"split": split, "key": f"ava_{image_id}", "path": f"images/{image_id}.jpg", "reason": "no votes"})
        else:
            splits[split].append(record)
    options: dict[str, Any] = {"src": str(root)}
    if test_ids is not None:
        options["test_ids"] = str(Path(test_ids).resolve())
    else:
        options["test_fraction"] = test_fraction
    return DatasetSpec("ava", "votes", [], splits, skipped, options)


def _test_ids(
    entries: dict[int, Any], lines: dict[int, int], test_fraction: float, test_ids: str | Path | None, seed: int
) -> set[int]:
    if test_ids is not None:
        path = Path(test_ids)
        if not path.is_file():
            raise DataPrepError(f"{path}: test id file not found")
        chosen: set[int] = set()
        for line_number, (text,) in read_table(path, 1, "<image_id>"):
            image_id = parse_int(path, line_number, text, "image id")
            if image_id not in entries:
                raise error_at(path, line_number, f"image id {image_id} is not in AVA.txt", "remove it from the test list")
            chosen.add(image_id)
        return chosen
    if not 0.0 <= test_fraction < 1.0:
        raise DataPrepError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    ids = sorted(entries)
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[: round(test_fraction * len(ids))]}


def shard_ava(
    src: str | Path,
    out: str,
    options: ShardOptions | None = None,
    test_fraction: float = 0.2,
    test_ids: str | Path | None = None,
) -> dict[str, Any]:
    """Shards AVA into train and test.

    Args:
        src: folder holding AVA.txt and images/.
        out: output folder or fsspec URI.
        options: sharding options; its seed also draws the held-out split.
        test_fraction: share held out for test when ``test_ids`` is not given.
        test_ids: file of test image ids.

    Returns:
        The manifest.
    """
    options = options or ShardOptions()
    return write_dataset(read_ava(src, test_fraction, test_ids, options.seed), out, options)
