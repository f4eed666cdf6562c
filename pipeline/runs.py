"""The run layer: a training config becomes one `Run` value that everything downstream uses.

`plan(cfg, resources=...)` checks the config against its data and the cluster's resources and
returns the `Run`: absolute storage and the run's folder, the task, what the manifest says (head
size, shard URLs, sample counts, class names), whether it trains on GPUs, and the checkpoint a
rerun resumes from. It reads the manifest (unless given) and asks the cluster for nothing (Ray Train
asks an autoscaler for its workers' nodes when the run starts).

`pipeline.launch.run(run)` trains a planned run; a job's `launch(cfg)` and every Tune trial call it.
Reports read runs back through `read_history` and the names of `pipeline.layout`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from pipeline.checkpoint import latest_checkpoint_meta, read_history
from pipeline.config import JobConfig, to_dict
from pipeline.layout import RUN_CONFIG_FILE, absolute_storage, is_uri, run_dir
from pipeline.manifest import read_manifest, shard_urls, split_size
from pipeline.storage import filesystem
from pipeline.tasks import Task, get_task, task_for_target
from pipeline.train import steps_per_epoch

__all__ = ["Run", "plan", "check_model_input", "check_nodes_see", "read_history", "with_absolute_storage"]


@dataclass(frozen=True)
class Run:
    """A planned training run: the config (storage absolute) and everything derived from it once.

    Attributes:
        cfg: the training config; `cfg.run.storage` is absolute or a URI.
        directory: `<storage>/<name>`, where checkpoints, history and TensorBoard logs go.
        task: the task of `cfg.task`.
        manifest: the shards' manifest.
        num_outputs: the head's size (classes, or score bins).
        train_urls: the training split's shards.
        eval_urls: the evaluation split's shards.
        num_train_samples: samples in the training split.
        num_eval_samples: samples in the evaluation split.
        use_gpu: one GPU per worker, else CPUs.
        resumes_from: `meta.json` of the checkpoint a rerun continues from (None: a new run).
        changes: {field: (saved, new)} for fields that change what is trained and differ from the saved
            config of the run it resumes: only with run.resume=allow_changes (fields that only extend or
            move a run, `RESUME_MAY_CHANGE`, are not listed).
    """

    cfg: JobConfig
    directory: str
    task: Task
    manifest: dict[str, Any]
    num_outputs: int
    train_urls: list[str]
    eval_urls: list[str]
    num_train_samples: int
    num_eval_samples: int
    use_gpu: bool
    resumes_from: dict[str, Any] | None
    changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the checkpoint it resumes from already holds every epoch of `cfg.optim.epochs`."""
        return self.resumes_from is not None and int(self.resumes_from.get("epoch", 0)) >= self.cfg.optim.epochs

    @property
    def elastic(self) -> bool:
        """Whether Ray Train may run it on fewer workers than `run.num_workers` (`run.min_workers`)."""
        return self.cfg.run.min_workers is not None and self.cfg.run.min_workers < self.cfg.run.num_workers

    @property
    def worker_range(self) -> tuple[int, int]:
        """(fewest, most) workers: equal unless elastic."""
        return (fewest_workers(self.cfg)[0], self.cfg.run.num_workers)

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("class_names")

    @property
    def target_stats(self) -> dict[str, float] | None:
        """Regression: the training targets' mean and std (the manifest's), else None."""
        return self.manifest.get("target_stats")

    def describe(self) -> str:
        """The one line a job prints before it trains."""
        cfg = self.cfg
        device = "GPU" if self.use_gpu else "CPU"
        line = (
            f"run {cfg.run.name!r}: {self.num_train_samples} train / {self.num_eval_samples} eval samples "
            f"({len(self.train_urls)}+{len(self.eval_urls)} shards), {self.num_outputs} outputs, "
            f"{'{}-{}'.format(*self.worker_range) if self.elastic else cfg.run.num_workers} {device} workers x batch {cfg.data.batch_size} x accum {cfg.optim.grad_accum}, "
            f"ZeRO-{cfg.deepspeed.zero_stage} {cfg.deepspeed.precision}, {cfg.optim.epochs} epochs -> {self.directory}"
        )
        if cfg.data.decode == "gpu":
            line += f"\n  images are decoded on the workers' {device}s (data.decode=gpu): Ray Data ships the JPEGs"
        if self.resumes_from is not None:
            line += f"\n  continues from {self.resumes_from['checkpoint']} (epoch {self.resumes_from.get('epoch')})"
            saved = self.resumes_from.get("world_size")
            if saved is not None and saved != cfg.run.num_workers:
                line += (
                    f", written by {saved} workers: their ZeRO-{self.resumes_from.get('zero_stage')} shards are "
                    "converted once to a universal checkpoint that loads on any number of workers"
                )
        if self.changes:
            line += "; changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.changes.items())
        return line


