"""Faults injected into real runs: killed workers and drivers, kills mid-checkpoint, bad data, bad configs.

Each test checks what the user relies on: nothing is lost beyond the last checkpoint, steps continue
without repeats or gaps, and bad input fails fast with the field and the fix.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipeline.checkpoint import SAVE_DELAY_ENV, read_history
from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig, RunConfig
from pipeline.launch import launch
from pipeline.manifest import DataError
from pipeline.runs import plan as plan_run
from pipeline.runs import write_run_config
from pipeline.train import steps_per_epoch
from tests.cluster import TINY_ARGS
from tests.jobs.conftest import run_job_here

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ModelConfig(
    backbone="swin_tiny_patch4_window7_224",
    pretrained=False,
    img_size=16,
    backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2},
)


def tiny_job(data_path: str, storage: str, **changes) -> JobConfig:
    cfg = JobConfig(
        resizer=ResizerConfig(num_filters=8),
        model=TINY_MODEL,
        data=DataConfig(path=data_path, resize_size=None, crop_size=32, batch_size=4, shuffle_buffer=8),
        optim=OptimConfig(lr=1e-3, epochs=3, warmup_epochs=0.5),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
        run=RunConfig(name="fault", storage=storage, num_workers=2, log_every=0),
    )
    for section, values in changes.items():
        cfg = JobConfig(**{**cfg.__dict__, section: type(getattr(cfg, section))(**{**getattr(cfg, section).__dict__, **values})})
    return cfg


def raw_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_steps_consistent(records: list[dict], per_epoch: int, epochs: int) -> None:
    """Every epoch's step is epoch x steps-per-epoch (no repeats, no gaps), and every epoch is there."""
    for record in records:
        assert record["step"] == record["epoch"] * per_epoch, record
    assert sorted({r["epoch"] for r in records}) == list(range(1, epochs + 1))


def train_workers() -> list[psutil.Process]:
    out = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("ray::RayTrainWorker"):
            out.append(process)
    return out


# ---------------------------------------------------------------- 1. a worker process dies mid-epoch

@pytest.mark.slow
@pytest.mark.ray
def test_killed_worker_resumes_from_the_latest_checkpoint(tiny_shards, tmp_path, ray_local):
    cfg = tiny_job(tiny_shards["path"], str(tmp_path), run={"max_failures": 2})
    run_dir = tmp_path / "fault"
    killed = []

    def kill_one_worker_in_epoch_two() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not raw_history(run_dir):
            time.sleep(0.2)
        time.sleep(1.0)  # into epoch 2
        workers = train_workers()
        if workers:
            workers[-1].send_signal(signal.SIGKILL)
            killed.append(workers[-1].pid)

    watcher = threading.Thread(target=kill_one_worker_in_epoch_two, daemon=True)
    watcher.start()
    result = launch(cfg)
    watcher.join(timeout=10)
    assert killed, "no Train worker was found to kill"
    per_epoch = steps_per_epoch(tiny_shards["manifest"]["splits"]["train"]["num_samples"], 2, 4, 1)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert_steps_consistent(raw_history(run_dir), per_epoch, 3)
    assert all(p.pid not in killed for p in train_workers())  # a new worker group ran the rest

    again = launch(cfg)  # the same run once more: it is finished, nothing trains
    assert again.run.finished and again.history == result.history
    assert again.latest_checkpoint == str(run_dir / "checkpoint_epoch_0003")


# ---------------------------------------------------------------- 2. bad data

def _break_shards(path: Path, manifest: dict) -> tuple[str, str]:
    train = manifest["splits"]["train"]["shards"]
    truncated = path / train[2]["name"]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = path / train[3]["name"]
    empty.write_bytes(b"")
    return truncated.name, empty.name


@pytest.mark.slow
@pytest.mark.ray
def test_corrupt_image_truncated_tar_and_empty_shard_are_skipped_and_counted(tiny_shards, shards_copy, tmp_path, ray_local):
    truncated, empty = _break_shards(Path(shards_copy), tiny_shards["manifest"])
    result = launch(tiny_job(shards_copy, str(tmp_path), optim={"epochs": 1}))
    record = result.history[-1]
    keys = [k for k, _ in record["skipped"]]
    reasons = " ".join(reason for _, reason in record["skipped"])
    assert tiny_shards["bad_train"] in keys and tiny_shards["bad_test"] in keys
    assert any(k.startswith(truncated) for k in keys) and any(k.startswith(empty) for k in keys)
    assert "truncated or corrupt tar" in reasons and "undecodable image" in reasons
    assert record["skipped_train"] >= 3 and record["skipped_eval"] == 1


