"""Runs a planned run: builds its TorchTrainer (scaling, storage, failures, checkpoint retention) and fits it.

`launch(cfg)` is what a job calls: plan (`pipeline.runs.plan`), print the plan, and `run`. Ray Train
asks an autoscaling cluster for the workers' nodes itself and withdraws the request when the run ends. A Tune trial calls `run` on its own planned run.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.checkpoint import TEST_HOOKS, checkpoint_score, pop_stop, read_history
from pipeline.config import JobConfig, to_dict
from pipeline.data import build_dataset, exact_eval_data_config
from pipeline.layout import join
from pipeline.runs import Run, check_nodes_see, cpus_needed, plan, write_run_config
from pipeline.train import train_loop_per_worker


@dataclass
class RunResult:
    """A finished run: the planned run, its per-epoch history, and where the files are."""

    run: Run
    history: list[dict[str, Any]]
    best_checkpoint: str | None
    latest_checkpoint: str | None

    @property
    def run_dir(self) -> str:
        return self.run.directory


def build_trainer(run: Run, *, callbacks: list | None = None, verbose: bool = False, console: Any = None) -> Any:
    """The TorchTrainer of a planned run (a Tune trial adds its report callback).

    Args:
        callbacks: Ray Train callbacks (Tune's report callback).
        verbose: keep Ray's and DeepSpeed's INFO logs on the workers.
        console: a queue the loop sends its console lines to (`console_lines`); None: rank 0 prints them.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = run.cfg
    datasets = {
        "train": build_dataset(cfg.data, run.train_urls, train=True, seed=cfg.run.seed, task=run.task,
                               num_samples=run.num_train_samples),
        "eval": build_dataset(cfg.data, run.eval_urls, train=False, seed=cfg.run.seed, task=run.task,
                              num_samples=run.num_eval_samples),
    }
    env = {"DS_ACCELERATOR": "cpu"} if not run.use_gpu else {}
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # worker prints reach the driver once, not twice
    for hook in TEST_HOOKS:  # the fault tests' hooks, also on a cluster the driver joined
        if hook in os.environ:
            env[hook] = os.environ[hook]
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": to_dict(cfg),
            "run_dir": run.directory,
            "num_outputs": run.num_outputs,
            "num_train_samples": run.num_train_samples,
            "class_names": run.class_names,
            "target_stats": run.target_stats,
            "verbose": verbose,
            "console": console,
            # a Tune trial reports epochs only: its scheduler counts reports as iterations
            "preemption_checkpoints": not callbacks,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.worker_range if run.elastic else cfg.run.num_workers,
            use_gpu=run.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if run.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            # The best checkpoint by the task's metric; Ray always keeps the latest one too.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=run.task.target_metric,
                checkpoint_score_order=run.task.mode,
            ),
            worker_runtime_env={"env_vars": env},
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=exact_eval_data_config("train"),
    )


@contextlib.contextmanager
def console_lines(enabled: bool) -> Iterator[Any]:
    """A queue the training loop's rank 0 puts its console lines in, printed here as they come.

    The user's console then shows the loop's lines (epochs, checkpoints, skipped samples, resumes)
    from this process, with no worker prefix, while the workers' own output (Ray's, DeepSpeed's,
    torch's warnings) stays in the worker logs unless the driver forwards it (`--verbose`).
    Yields None when not `enabled`.
    """
    if not enabled:
        yield None
        return
    import ray
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: a queue on a worker node would die with it (a spot reclaim) and take the run along.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    done = threading.Event()

    def pump() -> None:
        while not done.is_set():
            try:
                print(queue.get(timeout=0.5), flush=True)
            except Empty:
                continue

    thread = threading.Thread(target=pump, name="console-lines", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join()
        while not queue.empty():
            print(queue.get_nowait(), flush=True)
        queue.shutdown()


def run(run: Run, *, callbacks: list | None = None, verbose: bool = False, console: bool = False) -> RunResult:
    """Trains a planned run (resuming its latest checkpoint) and returns where its files are.

    Args:
        callbacks: Ray Train callbacks (a Tune trial's report callback).
        verbose: keep Ray's and DeepSpeed's INFO logs on the workers.
        console: print the loop's console lines in this process (a job's driver); else rank 0 prints
            them into its own output (a Tune trial's).

    Raises:
        RuntimeError: the loop stopped the run (a non-finite loss, strict data); the message says why.
    """
    pop_stop(run.directory)  # a stale record of an earlier, interrupted run
    write_run_config(run)
    with console_lines(console) as queue:
        result = build_trainer(run, callbacks=callbacks, verbose=verbose, console=queue).fit()
    error = pop_stop(run.directory)
    if error:
        raise RuntimeError(error)
    scored = [(checkpoint_score(metrics, run.task), c) for c, metrics in result.best_checkpoints]
    scored = [(score, c) for score, c in scored if score > -math.inf]  # a preemption checkpoint is no candidate
    best = max(scored, key=lambda sc: sc[0])[1].path if scored else None
    return RunResult(
        run=run,
        history=read_history(run.directory),
        best_checkpoint=best,
        latest_checkpoint=result.checkpoint.path if result.checkpoint else None,
    )


def waiting_line(run: Run, resources: dict[str, float]) -> str | None:
    """What a job prints when the cluster lacks the workers' resources and the autoscaler must bring them.

    Nothing is asked of the autoscaler here: Ray Train requests its workers' resources itself (a
    pending placement group, and an elastic run's request for `run.num_workers`) and withdraws the
    request when the run ends, so the nodes idle out afterwards (`tests/test_cluster.py`).
    """
    fewest = run.worker_range[0]
    if run.use_gpu:
        have, need, unit = resources.get("GPU", 0), fewest, "GPUs"
    else:
        have, need, unit = resources.get("CPU", 0), cpus_needed(run.cfg, fewest), "CPUs"
    if have >= need:
        return None
    return f"waiting for the autoscaler: the run needs {need:g} {unit}, the cluster has {have:g} now; training starts when they arrive"


def launch(cfg: JobConfig, *, manifest: dict[str, Any] | None = None, verbose: bool = False) -> RunResult:
    """A job's training run: plan, print the plan, train (resuming a run of the same name and storage),
    return the result.

    Raises:
        ValueError: a configuration or data error (the message names the field and the fix).
        RuntimeError: the loop stopped the run (a non-finite loss, strict data).
    """
    import ray

    resources = ray.cluster_resources()
    planned = plan(cfg, resources=resources, manifest=manifest)
    print(planned.describe(), flush=True)
    if planned.finished:
        checkpoint = planned.resumes_from["checkpoint"]
        print(
            f"run {cfg.run.name!r} is finished: {checkpoint} holds all {cfg.optim.epochs} epochs, nothing to train. "
            f"Train it longer with --set optim.epochs=N (it continues), or start another run with --name {cfg.run.name}-2",
            flush=True,
        )
        return RunResult(planned, read_history(planned.directory), None, join(planned.directory, checkpoint))
    if note := check_nodes_see(planned):  # a finished run trains nothing: no node is asked
        print(note, flush=True)
    if line := waiting_line(planned, resources):
        print(line, flush=True)
    return run(planned, verbose=verbose, console=not verbose)
