import json
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.cub import shard_cub
from data_prep.manifest import load_manifest, shard_urls
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.verify import verify

from tests.data_prep.conftest import CUB_QUIRKS, make_cub, read_shards, read_tar, rgb_jpeg, tree_bytes

OPTIONS = ShardOptions(shard_size=3, workers=2, verbose=False)


def test_counts_labels_conversions_and_skips(cub_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = shard_cub(cub_src, str(out), OPTIONS)

    samples = {key: members for split in ("train", "test") for key, members in read_shards(out, split)}
    assert len(samples) == 15 - 2  # truncated and missing are skipped
    for key, members in samples.items():
        assert list(members) == ["cls", "jpg", "json"]
        meta = json.loads(members["json"])
        image_id = int(key.removeprefix("cub_"))
        assert meta["image_id"] == image_id
        assert int(members["cls"]) == (image_id - 1) // 5  # class_id - 1
        assert meta["bbox"] == [1.0, 2.0, 10.0, 8.0]
        assert meta["original_size"] == [24, 16]
        assert meta.get("converted") == {"grayscale": "grayscale", "cmyk": "cmyk", "png": "png"}.get(CUB_QUIRKS.get(image_id))

    assert manifest["converted"] == {"cmyk": 1, "grayscale": 1, "png": 1}
    assert manifest["class_names"] == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    skipped = {entry["key"]: entry for entry in manifest["skipped"]}
    assert skipped["cub_000009"]["reason"].startswith("truncated")
    assert skipped["cub_000011"]["reason"].startswith("missing")
    assert skipped["cub_000011"]["path"] == "images/003.Bird_3/Bird_0011.jpg"
    for split in ("train", "test"):
        entry = manifest["splits"][split]
        assert entry["num_records"] == entry["num_samples"] + entry["num_skipped"]
        assert [s["name"] for s in entry["shards"]] == [f"{split}-{i:06d}.tar" for i in range(entry["num_shards"])]
    assert manifest["splits"]["train"]["num_records"] == 8  # odd ids are train
    assert load_manifest(str(out)) == manifest
    assert shard_urls(str(out), "test")[0] == f"{out}/test-000000.tar"
    assert verify(str(out)) == []


def test_shards_mix_classes(tmp_path: Path) -> None:
    src = make_cub(tmp_path / "raw", num_classes=4, per_class=6, quirks=False)
    shard_cub(src, str(tmp_path / "out"), ShardOptions(shard_size=6, verbose=False))
    shards = sorted((tmp_path / "out").glob("*.tar"))
    classes_per_shard = [{int(m["cls"]) for _, m in read_tar(shard)} for shard in shards]
    assert max(len(c) for c in classes_per_shard) >= 3  # ids are sorted by class, so this is the shuffle


def test_same_input_gives_identical_bytes(cub_src: Path, tmp_path: Path) -> None:
    shard_cub(cub_src, str(tmp_path / "a"), OPTIONS)
    shard_cub(cub_src, str(tmp_path / "b"), ShardOptions(shard_size=3, workers=1, verbose=False))
    first, second = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len(first) > 3 and first == second


def test_other_seed_other_order(cub_src: Path, tmp_path: Path) -> None:
    shard_cub(cub_src, str(tmp_path / "a"), OPTIONS)
    shard_cub(cub_src, str(tmp_path / "b"), ShardOptions(shard_size=3, seed=1, verbose=False))
    assert [k for k, _ in read_shards(tmp_path / "a", "train")] != [k for k, _ in read_shards(tmp_path / "b", "train")]


def test_shard_bytes_cap(cub_src: Path, tmp_path: Path) -> None:
    manifest = shard_cub(cub_src, str(tmp_path / "out"), ShardOptions(shard_size=100, shard_bytes=1, verbose=False))
    assert all(s["num_samples"] <= 1 for split in manifest["splits"].values() for s in split["shards"])


def test_max_side_resizes_and_records(cub_src: Path, tmp_path: Path) -> None:
    manifest = shard_cub(cub_src, str(tmp_path / "out"), ShardOptions(max_side=12, verbose=False))
    for _, members in read_shards(tmp_path / "out", "train"):
        meta = json.loads(members["json"])
        assert meta["size"] == [12, 8] and meta["converted"].endswith("resized")
    assert manifest["num_converted"] == 13


def test_strict_stops_on_missing_image(cub_src: Path, tmp_path: Path) -> None:
    with pytest.raises(DataPrepError, match="Bird_0011.jpg"):
        shard_cub(cub_src, str(tmp_path / "out"), ShardOptions(strict=True, verbose=False))


def test_strict_stops_on_truncated_image(cub_src: Path, tmp_path: Path) -> None:
    (cub_src / "images/003.Bird_3/Bird_0011.jpg").write_bytes(rgb_jpeg(11))  # only the truncated one is left
    with pytest.raises(DataPrepError, match="Bird_0009.jpg: truncated"):
        shard_cub(cub_src, str(tmp_path / "out"), ShardOptions(strict=True, workers=2, verbose=False))


def _replace_line(path: Path, line_number: int, text: str | None) -> None:
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line_number - 1]
    else:
        lines[line_number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "file, line_number, new_text, expected",
    [
        ("image_class_labels.txt", 2, "2", r"image_class_labels\.txt:2: expected 2 columns"),
        ("images.txt", 4, "3 001.Bird_1/Bird_0003.jpg", r"images\.txt:4: duplicate image id 3"),
        ("bounding_boxes.txt", 3, "99 1 2 3 4", r"bounding_boxes\.txt:3: image id 99 is not in images\.txt"),
        ("train_test_split.txt", 6, None, r"train_test_split\.txt: image id 6 \(images\.txt:6\) is missing"),
        ("train_test_split.txt", 1, "1 2", r"train_test_split\.txt:1: is_training_image must be 1 or 0"),
        ("image_class_labels.txt", 5, "5 7", r"image_class_labels\.txt:5: class id 7 is not in classes\.txt"),
        ("classes.txt", 2, "3 002.Bird_2", r"classes\.txt:2: class id 3 where 2 was expected"),
        ("image_class_labels.txt", 4, "4 x", r"image_class_labels\.txt:4: class_id must be an integer"),
    ],
)
def test_structural_errors_name_file_and_line(
    cub_src: Path, tmp_path: Path, file: str, line_number: int, new_text: str | None, expected: str
) -> None:
    _replace_line(cub_src / file, line_number, new_text)
    with pytest.raises(DataPrepError, match=expected):
        shard_cub(cub_src, str(tmp_path / "out"), OPTIONS)


