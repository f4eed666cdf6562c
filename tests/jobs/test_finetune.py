"""The generic recipe on a user's own shards: the backbone's own input size, the task and evaluation split
from the manifest, the resizer at --ratio x; and the comparison of resizers on those shards."""

import json
from pathlib import Path

import pytest

from data_prep.ava import shard_ava
from data_prep.demo_layouts import generate_ava_demo
from data_prep.folder import shard_folder
from data_prep.shards import ShardOptions
from pipeline.config import apply_overrides
from pipeline.runs import plan

from tests.data_prep.test_folder import make_tree
from tests.jobs.conftest import run_job_main

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
