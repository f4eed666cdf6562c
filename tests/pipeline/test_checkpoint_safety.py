"""Checkpoints are data, not code: a pickle that would run a command on load is refused, by the
project's weights reader and by the engine DeepSpeed resumes through."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import load_weights, weights_only_engine


class RunsACommand:
    """What an attacker with write access to the storage bucket would put in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    weights = tmp_path / "model.pt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(2)}, "payload": RunsACommand(marker)}, weights)
    shard = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "payload": RunsACommand(marker)}, shard)
    with pytest.raises(pickle.UnpicklingError, match="os.system|posix.system"):
        load_weights(str(weights))
    with pytest.raises(pickle.UnpicklingError, match="os.system|posix.system"):
        weights_only_engine().load(str(shard), map_location="cpu")
    assert not marker.exists()

    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(2)}, "class_names": ["a"]}, weights)  # plain data loads
    assert load_weights(str(weights))["class_names"] == ["a"]
