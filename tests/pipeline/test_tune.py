import json

import pytest

from pipeline.config import CompareJobConfig, DataConfig, JobConfig, RunConfig, SearchConfig, SearchJobConfig, apply_overrides
from pipeline.report import write_report
from pipeline.tune import SEARCHED, check_concurrency, max_concurrent_trials, paired_points, search_space, trial_config


def test_search_space_covers_every_searched_field():
    space = search_space(SearchJobConfig(search=SearchConfig(lr=(1e-5, 1e-3))))
    assert set(space) == set(SEARCHED)
    assert space["optim.lr"].lower == 1e-5 and space["optim.lr"].upper == 1e-3  # log-uniform range
    assert space["resizer.kind"].categories == ["learned", "muller"]  # the families; fixed arms come as paired points
    assert space["resizer.muller_layers"].categories == [1, 2, 3]
    optuna = search_space(SearchJobConfig(search=SearchConfig(algorithm="optuna", fixed_arms=("bilinear", "area"))))
    assert optuna["resizer.kind"].categories == ["learned", "muller", "bilinear", "area"]
    muller_first = search_space(apply_overrides(SearchJobConfig(), ["resizer.kind=muller"]))
    assert muller_first["resizer.kind"].categories == ["muller", "learned"]  # the job's own family leads


def test_paired_points_differ_only_in_the_resizer():
    cfg = SearchJobConfig(search=SearchConfig(num_samples=6, fixed_arms=("bilinear", "bicubic_aa")))
    learned, *others = paired_points(cfg)
    assert learned["resizer.kind"] == "learned" and [p["resizer.kind"] for p in others] == ["muller", "bilinear", "bicubic_aa"]
    assert learned["resizer.muller_layers"] == 2
    for point in others:
        assert {k: v for k, v in point.items() if k != "resizer.kind"} == {k: v for k, v in learned.items() if k != "resizer.kind"}
    assert learned["resizer.num_filters"] == 16 and learned["data.crop_size"] == 768
    assert 5e-6 <= learned["optim.resizer_lr"] <= 5e-4


def test_trial_config_sets_values_and_keeps_the_resize_ratio():
    cfg = JobConfig(data=DataConfig(resize_size=1020, crop_size=768))
    trial = trial_config(cfg, {"resizer.num_filters": 32, "data.crop_size": 384, "optim.resizer_lr": 1e-3})
    assert trial.resizer.num_filters == 32 and trial.optim.resizer_lr == 1e-3
    assert (trial.data.crop_size, trial.data.resize_size) == (384, 510)


def test_concurrency_is_derived_from_the_cluster():
    cfg = JobConfig(run=RunConfig(num_workers=2, cpus_per_worker=1))
    assert max_concurrent_trials(cfg, {"CPU": 8}, use_gpu=False) == 2  # driver + 2 workers + 1 read task
    assert max_concurrent_trials(cfg, {"CPU": 64, "GPU": 16}, use_gpu=True) == 8
    assert max_concurrent_trials(cfg, {"CPU": 8}, use_gpu=False, limit=3) == 3  # search/compare.max_concurrent


def test_a_concurrency_that_leaves_no_cpu_to_read_with_is_refused():
    """4 one-worker trials on 8 CPUs reserve all 8: Ray Data's read tasks never start and the comparison
    waits forever (measured: killed after 10 minutes). 2 leave 4 CPUs; 3 two-worker trials place only 2."""
    one = JobConfig(run=RunConfig(num_workers=1, cpus_per_worker=1))
    with pytest.raises(ValueError) as err:
        check_concurrency(one, {"CPU": 8.0}, False, 4, field="compare.max_concurrent")
    assert str(err.value) == (
        "compare.max_concurrent=4: 4 trial(s) at once reserve 8 of the cluster's 8 CPUs (a driver and 1 worker(s) x 1 CPU "
        "each), leaving 0 for Ray Data's read tasks (1 CPU each): every trial would wait for data; set "
        "compare.max_concurrent to 2 or less (unset: derived from the cluster)"
    )
    check_concurrency(one, {"CPU": 8.0}, False, 2, field="compare.max_concurrent")
    check_concurrency(JobConfig(run=RunConfig(num_workers=2, cpus_per_worker=1)), {"CPU": 8.0}, False, 3, field="x")
    check_concurrency(one, {"CPU": 8.0, "GPU": 8.0}, True, 8, field="x")  # GPU trials: reads run on the CPUs left
    autoscaling = JobConfig(run=RunConfig(num_workers=1, cpus_per_worker=1, autoscale=True))
    check_concurrency(autoscaling, {"CPU": 8.0}, False, 4, field="x")  # the cluster grows
    with pytest.raises(ValueError, match="give the cluster more CPUs"):
        check_concurrency(one, {"CPU": 2.0}, False, 1, field="search.max_concurrent")


