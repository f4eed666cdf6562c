"""The comparison job as a user runs it: arms x seeds through Tune, the report (its `main(args)` on the suite's
local Ray, `run_job_here`)."""

import json
import math
import os

import pytest

from data_prep.ava import shard_ava
from data_prep.demo_layouts import generate_ava_demo
from data_prep.shards import ShardOptions
from pipeline.tasks import QualityTask

from tests.jobs.conftest import TINY_RESNET, run_job_here, run_job_main

TINY = [
    "--set", "model.img_size=16",
    "--set", 'model.backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2}',
    "--set", "data.crop_size=32",
    "--set", "data.batch_size=4",
    "--set", "compare.learned=[[4, 1]]",
    "--set", "compare.muller=[]",  # MULLER trains in the AVA comparison below
    "--set", 'compare.fixed_arms=["bilinear"]',
    "--set", "compare.seeds=[0, 1]",
    "--set", "compare.max_concurrent=2",
    "--set", "compare.bootstrap=200",
    "--set", "optim.epochs=2",
]


def test_print_config_has_five_arms_and_three_seeds_at_the_recipe_input_size():
    code, out, err = run_job_main("compare_resizers.py", "--print-config")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["compare"]["learned"] == [[16, 1]] and cfg["compare"]["fixed_arms"] == ["bilinear", "bicubic", "area"]
    assert cfg["compare"]["muller"] == [2]
    assert cfg["compare"]["seeds"] == [0, 1, 2] and cfg["compare"]["full_res"] is False
    assert (cfg["data"]["crop_size"], cfg["run"]["num_workers"], cfg["data"]["batch_size"]) == (768, 1, 8)


