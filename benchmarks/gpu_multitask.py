"""Multi-task graph against the bare backbone on ONNX Runtime's CUDA provider, in one call.

    python benchmarks/gpu_multitask.py                 # MiniLM, batches 1..256, seq 128, 1/4/16 tasks
    python benchmarks/gpu_multitask.py --quick         # tiny backbone, 3 batch sizes: tests the script on CPU

Prepared so that one call on a GPU machine does everything: it builds the exports (4 MiniLM tasks made by
the real exporter from run folders with random adapters, cached in ``--workdir``), compiles the multi-task
graph for 1, 4 and 16 tasks with ``aa_deploy.serving.multitask`` (16 tasks = the 4 exports stacked 4 times
each: the same compute as 16 distinct adapters), and times, at every batch size:

* ``bare``: the backbone with its adapters cut out and one task's head (what the same model costs
  without adapters; compiled by the same code, so the two sides differ only in the adapters);
* ``multitask_N``: the stacked graph of N tasks on a *mixed* batch (each row's task drawn at random).

Both run through I/O binding: inputs are placed on the device once and the logits stay there, so the
timing is the graph's own (host-device copies are the same for both sides and small: 3 int64 tensors).
Each case is timed in interleaved rounds (median), so drift hits all sides alike; the ratio
``multitask / bare`` throughput is the figure that matters (target: >= 0.95 at batch >= 32).

Before timing, every multi-task graph is checked on a mixed batch against each row's own exported
``model.onnx`` (plain ONNX Runtime session on CPU): the numbers are for a graph that gives the right answers.

Without a working CUDA provider (CPU-only onnxruntime, no GPU, missing CUDA libraries) it runs on CPU and
says so in the table and the JSON (``"gpu_figures": "missing"``). Results: benchmarks/results/gpu_multitask.json.
"""

from __future__ import annotations

import argparse
import dataclasses
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from machine_info import describe_machine  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))  # serving_helpers: run folders with random adapters (as serving_bench)
RESULTS = REPO / "benchmarks" / "results" / "gpu_multitask.json"
BASE_TASKS = ("sst", "mid", "relu", "late")
FULL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_BATCHES = (1, 8, 32)
TARGET_RATIO = 0.95
TARGET_FROM_BATCH = 32
CHECK_ROWS = 8


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny backbone, batches 1/8/32, few iterations (CPU test)")
    p.add_argument("--backbone", choices=["minilm", "tiny"], help="default: minilm (tiny with --quick)")
    p.add_argument("--tasks", default="1,4,16", help="task counts of the multi-task graph (default 1,4,16)")
    p.add_argument("--batches", help=f"batch sizes (default {','.join(map(str, FULL_BATCHES))})")
    p.add_argument("--seq", type=int, help="sequence length (default 128; 32 for the tiny backbone)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds, median reported (default 7; 3 quick)")
    p.add_argument("--min-time", type=float, help="seconds per timed sample (default 0.2; 0.01 quick)")
    p.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA when it works")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (default: ORT's choice)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "aa_gpu_multitask"))
    p.add_argument("--output", default=str(RESULTS), help="JSON results file")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.backbone = args.backbone or ("tiny" if args.quick else "minilm")
    args.batches = (
        [int(b) for b in args.batches.split(",")]
        if args.batches
        else list(QUICK_BATCHES if args.quick else FULL_BATCHES)
    )
    args.tasks = [int(n) for n in args.tasks.split(",")]
    args.seq = args.seq or (32 if args.backbone == "tiny" else 128)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.min_time = args.min_time if args.min_time is not None else (0.01 if args.quick else 0.2)
    return args


# --------------------------------------------------------------------------------------------- exports
def build_exports(workdir: Path, backbone_kind: str, max_length: int) -> dict[str, Path]:
    """The 4 base exports (cached in ``workdir/<backbone>-<max_length>``)."""
    root = workdir / f"{backbone_kind}-{max_length}"
    exports = {name: root / "exports" / name for name in BASE_TASKS}
    if all((p / "aa_export.json").is_file() for p in exports.values()):
        return exports
    from serving_helpers import SST, TOPIC, make_run_folder

    from aa_deploy.export import export_run

    if backbone_kind == "tiny":
        from tiny_models import save_tiny_backbone

        backbone = root / "tiny-backbone"
        if not (backbone / "config.json").is_file():
            save_tiny_backbone(backbone, "bert", num_layers=6)
        last = 5
    else:
        from aa_deploy.backbones import resolve_backbone_path

        backbone, last = Path(resolve_backbone_path(None)), 5
    specs = {  # (task, recipe, rational version, adapted layers, seed), as benchmarks/serving_bench.py
        "sst": (SST, "search", "A", [3, 4, last], 1),
        "mid": (TOPIC, "search", "B", [1, 3], 2),
        "relu": (TOPIC, "standard", "A", None, 3),
        "late": (SST, "search", "A", [last], 4),
    }
    for name, (task, recipe, version, layers, seed) in specs.items():
        if (exports[name] / "aa_export.json").is_file():
            continue
        started = time.time()
        run = make_run_folder(root / "runs" / name, backbone, task, recipe, version, layers, seed, max_length)
        export_run(run, exports[name], backbone_store=root / "store", overwrite=True)
        print(f"exported {name} ({backbone_kind}) in {time.time() - started:.0f}s", flush=True)
    return exports


# --------------------------------------------------------------------------------------------- graphs
class Graphs:
    """Sessions for the bare backbone and the multi-task graphs, built the way the server builds them."""

    def __init__(self, exports: dict[str, Path], providers: list[str], threads: int) -> None:
        from aa_deploy.contract.manifest import ExportManifest
        from aa_deploy.serving.backbone import SharedBackbonePool
        from aa_deploy.serving.multitask import MergeSource, load_task_graph
        from aa_deploy.serving.sessions import SessionSettings

        self.settings = SessionSettings(intra_op_threads=threads, providers=tuple(providers))
        self.store = SharedBackbonePool()
        self.folders = [exports[name] for name in BASE_TASKS]
        self.manifests = [ExportManifest.load(folder) for folder in self.folders]
        self.graphs = [load_task_graph(folder / "model.onnx") for folder in self.folders]
        self.backbone = self.store.acquire(self.manifests[0], "bench")
        self._prepare = MergeSource.prepare

    def sources(self, n: int) -> list[Any]:
        """n members: base export i % 4 as task i (so 16 tasks stack each export's adapters 4 times)."""
        return [
            self._prepare(f"t{i}", self.manifests[i % len(self.folders)], self.graphs[i % len(self.folders)])
            for i in range(n)
        ]

    def session(self, model: Any) -> Any:
        from aa_deploy.serving.sessions import create_session

        return create_session(model, self.settings, backbone=self.backbone, external_folder=str(self.folders[0]))

    def bare(self) -> Any:
        from aa_deploy.serving.multitask import compile_multitask

        (source,) = self.sources(1)
        return self.session(compile_multitask([dataclasses.replace(source, adapters={})], prefix_sharing=False).model)

    def multitask(self, n: int) -> Any:
        from aa_deploy.serving.multitask import compile_multitask

        return self.session(compile_multitask(self.sources(n), prefix_sharing=False).model)


def token_inputs(folder: Path, batch: int, seq: int) -> dict[str, np.ndarray]:
    """``batch`` rows of exactly ``seq`` real tokens (no padding: the worst case for compute)."""
    from aa_deploy.export.validation import BUILTIN_SENTENCES
    from aa_deploy.serving.engine import pad_feeds
    from aa_deploy.serving.tokenization import TaskTokenizer

    tokenizer = TaskTokenizer(folder / "tokenizer.json", max_length=seq, is_pair=False)
    texts = [" ".join(BUILTIN_SENTENCES[(i + k) % len(BUILTIN_SENTENCES)] for k in range(40)) for i in range(batch)]
    return pad_feeds([tokenizer.encode(texts)], 0)


