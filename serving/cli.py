"""``aa-deploy serve``: registered into the main CLI by ``register(subparsers)``.

Import-light on purpose: nothing heavy (ONNX Runtime, FastAPI) is imported until the command runs, so
``aa-deploy --help`` stays fast and never needs the serving dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path

from aa_deploy.cli_options import FlagRules


def _task(value: str):
    from .config import TaskSpec

    try:
        return TaskSpec.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_task_argument(p: argparse.ArgumentParser, where: str) -> None:
    """``--task NAME=DIR`` (repeatable), parsed into ``TaskSpec``s: one definition for every command that
    names tasks (``serve``, ``ray-config``); ``where`` says which folders the server can read."""
    p.add_argument(
        "--task",
        action="append",
        type=_task,
        default=[],
        metavar="NAME=DIR",
        help=f"serve DIR ({where}, or a Hub id[@revision]) as task NAME; repeatable; "
        "the same folder may be served under several names (default: none)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from .config import comma_list

    p = subparsers.add_parser(
        "serve",
        help="serve exported tasks over HTTP on one shared backbone (no PyTorch needed)",
        description="Serve one or more folders written by `aa-deploy export` (or Hub ids) as tasks. "
        "Native API under /v1, Open Inference Protocol v2 under /v2, OpenAPI docs at /docs, metrics at /metrics.",
    )
    add_task_argument(p, "an export folder")
    p.add_argument(
        "--models-dir",
        metavar="DIR",
        help="serve every export folder DIR/<task>/ as task <task> (the layout KServe leaves in /mnt/models; "
        "default: none)",
    )
    p.add_argument(
        "--models-tasks",
        metavar="A,B",
        help="with --models-dir: serve only these task folders (default: $AA_DEPLOY_MODELS_TASKS, else all)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="server config file, JSON or YAML (ServerConfig fields; default: $AA_DEPLOY_CONFIG); "
        "AA_DEPLOY_<FIELD> environment variables override it, and flags override both",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--engine",
        choices=["multitask", "sessions"],
        help="multitask: one graph with stacked adapters (default); sessions: one ORT session per task",
    )
    p.add_argument(
        "--max-batch", type=int, dest="max_batch_size", help="max rows (texts x tasks) per batch (default 16)"
    )
    p.add_argument("--max-delay-ms", type=float, dest="max_delay_ms", help="max wait to fill a batch (default 5)")
    p.add_argument("--max-queue", type=int, dest="max_queue_rows", help="rows queued before 503 (default 512)")
    p.add_argument("--max-texts", type=int, dest="max_texts_per_request", help="texts per request (default 64)")
    p.add_argument("--max-chars", type=int, dest="max_chars_per_text", help="characters per text (default 10000)")
    p.add_argument("--max-body-bytes", type=int, dest="max_body_bytes", help="request body limit (default 2 MiB)")
    p.add_argument(
        "--threads", type=int, dest="intra_op_threads", help="ONNX Runtime intra-op threads (default: all cores)"
    )
    p.add_argument(
        "--no-prepacking",
        action="store_false",
        dest="prepacking",
        default=None,
        help="disable ORT weight prepacking (less memory per session, slower)",
    )
    p.add_argument(
        "--ort-disabled-optimizers",
        type=comma_list,
        dest="ort_disabled_optimizers",
        metavar="NAMES",
        help="ONNX Runtime graph optimisers to turn off, comma-separated ('' for none; default on CPU: "
        "SkipLayerNormFusion, slower there than the ops it fuses)",
    )
    p.add_argument(
        "--no-prefix-sharing",
        action="store_false",
        dest="prefix_sharing",
        default=None,
        help="do not compute adapter-free lowest layers once for multi-task calls",
    )
    p.add_argument(
        "--no-own-branches",
        action="store_false",
        dest="own_branches",
        default=None,
        help="multitask engine: do not keep each task's own graph beside the stacked one (faster loads of "
        "large groups; batches of one task then run on the stacked graph)",
    )
    p.add_argument(
        "--single-task-sessions",
        type=int,
        dest="single_task_sessions",
        metavar="N",
        help="multitask engine: the first N tasks also keep their own session, used for batches of that task "
        "alone (~45 MiB each on MiniLM; rarely useful: such batches already run the task's own graph inside the "
        "multi-task session; it only saves the second run of a prefix split; default 0)",
    )
    p.add_argument(
        "--token",
        help="bearer token required for load/unload (prefer --token-file or $AA_DEPLOY_TOKEN: "
        "command lines are visible to other users); without a token, load/unload are off (default: none)",
    )
    p.add_argument(
        "--token-file", help="read the bearer token from this file (an empty file is an error; default: none)"
    )
    p.add_argument(
        "--protect-predict",
        action="store_true",
        default=None,
        help="require the token for predictions and the task listing too",
    )
    p.add_argument(
        "--allow-unauthenticated-admin",
        action="store_true",
        default=None,
        help="without a token, allow load/unload to every local client (only with a loopback --host)",
    )
    p.add_argument(
        "--allow-root",
        action="append",
        dest="allowed_roots",
        metavar="DIR",
        help="load only export folders under DIR (repeatable); anything else answers 'source not allowed or not found' "
        "(default: any local folder)",
    )
    p.add_argument("--no-hub", action="store_false", dest="allow_hub", default=None, help="never load from the Hub")
    p.add_argument(
        "--allow-hub-repo",
        action="append",
        dest="allowed_hub_repos",
        metavar="PATTERN",
        help="load only Hub repos matching PATTERN (fnmatch, e.g. 'my-org/*'; repeatable; default: any)",
    )
    p.add_argument(
        "--hub-timeout",
        type=float,
        dest="hub_timeout_s",
        metavar="SECONDS",
        help="fail a Hub download (start-up or runtime load) that has not finished after SECONDS (default 300)",
    )
    p.add_argument(
        "--start-empty",
        action="store_false",
        dest="exit_if_no_task_loads",
        default=None,
        help="keep running when none of the --task folders loads (load tasks at runtime instead)",
    )
    p.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="server log level (default info)"
    )
    p.add_argument("--print-config", action="store_true", help="print the effective config (token redacted) and exit")
    p.set_defaults(
        handler=_run_serve,
        flag_rules=FlagRules(
            exclusive=(("token", "token_file", "give the token one way"),),
            requires=(("models_tasks", "models_dir"),),
        ),
    )


_OVERRIDES = (
    "host",
    "port",
    "engine",
    "max_batch_size",
    "max_delay_ms",
    "max_queue_rows",
    "max_texts_per_request",
    "max_chars_per_text",
    "max_body_bytes",
    "intra_op_threads",
    "prepacking",
    "ort_disabled_optimizers",
    "prefix_sharing",
    "own_branches",
    "single_task_sessions",
    "protect_predict",
    "allow_unauthenticated_admin",
    "allowed_roots",
    "allow_hub",
    "allowed_hub_repos",
    "exit_if_no_task_loads",
    "log_level",
    "hub_timeout_s",
)


def build_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None):
    """The effective ServerConfig: defaults < config file (--config, else $AA_DEPLOY_CONFIG) <
    environment (AA_DEPLOY_<FIELD>, see serving/config.py) < command-line flags."""
    from .config import CONFIG_ENV, ServerConfig, config_from_env

    environ = os.environ if environ is None else environ
    config_file = args.config or environ.get(CONFIG_ENV)
    data = ServerConfig.load(config_file).to_dict() if config_file else {}
    env = config_from_env(environ)
    _merge_tasks(data, env.pop("tasks", None))
    data.update(env)
    for key in _OVERRIDES:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    explicit = {t.name for t in args.task or []}
    discovered = [vars(t) for t in _models_dir_tasks(args) if t.name not in explicit]
    _merge_tasks(data, discovered + ([vars(t) for t in args.task] if args.task else []))
    if args.token_file:
        data["token"] = read_token_file(args.token_file)
    elif args.token is not None:
        data["token"] = args.token
    return ServerConfig.from_dict(data)


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path`` (surrounding whitespace and the trailing newline removed); an error when
    the file is missing or holds nothing, so a secret that was not mounted never means "no token"."""
    file = Path(path)
    try:
        token = file.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"token file {file} not found: create it, or drop --token-file") from None
    if not token:
        raise ValueError(f"token file {file} is empty: write the bearer token into it, or drop --token-file")
    return token


