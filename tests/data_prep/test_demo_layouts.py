"""The demo in the ImageNet and AVA layouts: data_prep shards them as the real datasets, and the AVA score
lives in detail that a 2x bilinear downscale removes."""

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import stats

from data_prep.__main__ import main as data_prep_main
from data_prep.ava import read_ava, shard_ava
from data_prep.demo_layouts import generate_ava_demo, generate_imagenet_demo, imagenet_wnids
from data_prep.imagenet import shard_imagenet
from data_prep.shards import ShardOptions

from tests.data_prep.conftest import read_shards

OPTIONS = ShardOptions(shard_size=16, workers=1, verbose=False)


def test_imagenet_layout_shards_with_the_texture_as_class(tmp_path: Path) -> None:
    root = generate_imagenet_demo(tmp_path / "raw", num_classes=3, num_images=24, image_size=(48, 40), workers=1)
    wnids = imagenet_wnids(3)
    assert sorted(p.name for p in (root / "train").iterdir()) == wnids
    assert all(p.name.startswith(p.parent.name + "_") and p.suffix == ".JPEG" for p in (root / "train").rglob("*.JPEG"))
    val_files = sorted(p.name for p in (root / "val").iterdir())
    assert val_files == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 13)]
    manifest = shard_imagenet(root, str(tmp_path / "csv"), OPTIONS)
    assert manifest["class_names"] == wnids and manifest["target"] == "cls"
    assert {s: manifest["splits"][s]["num_samples"] for s in ("train", "val")} == {"train": 12, "val": 12}
    # the CSV's wnid and a val/<wnid>/ folder give the same class index (see also test_imagenet.py)
    csv_rows = (root / "LOC_val_solution.csv").read_text().splitlines()[1:]
    for row in csv_rows:
        image_id, prediction = row.split(",")
        (root / "val" / prediction.split()[0]).mkdir(exist_ok=True)
        shutil.move(root / "val" / f"{image_id}.JPEG", root / "val" / prediction.split()[0])
    shard_imagenet(root, str(tmp_path / "folders"), OPTIONS, splits=("val",))
    by_csv = {k: int(m["cls"]) for k, m in read_shards(tmp_path / "csv", "val")}
    by_folder = {k: int(m["cls"]) for k, m in read_shards(tmp_path / "folders", "val")}
    assert by_csv == by_folder and sorted(set(by_csv.values())) == [0, 1, 2]


def test_ava_layout_has_15_columns_and_shards_with_votes(tmp_path: Path) -> None:
    assert data_prep_main(["demo", "--layout", "ava", "--out", str(tmp_path / "raw"), "--num-images", "20",
                           "--image-size", "32x32", "--workers", "1"]) == 0
    root = tmp_path / "raw" / "AVA_dataset"
    lines = (root / "AVA.txt").read_text().splitlines()
    assert len(lines) == 20 and all(len(line.split()) == 15 for line in lines)
    assert all((root / "images" / f"{line.split()[1]}.jpg").is_file() for line in lines)
    manifest = shard_ava(root, str(tmp_path / "out"), OPTIONS)
    assert manifest["target"] == "votes" and manifest["num_classes"] == 0
    assert manifest["splits"]["train"]["num_samples"] + manifest["splits"]["test"]["num_samples"] == 20
    meta = json.loads(read_shards(tmp_path / "out", "test")[0][1]["json"])
    assert len(meta["votes"]) == 10 and 1.0 <= meta["mean_score"] <= 10.0


def _detail_energy(luminance: np.ndarray) -> float:
    high_pass = luminance - 0.25 * sum(np.roll(luminance, s, a) for s in (1, -1) for a in (0, 1))
    return float(high_pass[2:-2, 2:-2].std())


def test_ava_mean_score_lives_in_detail_that_bilinear_removes(tmp_path: Path) -> None:
    root = generate_ava_demo(tmp_path / "raw", num_images=120, image_size=(160, 128), seed=1)
    full, downscaled, means = [], [], []
    for record in read_ava(root, test_fraction=0.0).splits["train"]:
        luminance = np.asarray(Image.open(record.path).convert("L"), np.float32)[0:128, 16:144]
        full.append(_detail_energy(luminance))
        downscaled.append(_detail_energy(luminance.reshape(64, 2, 64, 2).mean(axis=(1, 3))))  # 2x bilinear
        means.append(record.meta["mean_score"])
    assert np.std(means) > 0.7  # a spread of mean scores to rank
    srcc_full = stats.spearmanr(full, means).statistic
    srcc_downscaled = stats.spearmanr(downscaled, means).statistic
    assert srcc_full > 0.75 and srcc_downscaled < srcc_full - 0.4, (srcc_full, srcc_downscaled)
