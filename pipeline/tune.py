"""Ray Tune over the one training loop: each trial is a driver that runs a TorchTrainer.

Ray Train V2 cannot be nested in Tune as `Tuner(TorchTrainer(...))`; instead every trial runs
`_trial`, which builds the TorchTrainer for its sampled config with a `TuneReportCallback` that
forwards each epoch's metrics to Tune. ASHA stops weak trials on validation metric by epoch.

Resumable: the Train run of a trial is named after the trial id, inside the experiment folder, so a
restored search (`Tuner.restore`) reruns unfinished trials' drivers, whose TorchTrainers resume
from their own latest checkpoints; finished trials are not rerun.

Experiment folder `<storage>/<name>/`: Tune's trial folders (params.json, result.json), the Train
runs `train_<trial id>/` (checkpoints, tensorboard/, history.jsonl), `search_job.json` (the config
the search started with) and the report (`pipeline.report`).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from typing import Any

from pipeline.checkpoint import is_uri
from pipeline.config import JobConfig, apply_values, from_dict, to_dict
from pipeline.launch import RunPlan, build_trainer, plan, with_absolute_storage
from pipeline.tasks import get_task

JOB_FILE = "search_job.json"

# The hyperparameters a search varies, as dotted config fields.
SEARCHED = (
    "resizer.kind",
    "resizer.num_filters",
    "resizer.num_res_blocks",
    "data.crop_size",
    "optim.lr",
    "optim.resizer_lr",
    "resizer.zero_init_last",
    "resizer.interpolation",
)


def experiment_dir(cfg: JobConfig) -> str:
    storage = cfg.run.storage
    return posixpath.join(storage, cfg.run.name) if is_uri(storage) else os.path.join(storage, cfg.run.name)


def _log_mid(low: float, high: float) -> float:
    return math.exp((math.log(low) + math.log(high)) / 2)


def search_space(cfg: JobConfig) -> dict[str, Any]:
    """Tune domains for every searched field."""
    from ray import tune

    search = cfg.search
    kinds = ["learned", *search.fixed_arms] if search.algorithm == "optuna" else ["learned"]

    def log_range(bounds: tuple[float, float]) -> Any:
        low, high = bounds
        return tune.choice([low]) if low == high else tune.loguniform(low, high)

    return {
        "resizer.kind": tune.choice(kinds),
        "resizer.num_filters": tune.choice(list(search.num_filters)),
        "resizer.num_res_blocks": tune.choice(list(search.num_res_blocks)),
        "data.crop_size": tune.choice(list(search.input_sizes)),
        "optim.lr": log_range(search.lr),
        "optim.resizer_lr": log_range(search.resizer_lr),
        "resizer.zero_init_last": tune.choice(list(search.zero_init_last)),
        "resizer.interpolation": tune.choice(list(search.interpolation)),
    }


def paired_points(cfg: JobConfig) -> list[dict[str, Any]]:
    """The first trials: a base learned resizer and each fixed arm with the same other values,
    so the search always holds a like-for-like "learned vs fixed" pair."""
    search = cfg.search

    def pick(choices: tuple, current: Any) -> Any:
        return current if current in choices else choices[0]

    def within(bounds: tuple[float, float], current: float | None) -> float:
        return current if current is not None and bounds[0] <= current <= bounds[1] else _log_mid(*bounds)

    base = {
        "resizer.kind": "learned",
        "resizer.num_filters": pick(search.num_filters, cfg.resizer.num_filters),
        "resizer.num_res_blocks": pick(search.num_res_blocks, cfg.resizer.num_res_blocks),
        "data.crop_size": pick(search.input_sizes, cfg.data.crop_size),
        "optim.lr": within(search.lr, cfg.optim.lr),
        "optim.resizer_lr": within(search.resizer_lr, cfg.optim.resizer_lr),
        "resizer.zero_init_last": pick(search.zero_init_last, cfg.resizer.zero_init_last),
        "resizer.interpolation": pick(search.interpolation, cfg.resizer.interpolation),
    }
    return [base] + [{**base, "resizer.kind": arm} for arm in search.fixed_arms]


def trial_config(cfg: JobConfig, params: dict[str, Any]) -> JobConfig:
    """The job config of one trial: sampled values set; a resize before the crop keeps its ratio."""
    values = {k: params[k] for k in SEARCHED if k in params}
    crop = values.get("data.crop_size", cfg.data.crop_size)
    if cfg.data.resize_size is not None and crop != cfg.data.crop_size:
        values["data.resize_size"] = max(crop, round(cfg.data.resize_size * crop / cfg.data.crop_size))
    return apply_values(cfg, values)


def _trial(params: dict[str, Any], job: dict[str, Any]) -> None:
    """One trial's driver: runs the TorchTrainer of its config, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    base = from_dict(JobConfig, job)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(base, params)
    # Deterministic: a restored search reruns this driver, and Train resumes the run of this name.
    cfg = apply_values(cfg, {"run.name": f"train_{trial_id}", "run.storage": experiment_dir(base)})
    run_plan = plan(cfg)
    result = build_trainer(cfg, run_plan, callbacks=[TuneReportCallback()]).fit()
    error = (result.metrics or {}).get("error")
    if error:
        raise RuntimeError(error)


