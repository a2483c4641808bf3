"""Server configuration: one dataclass that round-trips JSON, so a deployment can be described in a file
(``aa-deploy serve --config server.json``) and every CLI flag is just an override of a field."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Task names become URL path segments and Prometheus label values: keep them boring, never paths.
TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENGINES = ("multitask", "sessions")
# How the server is run: one process (`aa-deploy serve`), or as replicas of a Ray Serve application, where
# the task set belongs to the Serve config so that every replica converges to it.
DEPLOYMENTS = ("process", "ray")
RAY_TASK_CHANGES_MESSAGE = (
    "in a Ray Serve deployment, change the task set through the Serve config: edit user_config.tasks and run "
    "`serve deploy` (a per-replica change would reach only one replica)"
)


def validate_task_name(name: str) -> str:
    """Return ``name`` if it is a safe task name, else raise ValueError saying what is allowed."""
    if not isinstance(name, str) or not TASK_NAME_PATTERN.match(name) or ".." in name:
        raise ValueError(
            f"invalid task name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or "
            "digit (no slashes, no '..')"
        )
    return name


@dataclass
class TaskSpec:
    """A task to serve: its public name and where its export lives (folder or Hub id)."""

    name: str
    source: str
    revision: str | None = None

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        if not self.source:
            raise ValueError(f"task {self.name!r} has no source: give an export folder or a Hub id")

    @classmethod
    def parse(cls, value: str) -> TaskSpec:
        """Parse the CLI form ``NAME=DIR`` (or ``NAME=org/repo@revision``)."""
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"expected NAME=DIR (e.g. rte=exports/rte), got {value!r}")
        revision = None
        if "@" in source and not os.path.exists(source):
            source, _, revision = source.rpartition("@")
        return cls(name=name.strip(), source=source.strip(), revision=revision or None)


@dataclass
class ServerConfig:
    """Everything the server needs; defaults are safe for a single-host deployment.

    ``engine``: ``multitask`` stacks the adapters of all compatible tasks into one graph (one backbone,
    one prepacked copy, mixed-task batches in one run) and falls back to a per-task session for tasks
    it cannot merge; ``sessions`` always uses one ORT session per task sharing the backbone tensors.
    """

    tasks: list[TaskSpec] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "multitask"
    # Dynamic batching: a batch closes at max_batch_size rows (texts x tasks) or after max_delay_ms.
    max_batch_size: int = 16
    max_delay_ms: float = 5.0
    # Back-pressure: rows waiting in the queue before new requests get 503 + Retry-After.
    max_queue_rows: int = 512
    retry_after_s: int = 1
    # Close a batch early when no other request is being received (no point waiting at low load).
    eager_dispatch: bool = True
    # A batch is run as length-sorted runs when that saves more than this many padded tokens per extra
    # session run (0: one run per length; a huge value: always one run padded to the longest row).
    split_cost_tokens: float = 32.0
    # Per-request limits.
    max_texts_per_request: int = 64
    max_chars_per_text: int = 10_000
    max_tasks_per_request: int = 16
    max_body_bytes: int = 2 * 1024 * 1024
    # Multi-task calls compute the adapter-free lowest layers once for all tasks (multitask engine).
    prefix_sharing: bool = True
    # ONNX Runtime.
    intra_op_threads: int = 0
    prepacking: bool = True
    providers: list[str] | None = None
    graph_optimization_level: str = "all"
    # Checks: merged graphs are compared with each task's own graph on probe inputs at load time.
    validate_merged: bool = True
    validation_atol: float = 1e-4
    verify_backbone_sha256: bool = True
    # Security: a bearer token (required for load/unload when set; for predictions too if protect_predict).
    token: str | None = None
    protect_predict: bool = False
    # Runtime loads: restrict local folders to these roots (None: anywhere), allow Hub ids or not.
    allowed_roots: list[str] | None = None
    allow_hub: bool = True
    hub_token: str | None = None
    # Shutdown: how long to wait for queued work when stopping.
    drain_timeout_s: float = 30.0
    # Start-up: when tasks are named and not one of them loads, stop (a typo should not leave an empty
    # server running); set False to start empty and load tasks at runtime.
    exit_if_no_task_loads: bool = True
    log_level: str = "info"
    # "process": PUT/DELETE /v1/tasks change this process's task set; "ray": they are refused (409) because
    # the Serve config owns the task set (see aa_deploy.serving.ray_serve).
    deployment: str = "process"

    def __post_init__(self) -> None:
        self.tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.deployment not in DEPLOYMENTS:
            raise ValueError(f"unknown deployment {self.deployment!r}: choose one of {', '.join(DEPLOYMENTS)}")
        positive = (
            "max_batch_size",
            "max_queue_rows",
            "max_texts_per_request",
            "max_chars_per_text",
            "max_tasks_per_request",
            "max_body_bytes",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.graph_optimization_level not in ("disable", "basic", "extended", "all"):
            raise ValueError("graph_optimization_level must be one of disable, basic, extended, all")
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")

    # ----------------------------------------------------------------------------------- JSON round trip
    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if redact:
            for key in ("token", "hub_token"):
                if data[key]:
                    data[key] = "***"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown server config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_json(self, *, redact: bool = False) -> str:
        return json.dumps(self.to_dict(redact=redact), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ServerConfig:
        file = Path(path)
        try:
            return cls.from_json(file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"server config {file} not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"server config {file} is not valid JSON: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        file = Path(path)
        file.write_text(self.to_json())
        return file
