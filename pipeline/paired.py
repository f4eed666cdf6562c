"""Paired per-image statistics of a comparison: every arm is evaluated on the same images, so compare them image
by image, not only through 3 seed means.

Each trial's Train run keeps its last evaluation's per-sample outputs (`eval_samples.npz`: the sample key and
the task's `eval_outputs`). From those, for an arm against the baseline:

- per seed, the two runs' outputs are aligned by sample key; for classification, McNemar's exact test on the
  discordant images (right in one arm only: a binomial test against 1/2); for every task, a paired bootstrap
  of the metric's difference (the same resampled images for both arms);
- over seeds and images, a hierarchical bootstrap of the difference: resample seeds with replacement, then
  within each drawn seed resample its images (paired), and average the drawn seeds' differences;
- per arm, the same hierarchical bootstrap of the metric itself.

Every interval is a percentile interval of values of the metric (or of differences of it), so it stays inside
the metric's range: a top-1 interval never leaves [0, 1], an SRCC one [-1, 1]. Metrics are computed by the
task's own `eval_metrics`, exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.tasks import Task

Outputs = dict[str, np.ndarray]


def align(arm: Outputs, baseline: Outputs) -> tuple[Outputs, Outputs]:
    """Both runs' outputs on the images both evaluated, in the same order (by sample key)."""
    _, arm_index, base_index = np.intersect1d(arm["key"], baseline["key"], return_indices=True)
    return _rows(arm, arm_index), _rows(baseline, base_index)


def _rows(outputs: Outputs, index: np.ndarray | None = None) -> Outputs:
    """The per-sample arrays (not the key or the epoch), at `index` when given."""
    return {k: v if index is None else v[index] for k, v in outputs.items() if k not in ("key", "epoch")}


def metric_of(task: Task, outputs: Outputs, metric: str, index: np.ndarray | None = None) -> float:
    """`metric` of the outputs (or of the rows `index` of them), as the task computes it in training."""
    chosen = outputs if index is None else {k: v[index] for k, v in outputs.items()}
    return float(task.eval_metrics(chosen)[metric])


def mcnemar(arm_correct: np.ndarray, base_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: images only the arm gets right against images only the baseline gets right."""
    from scipy import stats

    arm_only = int(np.sum(arm_correct & ~base_correct))
    base_only = int(np.sum(~arm_correct & base_correct))
    discordant = arm_only + base_only
    p = 1.0 if discordant == 0 else float(stats.binomtest(arm_only, discordant, 0.5).pvalue)
    return {"arm_only": arm_only, "baseline_only": base_only, "p": p}


def _interval(values: np.ndarray, point: float, confidence: float) -> dict[str, float]:
    tail = (1.0 - confidence) / 2.0
    return {"mean": point, "low": float(np.quantile(values, tail)), "high": float(np.quantile(values, 1.0 - tail))}


def paired_bootstrap(
    task: Task, arm: Outputs, baseline: Outputs, metric: str, *, replicates: int, confidence: float, rng: np.random.Generator
) -> dict[str, float]:
    """The metric's difference arm - baseline on aligned outputs, with a paired bootstrap interval over images."""
    n = len(arm["loss"])
    draws = np.empty(replicates)
    for b in range(replicates):
        index = rng.integers(0, n, n)
        draws[b] = metric_of(task, arm, metric, index) - metric_of(task, baseline, metric, index)
    return _interval(draws, metric_of(task, arm, metric) - metric_of(task, baseline, metric), confidence)


def hierarchical_bootstrap(
    task: Task,
    seeds: Sequence[tuple[Outputs, Outputs | None]],
    metric: str,
    *,
    replicates: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Seeds, then images within each seed, resampled with replacement; the mean over drawn seeds of the metric
    (second of each pair None) or of the paired difference arm - baseline."""

    def value(pair: tuple[Outputs, Outputs | None], index: np.ndarray | None) -> float:
        arm, baseline = pair
        own = metric_of(task, arm, metric, index)
        return own if baseline is None else own - metric_of(task, baseline, metric, index)

    point = float(np.mean([value(pair, None) for pair in seeds]))
    draws = np.empty(replicates)
    for b in range(replicates):
        drawn = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        draws[b] = np.mean([value(pair, rng.integers(0, len(pair[0]["loss"]), len(pair[0]["loss"]))) for pair in drawn])
    return {**_interval(draws, point, confidence), "seeds": len(seeds)}


def compare_arm(
    task: Task,
    arm: dict[int, Outputs],
    baseline: dict[int, Outputs],
    metric: str,
    *,
    replicates: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per seed both arms have: the aligned images, the difference with its paired bootstrap interval and (for
    classification) McNemar's test; over those seeds, the hierarchical bootstrap of the difference."""
    rng = np.random.default_rng(seed)
    per_seed, pairs = [], []
    for run_seed in sorted(set(arm) & set(baseline)):
        mine, theirs = align(arm[run_seed], baseline[run_seed])
        if not len(mine["loss"]):
            continue
        row: dict[str, Any] = {"seed": run_seed, "images": len(mine["loss"])}
        row.update(paired_bootstrap(task, mine, theirs, metric, replicates=replicates, confidence=confidence, rng=rng))
        if "correct1" in mine:
            row["mcnemar"] = mcnemar(mine["correct1"].astype(bool), theirs["correct1"].astype(bool))
        per_seed.append(row)
        pairs.append((mine, theirs))
    if not pairs:
        return {"per_seed": [], "difference": None}
    difference = hierarchical_bootstrap(task, pairs, metric, replicates=replicates, confidence=confidence, rng=rng)
    return {"per_seed": per_seed, "difference": difference}


def arm_interval(
    task: Task, arm: dict[int, Outputs], metric: str, *, replicates: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float] | None:
    """The arm's metric over its seeds and images: hierarchical bootstrap, inside the metric's range."""
    if not arm:
        return None
    outputs = [(_rows(o), None) for _, o in sorted(arm.items())]
    rng = np.random.default_rng(seed)
    return hierarchical_bootstrap(task, outputs, metric, replicates=replicates, confidence=confidence, rng=rng)
