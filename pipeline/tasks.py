"""Tasks differ by head size, loss and metrics only; the data path and training loop are shared.

- classification: cross-entropy; top-1, top-5 and loss.
- quality (AVA, NIMA): a 10-bin softmax over scores 1..10 trained with the squared EMD (r=2)
  between cumulative distributions; SRCC and LCC of the predicted mean score, EMD, and binary
  accuracy at mean score 5.

Evaluation collects a few numbers per sample on every rank (`eval_outputs`), gathers them, and
computes the metrics once on the whole split (`eval_metrics`), so rank counts never bias them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import NUM_SCORE_BINS


def emd_loss(logits: torch.Tensor, target: torch.Tensor, r: float = 2.0) -> torch.Tensor:
    """Per-sample EMD between the softmax of `logits` and `target` distributions (B, K) → (B,).

    EMD_r(p, q) = (mean_k |CDF_p(k) - CDF_q(k)|^r)^(1/r), as in NIMA (Talebi & Milanfar 2018).
    The training loss is its r-th power for r=2 (the squared EMD), see `QualityTask.loss`.
    """
    cdf_diff = torch.cumsum(logits.float().softmax(-1), -1) - torch.cumsum(target.float(), -1)
    return cdf_diff.abs().pow(r).mean(-1).pow(1.0 / r)


def mean_score(distribution: np.ndarray | torch.Tensor) -> Any:
    """Mean of a (B, 10) distribution over scores 1..10."""
    bins = np.arange(1, NUM_SCORE_BINS + 1, dtype=np.float32)
    if isinstance(distribution, torch.Tensor):
        return (distribution * torch.as_tensor(bins, device=distribution.device)).sum(-1)
    return (distribution * bins).sum(-1)


@dataclass(frozen=True)
class ClassificationTask:
    """Single-label classification over `num_classes` from the manifest."""

    name: str = "classification"
    target: str = "cls"  # the manifest's target: samples carry a class index
    target_metric: str = "top1"
    metric_names: tuple[str, ...] = ("top1", "top5", "eval_loss")

    def num_outputs(self, manifest: dict[str, Any]) -> int:
        return int(manifest["num_classes"])

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,)."""
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
    target_metric: str = "srcc"
    metric_names: tuple[str, ...] = ("srcc", "lcc", "emd", "binary_accuracy", "eval_loss")

    def num_outputs(self, manifest: dict[str, Any]) -> int:
        return NUM_SCORE_BINS

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

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        from scipy import stats

        pred, true = outputs["pred_mean"], outputs["true_mean"]
        constant = len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0
        return {
            "srcc": 0.0 if constant else float(stats.spearmanr(pred, true).statistic),
            "lcc": 0.0 if constant else float(stats.pearsonr(pred, true).statistic),
            "emd": float(outputs["emd"].mean()),
            "binary_accuracy": float(((pred > 5.0) == (true > 5.0)).mean()),
            "eval_loss": float(outputs["loss"].mean()),
        }


TASKS = {"classification": ClassificationTask(), "quality": QualityTask()}


def get_task(name: str) -> ClassificationTask | QualityTask:
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not allowed; choose one of {sorted(TASKS)}")
    return TASKS[name]
