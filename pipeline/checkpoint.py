"""Checkpoints: DeepSpeed shards for resuming, plus one consolidated weights file for using; the run's files.

A checkpoint directory (one per saved epoch, kept by Ray Train under `<storage>/<name>/`; names in
`pipeline.layout`) holds:

    ds/                      DeepSpeed engine state: every rank writes its own ZeRO shard
    latest                   DeepSpeed's pointer to `ds`
    ds_universal/            only after a resume on another worker count: `ds` converted once to
                             DeepSpeed's universal checkpoint (one file per parameter and state),
                             which loads into any number of workers and is reused by later resumes
    model.pt                 rank 0: {"config", "num_outputs", "class_names", "target_stats", "epoch", "step", "state_dict"}
                             fp32 master weights of resizer + backbone, loadable without DeepSpeed
    model.safetensors        the same weights, tensors only; `model.json` beside it holds the rest
    meta.json                epoch, step, best, world size, ZeRO stage (read without DeepSpeed)

Run files beside the checkpoints: `tensorboard/`, `history.jsonl` (one line of metrics per epoch),
`eval_samples.npz` (the latest epoch's per-sample evaluation outputs) and `stopped.txt` while a
deliberate stop of the loop has not reached the driver.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import posixpath
import shutil
import tempfile
import time
from typing import Any

import torch

from pipeline.layout import (
    DEEPSPEED_TAG,
    UNIVERSAL_POINTER,
    UNIVERSAL_TAG,
    EVAL_SAMPLES_FILE,
    HISTORY_FILE,
    META_FILE,
    RAY_CHECKPOINT_SNAPSHOT,
    STOP_FILE,
    WEIGHTS_FILE,
    is_uri,
    join,
)
from pipeline.storage import filesystem

SAVE_DELAY_ENV = "LEARNED_RESIZER_TEST_SAVE_DELAY_S"
STEP_DELAY_ENV = "LEARNED_RESIZER_TEST_STEP_DELAY_S"  # the cluster tests' hook: slower steps, a window to act in
TEST_HOOKS = (SAVE_DELAY_ENV, STEP_DELAY_ENV)


def save_checkpoint(engine: Any, directory: str, *, client_state: dict[str, Any], weights_meta: dict[str, Any]) -> None:
    """Saves the engine on every rank (each its own ZeRO shard) and the consolidated weights on rank 0.

    Must be called on every rank: ZeRO-3 gathers the weights collectively.
    """
    engine.save_checkpoint(directory, tag=DEEPSPEED_TAG, client_state=client_state)
    # Fault-injection hook for tests/test_fault_tolerance.py: widens the window in which a kill lands mid-save.
    time.sleep(float(os.environ.get(SAVE_DELAY_ENV, "0")))
    weights = master_weights(engine)  # collective
    if engine.global_rank == 0:
        from pipeline.trained import write_safetensors

        meta = {**weights_meta, **client_state}
        torch.save({**meta, "state_dict": weights}, os.path.join(directory, WEIGHTS_FILE))
        write_safetensors(directory, weights, meta)


def master_weights(engine: Any) -> dict[str, torch.Tensor]:
    """The model's full state dict on rank 0 (empty elsewhere), parameters as DeepSpeed's fp32 master
    copies: in a bf16 or fp16 run the module holds rounded weights, the optimizer the ones it updates.

    Must be called on every rank: gathering a parameter is a collective under every ZeRO stage.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    if engine.zero_optimization_stage() == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective; buffers and names on rank 0
    else:
        state_dict = engine.module.state_dict()
    masters = {}
    for name, param in engine.module.named_parameters():  # the same order on every rank
        full = safe_get_full_fp32_param(param)
        if full is not None:
            masters[name] = full
    if engine.global_rank != 0:
        return {}
    state_dict = {**state_dict, **{k: v for k, v in masters.items() if k in state_dict}}
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in state_dict.items()}


def load_checkpoint(engine: Any, directory: str, *, universal: bool = False) -> dict[str, Any]:
    """Loads the checkpoint into the engine (with `weights_only_engine`); returns the client state saved with it.

    Args:
        universal: load the universal checkpoint made by `make_universal` (the engine was built with
            `deepspeed_config(..., load_universal=True)`): any world size. Else every rank loads its own
            ZeRO shard, which needs the world size that wrote them.

    Raises:
        ValueError: DeepSpeed found no checkpoint.
        pickle.UnpicklingError: a shard holds something other than tensors and DeepSpeed's plain state.
    """
    engine.checkpoint_engine = weights_only_engine(engine._config)
    tag = UNIVERSAL_TAG if universal else DEEPSPEED_TAG
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # torch's AdamW inside ZeRO's wrapper
    groups = optimizer.param_groups
    settings = [{k: v for k, v in group.items() if k != "params"} for group in groups]
    _, client_state = engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client_state is None:
        raise ValueError(f"{directory}: DeepSpeed found no checkpoint under tag {tag!r}")
    if universal:
        # Two defects of DeepSpeed 0.19's universal load under ZeRO-3 (tests/pipeline/test_elastic.py):
        # every parameter group gets the first group's settings (weight decay on the no-decay groups, the
        # backbone's learning rate on the resizer): the groups are ours (`pipeline.model.param_groups`), their
        # learning rates the schedule's. And every group's Adam state shares one `step` tensor, which AdamW
        # then advances once per group per step, skewing the bias correction: each gets its own again, as the
        # kernel wants it (the fused one: float32 on the parameter's device, as torch's own load_state_dict casts it).
        for group, setting, lr in zip(groups, settings, engine.lr_scheduler.get_last_lr()):
            group.update({**setting, "lr": lr})
        fused = bool(optimizer.defaults.get("fused"))
        for param, state in optimizer.state.items():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.to(param.device, torch.float32, copy=True) if fused else step.clone()
        _load_buffers(engine, os.path.join(directory, UNIVERSAL_TAG))
    return client_state


