import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data_prep.imagenet import shard_imagenet
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.verify import verify

from tests.data_prep.conftest import cmyk_jpeg, png_bytes, read_shards, rgb_jpeg

WNIDS = ["n01440764", "n01443537", "n02085620"]  # sorted order = class index
VAL_WNIDS = ["n02085620", "n01440764", "n01443537", "n01443537", "n02085620", "n01440764"]
ILSVRC_IDS = {"n01440764": 449, "n01443537": 1, "n02085620": 153}  # devkit ids are not the sorted order
OPTIONS = ShardOptions(shard_size=4, workers=2, verbose=False)


def make_imagenet(root: Path) -> Path:
    """train/<wnid>/ with a CMYK JPEG and a PNG named .JPEG; a flat val/ plus the CSV and the devkit."""
    for c, wnid in enumerate(WNIDS):
        for n in range(3):
            path = root / "train" / wnid / f"{wnid}_{n}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rgb_jpeg(10 * c + n))
    (root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").write_bytes(cmyk_jpeg(0))
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_1.JPEG").write_bytes(png_bytes(1))
    (root / "val").mkdir()
    for i, wnid in enumerate(VAL_WNIDS, start=1):
        (root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(rgb_jpeg(100 + i))
    rows = [f"ILSVRC2012_val_{i:08d},{wnid} 1 2 3 4 {wnid} 5 6 7 8" for i, wnid in enumerate(VAL_WNIDS, start=1)]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ILSVRC_IDS[w]}\n" for w in VAL_WNIDS))
    synsets = np.array(
        [(ILSVRC_IDS[w], w, "words", 0) for w in WNIDS] + [(1001, "n00001740", "entity", 10)],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")],
    )
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    return root


def labels_by_key(out: Path, split: str) -> dict[str, int]:
    return {key: int(members["cls"]) for key, members in read_shards(out, split)}


def test_train_classes_in_sorted_wnid_order_and_conversions(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    manifest = shard_imagenet(src, str(tmp_path / "out"), OPTIONS)
    assert manifest["class_names"] == WNIDS
    train = labels_by_key(tmp_path / "out", "train")
    assert train == {f"{w}_{n}": c for c, w in enumerate(WNIDS) for n in range(3)}
    assert manifest["converted"] == {"cmyk": 1, "png": 1}
    metas = {k: json.loads(m["json"]) for k, m in read_shards(tmp_path / "out", "train")}
    assert metas[f"{WNIDS[1]}_1"]["converted"] == "png" and metas[f"{WNIDS[1]}_1"]["wnid"] == WNIDS[1]
    assert verify(str(tmp_path / "out")) == []


def test_three_val_labelings_agree(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    expected = {f"ILSVRC2012_val_{i:08d}": WNIDS.index(w) for i, w in enumerate(VAL_WNIDS, start=1)}
    shard_imagenet(src, str(tmp_path / "csv"), OPTIONS, splits=("val",))
    shard_imagenet(src, str(tmp_path / "devkit"), OPTIONS, ("val",), val_labels=src / "ILSVRC2012_devkit_t12")
    for i, wnid in enumerate(VAL_WNIDS, start=1):  # now sort val/ into val/<wnid>/
        (src / "val" / wnid).mkdir(exist_ok=True)
        shutil.move(src / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", src / "val" / wnid)
    shard_imagenet(src, str(tmp_path / "folders"), OPTIONS, splits=("val",))
    for name in ("csv", "devkit", "folders"):
        assert labels_by_key(tmp_path / name, "val") == expected, name


def test_listed_val_image_without_file_is_skipped(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    (src / "val" / "ILSVRC2012_val_00000003.JPEG").unlink()
    manifest = shard_imagenet(src, str(tmp_path / "out"), OPTIONS, splits=("val",))
    assert [e["key"] for e in manifest["skipped"]] == ["ILSVRC2012_val_00000003"]
    assert manifest["splits"]["val"]["num_samples"] == 5 and "train" not in manifest["splits"]


def test_csv_unknown_wnid_names_file_and_line(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    csv = src / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("ILSVRC2012_val_00000004,n01443537", "ILSVRC2012_val_00000004,n99999999"))
    with pytest.raises(DataPrepError, match=r"LOC_val_solution\.csv:5: wnid 'n99999999'"):
        shard_imagenet(src, str(tmp_path / "out"), OPTIONS)


def test_devkit_unknown_id_names_file_and_line(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    truth = src / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("449\n1\n777\n")
    with pytest.raises(DataPrepError, match=r"ILSVRC2012_validation_ground_truth\.txt:3: ILSVRC2012_ID 777"):
        shard_imagenet(src, str(tmp_path / "out"), OPTIONS, ("val",), val_labels=src / "ILSVRC2012_devkit_t12")


def test_unlabelled_val_file_is_an_error(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    (src / "val" / "ILSVRC2012_val_00000099.JPEG").write_bytes(rgb_jpeg(0))
    with pytest.raises(DataPrepError, match="ILSVRC2012_val_00000099.JPEG: no label"):
        shard_imagenet(src, str(tmp_path / "out"), OPTIONS, splits=("val",))