@pytest.mark.slow
@pytest.mark.ray
def test_strict_data_stops_the_run_naming_the_sample(tiny_shards, tmp_path, ray_local):
    cfg = tiny_job(tiny_shards["path"], str(tmp_path), data={"strict": True}, optim={"epochs": 1})
    with pytest.raises(RuntimeError, match=r"data.strict=true: undecodable samples .*" + tiny_shards["bad_train"]):
        launch(cfg)


# ---------------------------------------------------------------- 3. bad configuration fails fast

def test_bad_configuration_fails_before_asking_for_resources(tiny_shards, shards_copy, tmp_path):
    """plan() checks a config against its data and the cluster's resources (here a 2-core machine's
    8 logical CPUs, as the local Ray of the tests has) without asking the cluster for anything."""
    storage = str(tmp_path)
    cluster = {"CPU": 8.0}

    def plan(cfg):
        return plan_run(cfg, resources=cluster)

    with pytest.raises(DataError, match="does not exist.*python -m data_prep"):
        plan(tiny_job(str(tmp_path / "missing"), storage))
    manifest_path = Path(shards_copy) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["test"]["shards"] = []
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="split 'test' has no shards"):
        plan(tiny_job(shards_copy, storage))
    with pytest.raises(ValueError, match=r"data.num_classes=200 but the manifest .* lists 3 classes"):
        plan(tiny_job(tiny_shards["path"], storage, data={"num_classes": 200}))
    with pytest.raises(ValueError, match=r"run.num_workers=8 x run.cpus_per_worker=1 .* the cluster has 8"):
        plan(tiny_job(tiny_shards["path"], storage, run={"num_workers": 8}, data={"batch_size": 2}))
    with pytest.raises(ValueError, match=r"run.num_workers=2 needs 2 GPUs; the cluster has 0"):
        plan(tiny_job(tiny_shards["path"], storage, run={"use_gpu": True}))
    with pytest.raises(ValueError, match="deepspeed.precision='fp16' needs GPUs"):
        plan(tiny_job(tiny_shards["path"], storage, deepspeed={"precision": "fp16"}))
    with pytest.raises(ValueError, match=r"'inception_v3' cannot take a 32px crop resized to 16px"):
        plan(tiny_job(tiny_shards["path"], storage, model={"backbone": "inception_v3", "img_size": 16, "backbone_kwargs": {}}))
    # a 2-worker run resumed by 1 worker: the plan says its checkpoint is converted (universal)
    run_dir = tmp_path / "fault"
    (run_dir / "checkpoint_epoch_0001").mkdir(parents=True)
    (run_dir / "checkpoint_epoch_0001" / "meta.json").write_text(json.dumps({"world_size": 2, "zero_stage": 2, "epoch": 1}))
    (run_dir / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_epoch_0001"}})
    )
    assert re.search(
        r"written by 2 workers: their ZeRO-2 shards are converted once to a universal checkpoint",
        plan(tiny_job(tiny_shards["path"], storage, run={"num_workers": 1})).describe(),
    )
    shutil.rmtree(run_dir)


# ---------------------------------------------------------------- 4. a rerun with the same name

def _checkpointed(run, epoch: int) -> None:
    """What a run leaves after saving `epoch`: its job.json, the checkpoint's meta.json and Ray's snapshot."""
    write_run_config(run)
    name = f"checkpoint_epoch_{epoch:04d}"
    (Path(run.directory) / name).mkdir(parents=True, exist_ok=True)
    (Path(run.directory) / name / "meta.json").write_text(json.dumps({"world_size": 2, "zero_stage": 2, "epoch": epoch, "step": 8 * epoch}))
    (Path(run.directory) / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": name}})
    )


