"""Heads' losses and metrics on fixed inputs, against direct numpy and scipy; tasks refuse the other task's shards."""

import numpy as np
import pytest
import torch
from scipy import stats

from data_prep.ava import shard_ava
from data_prep.demo_layouts import generate_ava_demo
from data_prep.shards import ShardOptions
from pipeline.config import DataConfig, JobConfig
from pipeline.runs import plan
from pipeline.tasks import ClassificationTask, QualityTask, emd_loss, get_task, mean_score

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 10)).astype(np.float32)
VOTES = RNG.integers(0, 40, size=(6, 10)).astype(np.float32)
SCORES = VOTES / VOTES.sum(-1, keepdims=True)
CPUS = {"CPU": 8}  # the cluster plan() checks against


def numpy_emd(logits: np.ndarray, target: np.ndarray, r: float = 2.0) -> np.ndarray:
    """EMD_r between softmax(logits) and target, written out: (1/K sum_k |CDF_p(k) - CDF_q(k)|^r)^(1/r)."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = []
    for pi, qi in zip(p, target):
        cdf_p = [sum(pi[: k + 1]) for k in range(len(pi))]
        cdf_q = [sum(qi[: k + 1]) for k in range(len(qi))]
        out.append(np.mean([abs(a - b) ** r for a, b in zip(cdf_p, cdf_q)]) ** (1 / r))
    return np.array(out)


def quality_outputs(logits: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    return QualityTask().eval_outputs(torch.tensor(logits), {"scores": torch.tensor(scores)})


def test_emd_matches_direct_numpy():
    emd = emd_loss(torch.tensor(LOGITS), torch.tensor(SCORES)).numpy()
    np.testing.assert_allclose(emd, numpy_emd(LOGITS, SCORES), rtol=1e-5)
    loss = QualityTask().loss(torch.tensor(LOGITS), {"scores": torch.tensor(SCORES)}).numpy()
    np.testing.assert_allclose(loss, numpy_emd(LOGITS, SCORES) ** 2, rtol=1e-5)  # the loss is the squared EMD (r=2)


def test_emd_of_opposite_ends_and_of_equal_distributions():
    all_on_1 = torch.full((1, 10), -1e4).index_fill(1, torch.tensor([0]), 0.0)  # softmax: all mass on score 1
    all_on_10 = torch.zeros(1, 10).index_fill(1, torch.tensor([9]), 1.0)
    assert emd_loss(all_on_1, all_on_10).item() == pytest.approx(np.sqrt(9 / 10))  # CDFs differ by 1 at 9 of 10 bins
    uniform = torch.full((1, 10), 0.1)
    assert emd_loss(torch.zeros(1, 10), uniform).item() == pytest.approx(0.0, abs=1e-6)


def test_srcc_lcc_and_mean_scores_match_scipy():
    outputs = quality_outputs(LOGITS, SCORES)
    softmax = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    pred, true = (softmax * np.arange(1, 11)).sum(-1), (SCORES * np.arange(1, 11)).sum(-1)
    np.testing.assert_allclose(outputs["pred_mean"], pred, rtol=1e-5)
    np.testing.assert_allclose(outputs["true_mean"], true, rtol=1e-5)
    metrics = QualityTask().eval_metrics(outputs)
    assert metrics["srcc"] == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-6)
    assert metrics["lcc"] == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-5)
    ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731 - Spearman = Pearson of ranks (no ties here)
    assert metrics["srcc"] == pytest.approx(np.corrcoef(ranks(pred), ranks(true))[0, 1], abs=1e-6)
    assert metrics["emd"] == pytest.approx(numpy_emd(LOGITS, SCORES).mean(), rel=1e-5)
    assert set(metrics) == set(QualityTask.metric_names)


def test_binary_accuracy_thresholds_the_mean_score_at_5():
    outputs = {
        "pred_mean": np.array([4.9, 5.1, 6.0, 3.0]),
        "true_mean": np.array([5.2, 5.3, 4.0, 2.0]),  # above 5: F/T, T/T, T/F, F/F
        "emd": np.zeros(4), "loss": np.zeros(4),
    }
    assert QualityTask().eval_metrics(outputs)["binary_accuracy"] == 0.5
    assert mean_score(np.eye(10, dtype=np.float32)[[0, 9]]).tolist() == [1.0, 10.0]


def test_constant_predictions_give_zero_correlation_not_nan():
    outputs = quality_outputs(np.zeros((4, 10), np.float32), SCORES[:4])
    metrics = QualityTask().eval_metrics(outputs)
    assert metrics["srcc"] == 0.0 and metrics["lcc"] == 0.0


def test_top1_and_top5_on_fixed_logits():
    logits = torch.tensor([
        [9.0, 8, 7, 6, 5, 4, 3],  # label 0: top-1
        [9.0, 8, 7, 6, 5, 4, 3],  # label 4: 5th best: top-5 only
        [9.0, 8, 7, 6, 5, 4, 3],  # label 6: neither
        [0.0, 0, 0, 1, 0, 0, 0],  # label 3: top-1
    ])
    labels = torch.tensor([0, 4, 6, 3])
    task = ClassificationTask()
    metrics = task.eval_metrics(task.eval_outputs(logits, {"label": labels}))
    assert metrics["top1"] == 0.5 and metrics["top5"] == 0.75
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics["eval_loss"] == pytest.approx(expected_loss)
    assert set(metrics) == set(ClassificationTask.metric_names)


def test_regression_metrics_and_a_loss_in_units_of_the_targets_std():
    true = RNG.normal(50_000.0, 8_000.0, size=32)
    pred = true + RNG.normal(0.0, 2_000.0, size=32)
    task = get_task("regression", {"target_stats": {"mean": 50_000.0, "std": 8_000.0}})
    assert task.output_affine() == (50_000.0, 8_000.0) and task.num_outputs({}) == 1
    outputs = task.eval_outputs(torch.tensor(pred)[:, None], {"value": torch.tensor(true)})
    metrics = task.eval_metrics(outputs)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-5)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-5)
    assert metrics["srcc"] == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-6)
    assert metrics["lcc"] == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-5)
    # The loss is the squared error over std²: the same numbers in other units give the same loss.
    scaled = get_task("regression", {"target_stats": {"mean": 5.0, "std": 0.8}})
    small = scaled.eval_metrics(scaled.eval_outputs(torch.tensor(pred / 1e4)[:, None], {"value": torch.tensor(true / 1e4)}))
    assert small["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)
    assert metrics["eval_loss"] == pytest.approx(np.mean(((pred - true) / 8_000.0) ** 2), rel=1e-4)
    assert task.chance(1) == 8_000.0  # the RMSE of always predicting the mean


def test_regression_targets_flag_rows_without_a_number():
    rows = {"meta": np.array(['{"target": 2.5}', '{"target": "x"}', "{}", "not json", '{"target": NaN}'], dtype=object)}
    targets, errors = get_task("regression").targets(rows)
    assert targets["value"][0] == 2.5 and errors[0] == ""
    assert errors[1:3] == ["sample has no numeric target"] * 2 and errors[3].startswith("unreadable metadata")
    assert errors[4] == "sample has no numeric target"
    with pytest.raises(ValueError, match="no target_stats"):
        get_task("regression", {"target": "value"})


def test_a_task_refuses_shards_of_the_other_target(tiny_shards, tmp_path):
    with pytest.raises(ValueError, match=r"target 'cls'; task='quality' needs target 'votes'"):
        plan(JobConfig(task="quality", data=DataConfig(path=tiny_shards["path"], resize_size=None, crop_size=32)), resources=CPUS)
    src = generate_ava_demo(tmp_path / "raw", num_images=8, image_size=(32, 32), workers=1)
    shard_ava(src, str(tmp_path / "ava"), ShardOptions(workers=1, verbose=False))
    with pytest.raises(ValueError, match=r"ava shards with target 'votes'; task='classification' needs target 'cls'"):
        plan(JobConfig(task="classification", data=DataConfig(path=str(tmp_path / "ava"), resize_size=None, crop_size=32)), resources=CPUS)