def needs_universal(directory: str, world_size: int) -> bool:
    """Whether a checkpoint's ZeRO shards were written by another number of workers than `world_size`."""
    saved = saved_world_size(directory)
    return saved is not None and saved != world_size


def make_universal(directory: str) -> bool:
    """Converts the checkpoint's ZeRO shards (`ds/`) to a universal checkpoint in `ds_universal/`, once:
    an existing conversion is reused. Written under a temporary name and renamed, so a kill mid-way
    leaves no half conversion that a later resume would load. Returns whether it converted.

    Runs on one process per copy of the checkpoint (rank 0 when all workers read the same folder).
    """
    target = os.path.join(directory, UNIVERSAL_TAG)
    if os.path.isdir(target):
        return False
    partial = f"{target}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        _convert(directory, partial)
    os.replace(partial, target)
    with open(os.path.join(directory, UNIVERSAL_POINTER), "w") as f:  # DeepSpeed's pointer, as it writes it
        f.write(UNIVERSAL_TAG)
    return True


def _convert(directory: str, output: str) -> None:
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    ds_to_universal(argparse.Namespace(
        input_folder=os.path.join(directory, DEEPSPEED_TAG),
        output_folder=output,
        # In this process: a pool would fork it (a Train worker, holding torch's threads). Forked from a process
        # that had spawned ranks, a pool hung at Swin-L size; from a fresh process, 2 workers took 16.7 s against
        # 13-19 s in-process (docs/results.md#resume-on-another-worker-count).
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 shards lack the universal info DeepSpeed needs; it is derived
    ))


def _load_buffers(engine: Any, universal_dir: str) -> None:
    """Batch-norm statistics and other buffers: a universal load restores parameters and optimizer state
    only; the model-states file of the conversion holds every buffer in full, under every ZeRO stage."""
    import glob

    files = sorted(glob.glob(os.path.join(universal_dir, "*model_states.pt")))
    if not files:
        raise ValueError(f"{universal_dir}: no model states file; delete the folder to convert again")
    module = engine.checkpoint_engine.load(files[0], map_location="cpu")["module"]
    with torch.no_grad():
        for name, buffer in engine.module.named_buffers():
            if name in module:
                buffer.copy_(module[name].to(buffer.device, buffer.dtype))


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed pickles into its ZeRO shards besides tensors and builtins: found with
    `torch.serialization.get_unsafe_globals_in_checkpoint`; every shard of the ZeRO-1 fp32, ZeRO-2 fp32 and
    ZeRO-3 bf16 runs of tests/pipeline/test_train.py loads with them. fp16 (GPU) adds the dynamic loss scaler."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_only_engine(config: Any = None) -> Any:
    """A DeepSpeed checkpoint engine that loads with `torch.load(weights_only=True)`.

    DeepSpeed's own engine loads shards with `weights_only=False`: a pickle can run any code, so whoever
    can write to the run's storage (a shared bucket) would run code on every node that resumes. This one
    unpickles tensors, builtins and `deepspeed_safe_globals()` only, and refuses anything else.
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return WeightsOnlyCheckpointEngine(config)


def checkpoint_score(metrics: dict[str, Any], task: Any) -> float:
    """How good a checkpoint is by the task's target metric, higher better under either mode; -inf when it
    has none or NaN (a just-in-time checkpoint taken on a preemption notice is never the best)."""
    value = float(metrics.get(task.target_metric, math.nan)) * (1.0 if task.mode == "max" else -1.0)
    return -math.inf if math.isnan(value) else value


def saved_world_size(directory: str) -> int | None:
    """World size recorded in a checkpoint's `meta.json` (read without DeepSpeed)."""
    meta_path = os.path.join(directory, META_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return int(json.load(f)["world_size"])
    return None


def latest_checkpoint_meta(run_directory: str) -> dict[str, Any] | None:
    """`meta.json` of the checkpoint a rerun of this run would resume from, or None.

    Ray Train records the latest complete checkpoint in its snapshot only after the upload finished,
    so a checkpoint interrupted mid-write is never the one resumed from.
    """
    fs, path = filesystem(run_directory)
    snapshot = posixpath.join(path, RAY_CHECKPOINT_SNAPSHOT)
    if not fs.exists(snapshot):
        return None
    latest = json.loads(fs.cat_file(snapshot)).get("latest_checkpoint_result")
    if not latest:
        return None
    meta = posixpath.join(path, latest["checkpoint_dir_name"], META_FILE)
    return {"checkpoint": latest["checkpoint_dir_name"], **json.loads(fs.cat_file(meta))} if fs.exists(meta) else None


def write_meta(directory: str, meta: dict[str, Any]) -> None:
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_weights(path: str) -> dict[str, Any]:
    """Reads `model.pt` from a checkpoint directory (or the file itself), local or a URI."""
    if is_uri(path):
        fs, target = filesystem(path)
        if fs.isdir(target):
            target = posixpath.join(target, WEIGHTS_FILE)
        if not fs.isfile(target):
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}; give a checkpoint folder written by a training run")
        return torch.load(io.BytesIO(fs.cat_file(target)), map_location="cpu", weights_only=True)
    if os.path.isdir(path):
        path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}; give a checkpoint folder written by a training run")
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no code runs