def with_absolute_storage(cfg: JobConfig) -> JobConfig:
    """The config with `run.storage` absolute (or a URI): Ray workers run in their own working directories."""
    storage = absolute_storage(cfg.run.storage)
    return cfg if storage == cfg.run.storage else dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, storage=storage))


def plan(cfg: JobConfig, *, resources: dict[str, float], manifest: dict[str, Any] | None = None) -> Run:
    """Validates a training config against its data and the cluster's resources; asks the cluster for nothing.

    Args:
        cfg: the training config (a search's or comparison's config gives its training part).
        resources: the cluster's resources (`ray.cluster_resources()`).
        manifest: the shards' manifest when the caller already read it; else it is read here.

    Raises:
        ValueError: (DataError included) naming the field and the fix.
    """
    cfg = with_absolute_storage(cfg.training())
    if cfg.model.checkpoint_path:
        cfg = _with_checkpoint_file(cfg)
    if cfg.run.mlflow:
        _check_mlflow(cfg)
    manifest = read_manifest(cfg.data.path) if manifest is None else manifest
    task = get_task(cfg.task)
    _check_target(cfg, task, manifest)
    task = task.for_data(manifest)
    num_outputs = task.num_outputs(manifest)
    train_urls = shard_urls(cfg.data.path, manifest, cfg.data.train_split)
    eval_urls = shard_urls(cfg.data.path, manifest, cfg.data.eval_split)
    num_train = split_size(manifest, cfg.data.train_split)
    if task.target == "cls":
        _check_classes(cfg, num_outputs)
    steps_per_epoch(num_train, cfg.run.num_workers, cfg.data.batch_size, cfg.optim.grad_accum)
    check_model_input(cfg, num_outputs)
    directory = run_dir(cfg.run.storage, cfg.run.name)
    previous = latest_checkpoint_meta(directory)
    changes = _check_resume(cfg, directory, previous)
    return Run(
        cfg=cfg,
        directory=directory,
        task=task,
        manifest=manifest,
        num_outputs=num_outputs,
        train_urls=train_urls,
        eval_urls=eval_urls,
        num_train_samples=num_train,
        num_eval_samples=split_size(manifest, cfg.data.eval_split),
        use_gpu=_check_resources(cfg, resources),
        resumes_from=previous,
        changes=changes,
    )


# Fields a rerun may change and still continue the same run: they extend it (more epochs; the cosine
# schedule then stretches over the new total) or change where and how it runs, not what it trains.
RESUME_MAY_CHANGE = frozenset({
    "optim.epochs",
    "run.num_workers", "run.min_workers", "run.cpus_per_worker", "run.use_gpu", "run.autoscale", "run.max_failures", "run.preemption_check_every",
    "run.checkpoint_every", "run.checkpoint_upload", "run.log_every", "run.resume", "run.storage", "run.mlflow", "run.mlflow_experiment",
    "data.num_cpus_per_read", "data.strict", "data.max_pixels", "optim.fused",
})


