"""``aa-deploy kserve``: write the KServe ServingRuntime and InferenceService for a set of tasks.

Import-light like the other subcommands: only serving/kserve.py (dataclasses, no KServe SDK) and PyYAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aa_deploy.fileio import atomic_write_text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kserve",
        help="write KServe manifests (ServingRuntime + InferenceService) for a set of exported tasks",
        description="Write servingruntime.yaml and inferenceservice.yaml for serving TASKs with KServe "
        "(Open Inference Protocol v2). --storage-uri is a folder holding one export folder per task "
        "(<uri>/<task>/aa_export.json); KServe downloads it into /mnt/models.",
    )
    p.add_argument("--task", action="append", required=True, metavar="NAME", help="task to serve (repeatable)")
    p.add_argument("--storage-uri", required=True, help="e.g. s3://bucket/exports, pvc://claim/exports, hf://org/repo")
    p.add_argument("--name", help="InferenceService name (default: aa-<tasks joined by '-'>)")
    p.add_argument("--namespace", help="namespace for the InferenceService (default: the kubectl context's)")
    p.add_argument("--runtime-name", default="aa-deploy", help="ServingRuntime name (default aa-deploy)")
    p.add_argument("--image", help="server image (default aa-deploy:<version>; use the CUDA image with --gpus)")
    p.add_argument("--cpu", default="1", help="CPU request (default 1)")
    p.add_argument("--cpu-limit", default="4", help="CPU limit (default 4)")
    p.add_argument("--memory", default="2Gi", help="memory request (default 2Gi)")
    p.add_argument("--memory-limit", default="4Gi", help="memory limit (default 4Gi)")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu per replica (default 0)")
    p.add_argument("--min-replicas", type=int, default=1, help="fewest replicas (default 1)")
    p.add_argument("--max-replicas", type=int, default=1, help="most replicas (default 1)")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        dest="serve_args",
        metavar="ARG",
        help="extra `aa-deploy serve` argument for the runtime (repeatable, e.g. --serve-arg=--max-batch=32; default: none)",
    )
    p.add_argument(
        "--output",
        help="folder for servingruntime.yaml and inferenceservice.yaml (default: both to stdout as one YAML stream)",
    )
    p.set_defaults(handler=_run_kserve)


def _default_name(tasks: list[str]) -> str:
    cleaned = "-".join(t.lower().replace("_", "-").replace(".", "-") for t in tasks)
    return ("aa-" + cleaned)[:63].rstrip("-")


def _run_kserve(args: argparse.Namespace) -> int:
    from .kserve import DeploymentSpec, Resources, RuntimeSpec, manifests, to_yaml

    resources = Resources(
        cpu_request=args.cpu,
        cpu_limit=args.cpu_limit,
        memory_request=args.memory,
        memory_limit=args.memory_limit,
        gpus=args.gpus,
    )
    runtime = RuntimeSpec(name=args.runtime_name, resources=resources, serve_args=list(args.serve_args))
    if args.image:
        runtime.image = args.image
    deployment = DeploymentSpec(
        name=args.name or _default_name(args.task),
        tasks=list(args.task),
        storage_uri=args.storage_uri,
        runtime=args.runtime_name,
        resources=resources,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        namespace=args.namespace,
    )
    docs = manifests(runtime, deployment)
    if not args.output:
        sys.stdout.write(to_yaml(list(docs.values())))
        return 0
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, doc in docs.items():
        atomic_write_text(folder / file_name, to_yaml([doc]))
        print(folder / file_name)
    return 0
