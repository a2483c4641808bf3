"""The ``aa-deploy`` command line: ``train`` here; ``export``, ``serve`` and ``push`` register themselves
from their packages so that each command imports only what it needs (the server never imports torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .cli_options import add_options, explicit_options, flag_rule_problems, options_from_args, subcommand_parser
from .extras import missing_extra_message

Handler = Callable[[argparse.Namespace], int]


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train adapters (standard, search, focused, adapterdrop) on a GLUE task or a data file",
        description="Train adapters on a frozen encoder and write a run folder loadable with from_pretrained.",
    )
    add_options(p, TrainConfig)  # one flag per TrainConfig field, defaults shown in --help
    p.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object (and nothing else on stdout)"
    )
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .training.config import TrainConfig
    from .training.option_rules import check_option_conflicts
    from .training.summary import summary_record, summary_text

    config = options_from_args(TrainConfig, args)
    # Flags typed for another recipe are refused even when their value equals the default.
    check_option_conflicts(config.recipe, getattr(args, "explicit_options", set()))
    from .training import train

    result = train(config)
    if args.json:
        print(json.dumps(summary_record(result.output, result.metrics)))
    else:
        print(summary_text(result.output, result.metrics))
    return 0


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands contributed by the export and serving packages, when present."""
    registrars = []
    for module_name in (
        "aa_deploy.export.cli",
        "aa_deploy.serving.cli",
        "aa_deploy.serving.kserve_cli",
        "aa_deploy.serving.ray_cli",
        "aa_deploy.hub_cli",
        "aa_deploy.interop.cli",
        "aa_deploy.demo",
    ):
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
    args.explicit_options = explicit_options(build_parser(), list(sys.argv[1:] if argv is None else argv))
    rules = getattr(args, "flag_rules", None)
    if rules is not None:
        problems = flag_rule_problems(rules, args.explicit_options, subcommand_parser(parser, args.command))
        if problems:
            print(f"aa-deploy: error: contradictory options: {'; '.join(problems)}", file=sys.stderr)
            return 1
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
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc, args.command)
        if message is None or os.environ.get("AA_DEPLOY_DEBUG"):
            raise
        print(f"aa-deploy: error: {message}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as exc:
        if os.environ.get("AA_DEPLOY_DEBUG"):
            raise
        print(f"aa-deploy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
