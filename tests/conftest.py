"""Shared fixtures: a real local Ray (one at a time, shut down after each module)."""

import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 8 logical CPUs: Train workers plus Data read tasks on a 2-core machine."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=8, log_to_driver=True)
    yield ray
    ray.shutdown()
