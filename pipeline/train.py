"""The one training loop: `train_loop_per_worker`, run by every Ray Train worker under DeepSpeed.

Same code on GPUs (NCCL, bf16) and CPUs (gloo); the device comes from Ray Train. Per epoch:
train (micro-batches, accumulation, clipping, warm-up + cosine in steps), evaluate every sample
of the eval split exactly once, report metrics, checkpoint (all ranks save their shard), log to
TensorBoard and `history.jsonl`. The shape follows Ray's DeepSpeed example: a short loop over
small helpers (`setup_model_and_engine`, `resume`, `train_one_epoch`, `evaluate`,
`report_and_save`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from pipeline.checkpoint import (
    STEP_DELAY_ENV,
    LocalMirror,
    append_history,
    reconcile_history,
    load_checkpoint,
    make_universal,
    needs_universal,
    save_checkpoint,
    saved_world_size,
    write_eval_samples,
    write_meta,
    write_stop,
)
from pipeline.config import JobConfig, OptimConfig, from_dict, to_dict
from pipeline.decode import decode_on_device
from pipeline.layout import TENSORBOARD_DIR, UNIVERSAL_POINTER, UNIVERSAL_TAG, checkpoint_dir_name, preemption_checkpoint_dir_name
from pipeline.model import build_model, param_groups
from pipeline.tasks import Task, get_task
from pipeline.tracking import MlflowLog


TRAIN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---------------------------------------------------------------- schedule and DeepSpeed config

def steps_per_epoch(num_train_samples: int, world_size: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps per epoch; the one place epochs become steps.

    Ray splits the training set equally, so each worker gets floor(N / world_size) rows; partial
    micro-batches and partial accumulation windows at the end of an epoch are not trained on.
    """
    micro_batches = (num_train_samples // world_size) // batch_size
    steps = micro_batches // grad_accum
    if steps == 0:
        raise ValueError(
            f"{num_train_samples} training samples over {world_size} workers at data.batch_size={batch_size} x "
            f"optim.grad_accum={grad_accum} give no optimizer step per epoch; lower the batch size or the workers"
        )
    return steps


def accumulation(cfg: JobConfig, world_size: int) -> int:
    """Micro-batches per optimizer step on `world_size` workers.

    An elastic run (`run.min_workers`) keeps the samples per optimizer step of `run.num_workers`
    workers (batch x accumulation x workers), so its schedule, which is counted in steps, holds
    whatever the worker count: `optim.grad_accum` x num_workers / world_size, rounded up where it does
    not divide (then a step sees a few more samples; `describe_accumulation` says so).
    """
    return max(1, math.ceil(cfg.optim.grad_accum * cfg.run.num_workers / world_size))


def describe_accumulation(cfg: JobConfig, world_size: int) -> str | None:
    """The line an elastic run prints when it trains on another worker count than `run.num_workers`."""
    if world_size == cfg.run.num_workers:
        return None
    accum = accumulation(cfg, world_size)
    planned = cfg.data.batch_size * cfg.optim.grad_accum * cfg.run.num_workers
    now = cfg.data.batch_size * accum * world_size
    line = f"training on {world_size} of {cfg.run.num_workers} workers: accumulating {accum} micro-batches per step"
    if now == planned:
        return line + f" keeps {planned} samples per optimizer step"
    return line + f": {now} samples per optimizer step instead of {planned} ({cfg.optim.grad_accum * cfg.run.num_workers} does not divide by {world_size})"


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, start_factor: float, min_factor: float) -> float:
    """Linear warm-up from `start_factor` to 1, then cosine from 1 to `min_factor`, per optimizer step."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule(NamedTuple):
    """A run's warm-up and total length in optimizer steps; read by name, never by position."""

    warmup_steps: int
    total_steps: int


def schedule(cfg: OptimConfig, num_steps_per_epoch: int) -> Schedule:
    """The warm-up and total steps of a run at `num_steps_per_epoch` (epochs become steps here)."""
    return Schedule(warmup_steps=round(cfg.warmup_epochs * num_steps_per_epoch), total_steps=cfg.epochs * num_steps_per_epoch)


def deepspeed_config(cfg: JobConfig, world_size: int, *, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON, derived from the typed config (the one source of truth).

    Args:
        load_universal: the engine resumes from a universal checkpoint (another world size wrote it).
    """
    ds = cfg.deepspeed
    accum = accumulation(cfg, world_size)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    # With offload, DeepSpeed refuses a client optimizer unless told otherwise (it wants its compiled CPU Adam);
    # torch's AdamW steps the CPU partitions (fused and vectorized with `optim.fused`).
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": cfg.data.batch_size * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {
            "enabled": ds.precision == "fp16",
            "loss_scale": 0,  # dynamic
            "initial_scale_power": ds.initial_scale_power,
        },
        "zero_allow_untested_optimizer": True,  # torch's (fused) AdamW: DeepSpeed's fused Adam needs compiled ops
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # we print our own lines
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }


# ---------------------------------------------------------------- setup

def setup_model_and_engine(
    cfg: JobConfig,
    *,
    num_outputs: int,
    world_size: int,
    warmup_steps: int,
    total_steps: int,
    output_affine: tuple[float, float] | None = None,
    load_universal: bool = False,
) -> Any:
    """Model (see `build_model`), AdamW with no-decay groups, warm-up + cosine, wrapped by DeepSpeed
    (`load_universal`: for a resume from a universal checkpoint)."""
    deepspeed = import_deepspeed()

    model = build_model(cfg.model, cfg.resizer, num_outputs, output_affine)
    # DeepSpeed casts parameters to bf16/fp16 but not buffers (Swin's attention masks): cast both here.
    model = model.to(TRAIN_DTYPES[cfg.deepspeed.precision])
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=cfg.optim.fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            start_factor=cfg.optim.warmup_start_factor,
            min_factor=cfg.optim.min_lr_factor,
        ),
    )
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # On CPUs DeepSpeed JIT-compiles a shared-memory all-reduce with g++ the first time a run starts on a
        # machine (about 40 s on 2 cores, and it needs a compiler); Ray Train's gloo group does the collectives.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size, load_universal=load_universal),
        dist_init_required=False,  # Ray Train already set up torch.distributed
    )
    if cfg.model.compile:
        engine.compile()
    return engine


@dataclass
class Worker:
    """What one worker knows about its run: config, task, place in the group, where the run lives.

    `console` is the driver's queue of console lines (`pipeline.launch.console_lines`), or None: then
    rank 0 prints them, and Ray forwards its output to the driver when the driver asked for that.
    """

    cfg: JobConfig
    task: Task
    rank: int
    world_size: int
    directory: str
    num_outputs: int
    class_names: list[str] | None
    target_stats: dict[str, float] | None = None
    console: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grad_accum(self) -> int:
        """Micro-batches per optimizer step at this world size (`accumulation`)."""
        return accumulation(self.cfg, self.world_size)

    def say(self, line: str) -> None:
        """A line for the user's console: the plan's progress, never Ray's or a library's."""
        if not self.is_main:
            return
        if self.console is not None:
            try:
                self.console.put(line)
                return
            except Exception:  # noqa: BLE001 - the console is never a reason to stop training
                self.console = None
        print(line, flush=True)


def setup_worker(config: dict[str, Any]) -> Worker:
    """Rebuilds the config from plain data, seeds, threads, and quiets library logging unless verbose."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(JobConfig, config["job"])
    context = ray.train.get_context()
    if ray.train.torch.get_device().type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    if not config.get("verbose", False):
        # Ray Train logs every report at INFO through the root logger; DeepSpeed its engine set-up.
        logging.getLogger().setLevel(logging.WARNING)
        _quiet_deepspeed()
    # Ray hands out read-only batches; the loop only reads them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.manual_seed(cfg.run.seed)
    return Worker(
        cfg=cfg,
        task=get_task(cfg.task, {"target_stats": config.get("target_stats")}),
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        directory=config["run_dir"],
        num_outputs=config["num_outputs"],
        class_names=config.get("class_names"),
        target_stats=config.get("target_stats"),
        console=config.get("console"),
    )


# ---------------------------------------------------------------- state, stops and small helpers

@dataclass
class TrainState:
    """Where training stands: the last finished epoch, optimizer steps so far, best target metric, and
    steps already trained of the next epoch (a just-in-time checkpoint's, see `PreemptionWatch`)."""

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    epoch_step: int = 0


class StopRun(Exception):
    """Ends the run on every rank without a retry: a deterministic failure would only fail again."""


def import_deepspeed() -> Any:
    """`import deepspeed`, without the `import mlflow` that its autotuner tries (`deepspeed/autotuning/autotuner.py`,
    a feature we do not use): with mlflow installed that import costs each Train worker 1.5-2 s and 1.5 CPU-s.
    The autotuner takes the ImportError as "no mlflow"; our own MLflow logging imports mlflow later, normally."""
    import sys

    if "deepspeed" not in sys.modules and "mlflow" not in sys.modules:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # any import of it raises ImportError
        try:
            import deepspeed
        finally:
            if "mlflow" in sys.modules and sys.modules["mlflow"] is None:
                del sys.modules["mlflow"]
        return deepspeed
    import deepspeed

    return deepspeed


def _quiet_deepspeed() -> None:
    import_deepspeed()
    from deepspeed.utils import logger as deepspeed_logger

    deepspeed_logger.setLevel(logging.WARNING)


def _decoded(batch: dict[str, Any], worker: Worker, device: torch.device) -> dict[str, Any]:
    """The batch with its pixels: as Ray Data made them, or (`data.decode=gpu`) decoded here on the device."""
    if worker.cfg.data.decode == "gpu":
        return decode_on_device(batch, crop_size=worker.cfg.data.crop_size, device=device)
    return batch


def _to_device(batch: dict[str, Any], columns: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("pixels", "valid", *columns):
        value = batch[name]
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        out[name] = tensor.to(device, non_blocking=True)
    return out


def _skipped(batch: dict[str, Any]) -> list[tuple[str, str]]:
    valid = np.asarray(batch["valid"], bool)
    return [(str(batch["key"][i]), str(batch["error"][i])) for i in np.flatnonzero(~valid)]


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def average_buffers(engine: Any, world_size: int) -> None:
    """Averages the floating-point buffers (batch norm running statistics) over the workers.

    Each worker updates its own running statistics from its own batches, and DeepSpeed, unlike DDP, does
    not broadcast them: without this, every worker would evaluate its share with different statistics
    and the checkpoint (rank 0's) would not be the model whose metrics were logged.
    """
    if world_size == 1:
        return
    for buffer in engine.module.buffers():
        if buffer.is_floating_point():
            torch.distributed.all_reduce(buffer)
            buffer.div_(world_size)


def _gather(obj: Any, world_size: int) -> list[Any]:
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _strict_message(epoch: int, skipped: list[tuple[str, str]]) -> str:
    return (
        f"data.strict=true: undecodable samples at epoch {epoch}: {skipped}. Fix or drop them "
        "(python -m data_prep verify), or set data.strict=false to skip and count them"
    )


def _stop_run(worker: Worker, message: str, state: TrainState, epoch: int) -> None:
    """Records why the run ends (the driver raises it, see `pipeline.runs.run`) and tells Ray."""
    import ray.train

    worker.say(message)
    if worker.is_main:
        write_stop(worker.directory, message)
    ray.train.report({"epoch": epoch, "step": state.step, "error": message})


# ---------------------------------------------------------------- resume

@contextlib.contextmanager
def latest_checkpoint() -> Iterator[str | None]:
    """The folder of the run's latest checkpoint, if Ray Train has one (downloaded when the storage is remote)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield directory


def prepare_universal(directory: str, worker: Worker) -> None:
    """Converts a checkpoint written by another number of workers to a universal one, once.

    Rank 0 converts (all ranks read its folder when the storage is shared); a worker whose copy was
    downloaded separately (remote storage) converts its own copy. Rank 0 then uploads the conversion
    beside the checkpoint, so a later resume reuses it.
    """
    import ray.train

    saved = saved_world_size(directory)
    if worker.is_main:
        started = time.perf_counter()
        if make_universal(directory):
            worker.say(
                f"the checkpoint was written by {saved} workers, this attempt has {worker.world_size}: converted its "
                f"ZeRO-{worker.cfg.deepspeed.zero_stage} shards to a universal checkpoint in {time.perf_counter() - started:.1f} s"
            )
            _upload_universal(ray.train.get_checkpoint(), directory)
    torch.distributed.barrier()
    if not worker.is_main:
        make_universal(directory)  # a no-op on rank 0's folder; converts a separately downloaded copy
    torch.distributed.barrier()


def _upload_universal(checkpoint: Any, directory: str) -> None:
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return  # converted in place
    for name in (UNIVERSAL_TAG, UNIVERSAL_POINTER):
        source = os.path.join(directory, name)
        target = f"{checkpoint.path.rstrip('/')}/{name}"
        if os.path.isdir(source):
            pyarrow.fs.copy_files(source, target, destination_filesystem=checkpoint.filesystem)
        else:
            with open(source, "rb") as f, checkpoint.filesystem.open_output_stream(target) as out:
                out.write(f.read())


def resume(engine: Any, worker: Worker, directory: str | None, *, universal: bool) -> TrainState:
    """Loads the latest checkpoint into the engine (every rank its ZeRO shard, or the universal
    checkpoint when another world size wrote it); a new run starts at epoch 0."""
    if directory is None:
        if worker.is_main:
            reconcile_history(worker.directory, through_epoch=0)  # an attempt that never checkpointed
        return TrainState()
    saved_state = load_checkpoint(engine, directory, universal=universal)
    state = TrainState(
        epoch=saved_state["epoch"], step=saved_state["step"], best=saved_state.get("best", -math.inf),
        epoch_step=saved_state.get("epoch_step", 0),
    )
    if worker.is_main:
        reconcile_history(worker.directory, through_epoch=state.epoch)
    within = f", {state.epoch_step} steps into epoch {state.epoch + 1}" if state.epoch_step else ""
    worker.say(
        f"resumed from epoch {state.epoch} (step {state.step}{within})" + (f" on {worker.world_size} workers" if universal else "")
    )
    return state


# ---------------------------------------------------------------- one epoch

@dataclass
class EpochTrain:
    """One epoch of training on this worker."""

    loss_sum: float = 0.0
    num_images: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def train_one_epoch(
    engine: Any,
    data: Any,
    worker: Worker,
    state: TrainState,
    *,
    epoch: int,
    num_steps: int,
    writer: Any,
    done: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> EpochTrain:
    """Micro-batches with accumulation; advances `state.step`. Every worker runs the same number of
    micro-batches and drains the rest of its split, so the ranks end the epoch together.

    Args:
        done: steps of this epoch trained before a just-in-time checkpoint; the epoch trains the rest
            (on freshly shuffled data: which samples the rest sees is not what the lost attempt saw).
        on_step: called after every optimizer step with the steps done in this epoch.

    Raises:
        StopRun: a non-finite loss, or (data.strict) an undecodable sample on any rank.
    """
    cfg, task = worker.cfg, worker.task
    engine.train()
    out = EpochTrain()
    started = time.perf_counter()
    micro_batches = (num_steps - done) * worker.grad_accum
    step_delay = float(os.environ.get(STEP_DELAY_ENV, "0"))
    micro_step = 0
    batches = data.iter_batches(
        batch_size=cfg.data.batch_size, batch_format="numpy", local_shuffle_buffer_size=cfg.data.shuffle_buffer or None
    )
    for batch in batches:
        batch = _decoded(batch, worker, engine.device)
        out.skipped += _skipped(batch)  # counted even in the tail that is not trained on
        if micro_step == micro_batches:
            continue
        micro_step += 1
        tensors = _to_device(batch, task.columns, engine.device)
        logits = engine(tensors["pixels"])  # (B, num_outputs)
        valid = tensors["valid"].to(logits.dtype)
        # Undecodable rows stay in the batch as zeros (fixed shapes, lockstep ranks) with no weight.
        loss = (task.loss(logits, tensors) * valid).sum() / valid.sum().clamp(min=1)
        _check_loss_and_data(loss, batch, out.skipped, worker, engine, epoch=epoch, step=state.step, micro_step=micro_step)
        engine.backward(loss)
        engine.step()  # steps optimizer and scheduler at accumulation boundaries
        if micro_step % worker.grad_accum == 0:
            state.step += 1
            if writer is not None and cfg.run.log_every and state.step % cfg.run.log_every == 0:
                writer.add_scalar("train/loss_step", loss.item(), state.step)
                worker.say(f"epoch {epoch} step {state.step}: loss {loss.item():.4f}")
            time.sleep(step_delay)
            if on_step is not None:
                on_step(done + micro_step // worker.grad_accum)
        out.loss_sum += float(loss.detach()) * int(batch["valid"].sum())
        out.num_images += int(batch["valid"].sum())
    out.seconds = time.perf_counter() - started
    return out


def _check_loss_and_data(
    loss: torch.Tensor, batch: dict[str, Any], skipped: list, worker: Worker, engine: Any, *, epoch: int, step: int, micro_step: int
) -> None:
    """Stops every rank together on a non-finite loss anywhere, or a skipped sample under data.strict."""
    num_finite, num_skipped = _all_reduce_sum(
        [float(torch.isfinite(loss)), float(len(skipped) if worker.cfg.data.strict else 0)], engine.device
    )
    if num_skipped:
        raise StopRun(_strict_message(epoch, [s for rank in _gather(skipped, worker.world_size) for s in rank]))
    if num_finite != worker.world_size:
        keys = [str(k) for k in batch["key"]] if not torch.isfinite(loss) else []
        bad_keys = [k for rank in _gather(keys, worker.world_size) for k in rank]
        raise StopRun(
            f"non-finite loss at epoch {epoch}, step {step} (micro-batch {micro_step}); batch keys: {bad_keys}. "
            "Lower optim.lr, check the data, or use deepspeed.precision=bf16/fp32"
        )


@dataclass
class EpochEval:
    """One evaluation on this worker: the task's per-sample outputs and the skipped samples."""

    outputs: dict[str, np.ndarray]
    skipped: list[tuple[str, str]]


def evaluate(engine: Any, data: Any, worker: Worker) -> EpochEval:
    """Every sample of this worker's unequal share of the eval split, once."""
    engine.eval()
    outputs: dict[str, list[np.ndarray]] = {}
    skipped: list[tuple[str, str]] = []
    with torch.no_grad():
        for batch in data.iter_batches(batch_size=worker.cfg.data.batch_size, batch_format="numpy"):
            batch = _decoded(batch, worker, engine.device)
            skipped += _skipped(batch)
            tensors = _to_device(batch, worker.task.columns, engine.device)
            keep = tensors["valid"]
            logits = engine(tensors["pixels"])
            kept = {k: v[keep] for k, v in tensors.items()}
            for name, value in worker.task.eval_outputs(logits[keep], kept).items():
                outputs.setdefault(name, []).append(value)
            outputs.setdefault("key", []).append(np.asarray(batch["key"])[np.asarray(batch["valid"], bool)].astype(str))
    return EpochEval({k: np.concatenate(v) for k, v in outputs.items()}, skipped)


@dataclass
class EpochResult:
    """An epoch's metrics over all workers, and every sample skipped anywhere in it."""

    metrics: dict[str, Any]
    skipped: list[tuple[str, str]]
    is_best: bool
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # per evaluated sample: key and the task's outputs


def epoch_result(engine: Any, worker: Worker, state: TrainState, trained: EpochTrain, evaluated: EpochEval, *, epoch: int) -> EpochResult:
    """Sums the training figures and gathers the evaluation outputs across workers; updates `state.best`.

    Raises:
        StopRun: data.strict and a sample was skipped outside the trained steps.
    """
    task = worker.task
    loss_sum, num_images, _ = _all_reduce_sum([trained.loss_sum, trained.num_images, len(trained.skipped)], engine.device)
    gathered: list[tuple[dict[str, np.ndarray], list, list]] = _gather(
        (evaluated.outputs, trained.skipped, evaluated.skipped), worker.world_size
    )
    names = sorted({name for outputs, _, _ in gathered for name in outputs})
    merged = {n: np.concatenate([outputs[n] for outputs, _, _ in gathered if n in outputs]) for n in names}
    train_skipped = [s for _, rank_skipped, _ in gathered for s in rank_skipped]
    eval_skipped = [s for _, _, rank_skipped in gathered for s in rank_skipped]
    if worker.cfg.data.strict and (train_skipped or eval_skipped):
        raise StopRun(_strict_message(epoch, train_skipped + eval_skipped))
    metrics = {
        "epoch": epoch,
        "step": state.step,
        "train_loss": loss_sum / max(1.0, num_images),
        "lr": engine.get_lr()[0],
        "images_per_second": num_images / trained.seconds,
        "skipped_train": len(train_skipped),
        "skipped_eval": len(eval_skipped),
        "num_eval_samples": len(merged["loss"]) if merged else 0,
        **task.eval_metrics({k: v for k, v in merged.items() if k != "key"}),
    }
    score = metrics[task.target_metric] * (1 if task.mode == "max" else -1)
    is_best = score > state.best
    state.best = max(state.best, score)
    metrics["best_" + task.target_metric] = state.best * (1 if task.mode == "max" else -1)
    return EpochResult(metrics, train_skipped + eval_skipped, is_best, merged)


# ---------------------------------------------------------------- log, report and save

class EpochLog:
    """Rank 0's console line, TensorBoard scalars, `history.jsonl` record and MLflow metrics of each epoch."""

    def __init__(self, worker: Worker, state: TrainState) -> None:
        self.worker = worker
        self.writer = None
        if worker.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = LocalMirror(worker.directory, TENSORBOARD_DIR)
            self.writer = SummaryWriter(self.tensorboard.local, purge_step=state.step or None)
            self.mlflow = MlflowLog(worker.cfg, worker.directory)

    def write(self, result: EpochResult) -> None:
        if self.writer is None:
            return
        metrics, cfg, task, say = result.metrics, self.worker.cfg, self.worker.task, self.worker.say
        say(
            f"epoch {metrics['epoch']}/{cfg.optim.epochs}  step {metrics['step']}  loss {metrics['train_loss']:.4f}  "
            + "  ".join(f"{k} {metrics[k]:.4f}" for k in task.metric_names)
            + f"  lr {metrics['lr']:.2e}  {metrics['images_per_second']:.1f} img/s"
            + f"  skipped {metrics['skipped_train']}+{metrics['skipped_eval']}"
        )
        for key, reason in result.skipped:
            say(f"  skipped {key}: {reason}")
        for name, value in metrics.items():
            self.writer.add_scalar(f"epoch/{name}", value, metrics["step"])
        self.writer.flush()
        self.tensorboard.sync()
        self.mlflow.log_epoch(metrics)
        append_history(self.worker.directory, {**metrics, "skipped": [list(s) for s in result.skipped]})
        write_eval_samples(self.worker.directory, result.samples, epoch=metrics["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.tensorboard.close()
            self.mlflow.close()


def report_and_save(engine: Any, worker: Worker, state: TrainState, result: EpochResult) -> None:
    """Reports the epoch to Ray; on a checkpoint epoch (every `run.checkpoint_every`, the last, a new
    best) every rank first saves its shard, rank 0 the consolidated weights and `meta.json`."""
    import ray.train

    cfg, epoch = worker.cfg, result.metrics["epoch"]
    if not (epoch % cfg.run.checkpoint_every == 0 or epoch == cfg.optim.epochs or result.is_best):
        ray.train.report(result.metrics)
        return
    worker.say(f"saving checkpoint of epoch {epoch} (step {state.step})")
    blocked = save_and_report(
        engine, worker, result.metrics, client_state={"epoch": epoch, "step": state.step, "best": state.best},
        name=checkpoint_dir_name(epoch), upload=cfg.run.checkpoint_upload,
    )
    background = " (uploading in the background)" if cfg.run.checkpoint_upload == "async" else ""
    worker.say(f"saved checkpoint of epoch {epoch}: training waited {blocked:.2f} s{background}")


STAGING_PREFIX = "learned-resizer-checkpoint-"


def local_checkpoint_folder() -> str:
    """A new folder in the node's temporary space where a worker writes its checkpoint before Ray Train
    uploads it. Named after the worker's pid: folders left by workers that died mid-save or mid-upload
    (a killed node's are gone with it; a killed worker's stay) are removed here by the next save on the
    node, so they do not pile up at gigabytes each."""
    import psutil

    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{STAGING_PREFIX}*")):
        owner = os.path.basename(folder).removeprefix(STAGING_PREFIX).split("-")[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")


def save_and_report(
    engine: Any, worker: Worker, metrics: dict[str, Any], *, client_state: dict[str, Any], name: str, upload: str = "sync"
) -> float:
    """Every rank saves its shard into a local folder, rank 0 the consolidated weights and `meta.json`;
    Ray Train uploads them as one checkpoint `name` of the run, before this returns ("sync") or in the
    background ("async", the local folder is deleted after the upload). Returns the seconds training waited."""
    import ray.train

    started = time.perf_counter()
    cfg = worker.cfg
    tmp = local_checkpoint_folder()
    weights_meta = {
        "config": to_dict(cfg), "num_outputs": worker.num_outputs, "class_names": worker.class_names,
        "target_stats": worker.target_stats,
    }
    save_checkpoint(engine, tmp, client_state=client_state, weights_meta=weights_meta)
    if worker.is_main:
        write_meta(tmp, {**client_state, "world_size": worker.world_size, "zero_stage": cfg.deepspeed.zero_stage})
    checkpoint = ray.train.Checkpoint.from_directory(tmp)
    if upload == "async":
        ray.train.report(
            metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC, delete_local_checkpoint_after_upload=True,
        )
    else:
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - started


class PreemptionWatch:
    """Asks Ray Train every `run.preemption_check_every` steps whether a node of the run has a preemption
    notice; on the first, every worker saves a just-in-time checkpoint mid-epoch and training goes on
    until the node goes. The restart (on the nodes left, elastic runs) resumes from that checkpoint.

    Every rank asks at the same steps: Ray Train agrees on one answer across the workers.
    """

    def __init__(self, engine: Any, worker: Worker, state: TrainState) -> None:
        self.engine, self.worker, self.state = engine, worker, state
        self.saved = False

    def __call__(self, epoch: int, epoch_step: int) -> None:
        import ray.train

        every = self.worker.cfg.run.preemption_check_every
        if self.saved or not every or self.state.step % every:
            return
        notice = ray.train.get_preemption_info()
        if notice is None:
            return
        self.saved = True
        seconds = max(0.0, notice.deadline_ms / 1000 - time.time()) if notice.deadline_ms else float("nan")
        self.worker.say(
            f"preemption notice for node(s) {', '.join(n[:12] for n in notice.preempted_node_ids)} (workers "
            f"{notice.preempted_ranks}, {seconds:.0f} s left): saving a checkpoint at step {self.state.step}, "
            f"{epoch_step} steps into epoch {epoch}"
        )
        task = self.worker.task
        save_and_report(
            self.engine, self.worker,
            # NaN ranks last under either mode: Ray keeps it as the latest checkpoint, never as the best
            {"epoch": epoch - 1, "step": self.state.step, task.target_metric: float("nan"), "preemption_checkpoint": True},
            client_state={"epoch": epoch - 1, "step": self.state.step, "best": self.state.best, "epoch_step": epoch_step},
            name=preemption_checkpoint_dir_name(self.state.step),
        )


# ---------------------------------------------------------------- the loop

def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every worker. `config` is plain data: {"job": to_dict(JobConfig), "run_dir",
    "num_outputs", "num_train_samples", "class_names", "target_stats", "verbose", "console"} (console: a queue handle or None)."""
    import ray.train

    worker = setup_worker(config)
    cfg = worker.cfg
    num_steps = steps_per_epoch(config["num_train_samples"], worker.world_size, cfg.data.batch_size, worker.grad_accum)
    # The schedule is the one of run.num_workers workers, whatever this attempt of an elastic run got.
    steps = schedule(
        cfg.optim, steps_per_epoch(config["num_train_samples"], cfg.run.num_workers, cfg.data.batch_size, cfg.optim.grad_accum)
    )
    if note := describe_accumulation(cfg, worker.world_size):
        worker.say(note)
    with latest_checkpoint() as directory:
        universal = directory is not None and needs_universal(directory, worker.world_size)
        if universal:
            prepare_universal(directory, worker)
        engine = setup_model_and_engine(
            cfg, num_outputs=worker.num_outputs, world_size=worker.world_size,
            warmup_steps=steps.warmup_steps, total_steps=steps.total_steps, output_affine=worker.task.output_affine(),
            load_universal=universal,
        )
        state = resume(engine, worker, directory, universal=universal)
    log = EpochLog(worker, state)
    train_data, eval_data = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("eval")
    watch = PreemptionWatch(engine, worker, state) if config.get("preemption_checkpoints", True) else None
    epoch = state.epoch
    try:
        for epoch in range(state.epoch + 1, cfg.optim.epochs + 1):
            trained = train_one_epoch(
                engine, train_data, worker, state, epoch=epoch, num_steps=num_steps, writer=log.writer,
                done=state.epoch_step if epoch == state.epoch + 1 else 0,
                on_step=(lambda done, epoch=epoch: watch(epoch, done)) if watch else None,
            )
            average_buffers(engine, worker.world_size)  # what is evaluated is what is saved
            evaluated = evaluate(engine, eval_data, worker)
            result = epoch_result(engine, worker, state, trained, evaluated, epoch=epoch)
            log.write(result)
            report_and_save(engine, worker, state, result)
    except StopRun as stop:
        _stop_run(worker, str(stop), state, epoch)
    finally:
        log.close()
