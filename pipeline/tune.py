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
import posixpath
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.config import CompareJobConfig, JobConfig, SearchJobConfig, apply_values, from_dict, to_dict
from pipeline.launch import run
from pipeline.layout import EXPERIMENT_FILE, PARAMS_FILE, RESULT_FILE, run_dir, trial_dir_name, trial_run_name
from pipeline.resizer import RESIZERS
from pipeline.runs import Run, check_nodes_see, plan, with_absolute_storage
from pipeline.storage import filesystem

E = TypeVar("E", SearchJobConfig, CompareJobConfig)

# The hyperparameters a search varies, as dotted config fields: the family's own (resizer registry) and these.
SEARCHED = (
    "resizer.kind",
    *dict.fromkeys(f for kind in RESIZERS.values() for f in kind.searched),
    "data.crop_size",
    "optim.lr",
    "optim.resizer_lr",
)


@dataclass(frozen=True)
class Experiment:
    """A search or comparison folder and the config it runs with.

    Attributes:
        cfg: the experiment's config (a resumed experiment: the one it started with).
        directory: `<storage>/<name>`, absolute or a URI.
        base: the planned run of the config as given (data, task and resources checked once).
    """

    cfg: SearchJobConfig | CompareJobConfig
    directory: str
    base: Run


@dataclass(frozen=True)
class ExperimentResult:
    """A finished (or stopped) search or comparison: its folder and Tune's ResultGrid."""

    directory: str
    grid: Any


def _log_mid(low: float, high: float) -> float:
    return math.exp((math.log(low) + math.log(high)) / 2)


def _families(cfg: SearchJobConfig) -> list[str]:
    """The learned families a search picks from, the job's own resizer first when it is one of them."""
    families = list(cfg.search.families)
    if cfg.resizer.kind in families:
        families.remove(cfg.resizer.kind)
        families.insert(0, cfg.resizer.kind)
    return families


def search_space(cfg: SearchJobConfig) -> dict[str, Any]:
    """Tune domains for every searched field."""
    from ray import tune

    search = cfg.search
    kinds = _families(cfg) + (list(search.fixed_arms) if search.algorithm == "optuna" else [])

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
        "resizer.muller_layers": tune.choice(list(search.muller_layers)),
    }


def paired_points(cfg: SearchJobConfig) -> list[dict[str, Any]]:
    """The first trials: a base learned resizer, each other learned family and each fixed arm with the same
    other values, so the search always holds like-for-like "learned vs fixed" and "CNN vs MULLER" pairs."""
    search = cfg.search

    def pick(choices: tuple, current: Any) -> Any:
        return current if current in choices else choices[0]

    def within(bounds: tuple[float, float], current: float | None) -> float:
        return current if current is not None and bounds[0] <= current <= bounds[1] else _log_mid(*bounds)

    first, *other_families = _families(cfg)
    base = {
        "resizer.kind": first,
        "resizer.num_filters": pick(search.num_filters, cfg.resizer.num_filters),
        "resizer.num_res_blocks": pick(search.num_res_blocks, cfg.resizer.num_res_blocks),
        "data.crop_size": pick(search.input_sizes, cfg.data.crop_size),
        "optim.lr": within(search.lr, cfg.optim.lr),
        "optim.resizer_lr": within(search.resizer_lr, cfg.optim.resizer_lr),
        "resizer.zero_init_last": pick(search.zero_init_last, cfg.resizer.zero_init_last),
        "resizer.interpolation": pick(search.interpolation, cfg.resizer.interpolation),
        "resizer.muller_layers": pick(search.muller_layers, cfg.resizer.muller_layers),
    }
    return [base] + [{**base, "resizer.kind": arm} for arm in (*other_families, *search.fixed_arms)]


def comparison_arms(cfg: CompareJobConfig) -> dict[str, dict[str, Any]]:
    """The arms of a comparison, by name: the config values each one sets on the job's config.

    Learned arms keep the job's other resizer settings; the full-resolution arm feeds the crop to
    the backbone unresized (a bilinear resize to the same size is the identity). Every arm's values
    name its `resizer.kind`, which reports ask the resizer registry about.
    """
    compare = cfg.compare
    arms: dict[str, dict[str, Any]] = {}
    for n, r in compare.learned:
        arms[f"learned_n{n}_r{r}"] = {"resizer.kind": "learned", "resizer.num_filters": n, "resizer.num_res_blocks": r}
    for layers in compare.muller:
        arms[f"muller_l{layers}"] = {"resizer.kind": "muller", "resizer.muller_layers": layers}
    for kind in compare.fixed_arms:
        arms[kind] = {"resizer.kind": kind}
    if compare.full_res:
        arms["full_res"] = {"resizer.kind": "bilinear", "model.img_size": cfg.data.crop_size}
    return arms