def test_a_rerun_continues_only_the_same_run_and_says_when_it_is_finished(tiny_shards, shards_copy, tmp_path):
    """The same --name and --storage resume; a config that changes what is trained refuses with the
    fields and both fixes; extending (epochs) or moving (workers, retries) continues; run.resume decides."""
    cluster = {"CPU": 8.0}
    storage = str(tmp_path)

    def plan(**changes):
        return plan_run(tiny_job(tiny_shards["path"], storage, **changes), resources=cluster)

    first = plan()
    assert first.resumes_from is None and not first.finished
    _checkpointed(first, epoch=2)

    same = plan()
    assert same.resumes_from["epoch"] == 2 and same.changes == {} and not same.finished
    assert "continues from checkpoint_epoch_0002 (epoch 2)" in same.describe()
    assert plan(optim={"epochs": 5}, run={"max_failures": 7, "log_every": 5}).changes == {}

    with pytest.raises(ValueError) as refused:
        plan(optim={"lr": 0.01})
    message = str(refused.value)
    assert "optim.lr: 0.001 -> 0.01" in message and "--name fault-2" in message and "run.resume=allow_changes" in message
    with pytest.raises(ValueError, match=r"data.path: '.*' -> '.*'; resizer.kind: 'learned' -> 'bilinear'"):
        plan_run(tiny_job(shards_copy, storage, resizer={"kind": "bilinear"}), resources=cluster)
    allowed = plan(optim={"lr": 0.01}, run={"resume": "allow_changes"})
    assert allowed.changes == {"optim.lr": (0.001, 0.01)} and "changed: optim.lr 0.001 -> 0.01" in allowed.describe()

    with pytest.raises(ValueError, match=r"run 'fault' already exists .* run.resume=never; pass another --name, e.g. --name fault-2"):
        plan(run={"resume": "never"})
    with pytest.raises(ValueError, match=r"run.resume=must but .*other.* holds no checkpoint to resume"):
        plan(run={"resume": "must", "name": "other"})

    finished = plan(optim={"epochs": 2})
    assert finished.finished and finished.changes == {}


# ---------------------------------------------------------------- 5. the driver dies mid-checkpoint; reruns resume
# (last: its first run starts its own Ray, so the suite's in-process one goes down first; the reruns start it again)

def _job(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "cub_swinl.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(env or {})}, start_new_session=True,
    )


def _kill_when(process: subprocess.Popen, line_prefix: str, timeout: float = 400) -> str:
    """Reads the job's output until a line contains `line_prefix`, then SIGKILLs the driver."""
    seen = []
    deadline = time.time() + timeout
    for line in process.stdout:
        seen.append(line)
        if line_prefix in line:
            process.send_signal(signal.SIGKILL)
            break
        if time.time() > deadline:
            break
    process.stdout.close()
    process.wait(timeout=60)
    # The driver's local Ray goes down with it (Ray's reaper); wait for its workers to go.
    deadline = time.time() + 60
    while train_workers() and time.time() < deadline:
        time.sleep(0.5)
    return "".join(seen)


def _rerun(args: list[str]) -> str:
    """The same command again, its `main(args)` in this process on the suite's local Ray (`run_job_here`)."""
    result = run_job_here("cub_swinl.py", *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_killed_driver_resumes_from_the_last_complete_checkpoint_and_a_longer_rerun_extends(tiny_shards, tmp_path, no_local_ray):
    """SIGKILL of the driver while it writes a checkpoint; the same command resumes from the one before;
    a later rerun with more epochs continues the step count (one run folder, three invocations)."""
    args = ["--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path), "--name", "midsave", *TINY_ARGS,
            "--set", "optim.epochs=3"]
    process = _job(args, env={SAVE_DELAY_ENV: "4"})  # each save pauses 4 s after DeepSpeed wrote its shards
    output = _kill_when(process, "saving checkpoint of epoch 2")
    assert "saving checkpoint of epoch 2" in output
    run_dir = tmp_path / "midsave"
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_epoch_0001"
    # what an interrupted upload leaves behind: a checkpoint folder with a torn shard, never registered
    torn = run_dir / "checkpoint_epoch_0002"
    (torn / "ds").mkdir(parents=True, exist_ok=True)
    (torn / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02torn")
    per_epoch = steps_per_epoch(tiny_shards["manifest"]["splits"]["train"]["num_samples"], 2, 4, 1)
    rerun = _rerun(args)
    assert f"resumed from epoch 1 (step {per_epoch})" in rerun  # lost only the epoch whose save was cut
    assert_steps_consistent(raw_history(run_dir), per_epoch, 3)

    longer = _rerun([*args, "--set", "optim.epochs=4"])  # a finished run, a bigger budget: it continues
    assert f"resumed from epoch 3 (step {3 * per_epoch})" in longer
    assert_steps_consistent(raw_history(run_dir), per_epoch, 4)
    history = read_history(str(run_dir))  # the rerun's epoch 2 replaces the one whose checkpoint was cut
    assert [(r["epoch"], r["step"]) for r in history] == [(e, e * per_epoch) for e in (1, 2, 3, 4)]
    assert "resizer grid:" in longer and (run_dir / "resizer_grid.png").is_file()
