"""The one training loop: `train_loop_per_worker`, run by every Ray Train worker under DeepSpeed.

Same code on GPUs (NCCL, bf16) and CPUs (gloo); the device comes from Ray Train. Per epoch:
train (micro-batches, accumulation, clipping, warm-up + cosine in steps), evaluate every sample
of the eval split exactly once, report metrics, checkpoint (all ranks save their shard), log to
TensorBoard and `history.jsonl`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import (
    LocalMirror,
    append_history,
    load_checkpoint,
    run_dir,
    save_checkpoint,
    saved_world_size,
    write_meta,
    write_stop,
)
from pipeline.config import JobConfig, OptimConfig, from_dict, to_dict
from pipeline.model import build_model, param_groups
from pipeline.tasks import get_task


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


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, start_factor: float, min_factor: float) -> float:
    """Linear warm-up from `start_factor` to 1, then cosine from 1 to `min_factor`, per optimizer step."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule(cfg: OptimConfig, num_steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, total steps) of a run."""
    return round(cfg.warmup_epochs * num_steps_per_epoch), cfg.epochs * num_steps_per_epoch


def deepspeed_config(cfg: JobConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON, derived from the typed config (the one source of truth)."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {
            "enabled": ds.precision == "fp16",
            "loss_scale": 0,  # dynamic
            "initial_scale_power": ds.initial_scale_power,
        },
        "zero_allow_untested_optimizer": True,  # torch's AdamW: DeepSpeed's fused Adam needs compiled ops
        "steps_per_print": 2**31 - 1,  # we print our own lines
        "wall_clock_breakdown": False,
    }


# ---------------------------------------------------------------- helpers

def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("pixels", "label", "scores", "valid"):
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


def _gather(obj: Any, world_size: int) -> list[Any]:
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _strict_message(epoch: int, skipped: list[tuple[str, str]]) -> str:
    return (
        f"data.strict=true: undecodable samples at epoch {epoch}: {skipped}. Fix or drop them "
        "(python -m data_prep verify), or set data.strict=false to skip and count them"
    )


def _stop_run(message: str, *, epoch: int, step: int, is_main: bool, directory: str) -> None:
    """Ends the run on every rank without a retry: a deterministic failure would only fail again.

    The driver raises `message` (see `pipeline.launch.launch`).
    """
    import ray.train

    if is_main:
        print(message, flush=True)
        write_stop(directory, message)
    ray.train.report({"epoch": epoch, "step": step, "error": message})


def setup_model_and_engine(cfg: JobConfig, num_outputs: int, world_size: int, total_steps: int, warmup_steps: int):
    """Model, AdamW with no-decay groups, warm-up + cosine, wrapped by DeepSpeed."""
    import deepspeed

    model = build_model(cfg.model, cfg.resizer, num_outputs)
    # DeepSpeed casts parameters to bf16/fp16 but not buffers (Swin's attention masks): cast both here.
    model = model.to(TRAIN_DTYPES[cfg.deepspeed.precision])
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps
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
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size),
        dist_init_required=False,  # Ray Train already set up torch.distributed
    )
    return engine


# ---------------------------------------------------------------- the loop

