"""history.jsonl: one record per epoch, never emptied by a failed write, reconciled with the checkpoint
a run resumes from."""

import json
from pathlib import Path

import pytest

from pipeline.checkpoint import append_history, read_history, reconcile_history


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_a_write_that_fails_leaves_the_previous_history(tmp_path: Path) -> None:
    append_history(str(tmp_path), {"epoch": 1, "top1": 0.5})
    with pytest.raises(TypeError):
        append_history(str(tmp_path), {"epoch": 2, "top1": {0.6}})  # a set: json cannot write it
    assert lines(tmp_path) == [{"epoch": 1, "top1": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]  # no temporary file left behind


def test_a_rerun_epoch_replaces_itself_and_every_later_record(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        append_history(str(tmp_path), {"epoch": epoch, "attempt": 1})
    append_history(str(tmp_path), {"epoch": 2, "attempt": 2})  # resumed from epoch 1's checkpoint
    assert lines(tmp_path) == [{"epoch": 1, "attempt": 1}, {"epoch": 2, "attempt": 2}]


def test_resume_keeps_exactly_the_epochs_its_checkpoint_covers(tmp_path: Path) -> None:
    # what the old append-then-save order and an abandoned attempt left: epoch 2 twice, epoch 4 never checkpointed
    records = [{"epoch": 1}, {"epoch": 2, "attempt": 1}, {"epoch": 2, "attempt": 2}, {"epoch": 3}, {"epoch": 4}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert reconcile_history(str(tmp_path), through_epoch=3) == 2
    assert lines(tmp_path) == [{"epoch": 1}, {"epoch": 2, "attempt": 2}, {"epoch": 3}]
    assert reconcile_history(str(tmp_path), through_epoch=3) == 0  # nothing more to do
    assert reconcile_history(str(tmp_path), through_epoch=0) == 3  # starting over: an attempt without checkpoints
    assert read_history(str(tmp_path)) == [] and reconcile_history(str(tmp_path / "new"), through_epoch=0) == 0
