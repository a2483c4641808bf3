"""Latency of a compiled task vs. the bare backbone (ONNX Runtime) and vs. PyTorch eager.

On all-MiniLM-L6-v2, sequence length 128, batch 1 and 16, one process, the same thread count for
every engine. Variants:

- ``ort-backbone``: the store's bare backbone graph (no adapters, no head), exported like the task;
- ``ort-task``: the exported task graph (pruned adapters, folded rationals, head), default settings;
- the same two with dynamic INT8 weights (``-int8``; ``ort-task-int8b``: ``--quantize int8-backbone``, the
  adapters left in float32) and with ORT's transformer fusions (``-fused``,
  ``--optimize``; on CPU with one thread the fused graph measured slower than the default one);
- ``torch-eager``: the trained model as ``from_pretrained`` loads it (all adapters, switches, eval mode).

Targets: ort-task ≤ 1.03 × ort-backbone; ort-task ≥ 2 × faster than torch-eager at batch 1.
Measurements are interleaved (one call of every variant per round) so that load from other processes
on a shared machine hits all variants alike; medians are reported.

    python benchmarks/export_latency.py [--run-dir RUN] [--glue-dir DIR] [--threads 1]

Without ``--run-dir`` a quick RTE run is trained first (search recipe, 1 epoch, 64 examples).
Writes ``benchmarks/results/export_latency.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import describe_machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "export_latency.json"


def _args() -> argparse.Namespace:
    from aa_deploy.cli_options import glue_dir_from_env

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", help="trained run folder (default: train a quick RTE run)")
    p.add_argument("--glue-dir", default=glue_dir_from_env(), help="GLUE folder (default $AA_GLUE_DIR)")
    p.add_argument("--work-dir", help="where exports go (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for every engine (default 1)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--rounds", type=int, default=60, help="timed calls per variant at batch 1 (fewer at larger batch)")
    p.add_argument(
        "--layers",
        help="override the run's selection with these layers (e.g. 1,4), to measure how the cost scales "
        "with the number of kept adapters; the result goes to export_latency_layers-<L>.json",
    )
    p.add_argument("--output", help=f"JSON report (default {RESULTS})")
    return p.parse_args()


def _train_quick_run(work: Path, glue_dir: str | None) -> Path:
    from aa_deploy.training import TrainConfig, train

    if not glue_dir:
        sys.exit("no --run-dir and no GLUE data (--glue-dir / $AA_GLUE_DIR) to train a quick run on")
    cfg = TrainConfig(
        task="rte", output=str(work / "run"), data_dir=glue_dir, recipe="search", epochs=1, train_size=64,
        progress=False, overwrite=True,
    )  # fmt: skip
    print(f"training a quick RTE run in {cfg.output} ...", file=sys.stderr)
    return train(cfg).output


def _reselect(run: Path, layers: list[int], work: Path) -> Path:
    """A copy of the run whose switches select exactly ``layers`` (same trained adapters)."""
    import shutil

    import torch

    from aa_deploy.modeling import AdaptableAdapterModel

    model = AdaptableAdapterModel.from_pretrained(run)
    with torch.no_grad():
        for index, block in model.adapter_layers.items():
            if block.switch is None:
                sys.exit("--layers needs a search-recipe run (with switches)")
            block.switch.logits.copy_(torch.tensor([0.0, 1.0] if int(index) in layers else [1.0, 0.0]))
    target = work / f"run-layers-{'-'.join(map(str, layers))}"
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)
    (target / "selection.json").write_text(json.dumps(model.selection()))
    for name in ("metrics.json", "training_config.json"):
        if (run / name).is_file():
            shutil.copy(run / name, target / name)
    return target


def _inputs(tokenizer: Any, names: list[str], batch: int, seq: int, glue_dir: str | None) -> dict[str, np.ndarray]:
    from aa_deploy.export.validation import BUILTIN_SENTENCES

    pairs: list[tuple[str, str]]
    if glue_dir:
        from aa_deploy.data import read_glue_split

        pairs = [(e.text, e.text_pair or "") for e in read_glue_split("rte", glue_dir, "dev")[:batch]]
    else:
        pairs = [(s, s) for s in (BUILTIN_SENTENCES * batch)[:batch]]
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding="max_length", truncation=True,
                    max_length=seq, return_tensors="np")  # fmt: skip
    return {n: enc[n].astype(np.int64) for n in names}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _measure(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    args = _args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import onnxruntime
    import torch
    import transformers
    from transformers import AutoTokenizer

    from aa_deploy.backbones import resolve_backbone_path
    from aa_deploy.export import export_run
    from aa_deploy.modeling import AdaptableAdapterModel

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="aa-export-latency-"))
    run = Path(args.run_dir) if args.run_dir else _train_quick_run(work, args.glue_dir)
    output = Path(args.output) if args.output else RESULTS
    if args.layers:
        layers = sorted({int(v) for v in args.layers.split(",") if v.strip()})
        run = _reselect(run, layers, work)
        if not args.output:
            output = RESULTS.with_name(f"export_latency_layers-{'-'.join(map(str, layers))}.json")
    store = work / "store"
    exports: dict[str, Any] = {}
    variants = (
        ("fp32", False, None),
        ("int8", False, "int8"),
        ("int8b", False, "int8-backbone"),
        ("fused", True, None),
    )
    for label, optimize, quantize in variants:
        started = time.time()
        result = export_run(
            run, work / f"task-{label}", optimize=optimize, quantize=quantize, backbone_store=store,
            data_dir=args.glue_dir, overwrite=True,
        )  # fmt: skip
        exports[label] = {"result": result, "seconds": round(time.time() - started, 1)}
        print(f"exported {label} in {exports[label]['seconds']} s: {result.sizes.summary}", file=sys.stderr)
    manifest = exports["fp32"]["result"].manifest
    names = manifest["inputs"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(manifest["base_model"]["name_or_path"]))
    trained = AdaptableAdapterModel.from_pretrained(run).eval()

    sessions = {}
    for label, _, _ in variants:
        m = exports[label]["result"].manifest
        backbone_graph = store / "objects" / m["backbone_data"]["store_object"] / "backbone.onnx"
        suffix = "" if label == "fp32" else f"-{label}"
        if label != "int8b":  # the same INT8 backbone as ``int8``
            sessions[f"ort-backbone{suffix}"] = _session(backbone_graph, args.threads)
        sessions[f"ort-task{suffix}"] = _session(work / f"task-{label}" / "model.onnx", args.threads)

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        feeds = _inputs(tokenizer, names, batch, args.seq, args.glue_dir)
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        calls: dict[str, Callable[[], Any]] = {
            name: (lambda s=session, f=feeds: s.run(None, f)) for name, session in sessions.items()
        }

        def eager(t: dict[str, Any] = tensors) -> Any:
            with torch.inference_mode():
                return trained(**t).logits

        calls["torch-eager"] = eager
        rounds = max(5, args.rounds // max(1, batch // 4))
        times = _measure(calls, rounds)
        medians = {name: statistics.median(values) for name, values in times.items()}

        def paired(a: str, b: str, t: dict[str, list[float]] = times) -> float:
            """Median over rounds of a/b measured back to back: robust to load drifting between rounds."""
            return statistics.median(x / y for x, y in zip(t[a], t[b], strict=True))

        p90 = {name: float(np.percentile(values, 90)) for name, values in times.items()}
        rows.append(
            {
                "batch": batch,
                "seq": args.seq,
                "rounds": rounds,
                "median_ms": medians,
                "p90_ms": p90,
                "ratios": {
                    "task_vs_backbone_fp32": medians["ort-task"] / medians["ort-backbone"],
                    "task_vs_backbone_int8": medians["ort-task-int8"] / medians["ort-backbone-int8"],
                    "task_vs_backbone_int8b": medians["ort-task-int8b"] / medians["ort-backbone-int8"],
                    "torch_eager_vs_task_fp32": medians["torch-eager"] / medians["ort-task"],
                    "torch_eager_vs_task_int8": medians["torch-eager"] / medians["ort-task-int8"],
                    "task_vs_backbone_fused": medians["ort-task-fused"] / medians["ort-backbone-fused"],
                    "fused_vs_plain_task": medians["ort-task-fused"] / medians["ort-task"],
                },
                "paired_ratios": {
                    "task_vs_backbone_fp32": paired("ort-task", "ort-backbone"),
                    "task_vs_backbone_int8": paired("ort-task-int8", "ort-backbone-int8"),
                    "task_vs_backbone_int8b": paired("ort-task-int8b", "ort-backbone-int8"),
                    "torch_eager_vs_task_fp32": paired("torch-eager", "ort-task"),
                    "torch_eager_vs_task_int8": paired("torch-eager", "ort-task-int8"),
                },
            }
        )

    int8 = exports["int8"]["result"]
    report = {
        "backbone": manifest["base_model"]["name_or_path"],
        "run_dir": str(run),
        "kept_layers": manifest["kept_layers"],
        "num_layers": manifest["num_layers"],
        "threads": args.threads,
        "machine": describe_machine(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },  # fmt: skip
        "export_seconds": {k: v["seconds"] for k, v in exports.items()},
        "validation_max_abs_diff": {k: v["result"].validation.max_abs_diff for k, v in exports.items()},
        "int8_metric": int8.metrics,
        "int8b_metric": exports["int8b"]["result"].metrics,
        "sizes": {k: v["result"].manifest["sizes"] for k, v in exports.items()},
        "results": rows,
    }
    out = output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    _print_table(report)
    print(f"\nwritten to {out}")
    return 0


def _print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['backbone']}, kept layers {report['kept_layers']} of {report['num_layers']}, "
          f"threads={report['threads']}, seq={report['results'][0]['seq']}")  # fmt: skip
    variants = [
        "torch-eager",
        "ort-backbone",
        "ort-task",
        "ort-backbone-int8",
        "ort-task-int8",
        "ort-task-int8b",
        "ort-backbone-fused",
        "ort-task-fused",
    ]
    print(f"{'batch':>5} " + " ".join(f"{v:>18}" for v in variants) + "   (median ms)")
    for row in report["results"]:
        print(f"{row['batch']:>5} " + " ".join(f"{row['median_ms'][v]:>18.2f}" for v in variants))
    print("(ort-*: default export; -int8: --quantize int8; -int8b: --quantize int8-backbone, adapters float32;")
    print(" -fused: --optimize, ORT transformer fusions)")
    print()
    keys = ["task_vs_backbone_fp32", "task_vs_backbone_int8", "task_vs_backbone_int8b", "torch_eager_vs_task_fp32",
            "torch_eager_vs_task_int8"]  # fmt: skip
    print(f"{'batch':>5} " + " ".join(f"{k:>26}" for k in keys))
    for row in report["results"]:
        print(f"{row['batch']:>5} " + " ".join(f"{row['ratios'][k]:>26.3f}" for k in keys) + "   ratio of medians")
        print(f"{'':>5} " + " ".join(f"{row['paired_ratios'][k]:>26.3f}" for k in keys) + "   median of paired ratios")
    for row in report["results"]:
        r = row["ratios"]
        print(
            f"batch {row['batch']}: fused task / fused backbone {r['task_vs_backbone_fused']:.3f}; "
            f"fused task / default task {r['fused_vs_plain_task']:.3f}"
        )
    for key, name in (("int8_metric", "int8"), ("int8b_metric", "int8-backbone")):
        if report.get(key):
            m = report[key]
            print(
                f"INT8 ({name}) {m['metric']} on {m['num_examples']} dev examples: fp32 {m['fp32']:.4f} → {m[name]:.4f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
