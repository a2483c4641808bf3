"""Server configuration: one dataclass that round-trips JSON, so a deployment can be described in a file
(``aa-deploy serve --config server.json``, or YAML) and every CLI flag is just an override of a field.

Containers configure the server through the environment instead: every field ``f`` is read from
``AA_DEPLOY_<F>`` (``AA_DEPLOY_PORT=9000``, ``AA_DEPLOY_TASKS=rte=/models/rte,sst2=org/id``), and
``AA_DEPLOY_CONFIG`` names a config file. The variable names and their parsing are derived from the
dataclass fields below, so a new field is configurable from the environment without further code.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from aa_deploy.contract.layout import DEFAULT_HUB_TIMEOUT_S

# Task names become URL path segments and Prometheus label values: keep them boring, never paths.
TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENGINES = ("multitask", "sessions")
# A session run costs about as much as this many padded tokens more (the weights are streamed once per
# run); measured on MiniLM/CPU (docs/SERVING.md). A batch is split into length-sorted runs only where
# that saves more padding than the extra runs cost.
DEFAULT_SPLIT_COST_TOKENS = 32.0
# ``aa-deploy serve --models-dir DIR`` serves only these task folders of DIR when the variable is set
# (comma-separated; not AA_DEPLOY_TASKS, which is the `tasks` field: NAME=SOURCE pairs). KServe merges a predictor's env into its runtime's container by name, so one generic
# ServingRuntime serves whichever tasks each InferenceService names (serving/kserve.py sets it).
MODELS_DIR_TASKS_ENV = "AA_DEPLOY_MODELS_TASKS"
# How the server is run: one process (`aa-deploy serve`), or as replicas of a Ray Serve application, where
# the task set belongs to the Serve config so that every replica converges to it.
DEPLOYMENTS = ("process", "ray")
RAY_TASK_CHANGES_MESSAGE = (
    "in a Ray Serve deployment, change the task set through the Serve config: edit user_config.tasks and run "
    "`serve deploy` (a per-replica change would reach only one replica)"
)


# Numeric fields with a minimum above 0 (every other number must be >= 0).
POSITIVE_FIELDS: dict[str, int] = {
    "max_batch_size": 1,
    "max_queue_rows": 1,
    "retry_after_s": 1,
    "max_texts_per_request": 1,
    "max_chars_per_text": 1,
    "max_tasks_per_request": 1,
    "max_body_bytes": 1,
}
# Numbers where infinity means "no limit" (split_cost_tokens: always one run padded to the longest row).
UNBOUNDED_FIELDS = ("split_cost_tokens",)
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only (127.0.0.0/8, ::1,
    ``localhost``); any other name or address counts as reachable from the network."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


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


def discover_tasks(models_dir: str | os.PathLike, only: list[str] | None = None) -> list[TaskSpec]:
    """One task per sub-folder of ``models_dir`` holding an export manifest, named after the folder.

    This is the layout KServe's storage initializer leaves in ``/mnt/models`` when a ``storageUri`` points
    at a folder of exports (``<uri>/<task>/aa_export.json``). ``only``: serve just these folders (each must
    exist); sub-folders without a manifest are skipped, so a bucket may hold other files too.
    """
    from aa_deploy.contract.layout import MANIFEST_NAME

    root = Path(models_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"models dir {root} is not a folder: give the folder holding one export folder per task"
        )
    if (root / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{root} is itself an export folder: serve it with --task NAME={root}, or put each export in "
            f"{root}/<task>/ to use --models-dir"
        )
    found = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / MANIFEST_NAME).is_file()}
    if only:
        missing = [name for name in only if name not in found]
        if missing:
            raise FileNotFoundError(
                f"no export folder for task(s) {missing} in {root} (found: {sorted(found) or 'none'}); each task "
                f"needs {root}/<task>/{MANIFEST_NAME}"
            )
        found = {name: found[name] for name in only}
    if not found:
        raise FileNotFoundError(f"no export folders in {root}: expected {root}/<task>/{MANIFEST_NAME} for each task")
    return [TaskSpec(name=validate_task_name(name), source=str(folder)) for name, folder in found.items()]


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
    # With eager_dispatch: run a lone request (batcher idle, previous batch a single request) at once on
    # the event loop, without the queue and the thread hops; overlapping requests are batched as usual.
    inline_lone_requests: bool = True
    # Answer the prediction routes without FastAPI's per-request routing, dependency solving and
    # middleware stack (serving/routes/fast_path.py), 0.2-0.3 ms per request; every request it does not
    # take as it is (bad bodies, query strings) still goes through FastAPI, which writes the errors.
    predict_fast_path: bool = True
    # A batch is run as length-sorted runs when that saves more than this many padded tokens per extra
    # session run (0: one run per length; a huge value: always one run padded to the longest row).
    split_cost_tokens: float = DEFAULT_SPLIT_COST_TOKENS
    # Per-request limits.
    max_texts_per_request: int = 64
    max_chars_per_text: int = 10_000
    max_tasks_per_request: int = 16
    max_body_bytes: int = 2 * 1024 * 1024
    # Multi-task calls compute the adapter-free lowest layers once for all tasks (multitask engine).
    prefix_sharing: bool = True
    # Multitask engine: keep each member's own graph as a branch of the multi-task session, so that a
    # batch of one task (every request at concurrency 1) runs its own graph instead of the stacked one
    # (3-4 % faster at batch 1 with four MiniLM tasks, ~4 MiB per task). The price is build time: every
    # load or unload rebuilds every branch (~0.3 s per MiniLM task); turn it off for large groups
    # whose tasks change often and whose traffic is batched anyway.
    own_branches: bool = True
    # Multitask engine: the first N tasks of a multi-task graph (load order) also keep their own session,
    # and a batch of one of them alone runs on it. Rarely worth it with own_branches on: a batch of one
    # task already runs that task's own graph, kept as a branch of the multi-task session (the same
    # numbers, within ~1 % of the speed at batch 1, no second backbone copy). An own session also saves
    # the second run when the adapter-free lowest layers are split off (prefix sharing); each costs one
    # prepacked copy of the backbone (~45 MiB on MiniLM).
    single_task_sessions: int = 0
    # ONNX Runtime.
    intra_op_threads: int = 0
    prepacking: bool = True
    providers: list[str] | None = None
    graph_optimization_level: str = "all"
    # ONNX Runtime graph optimisers to turn off; None: aa-deploy's choice for the providers (on CPU
    # SkipLayerNormFusion, slower there than the ops it fuses: serving/sessions.py); [] turns none off.
    # ORT ignores names it does not know.
    ort_disabled_optimizers: list[str] | None = None
    # Checks: merged graphs are compared with each task's own graph on probe inputs at load time.
    validate_merged: bool = True
    validation_atol: float = 1e-4
    verify_backbone_sha256: bool = True
    # Security: a bearer token (required for load/unload when set; for predictions and the task listing
    # too if protect_predict). Without a token, load/unload are off (403) unless
    # allow_unauthenticated_admin is set, which is accepted only on a loopback host.
    token: str | None = None
    protect_predict: bool = False
    allow_unauthenticated_admin: bool = False
    # Loads: restrict local folders to these roots (None: anywhere), allow Hub ids or not, and restrict
    # Hub ids to these fnmatch patterns (``org/*``; None: any id). See serving/sources.py.
    allowed_roots: list[str] | None = None
    allow_hub: bool = True
    allowed_hub_repos: list[str] | None = None
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
    # Slow clients: a request's head, and then its body, must arrive within this many seconds each, or the
    # connection is answered 408 and closed (a stalled or trickling client cannot hold a connection open).
    body_timeout_s: float = 30.0
    # Hub: a download of a Hub id (at start or by PUT /v1/tasks) that has not finished after this many
    # seconds fails (504 hub_timeout) instead of waiting on a silent endpoint forever.
    hub_timeout_s: float = DEFAULT_HUB_TIMEOUT_S

    def __post_init__(self) -> None:
        self.tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.deployment not in DEPLOYMENTS:
            raise ValueError(f"unknown deployment {self.deployment!r}: choose one of {', '.join(DEPLOYMENTS)}")
        self._check_numbers()
        if self.hub_timeout_s <= 0 or not math.isfinite(self.hub_timeout_s):
            raise ValueError(f"hub_timeout_s must be a positive number of seconds, got {self.hub_timeout_s!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.graph_optimization_level not in ("disable", "basic", "extended", "all"):
            raise ValueError("graph_optimization_level must be one of disable, basic, extended, all")
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")
        self._check_security()

    def _check_numbers(self) -> None:
        """Every number is of its field's type, finite and at least its minimum (``--threads -3`` is an error
        at start, not an ONNX Runtime failure at the first load)."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            kind, value = hints[f.name], getattr(self, f.name)
            if kind not in (int, float):
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (kind is int and not isinstance(value, int))
            ):
                raise ValueError(f"{f.name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            if not math.isfinite(value) and f.name not in UNBOUNDED_FIELDS:
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            low = POSITIVE_FIELDS.get(f.name, 0)
            if value < low:
                raise ValueError(f"{f.name} must be >= {low}, got {value!r}")

    def _check_security(self) -> None:
        """Fail closed: a token that is set must be usable, and the admin endpoints without a token are
        opened only explicitly and only to this machine."""
        if self.token is not None:
            if not isinstance(self.token, str) or not self.token.strip():
                raise ValueError(
                    "the bearer token is empty (from --token, --token-file, the config file or AA_DEPLOY_TOKEN): "
                    "put the token in it, or leave the token unset"
                )
            if self.token != self.token.strip():
                raise ValueError(
                    "the bearer token starts or ends with whitespace, which HTTP headers cannot carry: remove it"
                )
        if self.protect_predict and self.token is None:
            raise ValueError("protect_predict needs a token: set --token-file (or AA_DEPLOY_TOKEN)")
        if self.allow_unauthenticated_admin and self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"allow_unauthenticated_admin is honoured only on a loopback host, and host is {self.host!r}: "
                "set a token (--token-file or AA_DEPLOY_TOKEN) to load and unload tasks on a reachable server"
            )

    @property
    def admin_open_without_token(self) -> bool:
        """``PUT``/``DELETE /v1/tasks`` work without a token (explicitly enabled, on loopback only)."""
        return self.token is None and self.allow_unauthenticated_admin and is_loopback(self.host)

    def security_warnings(self) -> list[str]:
        """What the operator should know at start: predictions open to a network without a token."""
        if self.token is None and not is_loopback(self.host) and self.deployment == "process":
            return [
                f"no token is set and the server listens on {self.host}: predictions are open to every client "
                "that can reach it (runtime loads and unloads stay off); set --token-file and --protect-predict "
                "unless that is intended"
            ]
        return []

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
        """Read a config file: JSON, or YAML when the name ends in .yaml/.yml (the same keys)."""
        file = Path(path)
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"server config {file} not found") from None
        if file.suffix.lower() in YAML_SUFFIXES:
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"server config {file} is not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"server config {file} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"server config {file} must hold a mapping of ServerConfig fields, got {type(data).__name__}"
            )
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        file = Path(path)
        file.write_text(self.to_json())
        return file


