"""The sharding engine shared by every dataset: plan, write, resume, manifest.

1. Plan. Per split, records are sorted by key, shuffled with a seeded permutation (so each shard mixes classes)
   and cut into shards of at most ``shard_size`` records and ``shard_bytes`` source bytes (source file sizes,
   known before decoding). Ids whose file is missing are skipped here. The plan depends only on the input and
   the options, so it is the same on every run.
2. Write. Shards are the unit of parallel work: a process pool over all cores writes each shard to a local
   ``<shard>.tar.tmp`` with deterministic tar headers, members ``<key>.cls``, ``<key>.jpg``, ``<key>.json`` per
   sample in plan order. Images that fail to decode are left out of their shard and listed (or stop the run
   with ``strict``). Same input and options give byte-identical shards.
3. Commit and resume. The main process renames (or uploads) each finished shard, then records its count,
   sha256 and plan hash in ``OUT/_progress/<shard>.json``. A rerun keeps every shard whose progress record
   matches its plan and whose size matches, and rewrites the rest, so an interrupted run finishes with the
   same bytes as an uninterrupted one. ``manifest.json`` is removed when a run starts and written last.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import signal
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from data_prep.fs import OutDir
from data_prep.images import ImageError, prepare_image
from data_prep.manifest import FORMAT_VERSION, MANIFEST_NAME, PROGRESS_DIR
from data_prep.records import DataPrepError, DatasetSpec, Record, check_unique_keys

# Test hook: after this many shards are committed, the run kills itself (and its workers, when it leads its
# process group) with SIGKILL, as a preempted machine would. Used by tests/data_prep/test_resume.py.
KILL_AFTER_SHARDS_ENV = "DATA_PREP_KILL_AFTER_SHARDS"
OWNER_FILE = f"{PROGRESS_DIR}/owner.json"  # which dataset and --src this folder's shards are of
_SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{6})\.tar(\.tmp)?$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """How to cut and write shards.

    Attributes:
        seed: seed of the per-split shuffle.
        shard_size: most samples per shard.
        shard_bytes: most source bytes per shard (a shard holds at least one sample).
        max_side: if set, downscale images whose longer side exceeds it (cuts decode cost in training).
        decode_check: fully decode every image, including kept original JPEGs, to catch truncated files.
        strict: stop at the first missing or undecodable image instead of skipping it.
        workers: worker processes; None uses every core available to this process.
        verbose: show a progress bar (on a terminal) and print a one-line summary to stderr.
    """

    seed: int = 0
    shard_size: int = 1000
    shard_bytes: int = 256 * 2**20
    max_side: int | None = None
    decode_check: bool = True
    strict: bool = False
    workers: int | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.shard_bytes < 1:
            raise ValueError(f"shard_bytes must be >= 1, got {self.shard_bytes}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be >= 1 or None, got {self.max_side}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, its records in order, and a hash of everything that decides its bytes."""

    name: str
    split: str
    records: list[Record]
    plan_hash: str


