"""The ImageNet job as a user runs it: the demo layout through data_prep, a subprocess, its own local Ray.

That the class index from LOC_val_solution.csv and from val/<wnid>/ agree is tested in
tests/data_prep/test_imagenet.py (with the devkit too) and on the demo layout in test_demo_layouts.py.
"""

import io
import json

import pytest

from data_prep.demo_layouts import generate_imagenet_demo
from data_prep.imagenet import shard_imagenet
from data_prep.shards import ShardOptions
from pipeline.tasks import ClassificationTask

from tests.jobs.conftest import TINY_RESNET, check_reported, run_job_main, run_job_script
from tests.servers import weights_server


@pytest.mark.parametrize(
    "backbone,timm_name,resize,crop",
    [("resnet50", "resnet50", 512, 448), ("densenet121", "densenet121", 512, 448),
     ("inception_v3", "inception_v3", 683, 598), ("mobilenetv2", "mobilenetv2_100", 512, 448)],
)
def test_print_config_is_the_2x_recipe_per_backbone(backbone, timm_name, resize, crop):
    code, out, err = run_job_main("imagenet_resnet50.py", "--print-config", "--backbone", backbone)
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["task"] == "classification" and cfg["model"]["backbone"] == timm_name and cfg["model"]["pretrained"]
    assert (cfg["data"]["resize_size"], cfg["data"]["crop_size"]) == (resize, crop)
    assert cfg["data"]["eval_split"] == "val" and cfg["resizer"]["zero_init_last"]


def test_unknown_backbone_fails_before_anything_runs():
    code, _, err = run_job_main("imagenet_resnet50.py", "--print-config", "--backbone", "resnet5O")
    assert code == 2 and "'resnet5O' is not a timm model" in err


@pytest.mark.slow
def test_demo_trains_from_mirrored_weights_fetched_once_per_node_and_reports_top1_and_top5(tmp_path, monkeypatch, no_local_ray):
    import timm
    import torch

    from jobs._common import DEMO_RESNET_KWARGS
    from pipeline.checkpoint import load_weights

    src = generate_imagenet_demo(tmp_path / "raw", num_classes=3, num_images=60, image_size=(64, 64), workers=1)
    shard_imagenet(src, str(tmp_path / "shards"), ShardOptions(shard_size=16, workers=1, verbose=False))
    torch.manual_seed(0)
    pretrained = timm.create_model("resnet50", pretrained=False, **DEMO_RESNET_KWARGS).state_dict()  # ImageNet's 1000 classes
    buffer = io.BytesIO()
    torch.save(pretrained, buffer)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache on this "node"
    with weights_server(buffer.getvalue()) as (url, downloads):
        result = run_job_script(
            "imagenet_resnet50.py", "--demo", "--data", str(tmp_path / "shards"), "--storage", str(tmp_path),
            "--name", "imagenet", *TINY_RESNET, "--set", f"model.weights_url={url}",
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert downloads == ["/resnet50_tiny.pth"]  # two Train workers on one node, one download
    assert "final top1" in result.stdout and "on this demo ended at" not in result.stdout  # not the default demo's data
    records = check_reported(tmp_path / "imagenet" / "history.jsonl", output, ClassificationTask.metric_names, epochs=2)
    assert all(r["num_eval_samples"] == 30 for r in records)  # the whole flat val/ folder, once
    assert all(r["top1"] <= r["top5"] == 1.0 for r in records)  # 3 classes: the top 5 always hold the label
    # training started from the served weights: the first convolution is still close to them
    trained = load_weights(str(tmp_path / "imagenet" / "checkpoint_epoch_0002"))["state_dict"]["backbone.conv1.weight"]
    similarity = torch.nn.functional.cosine_similarity(trained.flatten(), pretrained["conv1.weight"].flatten(), dim=0)
    assert similarity > 0.9, float(similarity)
