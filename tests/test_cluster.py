"""The cluster path on clusters of real raylets on this machine: scale up from zero and back down;
`ray job submit` with token auth; storage that a node cannot see refused in the plan; a spot reclaim
of a node, and the run finishing on the workers that are left.

Each test starts its own cluster (`tests/cluster.py`) after the suite's local Ray (tests/conftest.py) is
gone, and kills exactly its own processes afterwards.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import REPO, TINY_ARGS, LocalCluster, can_hide_paths, get_json, wait_for

IDLE_TIMEOUT_S = 6
JOB_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")  # a submitted job's terminal states


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_training_nodes_scale_up_from_zero_and_back_to_zero_after_the_job(no_local_ray, tiny_shards, tmp_path):
    """Ray Train asks the autoscaler for its workers' node and withdraws the request at the end: the
    node idles out (a standing request would keep GPU nodes billing after the job)."""
    cluster = LocalCluster(
        head_cpus=0,
        autoscaling={"types": {"cpu_worker": {"resources": {"CPU": 4}, "max_workers": 2}}, "idle_timeout_minutes": IDLE_TIMEOUT_S / 60},
    )
    try:
        assert [n for n in cluster.alive_nodes() if not n["is_head"]] == []
        started = time.monotonic()
        job = subprocess.Popen(
            [sys.executable, "jobs/cub_swinl.py", "--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path),
             "--name", "scaled", "--num-workers", "1", "--set", "run.autoscale=true", "--set", "optim.epochs=2", *TINY_ARGS],
            cwd=REPO, env=cluster.job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        scale_up_s = wait_for(lambda: any(not n["is_head"] for n in cluster.alive_nodes()), timeout=180, what="a worker node")
        output, _ = job.communicate(timeout=600)
        ended = time.monotonic()
        assert job.returncode == 0, output[-4000:]
        assert "waiting for the autoscaler: the run needs 2 CPUs, the cluster has 0 now" in output
        assert [r["epoch"] for r in _history(tmp_path / "scaled")] == [1, 2]
        idle_down_s = wait_for(
            lambda: not any(not n["is_head"] for n in cluster.alive_nodes()),
            timeout=IDLE_TIMEOUT_S + 90, what="the worker nodes to idle out",
        )
        print(f"scale-up {scale_up_s:.1f} s after the job started; job {ended - started:.1f} s; "
              f"back to zero {idle_down_s:.1f} s after it ended (idle timeout {IDLE_TIMEOUT_S} s)")
    finally:
        cluster.shutdown()


def _submit(cluster: LocalCluster, *job_args: str, env_vars: dict[str, str] | None = None) -> str:
    """`ray job submit --working-dir .` of a job, as a user does it (token auth on); returns the submission id."""
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
    submit = cluster.run("job", "submit", "--address", cluster.dashboard, "--working-dir", ".", "--no-wait", *runtime_env,
                         "--", "python", *job_args, timeout=180)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    return next(w.strip("'") for line in submit.stdout.splitlines() for w in line.split() if w.strip("'").startswith("raysubmit_"))


def _wait_for_job(cluster: LocalCluster, submission_id: str, timeout: float = 600) -> tuple[str, str]:
    """Polls the job's status through the dashboard's HTTP API (a `ray job status` every few seconds
    would cost ~1.8 CPU-s each, taken from the job on 2 cores); then `ray job logs`, as a user reads them."""
    status = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = get_json(f"{cluster.dashboard}/api/jobs/{submission_id}")["status"]
        if status in JOB_ENDED:
            break
        time.sleep(2)
    logs = cluster.run("job", "logs", "--address", cluster.dashboard, submission_id, timeout=60).stdout
    return status if status in JOB_ENDED else "TIMEOUT", logs


@pytest.mark.slow
def test_a_submitted_elastic_job_survives_the_spot_reclaim_of_a_worker_node(no_local_ray, tiny_shards, tmp_path):
    """The cluster day: a head and two worker nodes (one Train worker each), the headline demo submitted
    with `ray job submit --working-dir .` (token auth on) and --min-workers 1. After the first checkpoint
    a node gets a spot reclaim notice (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`) mid-epoch,
    then dies. The workers save a just-in-time checkpoint on the notice; the run resumes from it on the
    node left (the 2-worker ZeRO checkpoint converted for 1), losing no step before it, keeps the samples
    per step and finishes every epoch."""
    from pipeline.checkpoint import latest_checkpoint_meta
    from pipeline.train import steps_per_epoch

    cluster = LocalCluster(head_cpus=1)
    driver_only = tmp_path / "driver_only"  # a folder on the driver's disk that node_b does not have
    driver_only.mkdir()
    hide = can_hide_paths()
    try:
        cluster.add_node("node_a", num_cpus=2)
        cluster.add_node("node_b", num_cpus=2, hide=str(driver_only) if hide else None)
        # without the token the job API refuses: the README's RAY_AUTH_MODE=token step is needed
        refused = subprocess.run(["ray", "job", "list", "--address", cluster.dashboard], capture_output=True, text=True,
                                 timeout=60, env={k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"})
        assert refused.returncode != 0
        if hide:
            # storage and backbone weights that only the driver's node has fail in the plan, before any worker is placed
            weights = driver_only / "backbone.pth"
            weights.write_bytes(b"weights")
            local = _submit(cluster, "jobs/cub_swinl.py", "--demo", "--data", tiny_shards["path"], "--storage", str(driver_only),
                            "--name", "local", *TINY_ARGS, "--set", f"model.checkpoint_path={weights}")
            status, logs = _wait_for_job(cluster, local)
            assert status == "FAILED" and "Traceback" not in logs, logs[-3000:]
            assert (f"error: model.checkpoint_path={weights} and run.storage={driver_only} are not the same on node "
                    f"{cluster.ip} (") in logs, logs[-3000:]
            assert list(driver_only.iterdir()) == [weights]  # the probe's file is gone; nothing trained
        else:
            print("unshare --mount is not permitted here: the unreachable-storage check was not run")
        started = time.monotonic()
        submission = _submit(
            cluster, "jobs/cub_swinl.py", "--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path),
            "--name", "spot", "--num-workers", "2", "--min-workers", "1", "--set", "run.cpus_per_worker=2",
            "--set", "optim.epochs=2", *TINY_ARGS, "--set", "data.batch_size=2",
            env_vars={
                "LEARNED_RESIZER_TEST_STEP_DELAY_S": "2",  # 7 steps of 2 s: the notice lands mid-epoch
                # after the node goes, Ray Train first retries 2 workers until their placement group times
                # out (60 s by default); it bounds only the wait for placement, not the workers' start
                "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "8",
            },
        )
        run_dir = tmp_path / "spot"
        wait_for(lambda: (latest_checkpoint_meta(str(run_dir)) or {}).get("epoch") == 1, timeout=300, what="checkpoint 1")
        first = time.monotonic() - started
        drain = cluster.run("drain-node", "--address", cluster.gcs_address, "--node-id", cluster.node_id("node_b"),
                            "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
                            "--deadline-remaining-seconds", "15")
        assert drain.returncode == 0, drain.stdout + drain.stderr
        jit = wait_for(lambda: "_preempted" in (latest_checkpoint_meta(str(run_dir)) or {}).get("checkpoint", ""),
                       timeout=120, interval=0.25, what="the just-in-time checkpoint")
        saved = latest_checkpoint_meta(str(run_dir))
        cluster.kill_node("node_b")  # the reclaim
        killed = time.monotonic()
        status, logs = _wait_for_job(cluster, submission)
        after_kill = time.monotonic() - killed
        assert status == "SUCCEEDED", logs[-6000:]
        assert get_json(f"{cluster.dashboard}/api/jobs/{submission}")["status"] == "SUCCEEDED"  # the dashboard's HTTP API
        assert "epoch 2/2" in get_json(f"{cluster.dashboard}/api/jobs/{submission}/logs")["logs"]
        per_epoch = steps_per_epoch(tiny_shards["manifest"]["splits"]["train"]["num_samples"], 2, 2, 1)
        assert saved["epoch"] == 1 and per_epoch < saved["step"] < 2 * per_epoch, saved  # mid-epoch 2
        assert saved["epoch_step"] == saved["step"] - per_epoch and saved["world_size"] == 2
        history = _history(run_dir)
        assert [(r["epoch"], r["step"]) for r in history] == [(e, e * per_epoch) for e in (1, 2)], history
        assert "preemption notice for node(s)" in logs
        assert "training on 1 of 2 workers: accumulating 2 micro-batches per step keeps 4 samples per optimizer step" in logs
        assert "converted its ZeRO-2 shards to a universal checkpoint" in logs
        resumed = [line for line in logs.splitlines() if "resumed from epoch" in line]
        assert resumed and f"step {saved['step']}, {saved['epoch_step']} steps into epoch 2" in resumed[0], resumed
        print(f"checkpoint 1 {first:.0f} s after the submission; just-in-time checkpoint {jit:.1f} s after the notice, "
              f"at step {saved['step']}; node killed, job ended {after_kill:.0f} s later; {resumed[0]}")
    finally:
        cluster.shutdown()
