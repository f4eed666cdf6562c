"""Ray Tune over the one training loop: each trial is a driver that runs a TorchTrainer.

Ray Train V2 cannot be nested in Tune as `Tuner(TorchTrainer(...))`; instead every trial runs
`_trial`, which builds the TorchTrainer for its config with a `TuneReportCallback` that forwards
each epoch's metrics to Tune. Two experiments share that driver and one Tuner setup (`_fit`):

- `run_search`: a search over the resizer's hyperparameters; ASHA stops weak trials by epoch.
- `run_comparison`: a grid of resizer arms x seeds, every trial run to the end (FIFO), for the
  side-by-side statistics of `pipeline.compare`.

Resumable: the Train run of a trial is named after the trial id, inside the experiment folder, so a
restored search (`Tuner.restore`) reruns unfinished trials' drivers, whose TorchTrainers resume
from their own latest checkpoints; finished trials are not rerun.

Experiment folder `<storage>/<name>/`: Tune's trial folders (params.json, result.json), the Train
runs `train_<trial id>/` (checkpoints, tensorboard/, history.jsonl), `search_job.json` (the config
the experiment started with) and the report (`pipeline.report`, `pipeline.compare`).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from typing import Any, Callable

from pipeline.checkpoint import is_uri, pop_stop, run_dir
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


def comparison_arms(cfg: JobConfig) -> dict[str, dict[str, Any]]:
    """The arms of a comparison, by name: the config values each one sets on the job's config.

    Learned arms keep the job's other resizer settings; the full-resolution arm feeds the crop to
    the backbone unresized (a bilinear resize to the same size is the identity).
    """
    compare = cfg.compare
    arms: dict[str, dict[str, Any]] = {}
    for n, r in compare.learned:
        arms[f"learned_n{n}_r{r}"] = {"resizer.kind": "learned", "resizer.num_filters": n, "resizer.num_res_blocks": r}
    for kind in compare.fixed_arms:
        arms[kind] = {"resizer.kind": kind}
    if compare.full_res:
        arms["full_res"] = {"resizer.kind": "bilinear", "model.img_size": cfg.data.crop_size}
    return arms


def trial_config(cfg: JobConfig, params: dict[str, Any], arms: dict[str, dict[str, Any]] | None = None) -> JobConfig:
    """The job config of one trial: its arm's values (comparisons), then every dotted config field
    of `params`; other keys are labels. A resize before the crop keeps its ratio."""
    values = dict(arms[params["arm"]]) if arms and "arm" in params else {}
    values.update({k: v for k, v in params.items() if "." in k})
    crop = values.get("data.crop_size", cfg.data.crop_size)
    if cfg.data.resize_size is not None and crop != cfg.data.crop_size:
        values["data.resize_size"] = max(crop, round(cfg.data.resize_size * crop / cfg.data.crop_size))
    return apply_values(cfg, values)


def _trial(params: dict[str, Any], job: dict[str, Any], arms: dict[str, dict[str, Any]] | None = None) -> None:
    """One trial's driver: runs the TorchTrainer of its config, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    base = from_dict(JobConfig, job)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(base, params, arms)
    # Deterministic: a restored search reruns this driver, and Train resumes the run of this name.
    cfg = apply_values(cfg, {"run.name": f"train_{trial_id}", "run.storage": experiment_dir(base)})
    run_plan = plan(cfg)
    pop_stop(run_dir(cfg.run.storage, cfg.run.name))  # a stale record of an earlier, interrupted run
    build_trainer(cfg, run_plan, callbacks=[TuneReportCallback()]).fit()
    error = pop_stop(run_dir(cfg.run.storage, cfg.run.name))
    if error:
        raise RuntimeError(error)


def max_concurrent_trials(
    cfg: JobConfig, resources: dict[str, float], use_gpu: bool, *, limit: int | None = None
) -> int:
    """Trials that fit at once: `limit` (default: search.max_concurrent) when set; else GPUs per
    trial on a GPU cluster, or CPUs for the trial's driver, its workers and one data task."""
    limit = cfg.search.max_concurrent if limit is None else limit
    if limit is not None:
        return limit
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
        raise ValueError(f"{directory}: no {JOB_FILE}; is this a search or comparison folder made by pipeline.tune?")
    with fs.open(target) as f:
        return from_dict(JobConfig, json.load(f))


def _open(cfg: JobConfig, resume: bool, what: str) -> tuple[JobConfig, str]:
    """The experiment's config and folder; a resumed one continues with the config it started with.

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not.
    """
    from ray import tune

    cfg = with_absolute_storage(cfg)
    directory = experiment_dir(cfg)
    exists = tune.Tuner.can_restore(directory)
    if resume and not exists:
        raise ValueError(f"--resume: no {what} to resume at {directory}; run without --resume to start one")
    if exists and not resume:
        raise ValueError(f"a {what} already exists at {directory}; pass --resume to continue it or use another --name")
    return (read_job(directory) if resume else cfg), directory


