"""The shard set `python -m data_prep` wrote: its manifest, the shard URLs and sizes of a split.

Reading it needs no Ray, so a job checks its data before it starts or joins a cluster.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from data_prep.manifest import MANIFEST_NAME as MANIFEST, is_shard_name
from pipeline.storage import filesystem, store_errors


class DataError(ValueError):
    """A shard set that cannot be trained on: says which path and what to do."""


def read_manifest(path: str) -> dict[str, Any]:
    """Reads `<path>/manifest.json` written by `python -m data_prep`.

    Raises:
        DataError: no such folder or manifest, or an unreadable manifest.
    """
    if not path:
        raise DataError("data.path is empty; point it at a folder of shards made by `python -m data_prep`")
    fs, root = filesystem(path)
    manifest_path = posixpath.join(root.rstrip("/"), MANIFEST)
    with store_errors(f"data.path={path!r}", DataError):
        if not fs.exists(manifest_path):
            hint = "it does not exist" if not fs.exists(root) else "it holds no manifest.json"
            raise DataError(
                f"data.path={path!r}: {hint}. Make shards first, e.g. "
                f"`python -m data_prep cub --src CUB_200_2011 --out {path}`"
            )
        try:
            with fs.open(manifest_path, "rb") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{manifest_path}: not valid JSON ({err}); rerun data_prep to rewrite it") from err


def shard_urls(path: str, manifest: dict[str, Any], split: str) -> list[str]:
    """Full URLs of a split's shards, in manifest order.

    Raises:
        DataError: the split is not in the manifest or has no shards.
    """
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DataError(f"data.path={path!r} has no split {split!r}; its manifest lists {sorted(splits)}")
    shards = splits[split].get("shards", [])
    if not shards:
        raise DataError(f"data.path={path!r}: split {split!r} has no shards; rerun data_prep")
    for shard in shards:
        if not is_shard_name(shard.get("name", "")):
            raise DataError(
                f"data.path={path!r}: manifest shard name {shard.get('name')!r} is not a file in that folder; "
                "rerun data_prep to rewrite the manifest"
            )
    return [posixpath.join(path.rstrip("/"), s["name"]) for s in shards]



def split_size(manifest: dict[str, Any], split: str) -> int:
    """Number of samples data_prep wrote for a split."""
    return int(manifest["splits"][split]["num_samples"])