def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every worker. `config` is plain data: {"job": to_dict(JobConfig), "num_outputs",
    "num_train_samples", "class_names"}."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(JobConfig, config["job"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.run.seed)
    task = get_task(cfg.task)
    is_main = rank == 0
    directory = run_dir(cfg.run.storage, cfg.run.name)

    num_steps_per_epoch = steps_per_epoch(
        config["num_train_samples"], world_size, cfg.data.batch_size, cfg.optim.grad_accum
    )
    warmup_steps, total_steps = schedule(cfg.optim, num_steps_per_epoch)
    engine = setup_model_and_engine(cfg, config["num_outputs"], world_size, total_steps, warmup_steps)
    micro_batches_per_epoch = num_steps_per_epoch * cfg.optim.grad_accum

    # ---- resume from the latest checkpoint (a restarted worker group or a rerun of the same command)
    start_epoch, step, best = 1, 0, -math.inf
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved = saved_world_size(ckpt_dir)
            if saved is not None and saved != world_size:
                raise ValueError(
                    f"the latest checkpoint of run {cfg.run.name!r} was written by {saved} workers; resuming "
                    f"with run.num_workers={world_size} is not possible for a ZeRO checkpoint. Rerun with "
                    f"run.num_workers={saved}, or start a new run (another run.name)"
                )
            state = load_checkpoint(engine, ckpt_dir)
        start_epoch, step, best = state["epoch"] + 1, state["step"], state.get("best", -math.inf)
        if is_main:
            print(f"resumed from epoch {state['epoch']} (step {step})", flush=True)

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = LocalMirror(directory, "tensorboard")
        writer = SummaryWriter(tensorboard.local, purge_step=step if step else None)

    train_data = ray.train.get_dataset_shard("train")
    eval_data = ray.train.get_dataset_shard("eval")

    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        # ---- train
        engine.train()
        started = time.perf_counter()
        loss_sum, num_images, skipped = 0.0, 0, []
        micro_step = 0
        batches = train_data.iter_batches(
            batch_size=cfg.data.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        )
        for batch in batches:
            skipped += _skipped(batch)  # counted even in the tail that is not trained on
            if micro_step == micro_batches_per_epoch:
                continue  # drain the split so every worker ends the epoch together
            micro_step += 1
            tensors = _to_device(batch, engine.device)
            logits = engine(tensors["pixels"])  # (B, num_outputs)
            valid = tensors["valid"].to(logits.dtype)
            # Undecodable rows stay in the batch as zeros (fixed shapes, lockstep ranks) with no weight.
            loss = (task.loss(logits, tensors) * valid).sum() / valid.sum().clamp(min=1)
            num_finite, num_skipped = _all_reduce_sum(
                [float(torch.isfinite(loss)), float(len(skipped) if cfg.data.strict else 0)], engine.device
            )
            if num_skipped:
                stop = _gather(skipped, world_size)
                message = _strict_message(epoch, [s for ss in stop for s in ss])
                _stop_run(message, epoch=epoch, step=step, is_main=is_main, directory=directory)
                return
            finite = num_finite == world_size
            if not finite:
                keys = [str(k) for k in batch["key"]]
                bad_rank_keys = _gather(keys if not torch.isfinite(loss) else [], world_size)
                message = (
                    f"non-finite loss at epoch {epoch}, step {step} (micro-batch {micro_step}); "
                    f"batch keys: {[k for ks in bad_rank_keys for k in ks]}. Lower optim.lr, check the data, "
                    "or use deepspeed.precision=bf16/fp32"
                )
                _stop_run(message, epoch=epoch, step=step, is_main=is_main, directory=directory)
                return
            engine.backward(loss)
            engine.step()  # steps optimizer and scheduler at accumulation boundaries
            if micro_step % cfg.optim.grad_accum == 0:
                step += 1
                if writer is not None and cfg.run.log_every and step % cfg.run.log_every == 0:
                    writer.add_scalar("train/loss_step", loss.item(), step)
                    print(f"epoch {epoch} step {step}: loss {loss.item():.4f}", flush=True)
            loss_sum += float(loss.detach()) * int(batch["valid"].sum())
            num_images += int(batch["valid"].sum())
        train_seconds = time.perf_counter() - started
        totals = _all_reduce_sum([loss_sum, num_images, len(skipped)], engine.device)
        train_loss = totals[0] / max(1.0, totals[1])
        images_per_second = totals[1] / train_seconds

        # ---- evaluate: every sample of the eval split once across workers
        engine.eval()
        outputs: dict[str, list[np.ndarray]] = {}
        eval_skipped = []
        with torch.no_grad():
            for batch in eval_data.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy"):
                eval_skipped += _skipped(batch)
                tensors = _to_device(batch, engine.device)
                keep = tensors["valid"]
                logits = engine(tensors["pixels"])
                kept = {k: v[keep] for k, v in tensors.items()}
                for name, value in task.eval_outputs(logits[keep], kept).items():
                    outputs.setdefault(name, []).append(value)
        local = {k: np.concatenate(v) for k, v in outputs.items()}
        gathered = _gather((local, skipped, eval_skipped), world_size)
        names = sorted({k for g in gathered for k in g[0]})
        merged = {k: np.concatenate([g[0][k] for g in gathered if k in g[0]]) for k in names}
        all_train_skipped = [s for g in gathered for s in g[1]]
        all_eval_skipped = [s for g in gathered for s in g[2]]
        if cfg.data.strict and (all_train_skipped or all_eval_skipped):  # seen outside the trained steps
            message = _strict_message(epoch, all_train_skipped + all_eval_skipped)
            _stop_run(message, epoch=epoch, step=step, is_main=is_main, directory=directory)
            return
        metrics = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            "lr": engine.get_lr()[0],
            "images_per_second": images_per_second,
            "skipped_train": len(all_train_skipped),
            "skipped_eval": len(all_eval_skipped),
            "num_eval_samples": len(merged["loss"]) if merged else 0,
            **task.eval_metrics(merged),
        }
        score = metrics[task.target_metric]
        is_best = score > best
        best = max(best, score)
        metrics["best_" + task.target_metric] = best

        # ---- log, checkpoint, report
        if is_main:
            line = (
                f"epoch {epoch}/{cfg.optim.epochs}  step {step}  loss {train_loss:.4f}  "
                + "  ".join(f"{k} {metrics[k]:.4f}" for k in task.metric_names)
                + f"  lr {metrics['lr']:.2e}  {images_per_second:.1f} img/s"
                + f"  skipped {metrics['skipped_train']}+{metrics['skipped_eval']}"
            )
            print(line, flush=True)
            for key, reason in all_train_skipped + all_eval_skipped:
                print(f"  skipped {key}: {reason}", flush=True)
            for name, value in metrics.items():
                writer.add_scalar(f"epoch/{name}", value, step)
            writer.flush()
            tensorboard.sync()
            append_history(directory, {**metrics, "skipped": [list(s) for s in all_train_skipped + all_eval_skipped]})

        save = epoch % cfg.run.checkpoint_every == 0 or epoch == cfg.optim.epochs or is_best
        if save:
            if is_main:
                print(f"saving checkpoint of epoch {epoch} (step {step})", flush=True)
            tmp = tempfile.mkdtemp(prefix="ckpt-")
            client_state = {"epoch": epoch, "step": step, "best": best}
            save_checkpoint(
                engine,
                tmp,
                client_state=client_state,
                weights_meta={"config": to_dict(cfg), "num_outputs": config["num_outputs"], "class_names": config.get("class_names")},
            )
            if is_main:
                write_meta(tmp, {**client_state, "world_size": world_size, "zero_stage": cfg.deepspeed.zero_stage})
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
            )
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            ray.train.report(metrics)

    if writer is not None:
        writer.close()
        tensorboard.close()