def trial_config(cfg: JobConfig, params: dict[str, Any], arms: dict[str, dict[str, Any]] | None = None) -> JobConfig:
    """The training config of one trial: its arm's values (comparisons), then every dotted config
    field of `params`; other keys are labels. A resize before the crop keeps its ratio."""
    values = dict(arms[params["arm"]]) if arms and "arm" in params else {}
    values.update({k: v for k, v in params.items() if "." in k})
    crop = values.get("data.crop_size", cfg.data.crop_size)
    if cfg.data.resize_size is not None and crop != cfg.data.crop_size:
        values["data.resize_size"] = max(crop, round(cfg.data.resize_size * crop / cfg.data.crop_size))
    return apply_values(cfg.training(), values)


def _trial(
    params: dict[str, Any],
    job: dict[str, Any],
    directory: str,
    manifest: dict[str, Any],
    arms: dict[str, dict[str, Any]] | None = None,
    verbose: bool = False,
) -> None:
    """One trial's driver: trains its config as a Train run inside the experiment folder, reporting
    every epoch to Tune."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(from_dict(JobConfig, job), params, arms)
    # Deterministic: a restored search reruns this driver, and Train resumes the run of this name.
    values: dict[str, Any] = {"run.name": trial_run_name(trial_id), "run.storage": directory}
    if cfg.run.mlflow and not cfg.run.mlflow_experiment:
        values["run.mlflow_experiment"] = posixpath.basename(directory.rstrip("/"))  # the search's name
    cfg = apply_values(cfg, values)
    run(plan(cfg, resources=ray.cluster_resources(), manifest=manifest), callbacks=[TuneReportCallback()], verbose=verbose)


TRIAL_DRIVER_CPUS = 1  # each trial's driver (the function that runs its Train run) holds one CPU


def reserved_cpus_per_trial(cfg: JobConfig) -> float:
    """What a placed CPU trial holds for as long as it runs: its driver and its Train workers."""
    return TRIAL_DRIVER_CPUS + cfg.run.num_workers * cfg.run.cpus_per_worker


def max_concurrent_trials(cfg: JobConfig, resources: dict[str, float], use_gpu: bool, *, limit: int | None = None) -> int:
    """Trials that fit at once: `limit` when set; else GPUs per trial on a GPU cluster, or CPUs for
    the trial's driver, its workers and one data task."""
    if limit is not None:
        return limit
    if use_gpu:
        return max(1, int(resources.get("GPU", 0) // cfg.run.num_workers))
    return max(1, _cpu_trials_that_fit(cfg, resources.get("CPU", 0.0)))


def _cpu_trials_that_fit(cfg: JobConfig, cpus: float) -> int:
    """CPU trials that fit on `cpus` with one read task beside them (0 when not even one does)."""
    return int(cpus // (reserved_cpus_per_trial(cfg) + cfg.data.num_cpus_per_read))


def check_concurrency(cfg: JobConfig, resources: dict[str, float], use_gpu: bool, concurrency: int, *, field: str) -> None:
    """Refuses a trial concurrency that would starve Ray Data on a CPU cluster that does not grow: the
    trials Tune places reserve a CPU for their driver and their workers' CPUs, and a read task needs
    `data.num_cpus_per_read` of what is left, or every trial waits for data and nothing fails.

    Raises:
        ValueError: naming `field`, what the trials reserve and the concurrency that fits.
    """
    if use_gpu or cfg.run.autoscale:
        return
    cpus = resources.get("CPU", 0.0)
    per_trial = reserved_cpus_per_trial(cfg)
    placed = min(concurrency, int(cpus // per_trial))
    left = cpus - placed * per_trial
    if placed and left < cfg.data.num_cpus_per_read:
        fits = _cpu_trials_that_fit(cfg, cpus)
        fix = f"set {field} to {fits} or less (unset: derived from the cluster)" if fits else "give the cluster more CPUs"
        raise ValueError(
            f"{field}={concurrency}: {placed} trial(s) at once reserve {placed * per_trial:g} of the cluster's "
            f"{cpus:g} CPUs (a driver and {cfg.run.num_workers} worker(s) x {cfg.run.cpus_per_worker:g} CPU each), "
            f"leaving {left:g} for Ray Data's read tasks ({cfg.data.num_cpus_per_read:g} CPU each): every trial "
            f"would wait for data; {fix}"
        )


def _concurrency(cfg: JobConfig, use_gpu: bool, limit: int | None, *, field: str) -> int:
    """The trials a search or comparison runs at once on the connected cluster, checked against it."""
    import ray

    resources = ray.cluster_resources()
    concurrency = max_concurrent_trials(cfg, resources, use_gpu, limit=limit)
    check_concurrency(cfg, resources, use_gpu, concurrency, field=field)
    return concurrency


def write_experiment(directory: str, cfg: JobConfig) -> None:
    """Saves the config an experiment starts with (`search_job.json`); a resume continues with it."""
    fs, path = filesystem(directory)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path.rstrip('/')}/{EXPERIMENT_FILE}", "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=True)


def read_experiment(directory: str, cls: type[E]) -> E:
    """The config a search (`SearchJobConfig`) or comparison (`CompareJobConfig`) in `directory` started with.

    Raises:
        ValueError: the folder holds no experiment file.
    """
    fs, path = filesystem(directory)
    target = f"{path.rstrip('/')}/{EXPERIMENT_FILE}"
    if not fs.exists(target):
        raise ValueError(f"{directory}: no {EXPERIMENT_FILE}; is this a search or comparison folder made by pipeline.tune?")
    with fs.open(target) as f:
        data = json.load(f)
    other = "compare" if cls is SearchJobConfig else "search"
    data.pop(other, None)  # folders written before the split carried both sections
    return from_dict(cls, data)


def _open(cfg: E, *, resume: bool, what: str) -> Experiment:
    """The experiment's folder and config (a resumed one continues with the config it started with),
    planned once against its data and the cluster.

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not;
            or the config does not fit its data or the cluster.
    """
    import ray
    from ray import tune

    cfg = with_absolute_storage(cfg)
    directory = run_dir(cfg.run.storage, cfg.run.name)
    exists = tune.Tuner.can_restore(directory)
    if resume and not exists:
        raise ValueError(f"--resume: no {what} to resume at {directory}; run without --resume to start one")
    if exists and not resume:
        raise ValueError(f"a {what} already exists at {directory}; pass --resume to continue it or use another --name")
    if resume:
        cfg = read_experiment(directory, type(cfg))
    base = plan(cfg, resources=ray.cluster_resources())
    if note := check_nodes_see(base):
        print(note, flush=True)
    return Experiment(cfg=cfg, directory=directory, base=base)


def _fit(
    experiment: Experiment, *, resume: bool, tune_config: Any, param_space: dict[str, Any], arms: dict | None, verbose: bool
) -> ExperimentResult:
    """The one Tuner setup: starts (saving the experiment's config) or restores the experiment, and waits for it."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, job=to_dict(experiment.cfg.training()), directory=experiment.directory,
            manifest=experiment.base.manifest, arms=arms, verbose=verbose,
        ),
        {"CPU": TRIAL_DRIVER_CPUS},
    )
    if resume:
        what = "search" if isinstance(experiment.cfg, SearchJobConfig) else "comparison"
        print(f"resuming {what} {experiment.cfg.run.name!r} from {experiment.directory}", flush=True)
        tuner = tune.Tuner.restore(experiment.directory, trainable=trainable, resume_unfinished=True, resume_errored=True)
        restored_config = tuner._local_tuner._tune_config  # the TuneConfig pickled when the experiment started
        restored = restore_rungs(
            restored_config.scheduler, experiment.directory, metric=restored_config.metric, mode=restored_config.mode
        )
        if restored:
            print(f"ASHA: {restored} earlier results back in its rungs", flush=True)
        return ExperimentResult(experiment.directory, tuner.fit())
    write_experiment(experiment.directory, experiment.cfg)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(name=experiment.cfg.run.name, storage_path=experiment.cfg.run.storage),
    )
    return ExperimentResult(experiment.directory, tuner.fit())


@dataclass(frozen=True)
class _EarlierTrial:
    trial_id: str


def restore_rungs(scheduler: Any, directory: str, *, metric: str, mode: str) -> int:
    """Puts the results of the trials already in `directory` back into a restored ASHA's rungs; returns how many.

    Ray 2.60 saves the searcher with an experiment but not the scheduler's rungs, so after `Tuner.restore`
    ASHA would compare the remaining trials only among themselves and stop fewer of them. Replaying every
    recorded epoch through the bracket (`_Bracket.on_result`, what ASHA does with a live result) rebuilds
    the cut-offs as they were. Uses ASHA's private state; checked by the Tune resume test.
    """
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from pipeline.report import load_trials
    from pipeline.storage import local_copy

    if not isinstance(scheduler, AsyncHyperBandScheduler):
        return 0
    sign = 1.0 if mode == "max" else -1.0  # ASHA keeps higher-is-better values, as its `_metric_op` does
    bracket, count = scheduler._brackets[0], 0  # one bracket: ASHAScheduler's default
    with local_copy(directory, include=lambda relative: relative.endswith((f"/{PARAMS_FILE}", f"/{RESULT_FILE}"))) as local:
        trials = load_trials(local.path)
    for trial in trials:
        for result in trial.results:
            if metric in result and scheduler._time_attr in result:
                bracket.on_result(_EarlierTrial(trial.trial_id), result[scheduler._time_attr], sign * result[metric])
                count += 1
    return count


def _trial_names() -> dict[str, Any]:
    """Tune's trial and folder names: `trial_<id>`, the names reports read back."""
    return {
        "trial_name_creator": lambda trial: trial_dir_name(trial.trial_id),
        "trial_dirname_creator": lambda trial: trial_dir_name(trial.trial_id),
    }


def search_objective(cfg: SearchJobConfig) -> tuple[str, str]:
    """(metric, mode) a search optimizes: `search.metric` and `search.mode`, else the task's own."""
    from pipeline.tasks import get_task

    if cfg.search.metric:
        return cfg.search.metric, cfg.search.mode
    task = get_task(cfg.task)
    return task.target_metric, task.mode


def run_search(cfg: SearchJobConfig, *, resume: bool = False, verbose: bool = False) -> ExperimentResult:
    """Starts, or with `resume` continues, the search named `cfg.run.name` in `cfg.run.storage`.

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not;
            or the config does not fit its data or the cluster.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    experiment = _open(cfg, resume=resume, what="search")
    cfg = experiment.cfg
    metric, mode = search_objective(cfg)
    points = paired_points(cfg)
    concurrency = _concurrency(cfg, experiment.base.use_gpu, cfg.search.max_concurrent, field="search.max_concurrent")
    if cfg.search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        search_alg = ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points, seed=cfg.run.seed), max_concurrent=concurrency)
    else:
        from ray.tune.search import BasicVariantGenerator

        # A search algorithm of our own ignores TuneConfig.max_concurrent_trials: limit it here.
        search_alg = BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.run.seed, max_concurrent=concurrency)
    if not resume:
        print(
            f"search {cfg.run.name!r}: {cfg.search.num_samples} trials ({len(points)} paired first: learned vs "
            f"{', '.join(cfg.search.fixed_arms) or 'none'}), {concurrency} at a time, ASHA on {metric} ({mode}) "
            f"(grace {cfg.search.grace_period} epochs, reduction {cfg.search.reduction_factor}), max "
            f"{cfg.optim.epochs} epochs -> {experiment.directory}",
            flush=True,
        )
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=cfg.optim.epochs, grace_period=cfg.search.grace_period,
        reduction_factor=cfg.search.reduction_factor,
    )
    tune_config = tune.TuneConfig(
        metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler, num_samples=cfg.search.num_samples,
        max_concurrent_trials=concurrency, **_trial_names(),
    )
    return _fit(experiment, resume=resume, tune_config=tune_config, param_space=search_space(cfg), arms=None, verbose=verbose)


def run_comparison(cfg: CompareJobConfig, *, resume: bool = False, verbose: bool = False) -> ExperimentResult:
    """Starts, or with `resume` continues, the comparison named `cfg.run.name`: every arm of
    `comparison_arms` x every seed of `compare.seeds`, each run for the full budget (no early stop).

    Raises:
        ValueError: the folder exists and `resume` is not set, or `resume` is set and it does not;
            or the config does not fit its data or the cluster.
    """
    from ray import tune

    experiment = _open(cfg, resume=resume, what="comparison")
    cfg = experiment.cfg
    arms = comparison_arms(cfg)
    task = experiment.base.task
    concurrency = _concurrency(cfg, experiment.base.use_gpu, cfg.compare.max_concurrent, field="compare.max_concurrent")
    if not resume:
        print(
            f"comparison {cfg.run.name!r}: {len(arms)} arms ({', '.join(arms)}) x {len(cfg.compare.seeds)} seeds "
            f"{list(cfg.compare.seeds)} = {len(arms) * len(cfg.compare.seeds)} trials of {cfg.optim.epochs} epochs, "
            f"{concurrency} at a time, {task.target_metric} against {cfg.compare.baseline} -> {experiment.directory}",
            flush=True,
        )
    # The loop keeps the best checkpoint by the task's metric and mode; Tune ranks trials the same way.
    tune_config = tune.TuneConfig(metric=task.target_metric, mode=task.mode, max_concurrent_trials=concurrency, **_trial_names())
    param_space = {"arm": tune.grid_search(list(arms)), "run.seed": tune.grid_search(list(cfg.compare.seeds))}
    return _fit(experiment, resume=resume, tune_config=tune_config, param_space=param_space, arms=arms, verbose=verbose)