def available_cores() -> int:
    """Number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_split(
    dataset: str, split: str, records: list[Record], options: ShardOptions
) -> tuple[list[ShardPlan], list[dict[str, str]]]:
    """Shuffles a split's records with the seed and cuts them into shards.

    Args:
        dataset: dataset name (part of the plan hash).
        split: split name; shards are named ``<split>-<NNNNNN>.tar``.
        records: the split's records, in any order.
        options: sharding options.

    Returns:
        The shard plans, and skip entries for records whose file does not exist.

    Raises:
        DataPrepError: with ``strict``, if any file is missing.
    """
    present, sizes, skipped = [], [], []
    for record in sorted(records, key=lambda r: r.key):
        try:
            sizes.append(os.path.getsize(record.path))
            present.append(record)
        except OSError:
            skipped.append({"split": split, "key": record.key, "path": record.source, "reason": "missing: no such file"})
    if skipped and options.strict:
        first = skipped[0]["path"]
        raise DataPrepError(
            f"{len(skipped)} listed image(s) of split {split!r} have no file, first {first}; "
            "restore the files or rerun without --strict to skip them"
        )

    split_seed = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    order = np.random.default_rng([options.seed, split_seed]).permutation(len(present))
    plans: list[ShardPlan] = []
    current: list[tuple[Record, int]] = []
    current_bytes = 0

    def close_shard() -> None:
        name = f"{split}-{len(plans):06d}.tar"
        plans.append(ShardPlan(name, split, [r for r, _ in current], _plan_hash(dataset, name, current, options)))

    for index in order:
        record, size = present[index], sizes[index]
        if current and (len(current) >= options.shard_size or current_bytes + size > options.shard_bytes):
            close_shard()
            current, current_bytes = [], 0
        current.append((record, size))
        current_bytes += size
    if current:
        close_shard()
    return plans, skipped


def _plan_hash(dataset: str, name: str, items: list[tuple[Record, int]], options: ShardOptions) -> str:
    payload = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "shard": name,
        "max_side": options.max_side,
        "decode_check": options.decode_check,
        "records": [[r.key, r.source, r.label, r.meta, size] for r, size in items],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write_shard(plan: ShardPlan, tmp_path: str, options: ShardOptions) -> dict[str, Any]:
    """Writes one shard to a local file; runs in a worker process.

    Args:
        plan: the shard to write.
        tmp_path: local file to write the tar to.
        options: sharding options (max_side, decode_check, strict).

    Returns:
        The shard's progress record: name, split, num_records, num_samples, bytes, sha256, plan_hash,
        skipped entries and conversion counts.

    Raises:
        ImageError: with ``strict``, the first image that cannot be used (message starts with its path).
    """
    skipped: list[dict[str, str]] = []
    converted: collections.Counter[str] = collections.Counter()
    num_samples = 0
    with tarfile.open(tmp_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for record in plan.records:
            try:
                try:
                    with open(record.path, "rb") as f:
                        data = f.read()
                except OSError as error:
                    raise ImageError(f"missing: {error.strerror}") from error
                image = prepare_image(data, max_side=options.max_side, decode_check=options.decode_check)
            except ImageError as error:
                if options.strict:
                    raise ImageError(f"{record.path}: {error}") from error
                skipped.append({"split": plan.split, "key": record.key, "path": record.source, "reason": str(error)})
                continue
            sample_json: dict[str, Any] = {
                "source": record.source,
                "original_size": list(image.original_size),
                "size": list(image.size),
                **record.meta,
            }
            if image.converted:
                sample_json["converted"] = image.converted
                converted[image.converted] += 1
            if record.label is not None:
                _add_member(tar, f"{record.key}.cls", str(record.label).encode())
            _add_member(tar, f"{record.key}.jpg", image.jpeg)
            _add_member(tar, f"{record.key}.json", json.dumps(sample_json, sort_keys=True).encode())
            num_samples += 1
    return {
        "name": plan.name,
        "split": plan.split,
        "num_records": len(plan.records),
        "num_samples": num_samples,
        "bytes": os.path.getsize(tmp_path),
        "sha256": sha256_file(tmp_path),
        "plan_hash": plan.plan_hash,
        "skipped": skipped,
        "converted": dict(sorted(converted.items())),
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata: the bytes of a shard depend only on its samples.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def sha256_file(path: str) -> str:
    """Hex sha256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_dataset(spec: DatasetSpec, out: str, options: ShardOptions) -> dict[str, Any]:
    """Shards a dataset into ``out`` and writes its manifest; resumes a previous interrupted run.

    Args:
        spec: the dataset's records per split, class names and pre-sharding skips (from a source module).
        out: output folder or fsspec URI.
        options: sharding options.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        DataPrepError: on duplicate keys, or with ``strict`` on the first unusable image.
    """
    start = time.perf_counter()
    check_unique_keys(spec.splits)
    out_dir = OutDir(out)
    claim_output(out_dir, spec)
    out_dir.remove(MANIFEST_NAME)  # a manifest must never describe shards that are being rewritten

    plans: list[ShardPlan] = []
    skipped = list(spec.skipped)
    for split, records in spec.splits.items():
        split_plans, split_skipped = plan_split(spec.dataset, split, records, options)
        plans += split_plans
        skipped += split_skipped
    _remove_stale(out_dir, set(spec.splits), {p.name for p in plans})

    done, changed = _kept_shards(out_dir, plans)
    if changed and options.verbose:
        print(
            f"{spec.dataset}: rewriting {len(changed)} shard(s) whose bytes no longer match the checksum this tool "
            f"recorded: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}",
            file=sys.stderr,
        )
    todo = [plan for plan in plans if plan.name not in done]
    num_resumed = len(done)

    staging = out_dir.root if out_dir.is_local else tempfile.mkdtemp(prefix="data_prep_")
    num_todo_records = sum(len(plan.records) for plan in todo)
    kill_after = int(os.environ.get(KILL_AFTER_SHARDS_ENV, "0"))
    num_committed = 0
    bar = tqdm(total=num_todo_records, unit="img", desc=spec.dataset, disable=None if options.verbose else True)
    try:
        for result in _run_shards(todo, staging, options):
            out_dir.put(os.path.join(staging, result["name"] + ".tmp"), result["name"])
            out_dir.write_json(f"{PROGRESS_DIR}/{result['name']}.json", result)
            done[result["name"]] = result
            bar.update(result["num_records"])
            num_committed += 1
            if kill_after and num_committed >= kill_after:
                _kill_self()
    finally:
        bar.close()
        if not out_dir.is_local:
            _remove_tree(staging)

    manifest = _build_manifest(spec, options, plans, done, skipped)
    out_dir.write_json(MANIFEST_NAME, manifest)
    if options.verbose:
        seconds = time.perf_counter() - start
        num_written = sum(done[p.name]["num_samples"] for p in todo)
        per_split = ", ".join(f"{s} {v['num_samples']}" for s, v in manifest["splits"].items())
        print(
            f"{spec.dataset}: {sum(v['num_samples'] for v in manifest['splits'].values())} samples ({per_split}) "
            f"in {len(plans)} shards ({num_resumed} kept from an earlier run), {len(manifest['skipped'])} skipped, "
            f"{manifest['num_converted']} converted; {seconds:.1f} s, {num_written / max(seconds, 1e-9):.0f} img/s "
            f"-> {out_dir.url(MANIFEST_NAME)}",
            file=sys.stderr,
        )
    return manifest


