"""``aa-deploy ray-config``: write the Ray Serve config (YAML) for ``serve run`` / ``serve deploy``.

Needs no Ray to run (the file is plain YAML); the cluster needs the ``ray`` extra.
"""

from __future__ import annotations

import argparse
import json

from aa_deploy.cli_options import FlagRules

from .cli import add_task_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ray-config",
        help="write a Ray Serve config (YAML) that serves exported tasks on a Ray cluster",
        description="Write a Serve config for `serve run FILE` or `serve deploy FILE`: every replica runs the "
        "whole multi-task server; the task set is the deployment's user_config.tasks (edit it and run "
        "`serve deploy` again to add, replace or remove tasks).",
    )
    add_task_argument(p, "an export folder every node can read at this path")
    p.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    p.add_argument(
        "--autoscale-min",
        type=int,
        metavar="N",
        help="autoscale: minimum replicas (with --autoscale-max; default: no autoscaling)",
    )
    p.add_argument(
        "--autoscale-max", type=int, metavar="N", help="autoscale: maximum replicas (default: no autoscaling)"
    )
    p.add_argument(
        "--target-ongoing",
        type=float,
        default=8.0,
        metavar="N",
        help="autoscale: ongoing requests per replica to aim for (default 8)",
    )
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (default 1; also its ORT threads)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (default 0)")
    p.add_argument("--max-ongoing", type=int, default=64, help="requests a replica holds at once (default 64)")
    p.add_argument(
        "--server-config",
        metavar="FILE",
        help="JSON ServerConfig for every replica (engine, batching ...); tasks/host/port are ignored here (default: none)",
    )
    p.add_argument("--engine", choices=["multitask", "sessions"], help="replica engine (default multitask)")
    p.add_argument(
        "--max-batch",
        type=int,
        dest="max_batch_size",
        help="max rows per batch in a replica (default: the server config's, else 16)",
    )
    p.add_argument(
        "--max-delay-ms",
        type=float,
        dest="max_delay_ms",
        help="max wait to fill a batch (default: the server config's, else 5)",
    )
    p.add_argument("--host", default="0.0.0.0", help="Serve HTTP proxy bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP proxy port (default 8000)")
    p.add_argument(
        "--proxy-location",
        choices=["EveryNode", "HeadOnly", "Disabled"],
        default="EveryNode",
        help="where Ray runs HTTP proxies (default EveryNode)",
    )
    p.add_argument("--app-name", default="aa-deploy", help="Serve application name (default aa-deploy)")
    p.add_argument("--output", required=True, metavar="FILE", help="YAML file to write (e.g. serve.yaml)")
    p.set_defaults(
        handler=_run_ray_config,
        flag_rules=FlagRules(
            exclusive=(
                ("replicas", "autoscale_min", "a fixed number of replicas or autoscaling, not both"),
                ("replicas", "autoscale_max", "a fixed number of replicas or autoscaling, not both"),
            )
        ),
    )


def build_spec(args: argparse.Namespace):
    from .config import ServerConfig
    from .ray_config import Autoscaling, RayServeSpec, with_absolute_sources

    server: dict = {}
    if args.server_config:
        defaults = ServerConfig().to_dict()
        loaded = ServerConfig.load(args.server_config).to_dict()
        ignored = {"tasks", "host", "port", "deployment"}
        server = {k: v for k, v in loaded.items() if k not in ignored and v != defaults[k]}
    for key in ("engine", "max_batch_size", "max_delay_ms"):
        if getattr(args, key, None) is not None:
            server[key] = getattr(args, key)
    autoscaling = None
    if args.autoscale_min is not None or args.autoscale_max is not None:
        if args.autoscale_min is None or args.autoscale_max is None:
            raise ValueError("autoscaling needs both --autoscale-min and --autoscale-max")
        autoscaling = Autoscaling(args.autoscale_min, args.autoscale_max, args.target_ongoing)
    return RayServeSpec(
        tasks=with_absolute_sources(args.task),
        replicas=args.replicas,
        autoscaling=autoscaling,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        max_ongoing_requests=args.max_ongoing,
        server=server,
        app_name=args.app_name,
        host=args.host,
        port=args.port,
        proxy_location=args.proxy_location,
    )


def _run_ray_config(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    path = spec.save(args.output)
    print(json.dumps({"written": str(path), "run": f"serve run {path}", "deploy": f"serve deploy {path}"}))
    return 0