def config_changes(saved: dict[str, Any], cfg: JobConfig) -> dict[str, tuple[Any, Any]]:
    """{"section.field": (saved value, new value)} for every field that differs, but the ones in
    `RESUME_MAY_CHANGE`; local data paths compare as absolute paths. A field that `saved` lacks (a
    run written before the field existed) counts as its default: a new field defaults to the old behaviour
    or is one a rerun may change."""
    old = _flatten(to_dict(JobConfig())) | _flatten(saved)
    new = _flatten(to_dict(cfg))
    for flat in (old, new):
        if isinstance(flat.get("data.path"), str) and flat["data.path"] and not is_uri(flat["data.path"]):
            flat["data.path"] = os.path.abspath(flat["data.path"])
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if key not in RESUME_MAY_CHANGE and old.get(key) != new.get(key)
    }


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("backbone_kwargs",):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_resume(cfg: JobConfig, directory: str, previous: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Applies `run.resume` to a rerun; returns the changed fields it continues with."""
    name, policy = cfg.run.name, cfg.run.resume
    if policy == "never" and previous is not None:
        raise ValueError(
            f"run {name!r} already exists at {directory} (latest checkpoint {previous['checkpoint']}) and "
            f"run.resume=never; pass another --name, e.g. --name {name}-2"
        )
    if policy == "must" and previous is None:
        raise ValueError(f"run.resume=must but {directory} holds no checkpoint to resume; check --name and --storage")
    saved = read_run_config(directory) if previous is not None else None
    if saved is None:  # a new run, or one written before job.json existed
        return {}
    changes = config_changes(saved, cfg)
    if changes and policy != "allow_changes":
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise ValueError(
            f"run {name!r} at {directory} was trained with other values ({listed}); resuming would continue its "
            f"weights, optimizer and schedule under the new ones. Start a new run with --name {name}-2, or "
            "continue this one with the new values: --set run.resume=allow_changes"
        )
    return changes


def read_run_config(directory: str) -> dict[str, Any] | None:
    """The training config a run was last launched with (`job.json`), as plain data; None if absent."""
    fs, path = filesystem(directory)
    target = posixpath.join(path, RUN_CONFIG_FILE)
    return json.loads(fs.cat_file(target)) if fs.exists(target) else None


def write_run_config(run: Run) -> None:
    """Saves the config a run is launched with (`job.json`), which the next rerun compares against."""
    fs, path = filesystem(run.directory)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(posixpath.join(path, RUN_CONFIG_FILE), (json.dumps(to_dict(run.cfg), indent=1, sort_keys=True) + "\n").encode())


PROBE_TIMEOUT_S = 60


def check_nodes_see(run: Run) -> str | None:
    """The local paths the workers read and write must be the same files on every node: `data.path` (its
    manifest), `run.storage` (a file the driver writes there) and `model.checkpoint_path`. Each other
    alive node is asked by a 0-CPU task, before any worker is placed, so a path that only the driver's
    node has fails here and not after the GPUs are allocated. URIs are not probed; a node that does
    not answer within `PROBE_TIMEOUT_S` is skipped.

    Returns:
        A note to print when nothing could be probed but an autoscaler may add nodes later, else None.

    Raises:
        ValueError: a node does not see a path; names the node, the fields and the fix.
    """
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.manifest import MANIFEST

    cfg = run.cfg
    checks: list[tuple[str, str, str, int]] = []  # (field, value, file to look for, its size)
    if not is_uri(cfg.data.path):
        manifest = os.path.join(os.path.abspath(cfg.data.path.removeprefix("file://")), MANIFEST)
        checks.append(("data.path", cfg.data.path, manifest, os.path.getsize(manifest)))
    if cfg.model.checkpoint_path:
        checks.append(("model.checkpoint_path", cfg.model.checkpoint_path, cfg.model.checkpoint_path, os.path.getsize(cfg.model.checkpoint_path)))
    marker = None
    if not is_uri(cfg.run.storage):
        os.makedirs(cfg.run.storage, exist_ok=True)
        marker = os.path.join(cfg.run.storage, f".learned-resizer-probe-{uuid.uuid4().hex}")
        open(marker, "w").close()
        checks.append(("run.storage", cfg.run.storage, marker, 0))
    if not checks:
        return None
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    try:
        if not nodes:
            return (
                f"note: {', '.join(f'{field}={value}' for field, value, _, _ in checks)}: local to this node; the nodes an "
                "autoscaler adds must see the same files at the same paths (a shared filesystem), else use s3:// or gs://"
            ) if cfg.run.autoscale else None
        probe = ray.remote(num_cpus=0)(_file_sizes)
        asked = {
            node["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                [path for _, _, path, _ in checks]
            )
            for node in nodes
        }
        ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=PROBE_TIMEOUT_S)
        for node in nodes:
            if asked[node["NodeID"]] not in ready:
                continue
            sizes = ray.get(asked[node["NodeID"]])
            missing = [(field, value) for (field, value, _, size), seen in zip(checks, sizes) if seen != size]
            if missing:
                raise ValueError(_not_shared(missing, node))
    finally:
        if marker is not None:
            os.remove(marker)
    return None


def _file_sizes(paths: list[str]) -> list[int | None]:
    """Runs on a node: each file's size there, None where it has none."""
    return [os.path.getsize(path) if os.path.isfile(path) else None for path in paths]


def _not_shared(missing: list[tuple[str, str]], node: dict[str, Any]) -> str:
    named = " and ".join(f"{field}={value}" for field, value in missing)
    fixes = {
        "run.storage": "--storage on a filesystem every node mounts at the same path (NFS, EFS, Filestore) or in object storage (--storage s3://bucket/runs)",
        "data.path": "shards every node reads (object storage: python -m data_prep ... --out s3://bucket/shards, or a shared filesystem)",
        "model.checkpoint_path": "the weights file on a shared filesystem or baked into every node's image at the same path",
    }
    return (
        f"{named} {'is' if len(missing) == 1 else 'are'} not the same on node {node['NodeManagerAddress']} "
        f"({node['NodeID'][:12]}) as on this one: Train workers and data tasks run on every node. Use "
        + "; ".join(fixes[field] for field, _ in missing)
    )


def _with_checkpoint_file(cfg: JobConfig) -> JobConfig:
    """`model.checkpoint_path` made absolute (workers run in other folders) and checked before any worker starts."""
    path = os.path.abspath(os.path.expanduser(cfg.model.checkpoint_path or ""))
    if not os.path.isfile(path):
        raise ValueError(
            f"model.checkpoint_path={cfg.model.checkpoint_path!r} is not a file on this node ({path}); every Train "
            "worker loads it from the same path, so put it where all nodes see it (a shared filesystem, or baked "
            "into the nodes' image), or set model.checkpoint_path=none"
        )
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint_path=path))


