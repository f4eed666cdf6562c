"""The AVA quality job as a user runs it: the demo layout through data_prep, a subprocess, its own local Ray."""

import json

import pytest

from data_prep.ava import shard_ava
from data_prep.demo_layouts import generate_ava_demo
from data_prep.shards import ShardOptions
from pipeline.tasks import QualityTask

from tests.jobs.conftest import TINY_RESNET, check_reported, run_job_main, run_job_script


def test_print_config_is_nima_with_the_2x_resizer():
    code, out, err = run_job_main("ava_nima.py", "--print-config")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["task"] == "quality" and cfg["model"]["backbone"] == "inception_v3" and cfg["model"]["pretrained"]
    assert (cfg["data"]["resize_size"], cfg["data"]["crop_size"]) == (683, 598)  # 2 x 299 for Inception-v3
    assert cfg["data"]["eval_split"] == "test"
    cfg = json.loads(run_job_main("ava_nima.py", "--print-config", "--backbone", "efficientnet_b0")[1])
    assert cfg["model"]["backbone"] == "efficientnet_b0" and cfg["data"]["crop_size"] == 448


@pytest.mark.slow
def test_demo_trains_and_reports_every_quality_metric(tmp_path):
    src = generate_ava_demo(tmp_path / "raw", num_images=60, image_size=(64, 64), workers=1)
    shard_ava(src, str(tmp_path / "shards"), ShardOptions(shard_size=16, workers=1, verbose=False))
    result = run_job_script(
        "ava_nima.py", "--demo", "--data", str(tmp_path / "shards"), "--storage", str(tmp_path), "--name", "ava",
        *TINY_RESNET,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    records = check_reported(tmp_path / "ava" / "history.jsonl", output, QualityTask.metric_names, epochs=2)
    assert all(r["num_eval_samples"] == 12 for r in records)  # the whole 20% test split, once
    assert all(0.0 <= r["emd"] <= 1.0 and -1.0 <= r["srcc"] <= 1.0 for r in records)
