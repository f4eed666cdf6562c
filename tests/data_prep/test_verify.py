from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.cub import shard_cub
from data_prep.shards import ShardOptions
from data_prep.verify import verify


@pytest.fixture
def sharded(cub_src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shard_cub(cub_src, str(out), ShardOptions(shard_size=3, verbose=False))
    return out


def test_intact_output_passes(sharded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(sharded)]) == 0
    assert "OK" in capsys.readouterr().err


def test_corrupted_image_bytes_fail(sharded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = sharded / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    start = data.index(b"\xff\xd8")  # the first JPEG in the shard
    data[start : start + 200] = bytes(200)  # same size: only the checksum and decoding can tell
    shard.write_bytes(bytes(data))
    problems = verify(str(sharded))
    assert any("train-000000.tar: sha256 differs" in p for p in problems)
    assert any("train-000000.tar: sample" in p and "does not decode" in p for p in problems)
    assert main(["verify", str(sharded)]) == 1
    assert "problem(s)" in capsys.readouterr().err


def test_missing_shard_and_missing_manifest_fail(sharded: Path) -> None:
    (sharded / "test-000001.tar").unlink()
    assert any("test-000001.tar: file missing" in p for p in verify(str(sharded)))
    (sharded / "manifest.json").unlink()
    assert any("no manifest" in p for p in verify(str(sharded)))
