"""``OUT/manifest.json``: what a data_prep run wrote. The training side reads this file and nothing else raw.

Schema (format_version 1; JSON with sorted keys)::

    {
      "format_version": 1,
      "dataset": "cub" | "imagenet" | "ava",
      "target": "cls" | "votes" | "value",  # cls: a class index; votes: AVA score distribution; value: a number
      "num_classes": int,                # 0 for AVA
      "class_names": [str, ...],         # index = cls (CUB: classes.txt names; ImageNet: sorted wnids)
      "created_by": {                    # the options that produced these bytes
        "tool": "data_prep", "src": str, "seed": int, "shard_size": int, "shard_bytes": int,
        "max_side": int | null, "decode_check": bool, "strict": bool,
        ... dataset options: "splits", "val_labels" (ImageNet), "test_fraction", "test_ids" (AVA)
      },
      "splits": {
        "<split>": {                     # CUB train/test, ImageNet train/val, AVA train/test
          "num_records": int,            # items the source lists for this split, skipped ones included
          "num_samples": int,            # samples in the shards; num_records = num_samples + num_skipped
          "num_skipped": int,
          "num_shards": int,
          "shards": [{"name": "<split>-000000.tar", "num_samples": int, "sha256": hex, "bytes": int}, ...]
        }
      },
      "skipped": [{"split": str, "key": str, "path": str, "reason": str}, ...],   # sorted by split, key
      "converted": {"<reason>": int},    # re-encoded samples by reason: grayscale, cmyk, png, resized, a+b
      "num_converted": int,
      "target_stats": {"mean", "std", "min", "max": float}   # target "value" only: of the train split's rows
    }

Shards are ``OUT/<split>-<NNNNNN>.tar`` (webdataset layout); per sample, in this order:

- ``<key>.cls``: ASCII decimal class index (absent for AVA);
- ``<key>.jpg``: RGB JPEG (the original bytes, or a quality-95 4:4:4 re-encode recorded in the json);
- ``<key>.json``: ``source`` (path under the dataset root), ``original_size`` and ``size`` ([w, h]),
  ``converted`` (only if re-encoded), and per dataset: CUB ``image_id``, ``class_name``, ``bbox`` ([x, y, w, h]
  in original pixels); ImageNet ``wnid``; AVA ``image_id``, ``votes`` (10 counts for scores 1..10),
  ``mean_score``, ``tags`` (non-zero semantic tag ids), ``challenge``; folder/csv ``class_name``; csv with
  ``--target-column`` ``target`` (the number).
"""

from __future__ import annotations

import json
import re
from typing import Any

from data_prep.fs import open_file

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_DIR = "_progress"


SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")


def is_shard_name(name: str) -> bool:
    """A plain ``*.tar`` file name: no folder part, so a manifest cannot point readers outside its folder."""
    return bool(SHARD_NAME.fullmatch(name))


def load_manifest(uri: str) -> dict[str, Any]:
    """Reads a data_prep manifest.

    Args:
        uri: the output folder (local path or fsspec URI) or the manifest file itself.

    Returns:
        The manifest dict (schema in this module's docstring).

    Raises:
        FileNotFoundError: no manifest there (the run has not finished: rerun it, it resumes).
        ValueError: the manifest has an unknown format_version.
    """
    url = uri if uri.endswith(".json") else uri.rstrip("/") + "/" + MANIFEST_NAME
    try:
        with open_file(url) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url}: no manifest; the data_prep run into this folder has not finished, rerun it to resume"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{url}: format_version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    for split in manifest.get("splits", {}).values():
        for shard in split.get("shards", []):
            if not is_shard_name(shard.get("name", "")):
                raise ValueError(f"{url}: shard name {shard.get('name')!r} is not a file in that folder; rerun data_prep")
    return manifest


def shard_urls(uri: str, split: str) -> list[str]:
    """Full paths or URIs of a split's shards, in manifest order.

    Args:
        uri: the output folder (local path or fsspec URI).
        split: split name, e.g. "train".

    Returns:
        One path or URI per shard.

    Raises:
        KeyError: the manifest has no such split (the message lists the ones it has).
    """
    manifest = load_manifest(uri)
    if split not in manifest["splits"]:
        raise KeyError(f"{uri}: no split {split!r} in the manifest; it has {sorted(manifest['splits'])}")
    base = uri.rstrip("/")
    return [f"{base}/{shard['name']}" for shard in manifest["splits"][split]["shards"]]
