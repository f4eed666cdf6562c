"""Builds and runs the TorchTrainer: scaling, storage, failure handling, checkpoint retention.

Everything that can be checked on the driver is checked before any cluster resource is asked
for: the shards and their manifest, the class count, the worker count against the cluster.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pipeline.checkpoint import is_uri, latest_checkpoint_meta, pop_stop, read_history, run_dir
from pipeline.config import JobConfig, to_dict
from pipeline.data import build_dataset, exact_eval_data_config, read_manifest, shard_urls, split_size
from pipeline.tasks import get_task
from pipeline.train import steps_per_epoch, train_loop_per_worker


@dataclass
class RunPlan:
    """What the driver worked out before launching."""

    manifest: dict[str, Any]
    num_outputs: int
    train_urls: list[str]
    eval_urls: list[str]
    num_train_samples: int
    num_eval_samples: int
    use_gpu: bool


@dataclass
class RunResult:
    """A finished run: Ray's result, the per-epoch history, and where the files are."""

    run_dir: str
    history: list[dict[str, Any]]
    best_checkpoint: str | None
    latest_checkpoint: str | None
    error: str | None


def _cluster_resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def plan(cfg: JobConfig, *, use_gpu: bool | None = None) -> RunPlan:
    """Validates data and resources against the config; asks the cluster for nothing.

    Raises:
        ValueError: (DataError included) naming the field and the fix.
    """
    manifest = read_manifest(cfg.data.path)
    task = get_task(cfg.task)
    if manifest.get("target") != task.target:
        other = {"cls": "classification", "votes": "quality"}.get(manifest.get("target"), "?")
        raise ValueError(
            f"data.path={cfg.data.path!r} holds {manifest.get('dataset', '?')} shards with target "
            f"{manifest.get('target')!r}; task={cfg.task!r} needs target {task.target!r}. Point data.path at "
            f"{'AVA' if task.target == 'votes' else 'class-labelled (CUB, ImageNet)'} shards, or use task={other!r}"
        )
    num_outputs = task.num_outputs(manifest)
    train_urls = shard_urls(cfg.data.path, manifest, cfg.data.train_split)
    eval_urls = shard_urls(cfg.data.path, manifest, cfg.data.eval_split)
    num_train = split_size(manifest, cfg.data.train_split)
    if cfg.task == "classification" and num_outputs < 2:
        raise ValueError(f"data.path={cfg.data.path!r}: manifest has num_classes={num_outputs}; need at least 2")
    if cfg.task == "classification" and cfg.data.num_classes is not None and cfg.data.num_classes != num_outputs:
        raise ValueError(
            f"data.num_classes={cfg.data.num_classes} but the manifest of data.path={cfg.data.path!r} lists "
            f"{num_outputs} classes: wrong shards for this recipe? Point --data at the right shards, or "
            "set data.num_classes=none to train on what the shards hold"
        )
    steps_per_epoch(num_train, cfg.run.num_workers, cfg.data.batch_size, cfg.optim.grad_accum)
    check_model_input(cfg, num_outputs)
    previous = latest_checkpoint_meta(run_dir(cfg.run.storage, cfg.run.name))
    if previous is not None and previous.get("world_size") not in (None, cfg.run.num_workers):
        raise ValueError(
            f"run {cfg.run.name!r} resumes from {previous['checkpoint']}, written by {previous['world_size']} "
            f"workers with ZeRO-{previous.get('zero_stage')}; a ZeRO checkpoint loads only into the same number of "
            f"workers. Rerun with --num-workers {previous['world_size']}, or start a new run with another --name"
        )

    resources = _cluster_resources()
    if use_gpu is None:
        use_gpu = cfg.run.use_gpu if cfg.run.use_gpu is not None else resources.get("GPU", 0) > 0
    if use_gpu and resources.get("GPU", 0) < cfg.run.num_workers and cfg.run.autoscale:
        from ray.autoscaler.sdk import request_resources

        print(
            f"asking the autoscaler for {cfg.run.num_workers} GPUs (the cluster has {resources.get('GPU', 0):g} now); "
            "training starts when they arrive",
            flush=True,
        )
        request_resources(bundles=[{"GPU": 1, "CPU": cfg.run.cpus_per_worker}] * cfg.run.num_workers)
    elif use_gpu and resources.get("GPU", 0) < cfg.run.num_workers:
        raise ValueError(
            f"run.num_workers={cfg.run.num_workers} needs {cfg.run.num_workers} GPUs; the cluster has "
            f"{resources.get('GPU', 0):g}. Lower run.num_workers, add GPU nodes, or on an autoscaling cluster "
            "set run.autoscale=true to ask the autoscaler for them"
        )
    needed = cfg.run.num_workers * cfg.run.cpus_per_worker
    if not use_gpu and resources.get("CPU", 0) < needed + cfg.data.num_cpus_per_read:
        raise ValueError(
            f"run.num_workers={cfg.run.num_workers} x run.cpus_per_worker={cfg.run.cpus_per_worker:g} plus one "
            f"data task needs {needed + cfg.data.num_cpus_per_read:g} CPUs; the cluster has "
            f"{resources.get('CPU', 0):g}. Lower run.num_workers or run.cpus_per_worker"
        )
    if cfg.deepspeed.precision == "fp16" and not use_gpu:
        raise ValueError("deepspeed.precision='fp16' needs GPUs; on CPU use 'bf16' or 'fp32'")
    return RunPlan(
        manifest=manifest,
        num_outputs=num_outputs,
        train_urls=train_urls,
        eval_urls=eval_urls,
        num_train_samples=num_train,
        num_eval_samples=split_size(manifest, cfg.data.eval_split),
        use_gpu=bool(use_gpu),
    )