def _check_mlflow(cfg: JobConfig) -> None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ValueError(
            f"run.mlflow={cfg.run.mlflow!r} but MLflow is not installed: pip install 'learned-resizer[mlflow]' "
            "(mlflow-skinny), or drop run.mlflow"
        )


def _check_target(cfg: JobConfig, task: Task, manifest: dict[str, Any]) -> None:
    if manifest.get("target") == task.target:
        return
    other = task_for_target(manifest.get("target"))
    raise ValueError(
        f"data.path={cfg.data.path!r} holds {manifest.get('dataset', '?')} shards with target "
        f"{manifest.get('target')!r}; task={cfg.task!r} needs target {task.target!r}. Point data.path at "
        f"{task.data_description} shards, or use task={other.name if other else '?'!r}"
    )


def _check_classes(cfg: JobConfig, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"data.path={cfg.data.path!r}: manifest has num_classes={num_classes}; need at least 2")
    if cfg.data.num_classes is not None and cfg.data.num_classes != num_classes:
        raise ValueError(
            f"data.num_classes={cfg.data.num_classes} but the manifest of data.path={cfg.data.path!r} lists "
            f"{num_classes} classes: wrong shards for this recipe? Point --data at the right shards, or "
            "set data.num_classes=none to train on what the shards hold"
        )


def fewest_workers(cfg: JobConfig) -> tuple[int, str]:
    """The fewest workers a run starts with, and the field that sets it (`run.min_workers` of an elastic run)."""
    if cfg.run.min_workers is not None:
        return cfg.run.min_workers, "run.min_workers"
    return cfg.run.num_workers, "run.num_workers"


def cpus_needed(cfg: JobConfig, workers: int) -> float:
    """CPUs a CPU run of `workers` Train workers needs: theirs plus one data read task."""
    return workers * cfg.run.cpus_per_worker + cfg.data.num_cpus_per_read


def _check_resources(cfg: JobConfig, resources: dict[str, float]) -> bool:
    """Whether the run trains on GPUs; raises when the cluster cannot host its workers."""
    gpus = resources.get("GPU", 0)
    use_gpu = cfg.run.use_gpu if cfg.run.use_gpu is not None else gpus > 0
    # An elastic run starts with as few as run.min_workers; an autoscaling cluster adds nodes on demand.
    fewest, field = fewest_workers(cfg)
    if use_gpu and gpus < fewest and not cfg.run.autoscale:
        raise ValueError(
            f"{field}={fewest} needs {fewest} GPUs; the cluster has "
            f"{gpus:g}. Lower {field}, add GPU nodes, or on an autoscaling cluster "
            "set run.autoscale=true to ask the autoscaler for them"
        )
    needed = cpus_needed(cfg, fewest)
    if not use_gpu and resources.get("CPU", 0) < needed and not cfg.run.autoscale:
        raise ValueError(
            f"{field}={fewest} x run.cpus_per_worker={cfg.run.cpus_per_worker:g} plus one "
            f"data task needs {needed:g} CPUs; the cluster has "
            f"{resources.get('CPU', 0):g}. Lower {field} or run.cpus_per_worker, or on an autoscaling "
            "cluster set run.autoscale=true"
        )
    if cfg.deepspeed.precision == "fp16" and not use_gpu:
        raise ValueError("deepspeed.precision='fp16' needs GPUs; on CPU use 'bf16' or 'fp32'")
    return bool(use_gpu)


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
