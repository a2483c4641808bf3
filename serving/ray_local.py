"""A real multi-node Ray cluster on this machine (a head plus worker nodes, each started by ``ray start``),
for the Ray tests and the scale-out benchmark, and for trying a Serve config before a real cluster.

Every node gets its own temp dir and its own ports, so several nodes (and several such clusters) coexist
on one host. Stopping kills only the processes of this cluster: those whose command line names one of its
marker in the environment, which every process of the cluster inherits (``ray stop`` would stop every Ray
process of the machine, and some Ray processes rename themselves, so command lines are not enough).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ports import free_port, free_ports

MARKER = "AA_DEPLOY_LOCAL_RAY_CLUSTER"


def _bin(name: str) -> str:
    """The console script next to this interpreter (the venv's ``ray``/``serve``), else the one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"`{name}` not found: install the `ray` extra (pip install 'aa-deploy[ray]')")
    return found


def _node_ports(taken: set[int]) -> list[str]:
    """Ports every node of a one-host cluster needs of its own (Ray's defaults would collide), distinct
    from each other and from ``taken`` (the cluster's ports so far, which this adds them to)."""
    options = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    ports = free_ports(len(options), exclude=taken)
    taken.update(ports)
    args: list[str] = []
    for option, port in zip(options, ports, strict=True):
        args += [option, str(port)]
    return args


# What ``ray start`` says when a node did not register with the GCS within its fixed wait.
STARTUP_TIMEOUT = "timed out during startup"


@dataclass
class LocalRayCluster:
    """``with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster: cluster.serve("deploy", yaml_path)``."""

    nodes: int = 2
    cpus_per_node: float = 1.0
    start_timeout_s: float = 180.0
    env: dict[str, str] = field(default_factory=dict)
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dirs: list[str] = field(default_factory=list)
    marker: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")
    home: str | None = None

    def __post_init__(self) -> None:
        if self.dashboard_port == self.gcs_port:  # two default picks can repeat: picking is not reserving
            (self.dashboard_port,) = free_ports(1, exclude={self.gcs_port})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _environ(self) -> dict[str, str]:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", MARKER: self.marker, **self.env}
        env.pop("RAY_ADDRESS", None)
        # A user's ~/.ray (an auth token left by `serve run`, say) switches some of Ray's processes to
        # token authentication and not others, so the second node cannot join: this throwaway cluster
        # gets a home of its own.
        if self.home is None:
            self.home = self._temp_dir()
        env["HOME"] = self.home
        return env

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run(args, env=self._environ(), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def _temp_dir(self) -> str:
        # Short: Ray puts Unix sockets under it (path length limit ~107 bytes).
        path = tempfile.mkdtemp(prefix="aaray", dir="/tmp")
        self.temp_dirs.append(path)
        return path

    def start(self) -> LocalRayCluster:
        """Start the head and the other nodes; a start that Ray gave up on is tried once more.

        ``ray start`` waits a fixed 30 s for a new node to register with the GCS. On a starved machine
        (a 2-core CI runner next to other work) that can time out although nothing is wrong, so that one
        failure restarts the whole cluster once on fresh ports; any other failure is raised as it is.
        """
        try:
            return self._start_nodes()
        except RuntimeError as exc:
            if STARTUP_TIMEOUT not in str(exc):
                raise
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.temp_dirs, self.home = [], None
        time.sleep(5)
        return self._start_nodes()

    def _start_nodes(self) -> LocalRayCluster:
        ray = _bin("ray")
        cpus = str(self.cpus_per_node)
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", cpus, "--num-gpus", "0", "--disable-usage-stats"]
        taken = {self.gcs_port, self.dashboard_port}
        (client_port,) = free_ports(1, exclude=taken)
        taken.add(client_port)
        try:
            self._run(
                [ray, "start", "--head", "--port", str(self.gcs_port), "--temp-dir", self._temp_dir(),
                 "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                 "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(client_port),
                 *common, *_node_ports(taken)],
                self.start_timeout_s,
            )  # fmt: skip
            for _ in range(self.nodes - 1):
                self._run(
                    [
                        ray,
                        "start",
                        "--address",
                        self.address,
                        "--temp-dir",
                        self._temp_dir(),
                        *common,
                        *_node_ports(taken),
                    ],
                    self.start_timeout_s,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def serve(self, *args: str, timeout: float = 300.0) -> str:
        """Run the ``serve`` CLI against this cluster (``deploy FILE``, ``status``, ``shutdown -y``).

        The first ``serve deploy`` also starts Serve's controller and proxies; on a starved machine Ray can
        give up on a proxy actor that is slow to start (``ActorDiedError`` for the proxy) and answers the
        deploy with 500. Such a start-up failure is retried once; any other failure is raised as it is."""
        command = [_bin("serve"), *args, "--address", self.dashboard_url]
        try:
            return self._run(command, timeout).stdout
        except RuntimeError as exc:
            if args[:1] != ("deploy",) or "ActorDiedError" not in str(exc) or "PROXY_ACTOR" not in str(exc):
                raise
            time.sleep(5)
            return self._run(command, timeout).stdout

    def status(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(self.serve("status", timeout=60)) or {}

    def wait_running(self, app: str, timeout: float = 300.0, after: float | None = None) -> dict[str, Any]:
        """Wait until application ``app`` and all its deployments are RUNNING (deployed after ``after``)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status()
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(1)
                continue
            info = (last.get("applications") or {}).get(app) or {}
            fresh = after is None or float(info.get("last_deployed_time_s") or 0) >= after
            deployments = (info.get("deployments") or {}).values()
            if info.get("status") == "DEPLOY_FAILED":
                why = "; ".join(f"{n}: {d.get('message')}" for n, d in (info.get("deployments") or {}).items())
                raise RuntimeError(f"application {app} failed to deploy: {info.get('message')} ({why})")
            if fresh and info.get("status") == "RUNNING" and all(d.get("status") == "HEALTHY" for d in deployments):
                return info
            time.sleep(1)
        raise TimeoutError(f"application {app} not RUNNING after {timeout:.0f}s; last status: {last}")

    def stop(self) -> None:
        """Kill this cluster's processes (found by the marker in their environment), then remove the dirs."""
        import psutil

        mine = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and proc.environ().get(MARKER) == self.marker:
                    mine.append(proc)
            except psutil.Error:
                continue
        # Ray's agents start with their own environment: take the children too, before anything is killed.
        for proc in list(mine):
            try:
                mine.extend(child for child in proc.children(recursive=True) if child not in mine)
            except psutil.Error:
                continue
        for proc in mine:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(mine, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
