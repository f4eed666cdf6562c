"""Shared fixtures: the suite's real local Ray (one, shared by the tests that train in this process), tiny real shards."""

import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from data_prep.cub import shard_cub
from data_prep.demo import generate_demo
from data_prep.shards import ShardOptions

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Train's controller polls every 2 s by default: ~5 s at the end of every run and trial (see jobs/_common.init_ray).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def start_local_ray():
    """The suite's one local Ray in this process, 8 logical CPUs (Train workers plus Data read tasks on a
    2-core machine): started by the first test that needs it and kept for the next ones, which skip its
    start-up and find idle workers that have already imported torch. A test that starts its own cluster
    shuts it down first (`no_local_ray`); the next test that needs it starts it again."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, log_to_driver=True)
    return ray


@pytest.fixture
def ray_local():
    """`start_local_ray()` for a test."""
    yield start_local_ray()


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture
def no_local_ray():
    """For tests whose job or cluster starts its own Ray: two on one machine confuse each other's clients."""
    _shutdown_ray()
    yield


def pytest_sessionfinish(session, exitstatus):
    _shutdown_ray()


def corrupt_sample(shard: Path, index: int = 0) -> str:
    """Replaces the jpg of the `index`-th sample of a tar with garbage; returns its key."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    jpgs = [m.name for m, _ in members if m.name.endswith(".jpg")]
    target = jpgs[index]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            if member.name == target:
                data = b"\xff\xd8 this is not a jpeg"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return target.split(".")[0]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict:
    """3 texture classes, 64x64 images: 30 train / 30 test, shards of 8; one corrupt image per split."""
    root = tmp_path_factory.mktemp("tiny")
    src = generate_demo(root / "raw", num_classes=3, num_images=60, seed=0, image_size=(64, 64), workers=1)
    out = root / "shards"
    shard_cub(src, str(out), ShardOptions(seed=0, shard_size=8, workers=1, verbose=False))
    manifest = json.loads((out / "manifest.json").read_text())
    bad_train = corrupt_sample(out / manifest["splits"]["train"]["shards"][0]["name"], 1)
    bad_test = corrupt_sample(out / manifest["splits"]["test"]["shards"][1]["name"], 0)
    return {"path": str(out), "manifest": manifest, "bad_train": bad_train, "bad_test": bad_test}


@pytest.fixture
def shards_copy(tiny_shards, tmp_path) -> str:
    target = tmp_path / "shards"
    shutil.copytree(tiny_shards["path"], target)
    return str(target)


@pytest.fixture(scope="session")
def s3():
    """A real S3 server on 127.0.0.1 (moto), with this process's environment (and so every job and local
    Ray started from it) pointed at it through AWS_ENDPOINT_URL; restored afterwards."""
    from tests.servers import S3Server

    server = S3Server()
    saved = {name: os.environ.get(name) for name in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
