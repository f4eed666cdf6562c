"""The on-disk layout of runs and experiments: every folder and file name, in one place.

A training run (`pipeline.runs`) lives at `<storage>/<name>/`:

    checkpoint_epoch_NNNN/      one per saved epoch, kept by Ray Train (best and latest)
        ds/                     DeepSpeed engine state: every rank writes its own ZeRO shard
        model.pt                consolidated weights + config, loadable without DeepSpeed
        meta.json               epoch, step, best, world size, ZeRO stage
    checkpoint_manager_snapshot.json   Ray Train's record of the complete checkpoints
    job.json                    the training config the run was last launched with (a rerun compares)
    history.jsonl               one line of metrics per epoch
    eval_samples.npz            the latest epoch's per-sample evaluation outputs, by sample key (paired tests)
    mlflow_run.json             the MLflow run this run logs to (with run.mlflow)
    tensorboard/                TensorBoard event files
    resizer_grid.png            the resizer grid of the best checkpoint (learned resizers)
    stopped.txt                 why the loop ended the run early (read and removed by the driver)

A search or comparison (`pipeline.tune`) lives at `<storage>/<name>/`: `search_job.json` (the
experiment's config), Tune's `trial_<id>/` folders (params.json, result.json), the Train run of
each trial `train_<id>/` (laid out as above) and the report files.

Storage is a local folder or a URI (s3://, gs://); local paths are made absolute on the driver,
because Ray workers run in their own working directories.
"""

from __future__ import annotations

import os
import posixpath
import re

CHECKPOINT_PREFIX = "checkpoint_epoch_"
DEEPSPEED_TAG = "ds"
UNIVERSAL_TAG = "ds_universal"  # the ZeRO shards of DEEPSPEED_TAG, converted for any world size
UNIVERSAL_POINTER = "latest_universal"  # DeepSpeed's file naming UNIVERSAL_TAG
WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"
HISTORY_FILE = "history.jsonl"
EVAL_SAMPLES_FILE = "eval_samples.npz"
RUN_CONFIG_FILE = "job.json"
STOP_FILE = "stopped.txt"
TENSORBOARD_DIR = "tensorboard"
GRID_FILE = "resizer_grid.png"
RAY_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"

EXPERIMENT_FILE = "search_job.json"
TRIAL_DIR_PREFIX = "trial_"
TRIAL_RUN_PREFIX = "train_"
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"


def is_uri(path: str) -> bool:
    """A remote location (s3://, gs://, ...); `file://` and plain paths are local."""
    return "://" in path and not path.startswith("file://")


# Where a relative run.storage goes when the driver runs in Ray's package cache (`ray job submit --working-dir`).
SUBMITTED_STORAGE_ROOT = "~/learned-resizer"


def in_ray_package_cache(path: str) -> bool:
    """Whether `path` is inside a working directory Ray unpacked for a job (`.../_ray_pkg_<hash>/...`): Ray
    may evict it, and the next submission of changed code gets another one."""
    return any(part.startswith("_ray_pkg_") for part in os.path.normpath(path).split(os.sep))


def absolute_storage(storage: str) -> str:
    """A URI unchanged; a local path made absolute (Ray workers run in their own working directories).

    A relative path is taken from the working directory, except in Ray's package cache (a job submitted with
    `--working-dir`), where it goes under `~/learned-resizer/` of the driver's node: a rerun after a code change
    must find its checkpoints, and Ray may delete the cache.
    """
    if is_uri(storage):
        return storage
    path = storage.removeprefix("file://")
    if not os.path.isabs(path) and in_ray_package_cache(os.getcwd()):
        return os.path.join(os.path.expanduser(SUBMITTED_STORAGE_ROOT), os.path.normpath(path))
    return os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URI."""
    return posixpath.join(base.rstrip("/"), *parts) if is_uri(base) else os.path.join(base, *parts)


def run_dir(storage: str, name: str) -> str:
    """`<storage>/<name>`: the folder of a run or an experiment, absolute or a URI."""
    return join(absolute_storage(storage), name)


def checkpoint_dir_name(epoch: int) -> str:
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"


def preemption_checkpoint_dir_name(step: int) -> str:
    """A just-in-time checkpoint taken mid-epoch on a preemption notice."""
    return f"checkpoint_step_{step:07d}_preempted"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch of a checkpoint folder's name, or None for another name."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", os.path.basename(name.rstrip("/")))
    return int(match.group(1)) if match else None


def trial_run_name(trial_id: str) -> str:
    """The Train run of a Tune trial, inside the experiment folder."""
    return f"{TRIAL_RUN_PREFIX}{trial_id}"


def trial_dir_name(trial_id: str) -> str:
    """Tune's folder of a trial (params.json, result.json)."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"