def test_search_config_validation():
    with pytest.raises(ValueError, match="fewer than the paired points"):
        SearchConfig(num_samples=2, fixed_arms=("bilinear",))
    with pytest.raises(ValueError, match="search.families"):
        SearchConfig(families=("learned", "bilinear"))
    with pytest.raises(ValueError, match=r"search.lr=\(0.001, 1e-05\) must be \[low, high\]"):
        SearchConfig(lr=(1e-3, 1e-5))


def _fake_search(directory, trials):
    """A search folder as Tune writes it: trial_<id>/params.json and result.json lines."""
    (directory / "search_job.json").write_text(json.dumps({"task": "classification", "optim": {"epochs": 4}}))
    for trial_id, params, curve in trials:
        folder = directory / f"trial_{trial_id}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(params))
        (folder / "result.json").write_text("".join(json.dumps({"epoch": e + 1, "top1": v}) + "\n" for e, v in enumerate(curve)))


def test_report_from_a_search_folder(tmp_path):
    learned = {"resizer.kind": "learned", "resizer.num_filters": 16, "optim.resizer_lr": 1e-3}
    _fake_search(
        tmp_path,
        [
            ("a", learned, [0.2, 0.4, 0.6, 0.7]),
            ("b", {**learned, "resizer.kind": "bilinear"}, [0.2, 0.25]),
            ("c", {**learned, "resizer.num_filters": 32}, [0.1, 0.2]),
        ],
    )
    summary = write_report(tmp_path)
    assert summary["best_trial"] == "a" and summary["best_top1"] == 0.7
    assert summary["best_config"] == learned
    assert (summary["trial_epochs_run"], summary["trial_epochs_full"]) == (8, 12)
    assert summary["num_stopped_early"] == 2
    for name in ("report.html", "curves.png", "hyperparameters.png", "trials.csv", "tune_summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page and "8 trial-epochs run of 12" in page
    assert json.loads((tmp_path / "tune_summary.json").read_text())["compute_fraction"] == pytest.approx(8 / 12)


def test_report_of_a_folder_without_trials_says_so(tmp_path):
    with pytest.raises(ValueError, match="no search_job.json"):
        write_report(tmp_path)
    (tmp_path / "search_job.json").write_text(json.dumps({"task": "classification", "optim": {"epochs": 4}}))
    with pytest.raises(ValueError, match="no trial folders"):
        write_report(tmp_path)


def test_comparison_arms_change_only_the_resizer_or_the_backbone_input():
    from pipeline.tune import comparison_arms

    cfg = apply_overrides(CompareJobConfig(), ["compare.learned=[[16, 1], [32, 2]]", "compare.full_res=true"])
    arms = comparison_arms(cfg)
    assert list(arms) == ["learned_n16_r1", "learned_n32_r2", "muller_l2", "bilinear", "bicubic", "area", "full_res"]
    muller = trial_config(cfg, {"arm": "muller_l2", "run.seed": 1}, arms)
    assert (muller.resizer.kind, muller.resizer.muller_layers) == ("muller", 2) and muller.model == cfg.model
    trial = trial_config(cfg, {"arm": "learned_n32_r2", "run.seed": 2}, arms)
    assert (trial.resizer.kind, trial.resizer.num_filters, trial.resizer.num_res_blocks, trial.run.seed) == ("learned", 32, 2, 2)
    assert trial.data == cfg.data and trial.optim == cfg.optim and trial.model == cfg.model
    assert type(trial) is JobConfig  # a trial trains: the comparison section stays on the driver
    full = trial_config(cfg, {"arm": "full_res", "run.seed": 0}, arms)
    assert (full.resizer.kind, full.model.img_size) == ("bilinear", cfg.data.crop_size)


def test_compare_config_validation():
    from pipeline.config import CompareConfig

    with pytest.raises(ValueError, match="compare.baseline='bicubic' must be one of compare.fixed_arms"):
        CompareConfig(fixed_arms=("bilinear",), baseline="bicubic")
    with pytest.raises(ValueError, match="compare.seeds"):
        CompareConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="not allowed"):
        CompareConfig(fixed_arms=("learned", "bilinear"))
