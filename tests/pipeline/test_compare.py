"""The comparison's statistics against scipy on fixed numbers, and its report from a comparison folder."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from pipeline.compare import REPORT_FILES, format_table, paired_difference, summarize, t_interval, write_comparison, arm_runs
from pipeline.config import CompareConfig, CompareJobConfig, OptimConfig, to_dict
from pipeline.report import Trial

LEARNED = [0.48, 0.61, 0.55, 0.52]
BILINEAR = [0.11, 0.14, 0.10, 0.12]


def test_t_interval_matches_scipy():
    est = t_interval(LEARNED, 0.95)
    low, high = stats.t.interval(0.95, len(LEARNED) - 1, loc=np.mean(LEARNED), scale=stats.sem(LEARNED))
    assert est.n == 4 and est.mean == pytest.approx(np.mean(LEARNED))
    assert est.std == pytest.approx(np.std(LEARNED, ddof=1))
    assert (est.low, est.high) == (pytest.approx(low), pytest.approx(high))
    wide = t_interval(LEARNED, 0.99)
    assert wide.low < est.low and wide.high > est.high


def test_one_value_has_a_mean_and_no_interval():
    est = t_interval([0.5])
    assert est.mean == 0.5 and math.isnan(est.std) and math.isnan(est.low)
    with pytest.raises(ValueError):
        t_interval([])


def test_paired_difference_matches_a_paired_t_test_and_uses_common_seeds_only():
    diff = paired_difference(dict(enumerate(LEARNED)), {**dict(enumerate(BILINEAR)), 7: 0.9}, 0.95)
    differences = np.subtract(LEARNED, BILINEAR)
    assert diff.n == 4 and diff.mean == pytest.approx(differences.mean())
    ci = stats.ttest_rel(LEARNED, BILINEAR).confidence_interval(0.95)
    assert (diff.low, diff.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert paired_difference({0: 0.5}, {1: 0.4}) is None


def _trial(trial_id, arm, seed, curve):
    return Trial(trial_id, {"arm": arm, "run.seed": seed}, [{"epoch": e + 1, "top1": v} for e, v in enumerate(curve)])


def _runs():
    trials = [_trial(f"l{s}", "learned_n16_r1", s, [0.2, v]) for s, v in enumerate(LEARNED[:3])]
    trials += [_trial(f"b{s}", "bilinear", s, [0.1, v]) for s, v in enumerate(BILINEAR[:3])]
    trials += [_trial("c0", "bicubic", 0, [0.3])]  # unfinished: no final value, still has a best
    return arm_runs(trials, "top1")


def test_summary_uses_the_final_epoch_and_reports_the_best_beside_it():
    summary = summarize(_runs(), metric="top1", baseline="bilinear", epochs=2)
    rows = {r["arm"]: r for r in summary["arms"]}
    assert list(rows) == ["learned_n16_r1", "bilinear", "bicubic"]
    assert rows["learned_n16_r1"]["final_estimate"]["mean"] == pytest.approx(np.mean(LEARNED[:3]))
    assert rows["learned_n16_r1"]["difference_to_baseline"]["mean"] == pytest.approx(np.mean(np.subtract(LEARNED[:3], BILINEAR[:3])))
    assert rows["bilinear"]["difference_to_baseline"] is None
    assert rows["bicubic"]["final_estimate"] is None and rows["bicubic"]["unfinished_seeds"] == [0]
    assert rows["bicubic"]["best_estimate"]["mean"] == 0.3
    table = format_table(summary)
    assert "| learned_n16_r1 | 3 |" in table and "+0.430" in table and "(+1 unfinished)" in table


def _comparison_folder(directory, *, bootstrap: int = 1000, per_image: bool = False) -> None:
    """A comparison folder as run_comparison leaves it: the job, Tune's trial folders and, with `per_image`, each
    trial's Train run holding the per-sample outputs of its last epoch (its final top-1 of 100 images)."""
    from pipeline.checkpoint import write_eval_samples

    job = CompareJobConfig(optim=OptimConfig(epochs=2), compare=CompareConfig(fixed_arms=("bilinear", "bicubic"), bootstrap=bootstrap))
    (directory / "search_job.json").write_text(json.dumps(to_dict(job)))
    keys = np.array([f"k{i}" for i in range(100)])
    for runs in _runs().values():
        for trial in runs.values():
            folder = directory / f"trial_{trial.trial_id}"
            folder.mkdir()
            (folder / "params.json").write_text(json.dumps(trial.params))
            (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in trial.results))
            if per_image:
                correct = np.arange(100) < round(trial.results[-1]["top1"] * 100)
                outputs = {"key": keys, "correct1": correct, "correct5": np.ones_like(correct), "loss": 1.0 - correct}
                write_eval_samples(str(directory / f"train_{trial.trial_id}"), outputs, epoch=len(trial.results))


def test_report_files_from_a_comparison_folder(tmp_path):
    _comparison_folder(tmp_path)
    summary = write_comparison(tmp_path)  # no checkpoints here: no resizer grid, the rest is written
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["baseline"] == "bilinear" and len(saved["arms"]) == 3
    assert summary["verdicts"][0].startswith("learned_n16_r1 beats bilinear: +0.430 top1")
    assert "data:image/png;base64," in (tmp_path / "comparison.html").read_text()


def test_the_report_reads_every_trials_per_image_outputs(tmp_path):
    _comparison_folder(tmp_path, bootstrap=200, per_image=True)
    summary = write_comparison(tmp_path, grid=False)
    rows = {r["arm"]: r for r in summary["arms"]}
    assert rows["learned_n16_r1"]["paired"]["difference"]["low"] > 0 and rows["bilinear"]["paired"] is None
    assert rows["bicubic"]["final_bootstrap"] is None  # its one trial did not reach the final epoch
    assert summary["verdicts"][0].startswith("learned_n16_r1 beats bilinear: +0.430 top1")
    assert "McNemar p < 0.05 in 3 of 3 seeds" in summary["verdicts"][0]
    table = (tmp_path / "comparison.md").read_text()
    assert "seeds x images" in table and "s0: +0.370" in table