def append_history(directory: str, record: dict[str, Any]) -> None:
    """Adds one epoch's metrics to `<run dir>/history.jsonl` (local or URI), replacing any record of that
    epoch or a later one (what a rerun of those epochs supersedes). The file is rewritten whole and
    atomically, so an exception or a kill mid-write leaves the previous version, never an empty file."""
    kept = [r for r in read_history(directory) if r["epoch"] < record["epoch"]]
    _write_history(directory, [*kept, record])


def reconcile_history(directory: str, *, through_epoch: int) -> int:
    """Keeps one record per epoch up to `through_epoch`, the epoch of the checkpoint a run resumes from
    (0 for a run that starts over): epochs of an abandoned attempt that no kept checkpoint covers, and
    duplicates left by a crash between the record and its checkpoint, go. Returns the records dropped."""
    fs, path = filesystem(directory)
    target = posixpath.join(path, HISTORY_FILE)
    if not fs.exists(target):
        return 0
    lines = [line for line in fs.cat_file(target).decode().splitlines() if line.strip()]
    kept = [r for r in read_history(directory) if r["epoch"] <= through_epoch]
    if len(kept) != len(lines):
        _write_history(directory, kept)
    return len(lines) - len(kept)


def _write_history(directory: str, records: list[dict[str, Any]]) -> None:
    fs, path = filesystem(directory)
    fs.makedirs(path, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    target = posixpath.join(path, HISTORY_FILE)
    if is_uri(directory):
        fs.pipe_file(target, data)  # one object PUT: readers see the old or the new object, never a part
        return
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def read_history(directory: str) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run, one record per epoch; the last record of an epoch wins."""
    fs, path = filesystem(directory)
    target = posixpath.join(path, HISTORY_FILE)
    if not fs.exists(target):
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in fs.cat_file(target).decode().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_eval_samples(directory: str, samples: dict[str, Any], *, epoch: int) -> None:
    """`<run dir>/eval_samples.npz`: the epoch's per-sample evaluation outputs (the task's `eval_outputs`) and
    each sample's key, replacing the previous epoch's; what paired comparisons between runs read."""
    import io

    import numpy as np

    if not samples:
        return
    buffer = io.BytesIO()
    np.savez(buffer, epoch=np.int64(epoch), **samples)
    fs, path = filesystem(directory)
    target = posixpath.join(path, EVAL_SAMPLES_FILE)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(target + ".tmp", buffer.getvalue())
    fs.mv(target + ".tmp", target)


def read_eval_samples(directory: str) -> dict[str, Any] | None:
    """The per-sample evaluation outputs a run last wrote (`write_eval_samples`), or None."""
    import io

    import numpy as np

    fs, path = filesystem(directory)
    target = posixpath.join(path, EVAL_SAMPLES_FILE)
    if not fs.exists(target):
        return None
    with np.load(io.BytesIO(fs.cat_file(target)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_stop(directory: str, message: str) -> None:
    """Records why the loop ended the run (Ray's result only carries checkpointed metrics)."""
    fs, path = filesystem(directory)
    fs.makedirs(path, exist_ok=True)
    with fs.open(posixpath.join(path, STOP_FILE), "w") as f:
        f.write(message)


def pop_stop(directory: str) -> str | None:
    """The reason the loop ended the run early, if it did; removes the record."""
    fs, path = filesystem(directory)
    target = posixpath.join(path, STOP_FILE)
    if not fs.exists(target):
        return None
    message = fs.cat_file(target).decode()
    fs.rm(target)
    return message


class LocalMirror:
    """A local folder mirrored to `<run dir>/<name>`: TensorBoard writes locally, uploads per epoch."""

    def __init__(self, run_directory: str, name: str) -> None:
        self.target = join(run_directory, name)
        self.local = tempfile.mkdtemp(prefix=f"{name}-") if is_uri(run_directory) else self.target
        os.makedirs(self.local, exist_ok=True)

    def sync(self) -> None:
        if self.local != self.target:
            fs, path = filesystem(self.target)
            fs.put(self.local.rstrip("/") + "/", path, recursive=True)

    def close(self) -> None:
        self.sync()
        if self.local != self.target:
            shutil.rmtree(self.local, ignore_errors=True)
