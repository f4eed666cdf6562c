"""The generic recipe on a user's own shards: the backbone's own input size, the task and evaluation split
from the manifest, the resizer at --ratio x; the comparison of resizers on those shards; and a regression
on a CSV's numeric column trained end to end, logged to MLflow, predicted and exported in the target's units."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.ava import shard_ava
from data_prep.demo_layouts import generate_ava_demo
from data_prep.folder import shard_folder
from data_prep.shards import ShardOptions
from pipeline.config import apply_overrides
from pipeline.runs import plan

from tests.data_prep.test_folder import make_tree
from tests.jobs.conftest import check_reported, run_job_here, run_job_main

OPTIONS = ShardOptions(shard_size=8, workers=1, verbose=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("own")
    shard_folder(make_tree(root / "photos"), str(root / "shards"), OPTIONS)
    return str(root / "shards")


def test_the_backbone_sets_the_sizes_and_the_shards_set_the_task(photos: str, tmp_path: Path) -> None:
    code, out, err = run_job_main("finetune.py", "--print-config", "--data", photos, "--backbone", "efficientnet_b0")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["model"]["backbone"] == "efficientnet_b0" and cfg["model"]["pretrained"]
    assert (cfg["data"]["resize_size"], cfg["data"]["crop_size"]) == (512, 448)  # 2 x 224, and 256/224 of it
    assert cfg["task"] == "classification" and cfg["data"]["eval_split"] == "val" and cfg["resizer"]["zero_init_last"]
    cfg = json.loads(run_job_main("finetune.py", "--print-config", "--data", photos, "--backbone", "inception_v3", "--ratio", "1.5")[1])
    assert cfg["data"]["crop_size"] == 448  # 1.5 x 299

    ava = generate_ava_demo(tmp_path / "raw", num_images=20, image_size=(32, 32), workers=1)
    shard_ava(ava, str(tmp_path / "ava"), OPTIONS)
    cfg = json.loads(run_job_main("finetune.py", "--print-config", "--data", str(tmp_path / "ava"))[1])
    assert cfg["task"] == "quality" and cfg["data"]["eval_split"] == "test"

    code, _, err = run_job_main("finetune.py", "--print-config", "--data", photos, "--backbone", "resnet5O")
    assert code == 2 and "'resnet5O' is not a timm model" in err


def test_the_demo_plans_and_the_comparison_takes_the_recipe(photos: str) -> None:
    from jobs import finetune

    cfg = apply_overrides(finetune.demo_config(photos), ["data.batch_size=2"])  # 12 training images here
    run = plan(cfg, resources={"CPU": 8.0})  # checks the data, the sizes and the model's input
    assert run.num_outputs == 3 and run.cfg.data.eval_split == "val"
    code, out, err = run_job_main("compare_resizers.py", "--print-config", "--recipe", "finetune", "--data", photos, "--backbone", "resnet18")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["model"]["backbone"] == "resnet18" and cfg["data"]["path"] == photos and cfg["data"]["eval_split"] == "val"
    assert cfg["compare"]["fixed_arms"] == ["bilinear", "bicubic", "area"]


def price_table(root: Path, count: int = 48) -> Path:
    """Images whose brightness sets a price in the tens of thousands: a target far from the head's scale."""
    rng = np.random.default_rng(0)
    lines = ["image,price"]
    for i in range(count):
        brightness = rng.uniform(20, 235)
        pixels = np.clip(rng.normal(brightness, 20, size=(64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"house {i}.jpg", quality=92)
        lines.append(f"house {i}.jpg,{50_000 + 1_000 * brightness:.1f}")
    (root / "prices.csv").write_text("\n".join(lines) + "\n")
    return root / "prices.csv"


@pytest.mark.slow
@pytest.mark.ray
def test_a_regression_trains_logs_to_mlflow_and_predicts_in_the_targets_units(tmp_path: Path) -> None:
    from data_prep.__main__ import main as data_prep_main
    from pipeline.export import export
    from pipeline.predict import predict
    from pipeline.trained import load_trained

    (tmp_path / "raw").mkdir()
    table = price_table(tmp_path / "raw")
    assert data_prep_main(["csv", "--src", str(table), "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "shards"),
                           "--target-column", "price", "--quiet"]) == 0
    stats = json.loads((tmp_path / "shards" / "manifest.json").read_text())["target_stats"]
    mlruns = tmp_path / "mlruns"
    result = run_job_here(
        "finetune.py", "--demo", "--data", str(tmp_path / "shards"), "--storage", str(tmp_path), "--name", "prices",
        "--set", "optim.epochs=3", "--set", f"run.mlflow={mlruns}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = check_reported(tmp_path / "prices" / "history.jsonl", result.stdout, ("rmse", "mae", "srcc", "lcc"), 3)
    assert "chance: " in result.stdout and f"{stats['std']:.3f}" in result.stdout  # the RMSE of predicting the mean
    assert history[-1]["srcc"] > 0.5  # brightness is learnable in 3 epochs (0.97 measured)

    # Predicting the evaluation split gives the metrics the run logged, in the target's units.
    trained = load_trained(str(tmp_path / "prices"))  # the run folder: its best (lowest-RMSE) checkpoint
    logged = next(record for record in history if record["epoch"] == trained.epoch)
    predictions = predict(trained, shards=str(tmp_path / "shards"), batch_size=8, progress=False)
    for name in ("rmse", "mae", "srcc"):
        assert predictions.metrics[name] == pytest.approx(logged[name], rel=1e-4), name
    values = [row["prediction"] for row in predictions.rows]
    assert stats["min"] - 2 * stats["std"] < np.mean(values) < stats["max"] + 2 * stats["std"]
    onnx = export(trained, format="onnx", out=str(tmp_path / "prices.onnx"))
    assert onnx.output_shape == (3, 1) and onnx.max_abs_diff < 1e-5 * stats["max"]  # relative: outputs are prices

    # MLflow: params, every epoch's metrics at its step, the resizer grid and the history.
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{mlruns}")
    (run,) = client.search_runs([client.get_experiment_by_name("learned_resizer").experiment_id])
    assert run.info.run_name == "prices" and run.data.params["resizer.kind"] == "learned"
    assert run.data.params["task"] == "regression" and run.data.tags["run_dir"] == str(tmp_path / "prices")
    logged = client.get_metric_history(run.info.run_id, "rmse")
    assert [(m.step, m.value) for m in logged] == [(r["step"], pytest.approx(r["rmse"])) for r in history]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"history.jsonl", "resizer_grid.png"}
