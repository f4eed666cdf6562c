"""Input a skeptical user (or a careless one) hands data_prep: stray folders, reused and foreign output
folders, edited shards, metadata that points outside the dataset. Nothing is mislabeled, nothing we did
not write is touched, and each refusal names the file or folder and what to do."""

import json
import shutil
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.cub import shard_cub
from data_prep.imagenet import shard_imagenet
from data_prep.images import ImageError, prepare_image
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.verify import verify
from pipeline.manifest import DataError, shard_urls

from tests.data_prep.conftest import make_cub, rgb_jpeg, tree_bytes
from tests.data_prep.test_imagenet import OPTIONS, WNIDS, labels_by_key, make_imagenet


def test_hidden_folders_are_never_classes_and_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    src = make_imagenet(tmp_path / "raw")
    (src / "train" / ".ipynb_checkpoints").mkdir()  # what a notebook leaves; sorts before every wnid
    (src / "train" / "__MACOSX").mkdir()
    (src / "val" / ".ipynb_checkpoints").mkdir()  # would turn the flat val/ into "class folders"
    manifest = shard_imagenet(src, str(tmp_path / "out"), OPTIONS)
    assert manifest["class_names"] == WNIDS
    assert labels_by_key(tmp_path / "out", "train") == {f"{w}_{n}": c for c, w in enumerate(WNIDS) for n in range(3)}

    (src / "train" / "n00000000").mkdir()  # a stray visible folder would become class 0
    with pytest.raises(DataPrepError, match=r"train/n00000000: holds no images .* remove the folder"):
        shard_imagenet(src, str(tmp_path / "out2"), OPTIONS)


def test_out_inside_src_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_imagenet(tmp_path / "raw")
    for out in (src / "train" / "shards", src / "val"):
        assert main(["imagenet", "--src", str(src), "--out", str(out), "--quiet"]) == 2
        assert f"--out {out} is inside --src" in capsys.readouterr().err
    assert not (src / "train" / "shards").exists()  # refused before anything was written
    assert sorted(p.name for p in (src / "val").iterdir()) == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]


def test_a_foreign_folder_and_another_datasets_shards_are_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cub = make_cub(tmp_path / "raw", quirks=False)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    (user / "train-000000.tar").write_bytes(b"my own tar")
    assert main(["cub", "--src", str(cub), "--out", str(user), "--quiet"]) == 2
    assert "is not empty and was not written by data_prep" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "train-000000.tar"]
    assert (user / "train-000000.tar").read_bytes() == b"my own tar"

    out = tmp_path / "shards"
    shard_cub(cub, str(out), ShardOptions(shard_size=4, workers=1, verbose=False))
    before = tree_bytes(out)
    imagenet = make_imagenet(tmp_path / "imagenet")
    with pytest.raises(DataPrepError, match=r"holds the shards of cub from .*CUB_200_2011, not of imagenet"):
        shard_imagenet(imagenet, str(out), OPTIONS)
    assert tree_bytes(out) == before  # the CUB manifest and shards are untouched
    shard_cub(cub, str(out), ShardOptions(shard_size=4, workers=1, verbose=False))  # the same dataset: a rerun
    assert tree_bytes(out) == before

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["cub", "--src", str(cub), "--out", str(a_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {a_file} is a file") and a_file.read_text() == "x"
    assert main(["cub", "--src", str(cub), "--out", str(a_file / "out"), "--quiet"]) == 2  # cannot be created
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Not a directory; check --src and --out" in err and len(err.splitlines()) == 1


def test_resume_rewrites_a_shard_whose_bytes_changed_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cub = make_cub(tmp_path / "raw", quirks=False)
    out = tmp_path / "shards"
    options = ShardOptions(shard_size=4, workers=1, verbose=True)
    shard_cub(cub, str(out), options)
    before = tree_bytes(out)
    shard = out / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0xFF  # same size, different bytes: a size check alone keeps it
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    shard_cub(cub, str(out), options)
    assert "rewriting 1 shard(s) whose bytes no longer match the checksum this tool recorded: train-000000.tar" in capsys.readouterr().err
    assert tree_bytes(out) == before and verify(str(out)) == []


def test_verify_reports_a_tar_the_manifest_does_not_list(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    shard_cub(make_cub(tmp_path / "raw", quirks=False), str(out), ShardOptions(shard_size=4, workers=1, verbose=False))
    shutil.copy(out / "train-000000.tar", out / "train-000099.tar")
    problems = verify(str(out))
    assert len(problems) == 1 and problems[0].startswith("train-000099.tar: a tar in the folder that the manifest does not list")


def test_metadata_and_manifest_paths_stay_inside_their_folders(tmp_path: Path) -> None:
    cub = make_cub(tmp_path / "raw", quirks=False)
    lines = (cub / "images.txt").read_text().splitlines()
    for bad in ("../../../etc/passwd", "/etc/passwd"):
        (cub / "images.txt").write_text("\n".join([lines[0], f"2 {bad}", *lines[2:]]) + "\n")
        with pytest.raises(DataPrepError, match=rf"images.txt:2: path '{bad}' leaves .*images"):
            shard_cub(cub, str(tmp_path / "out"), ShardOptions(workers=1, verbose=False))

    imagenet = make_imagenet(tmp_path / "imagenet")
    csv = imagenet / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("ILSVRC2012_val_00000003,", "../../secret,"))
    with pytest.raises(DataPrepError, match=r"LOC_val_solution.csv:4: ImageId '../../secret' is not a file name"):
        shard_imagenet(imagenet, str(tmp_path / "out"), OPTIONS)

    out = tmp_path / "shards"
    shard_cub(make_cub(tmp_path / "raw2", quirks=False), str(out), ShardOptions(shard_size=4, workers=1, verbose=False))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = "../../elsewhere.tar"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard name '../../elsewhere.tar' is not a file in that folder"):
        shard_urls(str(out), manifest, "train")
    assert "is not a file in that folder" in verify(str(out))[0]


def test_text_that_is_not_utf8_names_file_line_and_byte(tmp_path: Path) -> None:
    cub = make_cub(tmp_path / "raw", quirks=False)
    (cub / "classes.txt").write_bytes(b"1 001.Bird_1\n2 002.Gr\xfcnfink\n3 003.Bird_3\n")
    with pytest.raises(DataPrepError, match=r"classes.txt:2: not UTF-8 text: byte 0xfc at column 9. save the file as UTF-8"):
        shard_cub(cub, str(tmp_path / "out"), ShardOptions(workers=1, verbose=False))


def test_reasons_are_the_same_on_every_run(tmp_path: Path) -> None:
    """A reason goes into the manifest: the same input must give the same bytes (no memory addresses)."""
    reasons = set()
    for data in (b"", b"not an image at all", b"not an image at all"):
        with pytest.raises(ImageError) as error:
            prepare_image(data)
        reasons.add(str(error.value))
    assert reasons == {"unreadable: empty file (0 bytes)", "unreadable: cannot identify image file (not an image format Pillow reads)"}
    assert prepare_image(rgb_jpeg(0)).converted is None