@pytest.mark.slow
def test_two_arms_two_seeds_write_every_report_file(tiny_shards, tmp_path):
    mlflow = ["--set", f"run.mlflow={tmp_path / 'mlruns'}"]
    result = run_job_here("compare_resizers.py", "--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path), "--name", "cmp", *TINY, *mlflow)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    directory = tmp_path / "cmp"
    for name in ("comparison.md", "comparison.json", "comparison.html", "accuracy_per_arm.png",
                 "learning_curves.png", "resizer_grid_all.png"):
        assert (directory / name).stat().st_size > 0, name
    summary = json.loads((directory / "comparison.json").read_text())
    rows = {r["arm"]: r for r in summary["arms"]}
    assert set(rows) == {"learned_n4_r1", "bilinear"} and summary["metric"] == "top1"
    for row in rows.values():
        assert row["seeds"] == [0, 1] and row["final_estimate"]["n"] == 2
    assert rows["learned_n4_r1"]["difference_to_baseline"]["n"] == 2
    # per-image evidence from every trial's kept evaluation outputs: McNemar per seed, seeds x images bootstrap
    paired = rows["learned_n4_r1"]["paired"]
    assert [s["seed"] for s in paired["per_seed"]] == [0, 1] and all("mcnemar" in s for s in paired["per_seed"])
    assert all(s["images"] == 29 for s in paired["per_seed"])  # 30 test images, one corrupt (skipped in both arms)
    assert 0.0 <= rows["bilinear"]["final_bootstrap"]["low"] <= rows["bilinear"]["final_bootstrap"]["high"] <= 1.0
    # every trial trained its own seed for the full budget, in its own Train run inside the folder
    params = [json.loads(p.read_text()) for p in directory.glob("trial_*/params.json")]
    assert sorted((p["arm"], p["run.seed"]) for p in params) == [("bilinear", 0), ("bilinear", 1), ("learned_n4_r1", 0), ("learned_n4_r1", 1)]
    for history in directory.glob("train_*/history.jsonl"):
        assert [json.loads(line)["epoch"] for line in history.read_text().splitlines()] == [1, 2]
    assert "| learned_n4_r1 | 2 |" in result.stdout and "difference to bilinear" in result.stdout
    # MLflow: one run per trial, in an experiment named after the comparison, each with its epochs
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    assert sorted((r.data.params["resizer.kind"], r.data.params["run.seed"]) for r in runs) == [
        ("bilinear", "0"), ("bilinear", "1"), ("learned", "0"), ("learned", "1")]
    assert all(len(client.get_metric_history(r.info.run_id, "top1")) == 2 for r in runs)

    # --resume of a finished comparison: nothing is rerun, the report is written again
    results = {p: p.read_text() for p in directory.glob("trial_*/result.json")}
    (directory / "comparison.json").unlink()
    resumed = run_job_here("compare_resizers.py", "--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path), "--name", "cmp",
                           *TINY, *mlflow, "--resume")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "resuming comparison 'cmp'" in output
    assert {p: p.read_text() for p in directory.glob("trial_*/result.json")} == results
    assert json.loads((directory / "comparison.json").read_text())["arms"] == summary["arms"]


@pytest.mark.slow
def test_ava_comparison_reads_shards_from_s3_and_writes_runs_and_report_there(s3, tmp_path, capsys, no_local_ray):
    """The AVA comparison with its shards and its storage in a bucket of a real S3 server (moto on 127.0.0.1):
    Ray Data reads the shards, every trial's Train run and Tune's experiment are written there, and the
    report (and `python -m pipeline.compare` on the URI) goes beside them. The suite's local Ray starts again
    after the server (`no_local_ray`), so its workers have the endpoint in their environment, as a cluster's nodes would."""
    from pipeline import compare
    from pipeline.checkpoint import latest_checkpoint_meta, load_weights

    src = generate_ava_demo(tmp_path / "raw", num_images=60, image_size=(64, 64), workers=1)
    shard_ava(src, str(tmp_path / "shards"), ShardOptions(shard_size=16, workers=1, verbose=False))
    fs, bucket = s3.fs, s3.bucket("ava")
    fs.put(str(tmp_path / "shards"), "ava/shards", recursive=True)
    result = run_job_here(
        "compare_resizers.py", "--recipe", "ava", "--demo", "--data", f"{bucket}/shards", "--storage", f"{bucket}/runs", "--name", "cmp",
        *TINY_RESNET, "--set", "optim.epochs=1", "--set", "compare.learned=[]", "--set", "compare.muller=[2]",
        "--set", 'compare.fixed_arms=["bilinear"]', "--set", "compare.seeds=[0, 1]", "--set", "compare.max_concurrent=2",
        "--set", "compare.bootstrap=200",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "report:      s3://ava/runs/cmp/comparison.html" in result.stdout
    summary = json.loads(fs.cat_file("ava/runs/cmp/comparison.json"))
    assert summary["metric"] == "srcc" and summary["epochs"] == 1
    rows = {r["arm"]: r for r in summary["arms"]}
    assert set(rows) == {"muller_l2", "bilinear"}  # MULLER trains in front of the quality head
    srcc = rows["muller_l2"]["paired"]  # a paired bootstrap of the SRCC difference on the same 12 images per seed
    assert len(srcc["per_seed"]) == 2 and -2.0 <= srcc["difference"]["low"] <= srcc["difference"]["high"] <= 2.0
    for row in rows.values():
        assert row["final_estimate"]["n"] == 2 and -1.0 <= row["final_estimate"]["mean"] <= 1.0
    assert fs.size("ava/runs/cmp/resizer_grid_all.png") > 0
    assert "final srcc mean ± std" in result.stdout
    # every trial trained the AVA demo recipe (jobs/ava_nima.py) and logged every quality metric, over the whole test split
    runs = sorted(fs.glob("ava/runs/cmp/train_*"))
    assert len(runs) == 4
    for run in runs:
        for record in (json.loads(line) for line in fs.cat_file(f"{run}/history.jsonl").decode().splitlines()):
            assert all(math.isfinite(record[name]) for name in QualityTask.metric_names), record
            assert record["num_eval_samples"] == 12 and 0.0 <= record["emd"] <= 1.0 and -1.0 <= record["srcc"] <= 1.0
        checkpoint = f"{run}/{latest_checkpoint_meta(f's3://{run}')['checkpoint']}"
        assert fs.find(f"{checkpoint}/ds"), checkpoint  # the ZeRO shards went up with the weights
        weights = load_weights(f"s3://{checkpoint}")
        if weights["config"]["resizer"]["kind"] == "muller":
            assert weights["state_dict"]["resizer.weight"].abs().sum() > 0  # its scalars trained

    # the report command on the bucket's folder writes the report there again
    fs.rm("ava/runs/cmp/comparison.json")
    assert compare.main(["s3://ava/runs/cmp", "--no-grid"]) == 0
    assert "report: s3://ava/runs/cmp/comparison.html" in capsys.readouterr().out
    assert json.loads(fs.cat_file("ava/runs/cmp/comparison.json"))["arms"] == summary["arms"]


def test_class_demos_do_not_flip_their_mirror_classes():
    """tests/data_prep/test_demo.py shows a flip swaps the demo's mirror classes; AVA's score survives it."""
    from jobs import ava_nima, compare_resizers, cub_swinl, imagenet_resnet50

    for cfg in (cub_swinl.demo_config("x"), imagenet_resnet50.demo_config("x"),
                compare_resizers.demo_config("x", "cub"), compare_resizers.demo_config("x", "imagenet")):
        assert cfg.data.hflip is False, cfg.run.name
    assert ava_nima.demo_config("x").data.hflip and compare_resizers.demo_config("x", "ava").data.hflip
