"""MLflow logging of a run: ``--set run.mlflow=URI`` (a tracking server ``http://host:5000``, ``databricks``, or a
local folder for MLflow's file store, which needs no server).

Rank 0 opens the MLflow run through Ray's integration (`ray.air.integrations.mlflow.setup_mlflow`) in
experiment ``run.mlflow_experiment`` under the run's name, logs the resolved config as parameters (dotted
names: ``resizer.kind``, ``optim.lr``, ...) and every epoch's metrics at its optimizer step; the job then
adds the resizer grid PNG and ``history.jsonl`` as artifacts. The MLflow run id is kept in the run folder
(``mlflow_run.json``), so a resumed run keeps logging into the same MLflow run. Tune trials and comparison
arms are MLflow runs named after their trial, in an experiment named after the search (unless
``run.mlflow_experiment`` names one).

A local folder works on one machine; on a multi-node cluster point every node at one tracking server.
MLflow 3 keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set:
for a local folder we set it, in the processes that log.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from pipeline.config import JobConfig, to_dict
from pipeline.storage import filesystem

MLFLOW_RUN_FILE = "mlflow_run.json"
DEFAULT_EXPERIMENT = "learned_resizer"


def tracking_uri(uri: str) -> str:
    """A tracking URI for MLflow: a plain path becomes an absolute ``file:`` URI (and is allowed as a file store)."""
    if "://" in uri or uri.startswith("databricks"):
        local = uri.startswith("file:")
    else:
        uri, local = "file:" + os.path.abspath(os.path.expanduser(uri)), True
    if local:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return uri


def params(cfg: JobConfig) -> dict[str, Any]:
    """The config as MLflow parameters: dotted names, values as text (MLflow keeps at most 6000 characters)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else value

    walk("", to_dict(cfg))
    return flat


def _run_file(run_dir: str) -> tuple[Any, str]:
    fs, path = filesystem(run_dir)
    return fs, posixpath.join(path, MLFLOW_RUN_FILE)


def saved_run_id(run_dir: str) -> str | None:
    """The MLflow run id a run folder logged to, if any."""
    fs, path = _run_file(run_dir)
    if not fs.exists(path):
        return None
    with fs.open(path) as f:
        return json.load(f).get("run_id")


class MlflowLog:
    """Rank 0's MLflow run for a Train run (a no-op without ``run.mlflow``)."""

    def __init__(self, cfg: JobConfig, run_dir: str) -> None:
        self.mlflow: Any = None
        if not cfg.run.mlflow:
            return
        uri = tracking_uri(cfg.run.mlflow)
        previous = saved_run_id(run_dir)
        if previous is not None:
            import mlflow

            mlflow.set_tracking_uri(uri)
            mlflow.start_run(run_id=previous)  # a resumed run logs on where it stopped
            self.mlflow = mlflow
            return
        from ray.air.integrations.mlflow import setup_mlflow

        self.mlflow = setup_mlflow(
            params(cfg),
            tracking_uri=uri,
            experiment_name=cfg.run.mlflow_experiment or DEFAULT_EXPERIMENT,
            run_name=cfg.run.name,
            create_experiment_if_not_exists=True,
            tags={"run_dir": run_dir, "resizer": cfg.resizer.kind, "backbone": cfg.model.backbone, "task": cfg.task},
        )
        fs, path = _run_file(run_dir)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "w") as f:
            json.dump({"tracking_uri": uri, "run_id": self.mlflow.active_run().info.run_id}, f)

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        if self.mlflow is not None:
            numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.mlflow.log_metrics(numbers, step=int(metrics["step"]))

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None


def log_artifacts(cfg: JobConfig, run_dir: str, paths: list[str]) -> None:
    """Adds files (the resizer grid, the history) to the MLflow run this run folder logged to."""
    run_id = saved_run_id(run_dir) if cfg.run.mlflow else None
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(cfg.run.mlflow))
    for path in paths:
        if path and os.path.isfile(path):
            client.log_artifact(run_id, path)
