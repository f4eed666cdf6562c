"""The user's cluster day on loopback: `ray start --head`, `ray job submit --working-dir .`, the job and
dashboard APIs, then stop that head (only the processes it started)."""

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.cluster import TINY_ARGS, auth_token, free_port

REPO = Path(__file__).resolve().parents[1]
TINY = [*TINY_ARGS, "--set", "optim.epochs=2"]


def get_json(url: str) -> object:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {auth_token()}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def ray_head():
    """A head on loopback in its own temp dir; torn down by killing exactly the processes it started."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    before = {p.pid for p in psutil.process_iter()}
    subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=8",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        check=True, capture_output=True, text=True, env=env, timeout=180,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        yield address, env
    finally:
        # Ray's processes of this head name its temp dir on their command line; their children too.
        roots = [
            p for p in psutil.process_iter(["pid", "cmdline"])
            if p.pid not in before and temp_dir in " ".join(p.info["cmdline"] or [])
        ]
        ours = {}
        for root in roots:
            try:
                ours.update({p.pid: p for p in [root, *root.children(recursive=True)]})
            except psutil.NoSuchProcess:
                pass
        ours = list(ours.values())
        for process in ours:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(ours, timeout=5)
        for process in alive:
            process.kill()


@pytest.mark.slow
def test_job_submit_runs_the_demo_on_a_real_head(ray_head, tiny_shards, tmp_path):
    address, env = ray_head
    # without the token the job API refuses: the README's RAY_AUTH_MODE=token step is needed
    refused = subprocess.run(
        ["ray", "job", "list", "--address", address], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"},
    )
    assert refused.returncode != 0
    submit = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--no-wait", "--",
         "python", "jobs/cub_swinl.py", "--demo", "--data", tiny_shards["path"], "--storage", str(tmp_path),
         "--name", "submitted", *TINY],
        capture_output=True, text=True, timeout=180, env=env, cwd=REPO,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    submission_id = next(w.strip("'") for line in submit.stdout.splitlines() for w in line.split() if w.strip("'").startswith("raysubmit_"))

    deadline = time.time() + 600
    status = None
    while time.time() < deadline:
        status = get_json(f"{address}/api/jobs/{submission_id}")["status"]  # the dashboard's HTTP endpoint
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = subprocess.run(["ray", "job", "logs", "--address", address, submission_id],
                          capture_output=True, text=True, timeout=60, env=env).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    cli_status = subprocess.run(["ray", "job", "status", "--address", address, submission_id],
                                capture_output=True, text=True, timeout=60, env=env).stdout
    assert "succeeded" in cli_status.lower()
    http_logs = get_json(f"{address}/api/jobs/{submission_id}/logs")["logs"]
    for text in (logs, http_logs):
        assert "epoch 2/2" in text and "best checkpoint:" in text
    history = [json.loads(line) for line in (tmp_path / "submitted" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
