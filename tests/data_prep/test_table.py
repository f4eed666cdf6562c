"""Images listed in a CSV table: class and split columns, a fraction split, and every bad row named by line."""

import json
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.table import shard_table
from data_prep.verify import verify

from tests.data_prep.conftest import read_shards, rgb_jpeg

OPTIONS = ShardOptions(shard_size=4, workers=1, verbose=False)


def make_images(root: Path, count: int = 12) -> list[str]:
    names = []
    for i in range(count):
        name = f"{'a' if i % 2 else 'b'}/photo {i}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(rgb_jpeg(i))
        names.append(name)
    return names


def test_class_and_split_columns(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images")
    rows = ["file,species,split"] + [f"{n},{'Fink' if i % 3 else 'Meise'},{'val' if i < 4 else 'train'}" for i, n in enumerate(names)]
    rows.append("missing.jpg,Fink,train")  # listed, no file: skipped and listed
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    manifest = shard_table(tmp_path / "labels.csv", tmp_path / "images", str(tmp_path / "out"), OPTIONS,
                           image_column="file", class_column="species")
    assert manifest["class_names"] == ["Fink", "Meise"]
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"val": 4, "train": 8}
    assert [e["path"] for e in manifest["skipped"]] == ["missing.jpg"]
    for _, members in read_shards(tmp_path / "out", "val"):
        meta = json.loads(members["json"])
        assert meta["class_name"] == ["Fink", "Meise"][int(members["cls"])]
    assert verify(str(tmp_path / "out")) == []


def test_a_fraction_split_without_a_split_column(tmp_path: Path) -> None:
    names = make_images(tmp_path / "images")
    (tmp_path / "t.csv").write_text("image,label\n" + "".join(f"{n},{n[0]}\n" for n in names))
    manifest = shard_table(tmp_path / "t.csv", tmp_path / "images", str(tmp_path / "out"), OPTIONS, val_fraction=0.5)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 6, "val": 6}  # 3 of 6 per class


@pytest.mark.parametrize(
    "line,message",
    [
        ("a/photo 1.jpg", "labels.csv:3: 1 columns, the header has 2"),
        ("../../etc/passwd,x", "labels.csv:3: path '../../etc/passwd' leaves"),
        ("a/photo 1.jpg,", "labels.csv:3: empty 'label'"),
        ("b/photo 0.jpg,b", "labels.csv:3: image 'b/photo 0.jpg' is listed twice (first on line 2)"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path: Path, line: str, message: str, capsys) -> None:
    make_images(tmp_path / "images", 4)
    (tmp_path / "labels.csv").write_text(f"image,label\nb/photo 0.jpg,b\n{line}\na/photo 3.jpg,a\n")
    assert main(["csv", "--src", str(tmp_path / "labels.csv"), "--root", str(tmp_path / "images"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_one_class_or_a_wrong_column_is_refused(tmp_path: Path) -> None:
    make_images(tmp_path / "images", 4)
    (tmp_path / "t.csv").write_text("image,label\nb/photo 0.jpg,x\na/photo 1.jpg,x\n")
    with pytest.raises(DataPrepError, match="1 distinct value"):
        shard_table(tmp_path / "t.csv", tmp_path / "images", str(tmp_path / "o"), OPTIONS)
    with pytest.raises(DataPrepError, match=r"t.csv:1: no column 'species' .* --class-column"):
        shard_table(tmp_path / "t.csv", tmp_path / "images", str(tmp_path / "o"), OPTIONS, class_column="species")


def test_a_numeric_target_column_makes_regression_shards(tmp_path: Path, capsys) -> None:
    names = make_images(tmp_path / "images", 10)
    scores = [1.5 + 0.5 * i for i in range(10)]
    (tmp_path / "s.csv").write_text("image,score\n" + "".join(f"{n},{s}\n" for n, s in zip(names, scores)))
    assert main(["csv", "--src", str(tmp_path / "s.csv"), "--root", str(tmp_path / "images"), "--out", str(tmp_path / "o"),
                 "--target-column", "score", "--val-fraction", "0.3", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["target"] == "value" and manifest["num_classes"] == 0
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 7, "val": 3}
    by_source = dict(zip(names, scores))
    train = [json.loads(members["json"]) for _, members in read_shards(tmp_path / "o", "train")]
    assert all(meta["target"] == by_source[meta["source"]] and "cls" not in meta for meta in train)
    values = [meta["target"] for meta in train]
    stats = manifest["target_stats"]  # of the train split: what the model's output is scaled by
    assert stats["mean"] == pytest.approx(sum(values) / 7) and (stats["min"], stats["max"]) == (min(values), max(values))
    assert stats["std"] == pytest.approx((sum((v - stats["mean"]) ** 2 for v in values) / 7) ** 0.5)
    assert verify(str(tmp_path / "o")) == []

    (tmp_path / "bad.csv").write_text("image,score\nb/photo 0.jpg,1\na/photo 1.jpg,n/a\n")
    assert main(["csv", "--src", str(tmp_path / "bad.csv"), "--root", str(tmp_path / "images"), "--out", str(tmp_path / "o2"),
                 "--target-column", "score", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv:3: score 'n/a' is not a number" in err and len(err.splitlines()) == 1
    (tmp_path / "flat.csv").write_text("image,score,split\nb/photo 0.jpg,3,train\na/photo 1.jpg,3,train\nb/photo 2.jpg,4,val\n")
    with pytest.raises(DataPrepError, match="every train row has the target 3.0"):
        shard_table(tmp_path / "flat.csv", tmp_path / "images", str(tmp_path / "o3"), OPTIONS, target_column="score")
    with pytest.raises(DataPrepError, match="no column 'rating' .* --target-column"):
        shard_table(tmp_path / "flat.csv", tmp_path / "images", str(tmp_path / "o3"), OPTIONS, target_column="rating")
