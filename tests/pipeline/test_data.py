"""`pipeline.data`: read tasks, blocks, manifests, and a tiny real Ray dataset over tars (the decode itself:
test_decode.py)."""

import json

import pytest

from pipeline.config import DataConfig
from pipeline.data import _rows_per_block, build_dataset, num_read_tasks
from pipeline.decode import decode_on_device
from pipeline.manifest import DataError, read_manifest, shard_urls
from pipeline.tasks import get_task, score_distribution
from tests.pipeline.test_decode import _jpeg, _write_tar

CLASSIFICATION = get_task("classification")


def test_small_tars_are_grouped_into_read_tasks_of_at_least_500_samples():
    assert num_read_tasks(30, 3000, cpus=2) == 6  # 100-image tars: 5 per task (one per tar left CPUs idle)
    assert num_read_tasks(30, 3000, cpus=16) == 30  # enough CPUs: a task per tar
    assert num_read_tasks(6, 5994, cpus=2) == 6  # CUB's 1000-sample tars: one each
    assert num_read_tasks(1281, 1_281_167, cpus=0) == 1281  # an autoscaling cluster with no CPU node yet
    assert num_read_tasks(3, 40, cpus=0) == 1
    # a small split is not spread thinner than 100 samples a task: each task at once is a new worker process
    assert num_read_tasks(4, 30, cpus=8) == 1
    assert num_read_tasks(20, 2000, cpus=8) == 16 and num_read_tasks(20, 1000, cpus=8) == 10


def test_output_blocks_hold_whole_batches_within_64_mib():
    assert _rows_per_block(3 * 768 * 768, 8) == 32  # 54 MiB: 4 batches of 8 (37 crops would fit)
    assert _rows_per_block(3 * 224 * 224, 8) == 256
    assert _rows_per_block(3 * 2048 * 2048, 8) == 5  # fewer than a batch fit: as many as fit


def test_score_distribution_from_ava_votes():
    meta = json.dumps({"votes": [0, 0, 0, 1, 2, 3, 2, 1, 1, 0]})
    dist = score_distribution(meta)
    assert dist.sum() == pytest.approx(1.0) and dist[5] == pytest.approx(0.3)
    assert score_distribution("{}").sum() == 0


def test_missing_data_path_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="data.path is empty"):
        read_manifest("")
    with pytest.raises(DataError, match="does not exist.*python -m data_prep"):
        read_manifest(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="holds no manifest.json"):
        read_manifest(str(tmp_path))


def test_unknown_split_lists_the_known_ones(tmp_path):
    manifest = {"splits": {"train": {"num_samples": 1, "shards": [{"name": "train-000000.tar"}]}}}
    with pytest.raises(DataError, match=r"no split 'test'; its manifest lists \['train'\]"):
        shard_urls(str(tmp_path), manifest, "test")


@pytest.mark.ray
def test_tiny_ray_dataset_decodes_every_sample_and_flags_the_corrupt_one(tmp_path, ray_local):
    samples = [(f"s{i:03d}", {"cls": str(i % 3).encode(), "jpg": _jpeg(color=(i * 7 % 255, 0, 0)), "json": b"{}"}) for i in range(20)]
    samples[4] = ("s004", {"cls": b"1", "jpg": b"garbage", "json": b"{}"})
    _write_tar(tmp_path / "train-000000.tar", samples[:10])
    _write_tar(tmp_path / "train-000001.tar", samples[10:])
    urls = [str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    for train, decode in ((True, "cpu"), (False, "cpu"), (True, "gpu")):
        cfg = DataConfig(path=str(tmp_path), resize_size=None, crop_size=24, decode=decode)
        ds = build_dataset(cfg, urls, train=train, seed=0, task=CLASSIFICATION, num_samples=20)
        if decode == "gpu":  # the rows carry bytes and crops; a worker decodes them (on its CPU here)
            batches = list(ds.iter_batches(batch_size=7, batch_format="numpy"))
            assert not any("pixels" in b for b in batches)
            assert sorted(len(jpg) > 100 for b in batches for jpg in b["jpg"]) == [False] + [True] * 19
            decoded = [decode_on_device(b, crop_size=24, device="cpu") for b in batches]
            rows = [{name: d[name][i] for name in ("key", "valid", "error", "pixels", "label")}
                    for d in decoded for i in range(len(d["key"]))]
        else:
            rows = ds.take_all()
        assert sorted(r["key"] for r in rows) == sorted(k for k, _ in samples)  # each sample once
        bad = [r for r in rows if not r["valid"]]
        assert [r["key"] for r in bad] == ["s004"] and "undecodable" in bad[0]["error"]
        assert all(r["pixels"].shape == (3, 24, 24) for r in rows)
        assert {r["key"]: r["label"] for r in rows}["s011"] == 2
