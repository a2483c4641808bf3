"""The Ray Serve config file (``serve run`` / ``serve deploy``) for the server, built from dataclasses.

This module owns the layout of that YAML for this project: the application (``import_path`` of
:func:`aa_deploy.serving.ray_serve.build_app`, ServerConfig fields as ``args``), its one deployment
(replicas or autoscaling, per-replica CPUs/GPUs) and the task set in ``user_config.tasks``. It needs no
Ray to write the file; tests validate the result with Ray's own schema (``ray.serve.schema``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aa_deploy.fileio import atomic_write_text

from .config import ServerConfig, TaskSpec
from .task_set import USER_CONFIG_TASKS, absolute_source, spec_value

IMPORT_PATH = "aa_deploy.serving.ray_serve:build_app"
DEPLOYMENT_NAME = "AdapterServer"  # the name of the deployment class in ray_serve.py
PROXY_LOCATIONS = ("EveryNode", "HeadOnly", "Disabled")


@dataclass
class Autoscaling:
    """Serve's ``autoscaling_config``: replicas follow the number of ongoing requests per replica."""

    min_replicas: int = 1
    max_replicas: int = 2
    # A replica batches its queued requests, so several in flight per replica is its efficient regime.
    target_ongoing_requests: float = 8.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got {self.min_replicas}..{self.max_replicas}"
            )


@dataclass
class RayServeSpec:
    """Everything ``aa-deploy ray-config`` writes; ``to_serve_config()`` is the Serve config dict."""

    tasks: list[TaskSpec] = field(default_factory=list)
    replicas: int = 1
    autoscaling: Autoscaling | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Requests one replica may hold at once (its batcher merges them); Serve queues the rest.
    max_ongoing_requests: int = 64
    # ServerConfig fields for every replica (engine, batching, threads ...): the application's args.
    server: dict[str, Any] = field(default_factory=dict)
    app_name: str = "aa-deploy"
    host: str = "0.0.0.0"
    port: int = 8000
    proxy_location: str = "EveryNode"

    def __post_init__(self) -> None:
        self.tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        if isinstance(self.autoscaling, dict):
            self.autoscaling = Autoscaling(**self.autoscaling)
        if not self.tasks:
            raise ValueError("no tasks: give at least one --task NAME=DIR (an export folder or Hub id)")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise ValueError(f"proxy_location must be one of {', '.join(PROXY_LOCATIONS)}")
        # Checked now, not on the cluster: same rules as the replicas apply (unknown keys, tasks/host/port).
        reserved = sorted(set(self.server) & {"tasks", "host", "port", "deployment"})
        if reserved:
            raise ValueError(f"server options may not set {reserved}: the Serve config owns them")
        ServerConfig.from_dict({**self.server, "deployment": "ray"})

    def server_args(self) -> dict[str, Any]:
        """Replica ServerConfig overrides; ONNX Runtime threads default to the replica's CPUs, not the node's."""
        args = dict(self.server)
        if "intra_op_threads" not in args and self.num_cpus > 0:
            args["intra_op_threads"] = max(1, math.ceil(self.num_cpus))
        return args

    def user_config(self) -> dict[str, Any]:
        return {USER_CONFIG_TASKS: {t.name: spec_value(t) for t in self.tasks}}

    def deployment(self) -> dict[str, Any]:
        options: dict[str, Any] = {"name": DEPLOYMENT_NAME}
        if self.autoscaling is not None:
            options["autoscaling_config"] = asdict(self.autoscaling)
        else:
            options["num_replicas"] = self.replicas
        options["max_ongoing_requests"] = self.max_ongoing_requests
        options["ray_actor_options"] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        options["user_config"] = self.user_config()
        return options

    def to_serve_config(self) -> dict[str, Any]:
        return {
            "proxy_location": self.proxy_location,
            "http_options": {"host": self.host, "port": self.port},
            "applications": [
                {
                    "name": self.app_name,
                    "route_prefix": "/",
                    "import_path": IMPORT_PATH,
                    "args": self.server_args(),
                    "deployments": [self.deployment()],
                }
            ],
        }

    def to_yaml(self) -> str:
        import yaml

        header = (
            "# Ray Serve config for aa-deploy (written by `aa-deploy ray-config`).\n"
            "# Run: serve run <this file>   or, on a running cluster: serve deploy <this file>\n"
            "# Change the task set: edit user_config.tasks and run `serve deploy` again (no request is dropped).\n"
        )
        return header + yaml.safe_dump(self.to_serve_config(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the YAML atomically (temp file + rename), so `serve deploy` never reads half a file."""
        target = Path(path)
        atomic_write_text(target, self.to_yaml())  # creates the parent folder too
        return target


def with_absolute_sources(tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Replicas do not run in the caller's working directory: local folders become absolute paths."""
    return [TaskSpec(t.name, absolute_source(t.source), t.revision) for t in tasks]