def max_concurrent_trials(cfg: JobConfig, resources: dict[str, float], use_gpu: bool) -> int:
    """Trials that fit at once: GPUs per trial on a GPU cluster; else CPUs for the trial's driver,
    its workers and one data task."""
    if cfg.search.max_concurrent is not None:
        return cfg.search.max_concurrent
    if use_gpu:
        return max(1, int(resources.get("GPU", 0) // cfg.run.num_workers))
    per_trial = 1 + cfg.run.num_workers * cfg.run.cpus_per_worker + cfg.data.num_cpus_per_read
    return max(1, int(resources.get("CPU", 0) // per_trial))


def _write_job(directory: str, cfg: JobConfig) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(directory)
    fs.makedirs(path, exist_ok=True)
    with fs.open(posixpath.join(path, JOB_FILE), "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=True)


def read_job(directory: str) -> JobConfig:
    """The config a search in `directory` started with."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(directory)
    target = posixpath.join(path, JOB_FILE)
    if not fs.exists(target):
        raise ValueError(f"{directory}: no {JOB_FILE}; is this a search folder made by pipeline.tune?")
    with fs.open(target) as f:
        return from_dict(JobConfig, json.load(f))


def run_search(cfg: JobConfig, *, resume: bool = False) -> Any:
    """Starts, or with `resume` continues, the search named `cfg.run.name` in `cfg.run.storage`.

    Returns:
        Tune's ResultGrid.

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    cfg = with_absolute_storage(cfg)
    directory = experiment_dir(cfg)
    exists = tune.Tuner.can_restore(directory)
    if resume and not exists:
        raise ValueError(f"--resume: no search to resume at {directory}; run without --resume to start one")
    if exists and not resume:
        raise ValueError(f"a search already exists at {directory}; pass --resume to continue it or use another --name")
    if resume:
        cfg = read_job(directory)  # the search continues with the config it started with
    run_plan: RunPlan = plan(cfg)  # validates data and resources before any trial starts
    metric = cfg.search.metric or get_task(cfg.task).target_metric
    trainable = tune.with_resources(tune.with_parameters(_trial, job=to_dict(cfg)), {"CPU": 1})
    if resume:
        print(f"resuming search {cfg.run.name!r} from {directory}", flush=True)
        tuner = tune.Tuner.restore(directory, trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()

    import ray

    concurrency = max_concurrent_trials(cfg, ray.cluster_resources(), run_plan.use_gpu)
    points = paired_points(cfg)
    if cfg.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        from ray.tune.search import ConcurrencyLimiter

        search_alg = ConcurrencyLimiter(
            OptunaSearch(points_to_evaluate=points, seed=cfg.run.seed), max_concurrent=concurrency
        )
    else:
        from ray.tune.search import BasicVariantGenerator

        # A search algorithm of our own ignores TuneConfig.max_concurrent_trials: limit it here.
        search_alg = BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.run.seed, max_concurrent=concurrency)
    _write_job(directory, cfg)
    print(
        f"search {cfg.run.name!r}: {cfg.search.num_samples} trials ({len(points)} paired first: learned vs "
        f"{', '.join(cfg.search.fixed_arms) or 'none'}), {concurrency} at a time, ASHA on {metric} ({cfg.search.mode}) "
        f"(grace {cfg.search.grace_period} epochs, reduction {cfg.search.reduction_factor}), max "
        f"{cfg.optim.epochs} epochs -> {directory}",
        flush=True,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=cfg.search.mode,
            search_alg=search_alg,
            scheduler=ASHAScheduler(
                time_attr="epoch",
                max_t=cfg.optim.epochs,
                grace_period=cfg.search.grace_period,
                reduction_factor=cfg.search.reduction_factor,
            ),
            num_samples=cfg.search.num_samples,
            max_concurrent_trials=concurrency,
            trial_name_creator=lambda trial: f"trial_{trial.trial_id}",
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(name=cfg.run.name, storage_path=cfg.run.storage),
    )
    return tuner.fit()