# ------------------------------------------------------------------------------------------- environment
YAML_SUFFIXES = (".yaml", ".yml")
ENV_PREFIX = "AA_DEPLOY_"
# The config file to start from (the environment's form of --config).
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# Short names kept for the CLI flags they mirror (--threads).
ENV_ALIASES: dict[str, str] = {ENV_PREFIX + "THREADS": "intra_op_threads"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Taken as written: an empty AA_DEPLOY_TOKEN (a secret that was not mounted) is an error at start, never
# "no token".
VERBATIM_ENV_FIELDS = ("token",)
# List fields whose empty list is a setting of its own, not the default: an empty variable is that list,
# as an empty flag value is (``--ort-disabled-optimizers ''``: turn no optimiser off). For the other
# optional fields an empty variable is unset ("none"/"null" unset these too).
EMPTY_LIST_ENV_FIELDS = ("ort_disabled_optimizers",)


def env_variable(field_name: str) -> str:
    """The environment variable of a ServerConfig field: ``port`` -> ``AA_DEPLOY_PORT``."""
    return ENV_PREFIX + field_name.upper()


def env_variables() -> dict[str, str]:
    """Every environment variable the server reads, mapped to the ServerConfig field it sets."""
    return {**{env_variable(f.name): f.name for f in fields(ServerConfig)}, **ENV_ALIASES}


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: how list values are written in the environment and in flags."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_env_value(variable: str, field_name: str, text: str) -> Any:
    kind = get_type_hints(ServerConfig)[field_name]
    optional = type(None) in get_args(kind)
    base = next((a for a in get_args(kind) if a is not type(None)), kind) if optional else kind
    value = text.strip()
    if field_name in VERBATIM_ENV_FIELDS:
        return text
    if field_name in EMPTY_LIST_ENV_FIELDS and value == "":
        return []
    if optional and value.lower() in ("", "none", "null"):
        return None
    try:
        items = comma_list(value)
        if get_origin(base) is list and get_args(base) == (TaskSpec,):
            return [vars(TaskSpec.parse(item)) for item in items]
        if get_origin(base) is list:
            return items
        if base is bool:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")
            return value.lower() in _TRUE
        if base in (int, float):
            return base(value)
        return value
    except ValueError as exc:
        raise ValueError(f"environment variable {variable}={text!r} is not a valid {field_name}: {exc}") from None


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ServerConfig fields set in ``environ`` (parsed to their types), to lay over a config file.

    Lists are comma-separated (``AA_DEPLOY_ALLOWED_ROOTS=/models,/data``); ``AA_DEPLOY_TASKS`` holds
    ``NAME=DIR`` items like ``--task``; booleans take 1/0, true/false, yes/no, on/off.
    """
    data: dict[str, Any] = {}
    for variable, field_name in env_variables().items():
        if variable in environ:
            data[field_name] = _parse_env_value(variable, field_name, environ[variable])
    return data
