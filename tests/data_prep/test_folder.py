"""Your own images, one folder per class, with what real folders hold: spaces and non-ASCII names, files
of the same name in two classes, upper-case and other extensions, hidden folders, stray files."""

import json
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.folder import shard_folder
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.verify import verify

from tests.data_prep.conftest import png_bytes, read_shards, rgb_jpeg, tree_bytes

OPTIONS = ShardOptions(shard_size=4, workers=1, verbose=False)
CLASSES = ["Grüner Apfel", "red apple", "ß"]  # sorted: class index order


def make_tree(root: Path, per_class: int = 5) -> Path:
    for c, name in enumerate(CLASSES):
        for n in range(per_class):
            ext = [".jpg", ".JPG", ".jpeg", ".PNG", ".webp"][n % 5]
            data = png_bytes(10 * c + n) if ext.lower() == ".png" else rgb_jpeg(10 * c + n)
            path = root / name / ("sub" if n == 4 else "") / f"img {n}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (root / name / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "x.jpg").write_bytes(rgb_jpeg(99))
    return root


def test_class_folders_split_by_fraction(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "photos")
    manifest = shard_folder(src, str(tmp_path / "out"), OPTIONS, val_fraction=0.4)
    assert manifest["class_names"] == CLASSES and manifest["dataset"] == "folder"
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 9, "val": 6}  # 2 of 5 per class
    reasons = sorted({e["reason"] for e in manifest["skipped"]})
    assert reasons == ["not an image file (by extension)"] and len(manifest["skipped"]) == 3
    samples = read_shards(tmp_path / "out", "train") + read_shards(tmp_path / "out", "val")
    by_class = {}
    for _, members in samples:
        meta = json.loads(members["json"])
        assert CLASSES[int(members["cls"])] == meta["class_name"] == meta["source"].split("/")[0]
        by_class.setdefault(meta["class_name"], set()).add(meta["source"])
    assert all(len(paths) == 5 for paths in by_class.values())  # every image once, files of one name in 3 classes
    assert verify(str(tmp_path / "out")) == []
    before = tree_bytes(tmp_path / "out")
    shard_folder(src, str(tmp_path / "out"), OPTIONS, val_fraction=0.4)  # a rerun keeps every shard
    assert tree_bytes(tmp_path / "out") == before


def test_train_and_val_folders_and_what_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "data"
    make_tree(src / "train")
    make_tree(src / "val", per_class=2)
    manifest = shard_folder(src, str(tmp_path / "out"), OPTIONS)
    assert sorted(manifest["splits"]) == ["train", "val"] and manifest["splits"]["val"]["num_samples"] == 6
    assert manifest["created_by"]["layout"] == "train+val"

    (src / "val" / "pear").mkdir()
    (src / "val" / "pear" / "a.jpg").write_bytes(rgb_jpeg(1))
    with pytest.raises(DataPrepError, match=r"val/pear: class 'pear' is not a class of train/"):
        shard_folder(src, str(tmp_path / "out2"), OPTIONS)
    (src / "train" / "pear").mkdir()  # an empty class folder would be a class with no images
    assert main(["folder", "--src", str(src), "--out", str(tmp_path / "out3"), "--quiet"]) == 2
    assert "train/pear: class folder without images" in capsys.readouterr().err
