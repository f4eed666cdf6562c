"""Paired per-image statistics: McNemar on aligned images against scipy, bootstrap intervals inside the metric's range."""

import numpy as np
import pytest
from scipy import stats

from pipeline.compare import t_interval
from pipeline.paired import align, arm_interval, compare_arm, mcnemar
from pipeline.tasks import get_task


def _classified(correct: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
    return {"key": keys, "correct1": correct, "correct5": np.ones_like(correct), "loss": 1.0 - correct.astype(float),
            "epoch": np.int64(2)}


def test_mcnemar_counts_discordant_images_after_aligning_by_key():
    keys = np.array([f"img{i:03d}" for i in range(100)])
    rng = np.random.default_rng(0)
    base = rng.random(100) < 0.5
    arm = base.copy()
    arm[:20] = True  # right where the baseline was: 20 images flip to correct at most
    order = rng.permutation(100)[:95]  # the arm's file lists 95 of the images, shuffled
    mine, theirs = align(_classified(arm[order], keys[order]), _classified(base, keys))
    assert len(mine["correct1"]) == 95 and np.array_equal(mine["correct1"], arm[np.sort(order)])
    test = mcnemar(mine["correct1"], theirs["correct1"])
    only_arm = int(np.sum(arm[np.sort(order)] & ~base[np.sort(order)]))
    assert (test["arm_only"], test["baseline_only"]) == (only_arm, 0)
    assert test["p"] == pytest.approx(stats.binomtest(only_arm, only_arm, 0.5).pvalue)


def test_bootstrap_intervals_stay_inside_the_metric_range_where_a_t_interval_does_not():
    keys = np.array([f"k{i}" for i in range(200)])
    accuracies = {0: 0.99, 1: 0.70, 2: 0.98}  # like the demo's learned arm: one seed far below the others
    arm = {s: _classified(np.arange(200) < round(a * 200), keys) for s, a in accuracies.items()}
    assert t_interval(list(accuracies.values())).high > 1.0
    task = get_task("classification")
    own = arm_interval(task, arm, "top1", replicates=300)
    assert 0.0 <= own["low"] <= own["mean"] <= own["high"] <= 1.0 and own["mean"] == pytest.approx(np.mean(list(accuracies.values())))
    base = {s: _classified(np.arange(200) % 4 == 0, keys) for s in accuracies}
    evidence = compare_arm(task, arm, base, "top1", replicates=300)
    assert [s["seed"] for s in evidence["per_seed"]] == [0, 1, 2] and all(s["mcnemar"]["p"] < 1e-6 for s in evidence["per_seed"])
    difference = evidence["difference"]
    assert -1.0 <= difference["low"] < difference["mean"] < difference["high"] <= 1.0 and difference["low"] > 0

    # quality: a paired bootstrap of the SRCC difference, every interval inside [-1, 1] for one arm
    quality = get_task("quality")
    rng = np.random.default_rng(1)
    true = rng.normal(5, 1, 300)

    def outputs(noise: float) -> dict[str, np.ndarray]:
        return {"key": np.array([f"a{i}" for i in range(300)]), "pred_mean": true + rng.normal(0, noise, 300),
                "true_mean": true, "emd": np.full(300, 0.1), "loss": np.full(300, 0.01), "epoch": np.int64(1)}

    sharp, blurry = {0: outputs(0.3), 1: outputs(0.3)}, {0: outputs(2.0), 1: outputs(2.0)}
    srcc = compare_arm(quality, sharp, blurry, "srcc", replicates=200)
    assert srcc["difference"]["low"] > 0 and "mcnemar" not in srcc["per_seed"][0]
    for interval in (arm_interval(quality, sharp, "srcc", replicates=200), arm_interval(quality, blurry, "srcc", replicates=200)):
        assert -1.0 <= interval["low"] <= interval["high"] <= 1.0