def check_model_input(cfg: JobConfig, num_outputs: int) -> None:
    """Runs the model once on the meta device (no memory, no compute) at the configured crop size, so
    a backbone that cannot take the resizer's output fails here, not on a worker after launch."""
    import torch

    from pipeline.model import build_model

    model_cfg = dataclasses.replace(cfg.model, pretrained=False, checkpoint_path=None)
    with torch.device("meta"):
        # eval(): batch norm on running statistics, so a 1x1 feature map of one image is no error
        model = build_model(model_cfg, cfg.resizer, num_outputs).eval()
        pixels = torch.zeros(1, 3, cfg.data.crop_size, cfg.data.crop_size, dtype=torch.uint8)
        try:
            logits = model(pixels)
        except Exception as err:  # noqa: BLE001 - any failure here is a config the backbone cannot take
            raise ValueError(
                f"model.backbone={cfg.model.backbone!r} cannot take a {cfg.data.crop_size}px crop resized to "
                f"{model.input_size}px ({type(err).__name__}: {err}). Set model.img_size to a size the backbone "
                "accepts (its pretrained input size is the safe choice; model.img_size=none uses it), or change data.crop_size"
            ) from err
    if tuple(logits.shape) != (1, num_outputs):
        raise ValueError(f"model.backbone={cfg.model.backbone!r} gives outputs {tuple(logits.shape)}, expected (1, {num_outputs})")


def build_trainer(cfg: JobConfig, run_plan: RunPlan, *, callbacks: list | None = None) -> Any:
    """The TorchTrainer for a planned run (Tune builds it too, with its report callback)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    task = get_task(cfg.task)
    datasets = {
        "train": build_dataset(cfg.data, run_plan.train_urls, train=True, seed=cfg.run.seed),
        "eval": build_dataset(cfg.data, run_plan.eval_urls, train=False, seed=cfg.run.seed),
    }
    env = {"DS_ACCELERATOR": "cpu"} if not run_plan.use_gpu else {}
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # worker prints reach the driver once, not twice
    cfg = with_absolute_storage(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": to_dict(cfg),
            "num_outputs": run_plan.num_outputs,
            "num_train_samples": run_plan.num_train_samples,
            "class_names": run_plan.manifest.get("class_names"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=run_plan.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if run_plan.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            # The best checkpoint by the task's metric; Ray always keeps the latest one too.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=task.target_metric,
                checkpoint_score_order="max",
            ),
            worker_runtime_env={"env_vars": env},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=exact_eval_data_config("train"),
    )


def with_absolute_storage(cfg: JobConfig) -> JobConfig:
    """Workers run in their own working directory: a relative storage path must be made absolute here."""
    if is_uri(cfg.run.storage):
        return cfg
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, storage=os.path.abspath(cfg.run.storage)))


def launch(cfg: JobConfig) -> RunResult:
    """Plans, trains (resuming a run of the same name and storage), and returns the result.

    Raises:
        RuntimeError: the loop stopped on a non-finite loss (the message names step and keys).
    """
    cfg = with_absolute_storage(cfg)
    run_plan = plan(cfg)
    device = "GPU" if run_plan.use_gpu else "CPU"
    print(
        f"run {cfg.run.name!r}: {run_plan.num_train_samples} train / {run_plan.num_eval_samples} eval samples "
        f"({len(run_plan.train_urls)}+{len(run_plan.eval_urls)} shards), {run_plan.num_outputs} outputs, "
        f"{cfg.run.num_workers} {device} workers x batch {cfg.data.batch_size} x accum {cfg.optim.grad_accum}, "
        f"ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}, {cfg.optim.epochs} epochs -> "
        f"{run_dir(cfg.run.storage, cfg.run.name)}",
        flush=True,
    )
    pop_stop(run_dir(cfg.run.storage, cfg.run.name))  # a stale record of an earlier, interrupted run
    result = build_trainer(cfg, run_plan).fit()
    error = pop_stop(run_dir(cfg.run.storage, cfg.run.name))
    best = result.best_checkpoints[0][0].path if result.best_checkpoints else None
    if result.best_checkpoints:
        task = get_task(cfg.task)
        best = max(result.best_checkpoints, key=lambda cm: cm[1].get(task.target_metric, float("-inf")))[0].path
    outcome = RunResult(
        run_dir=run_dir(cfg.run.storage, cfg.run.name),
        history=read_history(run_dir(cfg.run.storage, cfg.run.name)),
        best_checkpoint=best,
        latest_checkpoint=result.checkpoint.path if result.checkpoint else None,
        error=error,
    )
    if error:
        raise RuntimeError(error)
    return outcome
