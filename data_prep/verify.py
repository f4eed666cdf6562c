"""``verify OUT``: read every shard back and check it against the manifest.

Checks, per shard: the sha256 and size, that members come as complete samples in the documented order,
that every ``jpg`` decodes fully as an RGB JPEG, ``cls`` is an integer in range and ``json`` parses, and the
sample count. Per split: the shard list and totals, and that listed = written + skipped. Across the dataset:
no key twice (so no sample was duplicated by a resumed run).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import math
import multiprocessing
import tarfile
from typing import Any

from data_prep.fs import OutDir, open_file
from data_prep.images import ImageError, check_jpeg
from data_prep.manifest import MANIFEST_NAME, load_manifest
from data_prep.shards import available_cores


def verify_shard(url: str, expected: dict[str, Any], target: str, num_classes: int) -> tuple[list[str], list[str]]:
    """Checks one shard.

    Args:
        url: the shard's path or URI.
        expected: its manifest entry (name, num_samples, sha256, bytes).
        target: "cls" if samples must carry a class index, "value" a number in their json, else "votes".
        num_classes: the number of classes (cls must be below it).

    Returns:
        (problems found, sample keys read).
    """
    name = expected["name"]
    try:
        with open_file(url) as f:
            data = f.read()
    except FileNotFoundError:
        return [f"{name}: file missing"], []
    problems = []
    if len(data) != expected["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, manifest says {expected['bytes']}")
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest (corrupted or rewritten)")
    suffixes = ("cls", "jpg", "json") if target == "cls" else ("jpg", "json")
    samples: dict[str, dict[str, bytes]] = collections.OrderedDict()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                file = tar.extractfile(member)
                if file is None or suffix not in suffixes:
                    problems.append(f"{name}: unexpected member {member.name!r}")
                    continue
                samples.setdefault(key, {})[suffix] = file.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        return problems + [f"{name}: cannot read the tar: {error}"], list(samples)
    for key, members in samples.items():
        if tuple(members) != suffixes:
            problems.append(f"{name}: sample {key} has members {list(members)}, expected {list(suffixes)}")
            continue
        try:
            check_jpeg(members["jpg"])
        except ImageError as error:
            problems.append(f"{name}: sample {key}: jpg does not decode: {error}")
        try:
            meta = json.loads(members["json"])
        except ValueError:
            problems.append(f"{name}: sample {key}: json does not parse")
            meta = {}
        if target == "value" and not _is_number(meta.get("target")):
            problems.append(f"{name}: sample {key}: json has no numeric \"target\" ({meta.get('target')!r})")
        if target == "cls":
            text = members["cls"].decode(errors="replace")
            if not text.isdigit() or int(text) >= num_classes:
                problems.append(f"{name}: sample {key}: cls {text!r} is not a class index below {num_classes}")
    if len(samples) != expected["num_samples"]:
        problems.append(f"{name}: {len(samples)} samples, manifest says {expected['num_samples']}")
    return problems, list(samples)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def verify(uri: str, workers: int | None = None) -> list[str]:
    """Verifies every shard of an output folder against its manifest.

    Args:
        uri: the output folder (local path or fsspec URI).
        workers: processes reading shards in parallel; None uses every core.

    Returns:
        The problems found; empty when the dataset is intact.
    """
    try:
        manifest = load_manifest(uri)
    except (FileNotFoundError, ValueError) as error:
        return [str(error)]
    base = uri.rstrip("/").removesuffix("/" + MANIFEST_NAME)
    jobs = [
        (f"{base}/{shard['name']}", shard, manifest["target"], manifest["num_classes"])
        for split in manifest["splits"].values()
        for shard in split["shards"]
    ]
    num_workers = min(workers or available_cores(), max(len(jobs), 1))
    if num_workers <= 1:
        results = [verify_shard(*job) for job in jobs]
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            results = list(pool.map(verify_shard, *zip(*jobs)))

    problems = [problem for shard_problems, _ in results for problem in shard_problems]
    listed = {shard["name"] for split in manifest["splits"].values() for shard in split["shards"]}
    try:
        present = OutDir(base).list()
    except OSError:
        present = []
    problems += [
        f"{name}: a tar in the folder that the manifest does not list (a reader of the folder would take it "
        "for a shard); move it elsewhere"
        for name in present if name.endswith(".tar") and name not in listed
    ]
    key_counts = collections.Counter(key for _, keys in results for key in keys)
    problems += [f"sample key {key} appears {count} times" for key, count in sorted(key_counts.items()) if count > 1]
    skipped_per_split = collections.Counter(entry["split"] for entry in manifest["skipped"])
    for split_name, split in manifest["splits"].items():
        shard_sum = sum(shard["num_samples"] for shard in split["shards"])
        if shard_sum != split["num_samples"] or len(split["shards"]) != split["num_shards"]:
            problems.append(f"split {split_name}: shard list does not add up to num_samples/num_shards")
        if split["num_samples"] + skipped_per_split[split_name] != split["num_records"]:
            problems.append(
                f"split {split_name}: {split['num_samples']} samples + {skipped_per_split[split_name]} skipped "
                f"!= {split['num_records']} listed records (samples lost or duplicated)"
            )
    return problems