def _fit(
    cfg: JobConfig,
    directory: str,
    *,
    what: str,
    resume: bool,
    param_space: dict[str, Any],
    metric: str,
    mode: str,
    describe: Callable[[int], str],
    limit: int | None = None,
    make_search_alg: Callable[[int], Any] | None = None,
    scheduler: Any = None,
    num_samples: int = 1,
    arms: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The one Tuner setup: plans, then starts or restores the experiment and waits for it.

    Args:
        what: "search" or "comparison", for messages.
        describe: the banner printed at the start, given the number of concurrent trials.
        limit: concurrent trials; None derives them from the cluster (`max_concurrent_trials`).
        make_search_alg: builds the search algorithm for a concurrency (None: Tune's grid/random).
        scheduler: trial scheduler (None: FIFO, every trial runs to the end).
        arms: named config values that the `arm` parameter of a trial selects (`trial_config`).

    Returns:
        Tune's ResultGrid.
    """
    from ray import tune

    run_plan: RunPlan = plan(cfg)  # validates data and resources before any trial starts
    trainable = tune.with_resources(tune.with_parameters(_trial, job=to_dict(cfg), arms=arms), {"CPU": 1})
    if resume:
        print(f"resuming {what} {cfg.run.name!r} from {directory}", flush=True)
        tuner = tune.Tuner.restore(directory, trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()

    import ray

    concurrency = max_concurrent_trials(cfg, ray.cluster_resources(), run_plan.use_gpu, limit=limit)
    _write_job(directory, cfg)
    print(describe(concurrency), flush=True)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=make_search_alg(concurrency) if make_search_alg else None,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            trial_name_creator=lambda trial: f"trial_{trial.trial_id}",
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(name=cfg.run.name, storage_path=cfg.run.storage),
    )
    return tuner.fit()


def run_search(cfg: JobConfig, *, resume: bool = False) -> Any:
    """Starts, or with `resume` continues, the search named `cfg.run.name` in `cfg.run.storage`.

    Returns:
        Tune's ResultGrid.

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not.
    """
    from ray.tune.schedulers import ASHAScheduler

    cfg, directory = _open(cfg, resume, "search")
    metric = cfg.search.metric or get_task(cfg.task).target_metric
    points = paired_points(cfg)

    def make_search_alg(concurrency: int) -> Any:
        if cfg.search.algorithm == "optuna":
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points, seed=cfg.run.seed), max_concurrent=concurrency)
        from ray.tune.search import BasicVariantGenerator

        # A search algorithm of our own ignores TuneConfig.max_concurrent_trials: limit it here.
        return BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.run.seed, max_concurrent=concurrency)

    def describe(concurrency: int) -> str:
        return (
            f"search {cfg.run.name!r}: {cfg.search.num_samples} trials ({len(points)} paired first: learned vs "
            f"{', '.join(cfg.search.fixed_arms) or 'none'}), {concurrency} at a time, ASHA on {metric} ({cfg.search.mode}) "
            f"(grace {cfg.search.grace_period} epochs, reduction {cfg.search.reduction_factor}), max "
            f"{cfg.optim.epochs} epochs -> {directory}"
        )

    return _fit(
        cfg,
        directory,
        what="search",
        resume=resume,
        param_space=search_space(cfg),
        metric=metric,
        mode=cfg.search.mode,
        describe=describe,
        make_search_alg=make_search_alg,
        scheduler=ASHAScheduler(
            time_attr="epoch",
            max_t=cfg.optim.epochs,
            grace_period=cfg.search.grace_period,
            reduction_factor=cfg.search.reduction_factor,
        ),
        num_samples=cfg.search.num_samples,
    )


def run_comparison(cfg: JobConfig, *, resume: bool = False) -> Any:
    """Starts, or with `resume` continues, the comparison named `cfg.run.name`: every arm of
    `comparison_arms` x every seed of `compare.seeds`, each run for the full budget (no early stop).

    Returns:
        Tune's ResultGrid.

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not.
    """
    from ray import tune

    cfg, directory = _open(cfg, resume, "comparison")
    arms = comparison_arms(cfg)
    metric = get_task(cfg.task).target_metric

    def describe(concurrency: int) -> str:
        return (
            f"comparison {cfg.run.name!r}: {len(arms)} arms ({', '.join(arms)}) x {len(cfg.compare.seeds)} seeds "
            f"{list(cfg.compare.seeds)} = {len(arms) * len(cfg.compare.seeds)} trials of {cfg.optim.epochs} epochs, "
            f"{concurrency} at a time, {metric} against {cfg.compare.baseline} -> {directory}"
        )

    return _fit(
        cfg,
        directory,
        what="comparison",
        resume=resume,
        param_space={"arm": tune.grid_search(list(arms)), "run.seed": tune.grid_search(list(cfg.compare.seeds))},
        metric=metric,
        mode="max",  # the training loop keeps the best checkpoint by the task's metric, higher is better
        describe=describe,
        limit=cfg.compare.max_concurrent,
        arms=arms,
    )