def bound_runner(session: Any, feeds: dict[str, np.ndarray], device: str) -> tuple[Callable[[], None], Any]:
    """A no-argument call running ``session`` with inputs already on ``device`` and logits kept there."""
    import onnxruntime as ort

    binding = session.io_binding()
    wanted = {i.name for i in session.get_inputs()}
    values = {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds.items() if k in wanted}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_output("logits", device)

    def run() -> None:
        session.run_with_iobinding(binding)

    run._values = values  # type: ignore[attr-defined]  # the inputs live as long as the runner
    return run, binding


def time_cases(cases: dict[str, Callable[[], None]], rounds: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each case, in interleaved rounds of at least ``min_time`` seconds each."""
    loops: dict[str, int] = {}
    for name, call in cases.items():
        call()  # warm-up (CUDA kernels, arena growth)
        call()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < min_time or count < 1:
            call()
            count += 1
        loops[name] = count
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in cases.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                call()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def check_outputs(graphs: Graphs, n: int, session: Any, seq: int, device: str) -> float:
    """Max |multi-task logits - the row's own export's logits| on a mixed batch (reference: plain ORT, CPU)."""
    import onnxruntime as ort

    rng = np.random.default_rng(n)
    feeds = token_inputs(graphs.folders[0], CHECK_ROWS, seq)
    task_ids = rng.integers(0, n, CHECK_ROWS).astype(np.int64)
    run, binding = bound_runner(session, {**feeds, "task_ids": task_ids}, device)
    run()
    merged = binding.copy_outputs_to_cpu()[0]
    worst = 0.0
    for folder_index, folder in enumerate(graphs.folders):
        rows = np.flatnonzero(task_ids % len(graphs.folders) == folder_index)
        if not len(rows):
            continue
        reference = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in reference.get_inputs()}
        (expected,) = reference.run(["logits"], {k: v[rows] for k, v in feeds.items() if k in names})
        worst = max(worst, float(np.abs(merged[rows, : expected.shape[1]] - expected).max()))
    return worst


# ---------------------------------------------------------------------------------------------- main
def resolve_device(choice: str) -> tuple[list[str], str, str | None]:
    """(providers, I/O binding device, note when the GPU run is not happening)."""
    import onnxruntime as ort

    from aa_deploy.serving.sessions import cuda_works

    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and cuda_works()
    if choice == "cuda" and not cuda:
        raise SystemExit(
            f"--provider cuda: ONNX Runtime's CUDA provider does not work here (available: "
            f"{ort.get_available_providers()}); install onnxruntime-gpu with CUDA/cuDNN or use the CUDA image"
        )
    if cuda and choice != "cpu":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", None
    why = "--provider cpu" if choice == "cpu" else "CUDA provider not available"
    return ["CPUExecutionProvider"], "cpu", f"ran on CPU ({why}): GPU figures are missing"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    providers, device, note = resolve_device(args.provider)
    if note:
        print(f"NOTE: {note}", flush=True)
    exports = build_exports(Path(args.workdir), args.backbone, args.seq)
    graphs = Graphs(exports, providers, args.threads)
    started = time.perf_counter()
    sessions = {"bare": graphs.bare()}
    for n in args.tasks:
        sessions[f"multitask_{n}"] = graphs.multitask(n)
    build_seconds = time.perf_counter() - started
    correctness = {
        f"multitask_{n}": check_outputs(graphs, n, sessions[f"multitask_{n}"], args.seq, device) for n in args.tasks
    }
    # The same check on the bare graph (task 0's head, no adapters) must fail: the adapters change the logits.
    correctness["bare"] = check_outputs(graphs, 1, sessions["bare"], args.seq, device)
    for name, diff in correctness.items():
        print(f"{name}: max |logits - own export| = {diff:.2e}", flush=True)

    rows = []
    for batch in args.batches:
        feeds = token_inputs(graphs.folders[0], batch, args.seq)
        rng = np.random.default_rng(batch)
        cases = {"bare": bound_runner(sessions["bare"], {**feeds, "task_ids": np.zeros(batch, np.int64)}, device)[0]}
        for n in args.tasks:
            task_ids = rng.integers(0, n, batch).astype(np.int64)  # a mixed batch
            cases[f"multitask_{n}"] = bound_runner(sessions[f"multitask_{n}"], {**feeds, "task_ids": task_ids}, device)[
                0
            ]
        seconds = time_cases(cases, args.rounds, args.min_time)
        row: dict[str, Any] = {"batch": batch, "seq": args.seq}
        for name, value in seconds.items():
            row[name] = {"ms": round(value * 1000, 4), "seq_per_s": round(batch / value, 1)}
            if name != "bare":
                row[name]["ratio_vs_bare"] = round(seconds["bare"] / value, 4)
        rows.append(row)
        print(_row_line(row, args.tasks), flush=True)

    target = {}
    for n in args.tasks:
        ratios = [r[f"multitask_{n}"]["ratio_vs_bare"] for r in rows if r["batch"] >= TARGET_FROM_BATCH]
        target[f"multitask_{n}"] = {
            "min_ratio_at_batch_ge_32": min(ratios) if ratios else None,
            "meets_0.95": (min(ratios) >= TARGET_RATIO) if ratios else None,
        }
    return {
        "benchmark": "gpu_multitask",
        "command": " ".join(["python", "benchmarks/gpu_multitask.py", *args.argv]),
        "device": device,
        "providers": sessions["bare"].get_providers(),
        "gpu_figures": "missing" if device != "cuda" else "measured",
        "note": note,
        "onnxruntime": ort.__version__,
        "machine": describe_machine(),
        "backbone": args.backbone,
        "seq": args.seq,
        "tasks": args.tasks,
        "batches": args.batches,
        "rounds": args.rounds,
        "io_binding": True,
        "graph_build_seconds": round(build_seconds, 2),
        # multitask_N: ~0 (same answers as each task's own export); bare: > 0 (no adapters), so the check can tell.
        "max_abs_diff_vs_own_export": correctness,
        "target": {"ratio": TARGET_RATIO, "from_batch": TARGET_FROM_BATCH, "results": target},
        "rows": rows,
    }


def _row_line(row: dict[str, Any], tasks: list[int]) -> str:
    parts = [f"batch {row['batch']:>4}", f"bare {row['bare']['seq_per_s']:>10.1f} seq/s"]
    parts += [
        f"{n} tasks {row[f'multitask_{n}']['seq_per_s']:>10.1f} ({row[f'multitask_{n}']['ratio_vs_bare']:.3f}x)"
        for n in tasks
    ]
    return " | ".join(parts)


def print_table(report: dict[str, Any]) -> None:
    tasks = report["tasks"]
    print()
    print(f"Multi-task graph vs bare backbone, {report['backbone']}, seq {report['seq']}, device {report['device']} "
          f"({', '.join(report['providers'])}), I/O binding; throughput in sequences/s, ratio = multi-task / bare")  # fmt: skip
    if report["note"]:
        print(f"NOTE: {report['note']}")
    header = "| batch | bare | " + " | ".join(f"{n} tasks (mixed) | ratio" for n in tasks) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(tasks)))
    for row in report["rows"]:
        cells = [str(row["batch"]), f"{row['bare']['seq_per_s']:.1f}"]
        for n in tasks:
            case = row[f"multitask_{n}"]
            cells += [f"{case['seq_per_s']:.1f}", f"{case['ratio_vs_bare']:.3f}"]
        print("| " + " | ".join(cells) + " |")
    for name, result in report["target"]["results"].items():
        print(f"{name}: min ratio at batch >= {TARGET_FROM_BATCH}: {result['min_ratio_at_batch_ge_32']} "
              f"(target {TARGET_RATIO}: {'met' if result['meets_0.95'] else 'NOT met'})")  # fmt: skip


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    report = run(args)
    print_table(report)
    write_json(report, Path(args.output))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
