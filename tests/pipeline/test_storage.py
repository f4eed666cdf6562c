"""Reports on folders in object storage, against a real S3 server on 127.0.0.1 (moto)."""

import io
import json

import pytest
import torch

from pipeline import report
from pipeline.checkpoint import load_weights
from pipeline.storage import local_copy

from tests.pipeline.test_tune import _fake_search


def test_the_search_report_reads_and_writes_a_bucket(s3, tmp_path, capsys):
    bucket = s3.bucket("searches")
    learned = {"resizer.kind": "learned", "resizer.num_filters": 16}
    _fake_search(tmp_path, [("a", learned, [0.2, 0.5, 0.6, 0.7]), ("b", {**learned, "resizer.kind": "bilinear"}, [0.2, 0.3])])
    s3.fs.put(str(tmp_path), "searches/cub", recursive=True)
    before = s3.fs.cat_file("searches/cub/trial_a/result.json")

    assert report.main([f"{bucket}/cub"]) == 0
    out = capsys.readouterr().out
    assert "report: s3://searches/cub/report.html" in out and "best top1 0.7 (trial a)" in out
    for name in ("report.html", "curves.png", "hyperparameters.png", "trials.csv", "tune_summary.json"):
        assert s3.fs.size(f"searches/cub/{name}") > 0, name
    assert "Search cub" in s3.fs.cat_file("searches/cub/report.html").decode()  # the folder's name, not the copy's
    assert s3.fs.cat_file("searches/cub/trial_a/result.json") == before  # what Tune wrote is read, not rewritten


def test_a_missing_bucket_folder_is_one_line_and_exit_code_2(s3, capsys):
    s3.bucket("empty")
    assert report.main(["s3://empty/nothing"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: s3://empty/nothing: no such folder (or it is empty)"


def test_a_copy_skips_zero_shards_and_weights_fetches_on_demand_and_uploads_what_changed(s3):
    s3.bucket("runs")
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}, "num_outputs": 2}, buffer)
    s3.fs.pipe({
        "runs/r/history.jsonl": b'{"epoch": 1}\n',
        "runs/r/checkpoint_epoch_0001/ds/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"shard",
        "runs/r/checkpoint_epoch_0001/ds_universal/zero/w/fp32.pt": b"universal",
        "runs/r/checkpoint_epoch_0001/model.pt": buffer.getvalue(),
        "runs/r/checkpoint_epoch_0001/meta.json": b'{"epoch": 1}',
    })
    with local_copy("s3://runs/r") as local:
        names = sorted(p.relative_to(local.path).as_posix() for p in local.path.rglob("*") if p.is_file())
        assert names == ["checkpoint_epoch_0001/meta.json", "history.jsonl"]
        weights = local.fetch("checkpoint_epoch_0001/model.pt")
        assert torch.load(weights, weights_only=True)["num_outputs"] == 2
        (local.path / "summary.json").write_text(json.dumps({"ok": True}))
        assert local.where(local.path / "summary.json") == "s3://runs/r/summary.json"
        assert local.name == "r"
    assert json.loads(s3.fs.cat_file("runs/r/summary.json")) == {"ok": True}
    assert sorted(s3.fs.find("runs/r")) == sorted([
        "runs/r/history.jsonl", "runs/r/summary.json", "runs/r/checkpoint_epoch_0001/meta.json",
        "runs/r/checkpoint_epoch_0001/model.pt", "runs/r/checkpoint_epoch_0001/ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "runs/r/checkpoint_epoch_0001/ds_universal/zero/w/fp32.pt",
    ])
    assert load_weights("s3://runs/r/checkpoint_epoch_0001")["state_dict"]["w"].sum() == 2  # predict/grid read a URI


def test_a_search_resumed_from_a_bucket_puts_its_earlier_results_back_in_asha(s3, tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.tune import restore_rungs

    s3.bucket("resumed")
    learned = {"resizer.kind": "learned"}
    _fake_search(tmp_path, [("a", learned, [0.2, 0.5, 0.6, 0.7]), ("b", learned, [0.2, 0.3])])
    s3.fs.put(str(tmp_path), "resumed/cub", recursive=True)
    scheduler = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, metric="top1", mode="max")
    assert restore_rungs(scheduler, "s3://resumed/cub", metric="top1", mode="max") == 6  # every epoch of both trials
    rungs = {rung: dict(recorded) for rung, recorded in scheduler._brackets[0]._rungs}
    assert rungs[1] == {"a": 0.2, "b": 0.2} and rungs[2] == {"a": 0.5, "b": 0.3}


def test_an_unreachable_store_is_one_line_naming_the_uri_and_exit_code_2(monkeypatch, capsys):
    """An endpoint nobody listens on, as a wrong AWS_ENDPOINT_URL or a store behind a firewall."""
    import s3fs

    from pipeline import predict
    from pipeline.manifest import DataError, read_manifest
    from tests.cluster import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # filesystems made for the test server would be reused
    try:
        assert report.main(["s3://runs/search"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: s3://runs/search: the object store could not be reached") and err.count("\n") == 1
        assert "AWS_ENDPOINT_URL" in err
        with pytest.raises(DataError, match=r"^data.path='s3://shards/cub': the object store could not be reached"):
            read_manifest("s3://shards/cub")
        assert predict.main(["--checkpoint", "s3://runs/cub", "--out", "never.csv", "photo.jpg"]) == 2
        assert "error: s3://runs/cub: the object store could not be reached" in capsys.readouterr().err
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
