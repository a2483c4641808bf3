"""Serving benchmark on the real MiniLM backbone, CPU (docs/SERVING.md has the results and the analysis).

    python benchmarks/serving_bench.py [--workdir /tmp/aa_serving_bench] [--seconds 6] [--quick]

Measures, and prints as a table / writes to benchmarks/results/serving.json:

1. resident memory (psutil RSS, each configuration in a fresh subprocess) with 1, 4 and 16 tasks for the
   multi-task graph, per-task sessions sharing the backbone (prepacking on and off), and 16 separate
   plain sessions (what serving 16 exported models without sharing costs);
2. raw engine speed: batch 1 latency and batch 16 throughput of the multi-task graph against a plain
   ORT session of the task's own model.onnx, single-task and mixed-task batches, and the per-task
   sessions engine on the same batches;
3. the HTTP server (``aa-deploy serve`` in a subprocess, 127.0.0.1 only): throughput and p50/p99
   latency at concurrency 1, 8 and 32 for single-task and mixed-task traffic, against the raw engine
   at the server's mean batch size;
4. time to hot-load (and unload) a task into the running server.

Tasks: 4 exports made with ``export.export_run`` from run folders with random adapters on MiniLM,
max_length 128 (sst: adapters at layers [3,4,5], rational A, 2 labels; mid: [1,3], rational B, 3
labels; relu: standard recipe, ReLU adapters on all 6 layers, 3 labels; late: [5] only, 2 labels);
16 tasks = those 4 folders copied 4 times each (distinct folders, loaded as distinct tasks: the server
would de-duplicate one folder served under several names). All four take single texts, so single-
and mixed-task traffic draw from the same texts (GLUE SST-2 dev sentences when the GLUE folder is
available) and differ only in the tasks; pair inputs are covered by the tests.

The machine is shared (2 cores, other jobs): every comparison runs its two sides interleaved in the
same process and reports the median of repeated rounds, so ratios are more trustworthy than absolute
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine_info import describe_machine, load_average  # noqa: E402

from aa_deploy.cli_options import glue_dir_from_env  # noqa: E402
from aa_deploy.data import read_glue_file  # noqa: E402
from aa_deploy.data.glue import glue_split_path  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "serving.json"
BASE_TASKS = ("sst", "mid", "relu", "late")
FALLBACK_TEXTS = [
    "the service was quick and the food was excellent",
    "a bleak , joyless slog that never finds its footing",
    "it rained all day so we stayed in and read a long book about the history of the sea and its ships",
    "great",
]


# ---------------------------------------------------------------------------------------------- setup
def build_exports(workdir: Path) -> dict[str, Path]:
    """The 4 MiniLM exports (cached in ``workdir``: exporting takes ~20 s each on 2 cores)."""
    exports = {name: workdir / "exports" / name for name in BASE_TASKS}
    if all((p / "aa_export.json").is_file() for p in exports.values()):
        return exports
    sys.path.insert(0, str(REPO / "tests"))
    from serving_helpers import SST, TOPIC, make_run_folder

    from aa_deploy.backbones import resolve_backbone_path
    from aa_deploy.export import export_run

    backbone = Path(resolve_backbone_path(None))
    specs = {
        "sst": (SST, "search", "A", [3, 4, 5], 1),
        "mid": (TOPIC, "search", "B", [1, 3], 2),
        "relu": (TOPIC, "standard", "A", None, 3),
        "late": (SST, "search", "A", [5], 4),
    }
    for name, (task, recipe, version, layers, seed) in specs.items():
        if (exports[name] / "aa_export.json").is_file():
            continue
        started = time.time()
        run = make_run_folder(workdir / "runs" / name, backbone, task, recipe, version, layers, seed, max_length=128)
        export_run(run, exports[name], backbone_store=workdir / "store", overwrite=True)
        print(f"exported {name} in {time.time() - started:.0f}s", flush=True)
    return exports


def task_folders(workdir: Path, exports: dict[str, Path], n: int) -> dict[str, Path]:
    """n task folders: the 4 exports, then copies (backbone hard-linked) to reach n distinct folders."""
    out: dict[str, Path] = {}
    for i in range(n):
        base = BASE_TASKS[i % len(BASE_TASKS)]
        if i < len(BASE_TASKS):
            out[base] = exports[base]
            continue
        copy = workdir / "copies" / f"{base}{i}"
        if not (copy / "aa_export.json").is_file():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(exports[base], copy, copy_function=_link_backbone)
        out[f"{base}{i}"] = copy
    return out


def _link_backbone(src: str, dst: str) -> None:
    if src.endswith(".onnx_data"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def _glue_dev_file(task: str) -> Path | None:
    """The task's official dev file in $AA_GLUE_DIR; None without the folder or the file, where the built-in
    texts stand in. A malformed file still fails loudly when read: numbers from silently swapped texts
    would mislead."""
    folder = glue_dir_from_env()
    if folder is None:
        return None
    path = glue_split_path(task, folder, "dev")
    return path if path.is_file() else None


def texts_source() -> str:
    """Which texts :func:`load_texts` draws from, for the results file (numbers move with text lengths)."""
    sst2, rte = _glue_dev_file("sst2"), _glue_dev_file("rte")
    return f"sentences: {sst2 or 'built-in'}; pairs: {rte or 'built-in'}"


def load_texts() -> tuple[list[str], list[tuple[str, str]]]:
    """SST-2 dev sentences and RTE dev pairs (read by the package's GLUE reader, which owns the files'
    quirks), or built-in sentences without them."""
    sst2, rte = _glue_dev_file("sst2"), _glue_dev_file("rte")
    singles = [e.text for e in read_glue_file("sst2", sst2)][:512] if sst2 else list(FALLBACK_TEXTS)
    if rte:
        pairs = [(e.text, e.text_pair or "") for e in read_glue_file("rte", rte)][:256]
    else:
        pairs = [(t, FALLBACK_TEXTS[0]) for t in FALLBACK_TEXTS]
    return singles, pairs


# ---------------------------------------------------------------------------------------------- memory
def memory_child(kind: str, n: int, workdir: Path, threads: int) -> None:
    """Runs in a subprocess: load n tasks the ``kind`` way, run one batch per task, print RSS in MiB."""
    import numpy as np
    import psutil

    process = psutil.Process()
    exports = build_exports(workdir)
    folders = task_folders(workdir, exports, n)
    baseline = process.memory_info().rss
    if kind == "separate":
        import onnxruntime as ort

        from aa_deploy.serving.tokenization import TaskTokenizer, pad_rows

        sessions = []
        for folder in folders.values():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
            manifest = json.loads((folder / "aa_export.json").read_text())
            tok = TaskTokenizer(folder / "tokenizer.json", max_length=128, is_pair=manifest["task"]["is_pair"])
            enc = tok.encode(["a short text"] * 8, ["another"] * 8 if manifest["task"]["is_pair"] else None)
            ids, mask, types = pad_rows([enc], 0)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})
            sessions.append(session)
    else:
        from aa_deploy.serving.config import ServerConfig
        from aa_deploy.serving.engine import WorkItem, execute
        from aa_deploy.serving.registry import TaskRegistry

        engine, prepacking = {
            "multitask": ("multitask", True),
            "sessions": ("sessions", True),
            "sessions-noprepack": ("sessions", False),
        }[kind]
        registry = TaskRegistry(ServerConfig(engine=engine, prepacking=prepacking, intra_op_threads=threads))
        for name, folder in folders.items():
            registry.load(name, str(folder))
        items = []
        for name in folders:
            entry = registry.view.get(name)
            pair = entry.artifact.manifest.is_pair
            items.append(
                WorkItem(
                    entry.artifact.tokenizer.encode(["a short text"] * 8, ["another"] * 8 if pair else None),
                    (entry.target,),
                )
            )
        for item in items:
            execute([item], 16)
        np.asarray(0)
    rss = process.memory_info().rss
    print(json.dumps({"rss_mib": rss / 2**20, "baseline_mib": baseline / 2**20}))


def measure_memory(workdir: Path, threads: int, counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for kind in ("multitask", "sessions", "sessions-noprepack", "separate"):
        for n in counts:
            if kind == "separate" and n != counts[-1]:
                continue
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    kind,
                    str(n),
                    "--workdir",
                    str(workdir),
                    "--threads",
                    str(threads),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if out.returncode != 0:
                raise RuntimeError(f"memory child {kind} {n} failed:\n{out.stderr[-3000:]}")
            data = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"engine": kind, "tasks": n, **{k: round(v, 1) for k, v in data.items()}})
            print(f"memory {kind:>18} {n:>2} tasks: {data['rss_mib']:.0f} MiB", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- engine
def _items(
    registry: Any, names: list[str], singles: list[str], pairs: list[tuple[str, str]], rows: int, rng: random.Random
):
    from aa_deploy.serving.engine import WorkItem

    items = []
    for i in range(rows):
        entry = registry.view.get(names[i % len(names)])
        if entry.artifact.manifest.is_pair:
            a, b = rng.choice(pairs)
            enc = entry.artifact.tokenizer.encode([a], [b])
        else:
            enc = entry.artifact.tokenizer.encode([rng.choice(singles)])
        items.append(WorkItem(enc, (entry.target,)))
    return items


def _time(fn, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure_engine(exports: dict[str, Path], threads: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Engine-level comparisons, interleaved so that background load hits both sides alike."""
    import onnxruntime as ort

    from aa_deploy.serving.config import ServerConfig
    from aa_deploy.serving.engine import execute, pad_feeds
    from aa_deploy.serving.registry import TaskRegistry

    singles, pairs = load_texts()
    multi = TaskRegistry(ServerConfig(engine="multitask", intra_op_threads=threads))
    per_task = TaskRegistry(ServerConfig(engine="sessions", intra_op_threads=threads))
    per_task_np = TaskRegistry(ServerConfig(engine="sessions", prepacking=False, intra_op_threads=threads))
    for reg in (multi, per_task, per_task_np):
        for name in BASE_TASKS:
            reg.load(name, str(exports[name]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    plain = ort.InferenceSession(str(exports["sst"] / "model.onnx"), options, providers=["CPUExecutionProvider"])

    # The same 16-row batches for everyone: single-task (sst only) and mixed (4 tasks).
    # Batch i of both kinds holds the same texts: they differ only in the tasks the rows go to.
    single_batches = [_items(multi, ["sst"], singles, pairs, 16, random.Random(i)) for i in range(4)]
    mixed_batches = [_items(multi, list(BASE_TASKS), singles, pairs, 16, random.Random(i)) for i in range(4)]
    one = [_items(multi, ["sst"], singles, pairs, 1, random.Random(100 + i)) for i in range(8)]

    def rebind(batches, registry):
        from aa_deploy.serving.engine import WorkItem

        return [
            [WorkItem(it.encoded, tuple(registry.view.get(t.name).target for t in it.targets)) for it in b]
            for b in batches
        ]

    def plain_run(batches):
        for b in batches:
            feeds = pad_feeds([it.encoded for it in b], 0)
            plain.run(["logits"], feeds)

    def engine_run(batches, split_cost=None):
        for b in batches:
            if split_cost is None:
                execute(b, 16)
            else:
                execute(b, 16, None, split_cost)

    cases = {
        "batch1_plain_session": lambda: plain_run(one),
        "batch1_multitask": lambda: engine_run(one),
        "batch1_sessions": lambda: engine_run(rebind(one, per_task)),
        "batch1_sessions_noprepack": lambda: engine_run(rebind(one, per_task_np)),
        "batch16_plain_session": lambda: plain_run(single_batches),
        "batch16_multitask_single_one_run": lambda: engine_run(single_batches, split_cost=1e12),
        "batch16_multitask_single": lambda: engine_run(single_batches),
        "batch16_multitask_mixed": lambda: engine_run(mixed_batches),
        "batch16_sessions_single": lambda: engine_run(rebind(single_batches, per_task)),
        "batch16_sessions_mixed": lambda: engine_run(rebind(mixed_batches, per_task)),
        "batch16_sessions_noprepack_mixed": lambda: engine_run(rebind(mixed_batches, per_task_np)),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(_time(fn, 1))
    result: dict[str, Any] = {}
    for name, values in samples.items():
        seconds = statistics.median(values)
        batch1 = name.startswith("batch1_")
        rows = 8 if batch1 else 64
        result[name] = {
            "ms_per_batch": round(1000 * seconds / (8 if batch1 else 4), 2),
            "rows_per_s": round(rows / seconds, 1),
        }

    def paired(numerator: str, denominator: str) -> float:
        """Median over rounds of time(denominator) / time(numerator): a speed ratio measured side by
        side, so that load changes on the shared machine cancel out."""
        return round(statistics.median(d / n for n, d in zip(samples[numerator], samples[denominator], strict=True)), 3)

    result["ratios"] = {
        "multitask_vs_plain_batch1": paired("batch1_multitask", "batch1_plain_session"),
        "multitask_graph_vs_plain_batch16_same_padding": paired(
            "batch16_multitask_single_one_run", "batch16_plain_session"
        ),
        "length_sorted_runs_vs_one_padded_run_batch16": paired(
            "batch16_multitask_single", "batch16_multitask_single_one_run"
        ),
        "multitask_mixed_vs_single_batch16": paired("batch16_multitask_mixed", "batch16_multitask_single"),
        "sessions_vs_multitask_mixed_batch16": paired("batch16_sessions_mixed", "batch16_multitask_mixed"),
        "sessions_noprepack_vs_prepack_batch1": paired("batch1_sessions_noprepack", "batch1_sessions"),
    }
    # Prefix sharing: 4 tasks on the same 8 texts, with and without the shared lowest layers.
    # Four distinct tasks, none with an adapter below layer 3 (sst: [3,4,5], late: [5], and copies).
    folders = task_folders(workdir, exports, 8)
    chosen = {n: folders[n] for n in ("sst", "late", "sst4", "late7")}
    result["multi_task_call"] = measure_prefix(chosen, threads, rounds, singles)
    for reg in (multi, per_task, per_task_np):
        reg.close()
    return result


def measure_prefix(folders: dict[str, Path], threads: int, rounds: int, singles: list[str]) -> dict[str, Any]:
    """One multi-task call (all ``folders`` on the same 8 texts), with and without prefix sharing."""
    from aa_deploy.serving.config import ServerConfig
    from aa_deploy.serving.engine import WorkItem, execute
    from aa_deploy.serving.registry import TaskRegistry

    regs = {}
    for sharing in (True, False):
        reg = TaskRegistry(ServerConfig(intra_op_threads=threads, prefix_sharing=sharing))
        for name, folder in folders.items():
            reg.load(name, str(folder))
        regs[sharing] = reg
    texts = singles[:8]
    samples: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for sharing, reg in regs.items():
            names = sorted(reg.view.tasks)
            entry = reg.view.get(names[0])
            item = WorkItem(entry.artifact.tokenizer.encode(texts), tuple(reg.view.get(n).target for n in names))
            samples[sharing].append(_time(lambda item=item: execute([item], 64), 1))
    any_name = next(iter(folders))
    out = {
        "tasks": len(folders),
        "texts": len(texts),
        "shared_layers": regs[True].view.get(any_name).target.runner.shared_layers,
        "ms_with_sharing": round(1000 * statistics.median(samples[True]), 2),
        "ms_without_sharing": round(1000 * statistics.median(samples[False]), 2),
    }
    out["speedup"] = round(out["ms_without_sharing"] / out["ms_with_sharing"], 3)
    for reg in regs.values():
        reg.close()
    return out


# ---------------------------------------------------------------------------------------------- HTTP
def start_server(folders: dict[str, Path], threads: int, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "aa_deploy.cli",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--max-batch",
        "16",
        "--max-delay-ms",
        "2",
        "--max-queue",
        "4096",
        "--token",
        "bench",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    for name, folder in folders.items():
        cmd += ["--task", f"{name}={folder}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not become ready")
        time.sleep(0.3)


async def load_run(
    url: str, concurrency: int, seconds: float, make_request, max_requests: int = 100_000
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients, each sends its next request when the previous returns.

    The clients speak HTTP/1.1 over raw keep-alive sockets: a full client library (httpx) costs
    1-3 ms of CPU per request, which on a 2-core machine would be taken from the server being measured.
    """
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal errors, sent
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                path, body = make_request(rng)
                payload = json.dumps(body).encode()
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n"
                ).encode()
                started = time.perf_counter()
                writer.write(head + payload)
                await writer.drain()
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return summarize(concurrency, latencies, errors, elapsed)


def summarize(concurrency: int, latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    latencies = sorted(latencies)
    n = len(latencies)
    return {
        "concurrency": concurrency,
        "requests": n,
        "errors": errors,
        "rps": round(n / elapsed, 1),
        "p50_ms": round(1000 * latencies[n // 2], 1) if n else None,
        "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 1) if n else None,
        "_latencies": latencies,
        "_elapsed": elapsed,
    }


class RawEngine:
    """The engine without HTTP, in this process, for the HTTP-vs-engine comparison (same tasks, texts
    and batch size as the server saw)."""

    def __init__(self, exports: dict[str, Path], threads: int) -> None:
        from aa_deploy.serving.config import ServerConfig
        from aa_deploy.serving.registry import TaskRegistry

        self.singles, self.pairs = load_texts()
        self.registry = TaskRegistry(ServerConfig(intra_op_threads=threads))
        for name in BASE_TASKS:
            self.registry.load(name, str(exports[name]))

    def rows_per_s(self, batch_rows: float, mixed: bool, repeat: int = 2) -> float:
        from aa_deploy.serving.engine import execute

        size = max(1, int(round(batch_rows)))
        names = list(BASE_TASKS) if mixed else ["sst"]
        batches = [
            _items(self.registry, names, self.singles, self.pairs, size, random.Random(i))
            for i in range(max(1, 48 // size))
        ]
        rows = size * len(batches)
        seconds = statistics.median([_time(lambda: [execute(b, 16) for b in batches], 1) for _ in range(repeat)])
        return rows / seconds

    def close(self) -> None:
        self.registry.close()


def measure_http(
    exports: dict[str, Path],
    threads: int,
    seconds: float,
    concurrencies: list[int],
    hot_source: Path,
    rounds: int,
    raw: RawEngine,
) -> dict[str, Any]:
    """Load runs against ``aa-deploy serve``: for each concurrency, ``rounds`` alternating slices of
    single- and mixed-task traffic; at the highest concurrency each slice is paired with a raw-engine
    measurement at the slice's mean batch size, so that HTTP/engine ratios compare like with like."""
    import httpx

    from aa_deploy.serving.ports import free_port

    singles, _ = load_texts()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server({n: exports[n] for n in BASE_TASKS}, threads, port)
    try:

        def single(rng: random.Random):
            return "/v1/tasks/sst/predict", {"texts": [rng.choice(singles)]}

        turn = itertools.count()

        def mixed(rng: random.Random):  # same texts as single(), tasks in turn
            return f"/v1/tasks/{BASE_TASKS[next(turn) % len(BASE_TASKS)]}/predict", {"texts": [rng.choice(singles)]}

        rows = []
        paired: dict[str, list[float]] = {"single": [], "mixed": [], "mixed_vs_single": []}
        asyncio.run(load_run(url, 4, 2.0, single))  # warm-up
        for concurrency in concurrencies:
            slices: dict[str, list[dict[str, Any]]] = {"single": [], "mixed": []}
            for _ in range(rounds):
                for traffic, fn in (("single", single), ("mixed", mixed)):
                    before = _batch_stats(url)
                    result = asyncio.run(load_run(url, concurrency, seconds / rounds, fn))
                    after = _batch_stats(url)
                    batches = after[0] - before[0]
                    result["mean_batch_rows"] = (after[1] - before[1]) / batches if batches else 1.0
                    slices[traffic].append(result)
                    if concurrency == concurrencies[-1]:
                        engine = raw.rows_per_s(result["mean_batch_rows"], mixed=traffic == "mixed")
                        paired[traffic].append(result["rps"] / engine)
                if concurrency == concurrencies[-1]:
                    paired["mixed_vs_single"].append(slices["mixed"][-1]["rps"] / slices["single"][-1]["rps"])
            for traffic, parts in slices.items():
                latencies = [x for p in parts for x in p["_latencies"]]
                summary = summarize(
                    concurrency, latencies, sum(p["errors"] for p in parts), sum(p["_elapsed"] for p in parts)
                )
                summary["mean_batch_rows"] = round(statistics.mean(p["mean_batch_rows"] for p in parts), 2)
                summary.pop("_latencies")
                summary.pop("_elapsed")
                rows.append({"traffic": traffic, **summary})
                print(
                    f"http {traffic:>6} c={concurrency:>2}: {summary['rps']:>7} req/s  p50 {summary['p50_ms']} ms  "
                    f"p99 {summary['p99_ms']} ms  batch {summary['mean_batch_rows']}  errors {summary['errors']}",
                    flush=True,
                )
        # Hot load / unload of a fifth task while the server runs.
        auth = {"Authorization": "Bearer bench"}
        loads = []
        for _ in range(3):
            started = time.perf_counter()
            r = httpx.put(f"{url}/v1/tasks/hot", json={"source": str(hot_source)}, headers=auth, timeout=300)
            loads.append(time.perf_counter() - started)
            assert r.status_code == 201, r.text
            started = time.perf_counter()
            assert httpx.delete(f"{url}/v1/tasks/hot", headers=auth, timeout=300).status_code == 200
            loads.append(-(time.perf_counter() - started))
        hot = {
            "load_s": round(statistics.median([x for x in loads if x > 0]), 3),
            "unload_s": round(statistics.median([-x for x in loads if x < 0]), 3),
        }
        print(f"hot-load {hot['load_s']} s, unload {hot['unload_s']} s (4 tasks already loaded)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    ratios = {k: round(statistics.median(v), 3) for k, v in paired.items() if v}
    return {"rows": rows, "hot_load": hot, "paired_ratios": ratios}


def _batch_stats(url: str) -> tuple[float, float]:
    import httpx

    count = total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("aa_batch_rows_count"):
            count = float(line.split()[-1])
        elif line.startswith("aa_batch_rows_sum"):
            total = float(line.split()[-1])
    return count, total


# ---------------------------------------------------------------------------------------------- report
def table(result: dict[str, Any]) -> str:
    lines = [
        "## Memory (RSS, MiB; fresh process each)",
        "",
        "| engine | tasks | RSS | RSS - imports |",
        "|---|---|---|---|",
    ]
    for row in result["memory"]:
        lines.append(
            f"| {row['engine']} | {row['tasks']} | {row['rss_mib']:.0f} | {row['rss_mib'] - row['baseline_mib']:.0f} |"
        )
    e = result["engine"]
    lines += ["", "## Engine (no HTTP), MiniLM, CPU", "", "| case | ms per batch | rows/s |", "|---|---|---|"]
    for name, v in e.items():
        if isinstance(v, dict) and "rows_per_s" in v:
            lines.append(f"| {name} | {v['ms_per_batch']} | {v['rows_per_s']} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in e["ratios"].items()]
    m = e["multi_task_call"]
    lines += [
        "",
        f"Multi-task call, {m['tasks']} tasks on the same {m['texts']} texts: "
        f"{m['ms_with_sharing']} ms with the lowest {m['shared_layers']} layers shared, {m['ms_without_sharing']} ms without "
        f"(x{m['speedup']}).",
    ]
    h = result["http"]
    lines += [
        "",
        "## HTTP server (aa-deploy serve, 1 text per request)",
        "",
        "| traffic | concurrency | req/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in h["rows"]:
        lines.append(
            f"| {row['traffic']} | {row['concurrency']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['mean_batch_rows']} | {row['errors']} |"
        )
    lines += ["", "| target | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result["targets"].items()]
    lines += [
        "",
        f"Hot-load of a task into a running server with 4 tasks: {h['hot_load']['load_s']} s "
        f"(unload {h['hot_load']['unload_s']} s).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/aa_serving_bench", help="exports are cached here")
    parser.add_argument("--seconds", type=float, default=7.5, help="HTTP load time per traffic kind and concurrency")
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of each engine measurement")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads (1: the 2-core machine also runs a training job)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer counts, shorter runs")
    parser.add_argument("--memory-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), workdir, args.threads)
        return 0
    if args.quick:
        args.seconds, args.rounds = 2.0, 2
    started = time.time()
    exports = build_exports(workdir)
    counts = [1, 4] if args.quick else [1, 4, 16]
    result: dict[str, Any] = {"machine": describe_machine(threads=args.threads), "texts": texts_source()}
    print(f"texts: {result['texts']}", flush=True)
    result["memory"] = measure_memory(workdir, args.threads, counts)
    result["engine"] = measure_engine(exports, args.threads, args.rounds, workdir)
    print(json.dumps(result["engine"]["ratios"]), json.dumps(result["engine"]["multi_task_call"]), flush=True)
    concurrencies = [1, 8] if args.quick else [1, 8, 32]
    # Hot-load a folder the server does not serve yet (a copy: the same folder would just be an alias).
    hot_source = task_folders(workdir, exports, len(BASE_TASKS) + 1)[f"{BASE_TASKS[0]}{len(BASE_TASKS)}"]
    raw = RawEngine(exports, args.threads)
    result["http"] = measure_http(
        exports, args.threads, args.seconds, concurrencies, hot_source, rounds=3 if not args.quick else 1, raw=raw
    )
    raw.close()
    top = concurrencies[-1]
    paired = result["http"]["paired_ratios"]
    result["targets"] = {
        f"http_vs_engine_single_c{top} (target >= 0.85)": paired["single"],
        f"http_vs_engine_mixed_c{top} (target >= 0.85)": paired["mixed"],
        f"http_mixed_vs_single_c{top} (target >= 0.9)": paired["mixed_vs_single"],
        "engine_mixed_vs_single_batch16 (target >= 0.9)": result["engine"]["ratios"][
            "multitask_mixed_vs_single_batch16"
        ],
    }
    result["machine"]["load_average_end"] = load_average()
    result["seconds"] = round(time.time() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {RESULTS} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