def _merge_tasks(data: dict, tasks: list[dict] | None) -> None:
    """Tasks from a later source replace same-named ones from an earlier source and add the rest."""
    if tasks:
        names = {t["name"] for t in tasks}
        data["tasks"] = [t for t in data.get("tasks", []) if t["name"] not in names] + tasks


def _models_dir_tasks(args: argparse.Namespace) -> list:
    """The tasks of ``--models-dir`` (filtered by ``--models-tasks`` or $AA_DEPLOY_MODELS_TASKS); --task
    wins on a name."""
    from .config import MODELS_DIR_TASKS_ENV, comma_list, discover_tasks

    if not getattr(args, "models_dir", None):
        return []
    wanted = getattr(args, "models_tasks", None) or os.environ.get(MODELS_DIR_TASKS_ENV, "")
    only = comma_list(wanted)
    return discover_tasks(args.models_dir, only or None)


def _run_serve(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.print_config:
        print(json.dumps(config.to_dict(redact=True), indent=2, sort_keys=True))
        return 0
    if not config.tasks:
        raise ValueError(
            "nothing to serve: give at least one --task NAME=DIR, --models-dir DIR (or tasks in --config, or AA_DEPLOY_TASKS=NAME=DIR,...)"
        )
    from .server import run

    return run(config)
