"""``aa-deploy export``: registered into the main CLI by ``aa_deploy.cli`` (torch is imported only when run)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from aa_deploy.cli_options import FlagRules, add_options, options_from_args

from .options import ExportOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="compile a trained run into a validated ONNX task folder (pruned, folded, shared backbone)",
        description=(
            "Prune deselected adapters, fold the rational activations into plain ONNX ops, export the task "
            "as ONNX (tokens in, logits out) and validate it in ONNX Runtime against PyTorch. By default the "
            "backbone's weights are exported once into a backbone store; each task folder gets its own "
            "backbone.onnx_data (a reflink of the store copy where the file system supports it, else a "
            "copy; --hardlink-backbone: a hard link), and a server keeps one copy in memory for all tasks."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `aa-deploy train` (or a Hub id of one)")
    p.add_argument("--output", required=True, metavar="DIR", help="task folder to write")
    add_options(p, ExportOptions)  # one flag per ExportOptions field, defaults shown in --help
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    p.set_defaults(
        handler=_run_export,
        flag_rules=FlagRules(
            exclusive=(("standalone", "backbone_store", "a standalone export keeps the backbone in model.onnx"),)
        ),
    )


def _run_export(args: argparse.Namespace) -> int:
    from .api import export_run

    logger = logging.getLogger("aa_deploy.export")
    if not logger.handlers:  # progress lines on stderr; library loggers keep their own settings
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("aa-deploy export: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    result = export_run(args.run_dir, args.output, options_from_args(ExportOptions, args))
    if args.json:
        print(json.dumps(result.manifest, indent=2, sort_keys=True))
        return 0
    m = result.manifest
    v = result.validation
    print(f"exported {m['task']['name']} to {result.output} in {result.seconds:.1f} s ({m['mode']})")
    print(f"  kept layers   {m['kept_layers']} of {m['num_layers']}")
    check = "passed" if v.passed else ("NOT ENFORCED (int8)" if not v.enforced else "failed")
    print(
        f"  validation    max |ONNX - PyTorch| = {v.max_abs_diff:.2e} on {v.num_inputs} inputs ({v.inputs_source}), "
        f"atol {v.atol:g}: {check}; pruned vs trained {v.pruned_max_abs_diff:.1e}"
    )
    if result.metrics:
        q = result.metrics
        quant = m["quantization"]
        print(f"  {q['metric']:<13} fp32 {q['fp32']:.4f} → {quant} {q[quant]:.4f} on {q['num_examples']} dev examples")
    depth = (m.get("metrics") or {}).get("at_export_depth")
    if depth:
        print(
            f"  {depth['metric']:<13} {depth['value']:.4f} on {depth['num_examples']} examples ({depth['source']}) "
            f"with the adapters of the {m['export_options']['adapterdrop_eval_layers']} lowest layers dropped"
        )
    if m.get("latency"):
        t = m["latency"]
        print(
            f"  latency       {t['kept_ms']:.2f} ms vs {t['full_ms']:.2f} ms with an adapter at every layer "
            f"({t['ratio']:.2f}x; batch 1, ONNX Runtime)"
        )
    print(f"  sizes         {result.sizes.summary}")
    for note in result.warnings:
        print(f"  warning       {note}")
    return 0
