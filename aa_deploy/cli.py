"""The ``aa-deploy`` command line: ``train`` here; ``export``, ``serve`` and ``push`` register themselves
from their packages so that each command imports only what it needs (the server never imports torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .config import RECIPES

Handler = Callable[[argparse.Namespace], int]


def _layers(value: str) -> list[int]:
    try:
        return sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,3,5, got {value!r}") from None


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train adapters (standard, search, focused, adapterdrop) on a GLUE task or a data file",
        description="Train adapters on a frozen encoder and write a run folder loadable with from_pretrained.",
    )
    p.add_argument("--task", required=True, help="GLUE task (rte, mrpc, sst2, cola, stsb, qnli) or a .csv/.tsv/.jsonl file")
    p.add_argument("--data-dir", default=os.environ.get("AA_GLUE_DIR"), help="GLUE folder (default: $AA_GLUE_DIR)")
    p.add_argument("--test-file", help="labelled test file for a file task (GLUE tasks use the official dev set)")
    p.add_argument("--recipe", choices=RECIPES, default="search")
    p.add_argument("--train-size", type=int, help="low-data setting: keep N shuffled training examples")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--selection-from", metavar="RUN_DIR", help="focused recipe: reuse this run's selected layers")
    p.add_argument("--layers", type=_layers, dest="selected_layers", help="focused recipe: explicit layers, e.g. 0,3,5")
    p.add_argument("--backbone", metavar="NAME_OR_PATH", help="Hub id or local model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--reduction-factor", type=float, default=16.0)
    p.add_argument("--rational-init", default="one", choices=["one", "gelu", "relu", "leaky_relu", "identity"])
    p.add_argument("--rational-version", default="A", choices=["A", "B"])
    p.add_argument("--switch-temperature", type=float, default=0.1)
    p.add_argument("--anneal-to", type=float, dest="switch_temperature_final", help="anneal the switch temperature to this value")
    p.add_argument("--adapterdrop-max-layers", type=int, help="AdapterDrop: drop up to k lowest layers per step (default: half)")
    p.add_argument("--adapterdrop-eval-layers", type=int, help="AdapterDrop: lowest layers dropped at test time (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--save-checkpoints", action="store_true", help="also write a small checkpoint every epoch")
    p.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    p.add_argument("--output", required=True, help="run folder to write")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    keys = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})
    result = train(cfg)
    summary = {
        "output": str(result.output),
        "metric": result.metric,
        "value": round(result.value, 4),
        "test_value": None if result.test_value is None else round(result.test_value, 4),
        "selected_layers": result.selected_layers,
    }
    print(json.dumps(summary))
    return 0


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands contributed by the export and serving packages, when present."""
    registrars = []
    modules = (
        "aa_deploy.export.cli",
        "aa_deploy.serving.cli",
        "aa_deploy.serving.ray_cli",
        "aa_deploy.hub_cli",
        "aa_deploy.demo",
    )
    for module_name in modules:
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        registrars.append(module.register)
    return registrars


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aa-deploy", description="Adaptable adapters from training to production.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    for register in _optional_commands():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("aa-deploy: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as exc:
        if os.environ.get("AA_DEPLOY_DEBUG"):
            raise
        print(f"aa-deploy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
