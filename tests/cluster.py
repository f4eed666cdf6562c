"""Ray clusters of real processes on this machine, for the multi-node tests: a head started with
`ray start` (token authentication on, optionally the fake multi-node autoscaler) and worker raylets.

Teardown kills exactly the processes of this cluster (their command lines name its session), never
another Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]

# A Swin at 16 px behind a 32 -> 16 resizer: seconds per epoch on 2 cores.
TINY_ARGS = [
    "--set", "model.img_size=16",
    "--set", 'model.backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2}',
    "--set", "data.crop_size=32", "--set", "data.batch_size=4", "--set", "resizer.num_filters=8",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_token() -> str:
    return (Path.home() / ".ray" / "auth_token").read_text().strip()


def get_json(url: str) -> Any:
    """A GET of the dashboard's HTTP API, with the cluster's token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {auth_token()}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class LocalCluster:
    """A head and worker nodes, each a real raylet, all on this machine.

    Args:
        head_cpus: logical CPUs of the head (0: drivers and 0-CPU actors only, as `cluster.yaml`'s head).
        autoscaling: a fake multi-node autoscaler config (`provider: fake_multinode`): worker node types
            the autoscaler starts and stops as raylets on this machine.
    """

    def __init__(self, *, head_cpus: int, autoscaling: dict[str, Any] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {
            **os.environ, "RAY_AUTH_MODE": "token", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            # a dead node is declared dead after ~1.5 s instead of ~30 s: the tests wait for it
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.before = {p.pid for p in psutil.process_iter()}
        self.ip = _node_ip()
        command = [
            "ray", "start", "--head", f"--port={self.port}", f"--num-cpus={head_cpus}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats", "--resources={\"head\": 1}",
        ]
        env = dict(self.env)
        if autoscaling is not None:
            config = _autoscaling_config(autoscaling, gcs_address=f"{self.ip}:{self.port}", head_cpus=head_cpus)
            config_file = Path(self.temp_dir) / "autoscaling.json"
            config_file.write_text(json.dumps(config))
            command.append(f"--autoscaling-config={config_file}")
            env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        subprocess.run(command, check=True, capture_output=True, text=True, env=env, timeout=180)
        self.gcs_address = f"{self.ip}:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.session = Path(self.temp_dir, "session_latest").resolve().name
        self.nodes: dict[str, int] = {}  # node name -> raylet pid

    def add_node(self, name: str, *, num_cpus: int, resources: dict[str, float] | None = None, hide: str | None = None) -> None:
        """A worker raylet joining the head (`ray start --address`), tagged with the resource `name`.

        `hide`: a folder this node does not see (an empty tmpfs over it in the node's own mount
        namespace), as a machine without the driver's local disk; needs `can_hide_paths()`.
        """
        manager_port = free_port()
        command = [
            "ray", "start", f"--address={self.gcs_address}", f"--num-cpus={num_cpus}",
            f"--node-manager-port={manager_port}", "--disable-usage-stats",
            f"--resources={json.dumps({name: 1, **(resources or {})})}",
        ]
        if hide is not None:
            command = ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none {shlex.quote(hide)} && exec {shlex.join(command)}"]
        subprocess.run(command, check=True, capture_output=True, text=True, env=self.env, timeout=180)
        raylets = [p for p in self._processes() if "raylet" in p.name() and f"--node_manager_port={manager_port}" in " ".join(p.cmdline())]
        assert raylets, f"no raylet for node {name}"
        self.nodes[name] = raylets[0].pid

    def kill_node(self, name: str) -> None:
        """What losing a machine looks like to Ray: its raylet and everything under it die at once."""
        raylet = psutil.Process(self.nodes.pop(name))
        victims = [raylet, *raylet.children(recursive=True)]
        for process in victims:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass

    def node_id(self, name: str) -> str:
        """The Ray node id of a worker node started by `add_node`."""
        for node in self.alive_nodes():
            if name in node["resources_total"]:
                return node["node_id"]
        raise LookupError(name)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The cluster's alive nodes, from the dashboard's state API (no driver connects for it)."""
        query = "filter_keys=state&filter_predicates=%3D&filter_values=ALIVE&limit=100&detail=true"
        nodes = get_json(f"{self.dashboard}/api/v0/nodes?{query}")["data"]["result"]["result"]
        return [{"node_id": n["node_id"], "resources_total": n["resources_total"], "is_head": n["is_head_node"]} for n in nodes]

    def run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster (token sent)."""
        return subprocess.run(["ray", *args], capture_output=True, text=True, timeout=timeout, env=self.env, cwd=REPO)

    def job_env(self) -> dict[str, str]:
        """The environment of a driver that joins this cluster (RAY_ADDRESS set)."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address, "PYTHONPATH": str(REPO)}

    def _processes(self) -> list[psutil.Process]:
        found = {}
        for process in psutil.process_iter(["pid", "cmdline"]):
            if process.pid in self.before:
                continue
            cmdline = " ".join(process.info["cmdline"] or [])
            if self.temp_dir in cmdline or self.session in cmdline or self.gcs_address in cmdline:
                try:
                    found.update({p.pid: p for p in [process, *process.children(recursive=True)]})
                except psutil.NoSuchProcess:
                    pass
        return list(found.values())

    def shutdown(self) -> None:
        ours = self._processes()
        for process in ours:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(ours, timeout=10)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def can_hide_paths() -> bool:
    """Whether a raylet can get its own mount namespace here (`unshare --mount`, root or CAP_SYS_ADMIN)."""
    probe = tempfile.mkdtemp(prefix="hide")
    try:
        return subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none {probe}"], capture_output=True).returncode == 0
    except OSError:
        return False
    finally:
        os.rmdir(probe)


def wait_for(condition: Any, *, timeout: float, interval: float = 1.0, what: str = "condition") -> float:
    """Polls `condition()` until true; returns the seconds it took. Fails the test after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _node_ip() -> str:
    import ray._private.services

    return ray._private.services.get_node_ip_address()


def _autoscaling_config(worker_types: dict[str, Any], *, gcs_address: str, head_cpus: int) -> dict[str, Any]:
    """Ray's fake multi-node example config (in Ray's source tree, not the wheel) with these worker types."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": sum(t["max_workers"] for t in worker_types["types"].values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus, "head": 1}, "node_config": {}, "max_workers": 0},
            **{
                name: {"resources": spec["resources"], "node_config": {}, "min_workers": 0, "max_workers": spec["max_workers"]}
                for name, spec in worker_types["types"].items()
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": worker_types["idle_timeout_minutes"],
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }
