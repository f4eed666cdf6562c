"""The AVA quality job: its recipe and its demo on AVA-layout shards made by data_prep."""

import json

from data_prep.ava import shard_ava
from data_prep.demo_layouts import generate_ava_demo
from data_prep.shards import ShardOptions
from pipeline.runs import plan

from tests.jobs.conftest import run_job_main


def test_print_config_is_nima_with_the_2x_resizer():
    code, out, err = run_job_main("ava_nima.py", "--print-config")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["task"] == "quality" and cfg["model"]["backbone"] == "inception_v3" and cfg["model"]["pretrained"]
    assert (cfg["data"]["resize_size"], cfg["data"]["crop_size"]) == (683, 598)  # 2 x 299 for Inception-v3
    assert cfg["data"]["eval_split"] == "test"
    cfg = json.loads(run_job_main("ava_nima.py", "--print-config", "--backbone", "efficientnet_b0")[1])
    assert cfg["model"]["backbone"] == "efficientnet_b0" and cfg["data"]["crop_size"] == 448


def test_the_demo_plans_on_ava_layout_shards(tmp_path):
    """The demo's config against real AVA-layout shards, as `launch` checks it before asking for workers.
    It trains, with every quality metric checked, in tests/jobs/test_compare_resizers.py (--recipe ava)."""
    from jobs import ava_nima

    src = generate_ava_demo(tmp_path / "raw", num_images=60, image_size=(64, 64), workers=1)
    shard_ava(src, str(tmp_path / "shards"), ShardOptions(shard_size=16, workers=1, verbose=False))
    run = plan(ava_nima.demo_config(str(tmp_path / "shards")), resources={"CPU": 8.0})
    assert run.task.name == "quality"
    assert run.num_outputs == 10 and (run.num_train_samples, run.num_eval_samples) == (48, 12)
