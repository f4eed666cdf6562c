import json
from pathlib import Path

import pytest

from data_prep.ava import read_ava, shard_ava
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.verify import verify

from tests.data_prep.conftest import gray_jpeg, read_shards, rgb_jpeg, truncated_jpeg

NUM_IMAGES = 20


def make_ava(root: Path) -> Path:
    """AVA.txt with 20 images: id 1003 has no votes, 1005 no file, 1007 is truncated, 1009 grayscale."""
    lines = []
    (root / "images").mkdir(parents=True)
    for index in range(1, NUM_IMAGES + 1):
        image_id = 1000 + index
        votes = [0] * 10 if image_id == 1003 else [(index + s) % 7 for s in range(10)]
        lines.append(" ".join(str(v) for v in [index, image_id, *votes, index % 3, 0, 500 + index]))
        data = {1005: None, 1007: truncated_jpeg(index), 1009: gray_jpeg(index)}.get(image_id, rgb_jpeg(index))
        if data is not None:
            (root / "images" / f"{image_id}.jpg").write_bytes(data)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    return root


def test_votes_split_and_skips(tmp_path: Path) -> None:
    src = make_ava(tmp_path / "raw")
    manifest = shard_ava(src, str(tmp_path / "out"), ShardOptions(shard_size=4, workers=2, verbose=False))
    assert manifest["target"] == "votes" and manifest["num_classes"] == 0
    records = manifest["splits"]["train"]["num_records"] + manifest["splits"]["test"]["num_records"]
    assert records == NUM_IMAGES
    assert manifest["splits"]["test"]["num_records"] == 4  # 20% of the listed ids
    reasons = {e["key"]: e["reason"].split(":")[0] for e in manifest["skipped"]}
    assert reasons == {"ava_1003": "no votes", "ava_1005": "missing", "ava_1007": "truncated"}
    assert manifest["converted"] == {"grayscale": 1}
    samples = dict(read_shards(tmp_path / "out", "train") + read_shards(tmp_path / "out", "test"))
    assert len(samples) == NUM_IMAGES - 3
    meta = json.loads(samples["ava_1002"]["json"])
    votes = [(2 + s) % 7 for s in range(10)]
    assert list(samples["ava_1002"]) == ["jpg", "json"]
    assert meta["votes"] == votes and meta["tags"] == [2] and meta["challenge"] == 502
    assert meta["mean_score"] == pytest.approx(sum((s + 1) * v for s, v in enumerate(votes)) / sum(votes))
    assert verify(str(tmp_path / "out")) == []


def test_split_is_seeded_and_reproducible(tmp_path: Path) -> None:
    src = make_ava(tmp_path / "raw")

    def test_keys(seed: int) -> set[str]:
        spec = read_ava(src, test_fraction=0.25, seed=seed)
        return {r.key for r in spec.splits["test"]} | {e["key"] for e in spec.skipped if e["split"] == "test"}

    assert test_keys(0) == test_keys(0)
    assert len(test_keys(0)) == 5
    assert test_keys(0) != test_keys(1)


def test_test_ids_file(tmp_path: Path) -> None:
    src = make_ava(tmp_path / "raw")
    (tmp_path / "test_ids.txt").write_text("1001\n1002\n")
    spec = read_ava(src, test_ids=tmp_path / "test_ids.txt")
    assert sorted(r.key for r in spec.splits["test"]) == ["ava_1001", "ava_1002"]
    (tmp_path / "test_ids.txt").write_text("1001\n4242\n")
    with pytest.raises(DataPrepError, match=r"test_ids\.txt:2: image id 4242 is not in AVA\.txt"):
        read_ava(src, test_ids=tmp_path / "test_ids.txt")


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    src = make_ava(tmp_path / "raw")
    lines = (src / "AVA.txt").read_text().splitlines()
    lines[6] += " 0"
    (src / "AVA.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=r"AVA\.txt:7: expected 15 columns"):
        read_ava(src)


def test_duplicate_id_names_file_and_line(tmp_path: Path) -> None:
    src = make_ava(tmp_path / "raw")
    lines = (src / "AVA.txt").read_text().splitlines()
    lines.append(lines[1])
    (src / "AVA.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=rf"AVA\.txt:{NUM_IMAGES + 1}: duplicate image id 1002 \(first on line 2\)"):
        read_ava(src)