def _run_shards(todo: list[ShardPlan], staging: str, options: ShardOptions) -> Iterator[dict[str, Any]]:
    """Yields progress records as shards finish, writing them in a process pool over the available cores."""
    num_workers = min(options.workers or available_cores(), len(todo))
    if num_workers <= 1:
        for plan in todo:
            yield _write_or_fail(plan, staging, options)
        return
    # fork: workers start in milliseconds and need nothing pickled but their shard's records
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        futures = [pool.submit(_write_or_fail, plan, staging, options) for plan in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _write_or_fail(plan: ShardPlan, staging: str, options: ShardOptions) -> dict[str, Any]:
    try:
        return write_shard(plan, os.path.join(staging, plan.name + ".tmp"), options)
    except ImageError as error:
        raise DataPrepError(f"{error}; rerun without --strict to skip and list such images") from None


def _kept_shards(out_dir: OutDir, plans: list[ShardPlan]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The shards an earlier run finished with the same plan and whose bytes still hash to what it
    recorded (keyed by name), and the names of planned shards that are there but changed since."""
    candidates = {}
    for plan in plans:
        try:
            progress = out_dir.read_json(f"{PROGRESS_DIR}/{plan.name}.json")
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if progress.get("plan_hash") == plan.plan_hash and out_dir.size(plan.name) is not None:
            candidates[plan.name] = progress
    # hashing reads every kept shard once; threads overlap the reads (hashlib releases the GIL)
    with concurrent.futures.ThreadPoolExecutor(min(8, max(len(candidates), 1))) as pool:
        digests = dict(zip(candidates, pool.map(out_dir.sha256, candidates)))
    done = {name: progress for name, progress in candidates.items() if digests[name] == progress.get("sha256")}
    return done, sorted(set(candidates) - set(done))


def claim_output(out_dir: OutDir, spec: DatasetSpec) -> None:
    """Makes sure `out_dir` is this dataset's to write, then marks it so.

    data_prep only deletes or overwrites files it wrote itself: an output folder is accepted when it is
    new or empty, or when an earlier data_prep run of the same dataset from the same --src wrote it
    (its ``_progress/owner.json``, or for older runs its manifest, says so).

    Raises:
        DataPrepError: the folder is inside --src, holds files data_prep did not write, or holds another
            dataset's shards.
    """
    src = spec.options.get("src")
    if out_dir.is_local and src and Path(out_dir.root).resolve().is_relative_to(Path(src).resolve()):
        raise DataPrepError(
            f"--out {out_dir.uri} is inside --src {src}: a rerun would read the shards as part of the dataset "
            "(ImageNet: as a class); pass an --out outside --src"
        )
    if out_dir.is_local and os.path.exists(out_dir.root) and not os.path.isdir(out_dir.root):
        raise DataPrepError(f"--out {out_dir.uri} is a file; pass a folder (new or empty)")
    owner = {"dataset": spec.dataset, "src": src}
    names = out_dir.list()
    if names:
        recorded = None
        if out_dir.exists(OWNER_FILE):
            recorded = out_dir.read_json(OWNER_FILE)
        elif MANIFEST_NAME in names:
            try:
                manifest = out_dir.read_json(MANIFEST_NAME)
                recorded = {"dataset": manifest.get("dataset"), "src": manifest.get("created_by", {}).get("src")}
            except (json.JSONDecodeError, UnicodeDecodeError):
                recorded = None
        elif PROGRESS_DIR in names:
            recorded = owner  # an interrupted run of an older version: its shards are recorded in _progress
        if recorded is None:
            raise DataPrepError(
                f"--out {out_dir.uri} is not empty and was not written by data_prep (no {MANIFEST_NAME} or "
                f"{PROGRESS_DIR}/); data_prep never overwrites files it did not write: pass a new or empty folder"
            )
        if recorded != owner:
            raise DataPrepError(
                f"--out {out_dir.uri} holds the shards of {recorded['dataset']} from {recorded['src']}, not of "
                f"{spec.dataset} from {src}; pass another --out (or delete that folder yourself if it is no longer needed)"
            )
    out_dir.makedirs()
    out_dir.makedirs(PROGRESS_DIR)
    out_dir.write_json(OWNER_FILE, owner)


def _remove_stale(out_dir: OutDir, splits: set[str], planned: set[str]) -> None:
    """Removes partial (.tmp) shards and shards of these splits that the current plan does not have."""
    for name in out_dir.list():
        match = _SHARD_NAME.match(name)
        if match and match["split"] in splits and (name.endswith(".tmp") or name not in planned):
            out_dir.remove(name)
            out_dir.remove(f"{PROGRESS_DIR}/{name}.json")


def _build_manifest(
    spec: DatasetSpec,
    options: ShardOptions,
    plans: list[ShardPlan],
    done: dict[str, dict[str, Any]],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    skipped = list(skipped)
    splits: dict[str, dict[str, Any]] = {}
    converted: collections.Counter[str] = collections.Counter()
    for split, records in spec.splits.items():
        shards = [done[p.name] for p in plans if p.split == split]
        skipped += [entry for shard in shards for entry in shard["skipped"]]
        for shard in shards:
            converted.update(shard["converted"])
        num_samples = sum(shard["num_samples"] for shard in shards)
        num_records = len(records) + sum(entry["split"] == split for entry in spec.skipped)
        splits[split] = {
            "num_records": num_records,
            "num_samples": num_samples,
            "num_skipped": num_records - num_samples,
            "num_shards": len(shards),
            "shards": [{k: shard[k] for k in ("name", "num_samples", "sha256", "bytes")} for shard in shards],
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": spec.dataset,
        "target": spec.target,
        "num_classes": len(spec.class_names),
        "class_names": list(spec.class_names),
        "created_by": {
            "tool": "data_prep",
            "seed": options.seed,
            "shard_size": options.shard_size,
            "shard_bytes": options.shard_bytes,
            "max_side": options.max_side,
            "decode_check": options.decode_check,
            "strict": options.strict,
            **spec.options,
        },
        "splits": splits,
        "skipped": sorted(skipped, key=lambda e: (e["split"], e["key"])),
        "converted": dict(sorted(converted.items())),
        "num_converted": sum(converted.values()),
    }
    if spec.target_stats is not None:
        manifest["target_stats"] = spec.target_stats
    return manifest


def _kill_self() -> None:
    if os.getpgrp() == os.getpid():  # we lead our process group (started with start_new_session): take workers too
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _remove_tree(path: str) -> None:
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))
    os.rmdir(path)
