"""``aa-deploy push``: publish the compact artefact of a run or export folder to the Hugging Face Hub.

Registered by :mod:`aa_deploy.cli`; the work is done by :func:`aa_deploy.hub_push.push_to_hub`, so the
command and the Python API push exactly the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .contract.layout import DEFAULT_HUB_TIMEOUT_S

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="push a run or export folder's compact adapter (and its model card) to the Hugging Face Hub",
        description=(
            "Upload the compact artefact of DIR (a run folder of `aa-deploy train` or an export folder of "
            "`aa-deploy export`) to a Hub model repo in one commit: the kept layers' adapters, the head, their "
            "records and a model card. An unpruned search run is pruned first. The token comes from HF_TOKEN "
            "or the stored login (`hf auth login`)."
        ),
    )
    p.add_argument("folder", metavar="DIR", help="run folder or export folder to push")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="model repo to create or update")
    p.add_argument(
        "--private", action="store_true", help="create the repo as private (an existing repo keeps its visibility)"
    )
    p.add_argument(
        "--revision", metavar="BRANCH", help="push to this branch (created from main if missing; default: main)"
    )
    p.add_argument(
        "--with-onnx",
        action="store_true",
        help="also push model.onnx (and, for a shared-mode export, backbone.onnx_data, which ONNX Runtime needs beside it)",
    )
    p.add_argument("--commit-message", help="commit title (default: 'Upload DIR with aa-deploy')")
    p.add_argument(
        "--hub-timeout",
        type=float,
        default=DEFAULT_HUB_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up when the Hub has not finished the login check or the commit after SECONDS "
        f"(default {DEFAULT_HUB_TIMEOUT_S:g}; raise it for large uploads on a slow link)",
    )
    p.set_defaults(handler=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .contract.layout import BACKBONE_DATA_NAME, GRAPH_NAME, WEIGHTS_NAME
    from .hub_push import push_to_hub

    result = push_to_hub(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        with_onnx=args.with_onnx,
        timeout_s=args.hub_timeout,
    )
    where = result.repo_id + (f"@{args.revision}" if args.revision else "")
    print(f"pushed {len(result.files)} files ({result.total_bytes:,} bytes) to {where} in one commit:")
    width = max(len(name) for name in result.files)
    for name, size in sorted(result.files.items()):
        print(f"  {name:<{width}}  {size:>14,} bytes")
    if result.pruned:
        layers = ", ".join(str(i) for i in result.kept_layers or ()) or "none"
        print(
            f"pruned the run to its kept layers ({layers}): {WEIGHTS_NAME} "
            f"{result.source_weights_bytes:,} -> {result.files[WEIGHTS_NAME]:,} bytes"
        )
    if result.onnx_data_bytes:
        print(
            f"{BACKBONE_DATA_NAME} adds {result.onnx_data_bytes:,} bytes: the shared-mode {GRAPH_NAME} "
            "keeps the backbone's tensors there, and ONNX Runtime needs it beside the graph"
        )
    elif not args.with_onnx and (Path(args.folder).expanduser() / GRAPH_NAME).is_file():
        print(f"{GRAPH_NAME} was left out (pass --with-onnx to push it too)")
    print(result.commit_url)
    return 0