def test_missing_metadata_file_via_cli(cub_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cub_src / "bounding_boxes.txt").unlink()
    assert main(["cub", "--src", str(cub_src), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "bounding_boxes.txt: metadata file not found" in capsys.readouterr().err


def test_cloud_uri_through_fsspec(cub_src: Path) -> None:
    uri = "memory://data_prep_test/cub"
    manifest = shard_cub(cub_src, uri, ShardOptions(shard_size=4, workers=2, verbose=False))
    assert load_manifest(uri) == manifest
    assert shard_urls(uri, "train")[0] == f"{uri}/train-000000.tar"
    assert verify(uri, workers=1) == []


def test_cli_help_explains_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["cub", "--help"])
    text = capsys.readouterr().out
    for option in ("--src", "--out", "--seed", "--shard-size", "--shard-bytes", "--max-side", "--no-decode-check", "--strict", "--workers"):
        assert option in text


def test_webdataset_reads_the_shards(cub_src: Path, tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "out"
    manifest = shard_cub(cub_src, str(out), OPTIONS)
    dataset = wds.WebDataset(shard_urls(str(out), "train"), shardshuffle=False, empty_check=False).decode("pil")
    samples = list(dataset)
    assert len(samples) == manifest["splits"]["train"]["num_samples"]
    for sample in samples:
        assert sample["jpg"].mode == "RGB" and sample["jpg"].size == (24, 16)
        assert sample["cls"] == (sample["json"]["image_id"] - 1) // 5
