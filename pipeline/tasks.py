"""Tasks differ by head size, targets, loss and metrics only; the data path and training loop are shared.

Each task implements the `Task` protocol: the data path asks it to decode a batch's targets
(`targets`), the loop moves its `columns` to the device and asks it for the loss and the metrics,
and the launcher asks it for the head size, the metric to keep the best checkpoint by and its mode.

- classification: cross-entropy; top-1, top-5 and loss.
- quality (AVA, NIMA): a 10-bin softmax over scores 1..10 trained with the squared EMD (r=2)
  between cumulative distributions; SRCC and LCC of the predicted mean score, EMD, and binary
  accuracy at mean score 5.
- regression (a numeric target per image, `data_prep csv --target-column`): one output in the
  target's units, trained with the squared error in units of the training targets' standard
  deviation (so any scale trains alike); RMSE, MAE, SRCC and LCC.

Evaluation collects a few numbers per sample on every rank (`eval_outputs`), gathers them, and
computes the metrics once on the whole split (`eval_metrics`), so rank counts never bias them.

Importing this module does not import torch (the methods that compute on tensors do): a task
travels inside the data path's transform to Ray Data's read tasks and coordinators, and a
process that only unpickles it should not pay ~2 CPU-s to load torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

NUM_SCORE_BINS = 10  # AVA votes for scores 1..10


class Task(Protocol):
    """What the data path, the loop and the launcher ask of a task.

    Attributes:
        name: the value of `JobConfig.task`.
        target: what data_prep's manifest says the samples carry ("cls", "votes", "value").
        data_description: the shards this task trains on, for messages.
        columns: the batch columns holding its targets (besides pixels and valid).
        target_metric: the evaluation metric the best checkpoint is kept by.
        mode: "max" when a higher `target_metric` is better, else "min".
        metric_names: every evaluation metric, in print order.
    """

    name: str
    target: str
    data_description: str
    columns: tuple[str, ...]
    target_metric: str
    mode: Literal["max", "min"]
    metric_names: tuple[str, ...]

    def num_outputs(self, manifest: dict[str, Any]) -> int:
        """Size of the head for the shards of this manifest."""

    def for_data(self, manifest: dict[str, Any]) -> Task:
        """This task set up for the shards of this manifest (regression takes the targets' scale)."""

    def output_affine(self) -> tuple[float, float] | None:
        """(shift, scale) the model applies to its head's output, or None (regression: mean and std)."""

    def targets(self, rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The target columns of a batch of shard rows (label, meta), and per row why its target is
        unusable ("" when it is fine): such a row is flagged and skipped, never trained on."""

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,)."""

    def eval_outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """A few numbers per evaluated sample, gathered across workers before `eval_metrics`."""

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """The metrics of a whole split from the gathered `eval_outputs`."""

    def prediction_rows(self, logits: torch.Tensor, class_names: list[str] | None, top: int) -> list[dict[str, Any]]:
        """What `pipeline.predict` writes per image: the top classes and probabilities, a mean score, a value."""

    def chance(self, num_outputs: int) -> float:
        """`target_metric` of a model that learned nothing (guessing)."""

    def chance_meaning(self, num_outputs: int) -> str:
        """What that chance level is, in words."""


def emd_loss(logits: torch.Tensor, target: torch.Tensor, r: float = 2.0) -> torch.Tensor:
    """Per-sample EMD between the softmax of `logits` and `target` distributions (B, K) → (B,).

    EMD_r(p, q) = (mean_k |CDF_p(k) - CDF_q(k)|^r)^(1/r), as in NIMA (Talebi & Milanfar 2018).
    The training loss is its r-th power for r=2 (the squared EMD), see `QualityTask.loss`.
    """
    import torch

    cdf_diff = torch.cumsum(logits.float().softmax(-1), -1) - torch.cumsum(target.float(), -1)
    return cdf_diff.abs().pow(r).mean(-1).pow(1.0 / r)


def mean_score(distribution: np.ndarray | torch.Tensor) -> Any:
    """Mean of a (B, 10) distribution over scores 1..10."""
    bins = np.arange(1, NUM_SCORE_BINS + 1, dtype=np.float32)
    if isinstance(distribution, np.ndarray):
        return (distribution * bins).sum(-1)
    import torch

    return (distribution * torch.as_tensor(bins, device=distribution.device)).sum(-1)


@dataclass(frozen=True)
class ClassificationTask:
    """Single-label classification over `num_classes` from the manifest."""

    name: str = "classification"
    target: str = "cls"  # the manifest's target: samples carry a class index
    data_description: str = "class-labelled (CUB, ImageNet)"
    columns: tuple[str, ...] = ("label",)
    target_metric: str = "top1"
    mode: Literal["max", "min"] = "max"
    metric_names: tuple[str, ...] = ("top1", "top5", "eval_loss")

    def num_outputs(self, manifest: dict[str, Any]) -> int:
        return int(manifest["num_classes"])

    def for_data(self, manifest: dict[str, Any]) -> Task:
        return self

    def output_affine(self) -> tuple[float, float] | None:
        return None

    def chance(self, num_outputs: int) -> float:
        return 1.0 / num_outputs

    def chance_meaning(self, num_outputs: int) -> str:
        return f"top-1 of a uniform guess over {num_outputs} classes"

    def targets(self, rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """label int64 (B,): the class index; a sample without one (-1) is flagged."""
        label = np.asarray(rows["label"], np.int64)
        return {"label": label}, ["" if value >= 0 else "sample has no class label (.cls)" for value in label]

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,)."""
        import torch.nn.functional as F

        # Rows flagged invalid (undecodable, a torn tar's tail) carry label -1; the loop masks their loss.
        return F.cross_entropy(logits.float(), batch["label"].clamp(min=0), reduction="none")

    def eval_outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        label = batch["label"]
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        return {
            "correct1": (top5[:, 0] == label).cpu().numpy(),
            "correct5": (top5 == label[:, None]).any(-1).cpu().numpy(),
            "loss": self.loss(logits, batch).cpu().numpy(),
        }

    def prediction_rows(self, logits: torch.Tensor, class_names: list[str] | None, top: int) -> list[dict[str, Any]]:
        """class_1, prob_1, ... class_k, prob_k (k = min(top, classes)), most probable first."""
        probabilities = logits.float().softmax(-1).cpu()
        values, indices = probabilities.topk(min(top, probabilities.shape[-1]), dim=-1)
        names = class_names or [str(i) for i in range(probabilities.shape[-1])]
        rows = []
        for p, i in zip(values.tolist(), indices.tolist()):
            row: dict[str, Any] = {}
            for rank, (probability, index) in enumerate(zip(p, i), start=1):
                row[f"class_{rank}"] = names[index]
                row[f"prob_{rank}"] = round(probability, 5)
            rows.append(row)
        return rows

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {
            "top1": float(outputs["correct1"].mean()),
            "top5": float(outputs["correct5"].mean()),
            "eval_loss": float(outputs["loss"].mean()),
        }


@dataclass(frozen=True)
class QualityTask:
    """AVA aesthetic quality: predict the 10-bin vote distribution (NIMA)."""

    name: str = "quality"
    target: str = "votes"  # the manifest's target: samples carry AVA vote counts
    data_description: str = "AVA"
    columns: tuple[str, ...] = ("scores",)
    target_metric: str = "srcc"
    mode: Literal["max", "min"] = "max"
    metric_names: tuple[str, ...] = ("srcc", "lcc", "emd", "binary_accuracy", "eval_loss")

    def num_outputs(self, manifest: dict[str, Any]) -> int:
        return NUM_SCORE_BINS

    def for_data(self, manifest: dict[str, Any]) -> Task:
        return self

    def output_affine(self) -> tuple[float, float] | None:
        return None

    def chance(self, num_outputs: int) -> float:
        return 0.0

    def chance_meaning(self, num_outputs: int) -> str:
        return "SRCC of predictions unrelated to the true mean scores"

    def targets(self, rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """scores float32 (B, 10): the normalized vote histogram from each sample's metadata; a
        sample without votes is flagged."""
        scores = np.zeros((len(rows["meta"]), NUM_SCORE_BINS), np.float32)
        errors = []
        for i, meta in enumerate(rows["meta"]):
            try:
                scores[i] = score_distribution(meta)
            except ValueError as err:  # metadata that is not JSON
                errors.append(f"unreadable metadata: {err}")
                continue
            errors.append("" if scores[i].sum() > 0 else "sample has no AVA votes")
        return {"scores": scores}, errors

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared EMD (r=2) per sample (B,)."""
        return emd_loss(logits, batch["scores"], r=2.0).square()

    def eval_outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        predicted = logits.float().softmax(-1)
        return {
            "pred_mean": mean_score(predicted).cpu().numpy(),
            "true_mean": mean_score(batch["scores"].float()).cpu().numpy(),
            "emd": emd_loss(logits, batch["scores"], r=2.0).cpu().numpy(),
            "loss": self.loss(logits, batch).cpu().numpy(),
        }

    def prediction_rows(self, logits: torch.Tensor, class_names: list[str] | None, top: int) -> list[dict[str, Any]]:
        """mean_score: the mean of the predicted score distribution (1..10)."""
        return [{"mean_score": round(float(s), 4)} for s in mean_score(logits.float().softmax(-1).cpu())]

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        pred, true = outputs["pred_mean"], outputs["true_mean"]
        return {
            **rank_correlations(pred, true),
            "emd": float(outputs["emd"].mean()),
            "binary_accuracy": float(((pred > 5.0) == (true > 5.0)).mean()),
            "eval_loss": float(outputs["loss"].mean()),
        }


@dataclass(frozen=True)
class RegressionTask:
    """One numeric target per image (a CSV's target column): a single output in the target's units.

    Attributes:
        mean, std: of the training split's targets (the manifest's `target_stats`). The model's output
            is `mean + std * head`, so the head starts near the mean whatever the units; the loss is
            the squared error divided by std² (1.0 = as bad as always predicting the mean).
    """

    name: str = "regression"
    target: str = "value"  # the manifest's target: samples carry a number in their json ("target")
    data_description: str = "numeric-target (data_prep csv --target-column)"
    columns: tuple[str, ...] = ("value",)
    target_metric: str = "rmse"
    mode: Literal["max", "min"] = "min"
    metric_names: tuple[str, ...] = ("rmse", "mae", "srcc", "lcc", "eval_loss")
    mean: float = 0.0
    std: float = 1.0

    def num_outputs(self, manifest: dict[str, Any]) -> int:
        return 1

    def for_data(self, manifest: dict[str, Any]) -> Task:
        stats = manifest.get("target_stats") or {}
        if "mean" not in stats or "std" not in stats:
            raise ValueError("the manifest has no target_stats {mean, std}; reshard with this version of data_prep csv")
        return dataclasses.replace(self, mean=float(stats["mean"]), std=max(float(stats["std"]), 1e-12))

    def output_affine(self) -> tuple[float, float] | None:
        return (self.mean, self.std)

    def chance(self, num_outputs: int) -> float:
        return self.std

    def chance_meaning(self, num_outputs: int) -> str:
        return "RMSE of always predicting the training mean (the targets' standard deviation)"

    def targets(self, rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """value float32 (B,): each sample's json "target"; a sample without a finite one is flagged."""
        value = np.zeros(len(rows["meta"]), np.float32)
        errors = []
        for i, meta in enumerate(rows["meta"]):
            try:
                number = json.loads(meta).get("target") if meta else None
            except ValueError as err:
                errors.append(f"unreadable metadata: {err}")
                continue
            ok = isinstance(number, (int, float)) and not isinstance(number, bool) and np.isfinite(number)
            value[i] = number if ok else 0.0
            errors.append("" if ok else "sample has no numeric target")
        return {"value": value}, errors

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared error in units of the training targets' std, per sample (B,)."""
        return ((logits.float()[:, 0] - batch["value"].float()) / self.std).square()

    def eval_outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {
            "pred": logits.float()[:, 0].cpu().numpy(),
            "true": batch["value"].float().cpu().numpy(),
            "loss": self.loss(logits, batch).cpu().numpy(),
        }

    def prediction_rows(self, logits: torch.Tensor, class_names: list[str] | None, top: int) -> list[dict[str, Any]]:
        """prediction: the value, in the target's units."""
        return [{"prediction": round(float(v), 6)} for v in logits.float()[:, 0].cpu()]

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        error = outputs["pred"].astype(np.float64) - outputs["true"]
        return {
            "rmse": float(np.sqrt(np.mean(error**2))),
            "mae": float(np.mean(np.abs(error))),
            **rank_correlations(outputs["pred"], outputs["true"]),
            "eval_loss": float(outputs["loss"].mean()),
        }


def rank_correlations(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """SRCC and LCC (Pearson) of predictions against truths; 0.0 where either side is constant."""
    from scipy import stats

    constant = len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0
    return {
        "srcc": 0.0 if constant else float(stats.spearmanr(pred, true).statistic),
        "lcc": 0.0 if constant else float(stats.pearsonr(pred, true).statistic),
    }


def score_distribution(meta: str) -> np.ndarray:
    """The normalized 10-bin vote histogram of an AVA sample's metadata (zeros when absent)."""
    votes = json.loads(meta).get("votes") if meta else None
    out = np.zeros(NUM_SCORE_BINS, np.float32)
    if votes and len(votes) == NUM_SCORE_BINS and sum(votes) > 0:
        out[:] = np.asarray(votes, np.float32) / float(sum(votes))
    return out


TASKS: dict[str, Task] = {"classification": ClassificationTask(), "quality": QualityTask(), "regression": RegressionTask()}


def get_task(name: str, manifest: dict[str, Any] | None = None) -> Task:
    """The task called `name`, set up for the shards of `manifest` when given (see `Task.for_data`)."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not allowed; choose one of {sorted(TASKS)}")
    return TASKS[name] if manifest is None else TASKS[name].for_data(manifest)


def task_for_target(target: str | None) -> Task | None:
    """The task that trains on shards whose manifest names this target, if any."""
    return next((t for t in TASKS.values() if t.target == target), None)
