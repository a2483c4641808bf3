"""``aa-deploy convert``: write a run folder in another tool's format (``--to adapters``: AdapterHub)."""

from __future__ import annotations

import argparse
import json

# Each target format and the help line that says what reads it.
TARGETS = {"adapters": "AdapterHub's `adapters` library (load with model.load_adapter(DIR))"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a trained run into another library's adapter format (AdapterHub `adapters`)",
        description="Convert a run folder written by `aa-deploy train` into another library's format. "
        + " ".join(f"--to {k}: {v}." for k, v in TARGETS.items())
        + " Runs with learnable rational activations (recipes search and focused) cannot be converted to "
        "adapters: the library has only fixed activation functions.",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by `aa-deploy train`")
    p.add_argument("--to", required=True, choices=sorted(TARGETS), help="target format")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--name", help="adapter name inside the library (default: the run's task name)")
    p.add_argument(
        "--backbone",
        metavar="NAME_OR_PATH",
        help="backbone to read the layer norms from (default: the one recorded in the run)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    p.add_argument("--json", action="store_true", help="print what was written as JSON instead of a summary")
    p.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .adapters_hub import convert_to_adapters

    result = convert_to_adapters(
        args.run, args.output, backbone=args.backbone, name=args.name, overwrite=args.overwrite
    )
    if args.json:
        record = {k: (str(v) if k == "output" else v) for k, v in vars(result).items()}
        print(json.dumps(record))
        return 0
    print(
        f"Wrote AdapterHub adapter {result.adapter_name!r} ({result.model_class}, layers "
        f"{', '.join(map(str, result.kept_layers))}) to {result.output}\n"
        f"Load it with: model = AutoAdapterModel.from_pretrained({result.base_model!r}); "
        f"model.load_adapter({str(result.output)!r}, set_active=True)"
    )
    return 0
