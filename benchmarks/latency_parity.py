"""Never slower than the simplest alternative: four latency ratios, each measured within one run.

    python benchmarks/latency_parity.py [--workdir /tmp/aa_latency_parity] [--threads 1] [--rounds 5]
                                        [--requests 100] [--server-pairs 6] [--session-sets 6]
                                        [--parts http,graph,engine,int8]

1. ``http``: ``aa-deploy serve`` against the hand-rolled server of ``benchmarks/handrolled_server.py``
   (FastAPI + one ONNX Runtime session per export, inference in the handler) on the same exports, at
   concurrency 1 (one client, keep-alive): req/s and p50, single-text and pair tasks, ``/v1`` and the
   Open Inference Protocol, with 1 and with 4 tasks loaded;
2. ``graph``: the engine at batch 1 (``execute`` on one request of one task, 4 tasks loaded) against a
   plain ORT session of the task's own ``model.onnx``: the default (the task's own branch of the
   multi-task session), with own sessions (``single_task_sessions=4``), and the stacked graph that
   mixed batches run, forced for the same rows; and, as a control, the plain graph as the only branch
   of one ``If``: ONNX Runtime's own cost of running a graph as a branch;
3. ``engine``: HTTP throughput at concurrency 8 on mixed-task traffic against the raw engine (same
   process as the benchmark, no HTTP) on batches of the size the server formed;
4. ``int8``: an INT8 task graph (adapters INT8 too, and adapters float32) against its INT8 backbone (the
   store's bare backbone graph), batch 1 and 16 at sequence length 128 (fp32 alongside), in plain
   sessions and in sessions with the server's settings (``serving/sessions.py``), and how much faster
   those settings run the task graph.

Exports (built once in ``--workdir``): ``sentiment`` is a real run, ``aa-deploy train`` on the built-in
demo data (search recipe, 1 epoch) on all-MiniLM-L6-v2, exported in fp32, with ``--quantize int8`` and
with ``--quantize int8-backbone`` (the adapters left in float32);
``nli`` (pair task, rational B at layers 1 and 3), ``topic`` (standard recipe: ReLU adapters on all 6
layers) and ``late`` (layer 5 only) have random adapters on the same backbone. Texts: GLUE SST-2 / RTE
dev sentences when ``$AA_GLUE_DIR`` has them, built-in sentences otherwise.

The machine is shared: both sides of every ratio run in this one run, and each ratio is the median of
the per-round ratios (speed ratios: > 1 means ours is faster). Part 1 sends every input to both servers
in turn (the order rotating per input), so a slow moment of the host falls on both sides alike; the
other parts alternate rounds. Part 1 also restarts both servers ``--server-pairs`` times: two processes
of the same server differ by up to ~5 % for their whole life, and the one started second tends to be the
faster, so each pair of processes gets one vote (the median of its rounds), pairs alternate which server
starts first, each two pairs of opposite order are combined (geometric mean), and the ratio is the median
of those; a control row runs the hand-rolled server against a copy of itself to show the spread. Parts 2
and 4 likewise build ``--session-sets`` fresh sets of sessions (one vote per set); in one process the
sessions built last ran ~2 % faster, so part 2 alternates whether the engines or the plain session and
its control are built first and combines opposite sets like part 1's pairs (part 4 rotates its build
order). Beside wall time,
every part reports CPU time (the server process's CPU per request; the calling thread's CPU per model
call, which with one ORT thread is the model's own cost), which other jobs on the machine hardly change.
Writes
``benchmarks/results/latency_parity.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine_info import describe_machine, load_average  # noqa: E402

from aa_deploy.serving.ports import free_port  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "latency_parity.json"
FOUR = ("sentiment", "nli", "topic", "late")


# ---------------------------------------------------------------------------------------------- setup
def build_exports(workdir: Path) -> dict[str, Path]:
    """The exports of the module docstring, cached in ``workdir``."""
    quantized = {"sentiment": None, "sentiment-int8": "int8", "sentiment-int8-backbone": "int8-backbone"}
    exports = {name: workdir / "exports" / name for name in (*FOUR, *quantized)}
    if all(_is_current(exports[name], quantized.get(name)) for name in exports):
        return exports
    from aa_deploy.backbones import resolve_backbone_path
    from aa_deploy.contract.layout import WEIGHTS_NAME
    from aa_deploy.demo import DEMO_DATA
    from aa_deploy.export import export_run

    sys.path.insert(0, str(REPO / "tests"))
    from serving_helpers import RTE, SST, TOPIC, make_run_folder

    store = workdir / "store"
    run = workdir / "runs" / "sentiment"
    if not (run / WEIGHTS_NAME).is_file():
        subprocess.run(
            [sys.executable, "-m", "aa_deploy.cli", "train", "--task", str(DEMO_DATA / "sentiment_train.csv"),
             "--test-file", str(DEMO_DATA / "sentiment_test.csv"), "--recipe", "search", "--epochs", "1",
             "--batch-size", "16", "--learning-rate", "1e-3", "--output", str(run), "--overwrite", "--no-progress"],
            check=True,
        )  # fmt: skip
    for name, quantize in quantized.items():
        if not _is_current(exports[name], quantize):
            export_run(run, exports[name], backbone_store=store, quantize=quantize, overwrite=True)
    backbone = Path(resolve_backbone_path(None))
    specs = {"nli": (RTE, "search", "B", [1, 3], 2), "topic": (TOPIC, "standard", "A", None, 3),
             "late": (SST, "search", "A", [5], 4)}  # fmt: skip
    for name, (task, recipe, version, layers, seed) in specs.items():
        if not (exports[name] / "aa_export.json").is_file():
            folder = make_run_folder(workdir / "runs" / name, backbone, task, recipe, version, layers, seed, 128)
            export_run(folder, exports[name], backbone_store=store, overwrite=True)
    return exports


def _is_current(folder: Path, quantize: str | None) -> bool:
    """Whether ``folder`` holds an export with this quantisation (INT8 exports made before ``int8`` also
    quantised the adapters do not record ``graph.quantization.adapters`` and are rebuilt)."""
    path = folder / "aa_export.json"
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    recorded = (manifest.get("graph") or {}).get("quantization") or {}
    return manifest.get("quantization") == quantize and (quantize is None or "adapters" in recorded)


def is_pair(folder: Path) -> bool:
    return bool(json.loads((folder / "aa_export.json").read_text())["task"]["is_pair"])


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready")


def start_ours(tasks: dict[str, Path], threads: int, extra: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "aa_deploy.cli", "serve", "--port", str(port), "--log-level", "warning",
           "--threads", str(threads), *(extra or [])]  # fmt: skip
    for name, folder in tasks.items():
        cmd += ["--task", f"{name}={folder}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_ready(port, proc)
    return proc, port


def start_handrolled(tasks: dict[str, Path], threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    exports = ",".join(f"{name}={folder}" for name, folder in tasks.items())
    cmd = [sys.executable, str(REPO / "benchmarks" / "handrolled_server.py"), "--export", exports,
           "--port", str(port), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_ready(port, proc)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mib(proc: subprocess.Popen) -> float:
    import psutil

    return round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)


# ---------------------------------------------------------------------------------------------- 1. http
def request_body(endpoint: str, text: str, pair: str | None) -> tuple[str, bytes]:
    if endpoint == "v1":
        body: dict[str, Any] = {"texts": [text]}
        if pair is not None:
            body["text_pairs"] = [pair]
        return "/v1/tasks/{task}/predict", json.dumps(body).encode()
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]
    if pair is not None:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [1], "data": [pair]})
    return "/v2/models/{task}/infer", json.dumps({"inputs": inputs}).encode()


def sequential(port: int, task: str, endpoint: str, inputs: list[tuple[str, str | None]]) -> list[float]:
    """One client, one keep-alive connection, one request after the other; latencies in seconds."""
    return take_turns({"only": port}, task, endpoint, inputs)["only"]


def take_turns(
    ports: dict[str, int], task: str, endpoint: str, inputs: list[tuple[str, str | None]]
) -> dict[str, list[float]]:
    """One keep-alive connection per server; each input goes to every server in turn, the order rotating
    per input, so both sides meet the same moments of a shared machine (a slow second on the host lands
    on both, not on whichever side's round it fell in). Latencies in seconds, per server."""
    conns = {side: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for side, port in ports.items()}
    latencies: dict[str, list[float]] = {side: [] for side in ports}
    sides = list(ports)
    for i, (text, pair) in enumerate(inputs):
        path, body = request_body(endpoint, text, pair)
        url = path.format(task=task)
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
            started = time.perf_counter()
            conns[side].request("POST", url, body, {"Content-Type": "application/json"})
            response = conns[side].getresponse()
            response.read()
            latencies[side].append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{url} on {side} answered {response.status}")
    for conn in conns.values():
        conn.close()
    return latencies


# The A/A control of part 1 (see the module docstring): the hand-rolled server against a second copy of
# itself, to show how far apart two identical servers land.
CONTROL = "control: hand-rolled vs itself"


def measure_http(
    exports: dict[str, Path], threads: int, rounds: int, requests: int, server_pairs: int
) -> list[dict[str, Any]]:
    from serving_bench import load_texts

    singles, pairs = load_texts()
    # name -> (tasks loaded, extra `aa-deploy serve` options). "own sessions": the tasks also keep their own
    # session (--single-task-sessions), a prepacked backbone copy each, for plain-session speed at batch 1.
    configs: dict[str, tuple[list[str], list[str] | None]] = {
        "1 task (single)": (["sentiment"], []),
        "1 task (pair)": (["nli"], []),
        "4 tasks": (list(FOUR), []),
        "4 tasks, own sessions": (list(FOUR), ["--single-task-sessions", "4"]),
        CONTROL: (["sentiment"], None),  # None: the "ours" side is a second hand-rolled server
    }
    rows = []
    for config, (names, extra) in configs.items():
        tasks = {n: exports[n] for n in names}
        cases = [
            (task, endpoint)
            for task in names
            if task in ("sentiment", "nli")
            for endpoint in (("v1",) if extra is None else ("v1", "oip"))
        ]
        samples: dict[tuple, dict[str, list[list[float]]]] = {c: {"ours": [], "handrolled": []} for c in cases}
        cpu: dict[tuple, dict[str, list[float]]] = {c: {"ours": [], "handrolled": []} for c in cases}
        pair_of_round: dict[tuple, list[int]] = {c: [] for c in cases}
        memory: dict[str, list[float]] = {"ours_rss_mib": [], "handrolled_rss_mib": []}
        for pair_index in range(server_pairs):
            order = ["ours", "handrolled"] if pair_index % 2 == 0 else ["handrolled", "ours"]
            servers: dict[str, tuple[subprocess.Popen, int]] = {}
            try:
                for side in order:
                    if side == "ours" and extra is not None:
                        servers[side] = start_ours(tasks, threads, extra)
                    else:
                        servers[side] = start_handrolled(tasks, threads)
                memory["ours_rss_mib"].append(rss_mib(servers["ours"][0]))
                memory["handrolled_rss_mib"].append(rss_mib(servers["handrolled"][0]))
                ports = {side: port for side, (_, port) in servers.items()}
                procs = {side: proc for side, (proc, _) in servers.items()}
                for task, endpoint in cases:
                    pair = is_pair(exports[task])
                    rng = random.Random(1000 * pair_index + len(task) + len(endpoint))
                    warm = [(singles[0], pairs[0][1] if pair else None)] * 20
                    for port in ports.values():
                        sequential(port, task, endpoint, warm)
                    for _ in range(rounds):
                        chosen = [rng.choice(pairs) if pair else (rng.choice(singles), None) for _ in range(requests)]
                        before = {side: process_cpu_s(proc) for side, proc in procs.items()}
                        latencies = take_turns(ports, task, endpoint, chosen)
                        for side, proc in procs.items():
                            samples[task, endpoint][side].append(latencies[side])
                            cpu[task, endpoint][side].append(1000 * (process_cpu_s(proc) - before[side]) / len(chosen))
                        pair_of_round[task, endpoint].append(pair_index)
            finally:
                for proc, _ in servers.values():
                    stop(proc)
        memory_row = {k: round(statistics.median(v), 1) for k, v in memory.items()}
        for case in cases:
            rows.append(http_row(config, *case, samples[case], cpu[case], pair_of_round[case], memory_row))
            print_http_row(rows[-1])
    return rows


def process_cpu_s(proc: subprocess.Popen) -> float:
    """CPU seconds the server process has used (all its threads): unlike wall time, hardly changed by
    other jobs on a shared machine."""
    import psutil

    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def balanced(votes: list[float], digits: int = 3) -> float:
    """The median over couples of votes taken in opposite orders (the geometric mean of the two).

    Order biases both timed parts of this host: the server started second ran up to ~4 % faster for its
    whole life (part 1, either side), and in one process the sessions built last ran ~2 % faster than
    those built before them (part 2: a plain session built after the engine's sessions against one
    built before them, in alternating sets). So consecutive votes are taken in opposite orders and
    combined before the median."""
    couples = [math.sqrt(a * b) for a, b in zip(votes[0::2], votes[1::2], strict=True)]
    return round(statistics.median(couples), digits)


def http_row(
    config: str, task: str, endpoint: str, samples: dict[str, list[list[float]]], cpu: dict[str, list[float]],
    pair_of_round: list[int], memory: dict,
) -> dict:  # fmt: skip
    """Ratios per server pair (the median of its rounds), so each pair of fresh processes counts once
    however its rounds went; then couples of pairs started in opposite orders, and the median of those."""
    rps = {side: [len(r) / sum(r) for r in rounds] for side, rounds in samples.items()}
    p50 = {side: [statistics.median(r) * 1000 for r in rounds] for side, rounds in samples.items()}

    def per_pair(ratios: list[float]) -> list[float]:
        by_pair: dict[int, list[float]] = {}
        for pair_index, ratio in zip(pair_of_round, ratios, strict=True):
            by_pair.setdefault(pair_index, []).append(ratio)
        return [round(statistics.median(v), 3) for _, v in sorted(by_pair.items())]

    # > 1: ours answers more requests per second / has the lower p50 / uses less CPU per request.
    rps_pairs = per_pair([o / h for o, h in zip(rps["ours"], rps["handrolled"], strict=True)])
    p50_pairs = per_pair([h / o for o, h in zip(p50["ours"], p50["handrolled"], strict=True)])
    cpu_pairs = per_pair([h / o for o, h in zip(cpu["ours"], cpu["handrolled"], strict=True)])
    return {
        "config": config,
        "task": task,
        "endpoint": endpoint,
        "rps": {side: round(statistics.median(v), 1) for side, v in rps.items()},
        "p50_ms": {side: round(statistics.median(v), 2) for side, v in p50.items()},
        "rps_ratio": balanced(rps_pairs),
        "p50_ratio": balanced(p50_pairs),
        # Server CPU per request (ms), all threads.
        "cpu_ms_per_request": {side: round(statistics.median(v), 3) for side, v in cpu.items()},
        "cpu_ratio": balanced(cpu_pairs),
        "rps_ratio_per_pair": rps_pairs,
        "cpu_ratio_per_pair": cpu_pairs,
        "server_pairs": len(rps_pairs),
        "rounds": len(samples["ours"]),
        "requests_per_round": len(samples["ours"][0]),
        **memory,
    }


def print_http_row(row: dict) -> None:
    print(
        f"http c=1 {row['config']:<30} {row['task']:<9} {row['endpoint']:<3}  ours {row['rps']['ours']:>6} req/s "
        f"p50 {row['p50_ms']['ours']:>6} ms | hand-rolled {row['rps']['handrolled']:>6} req/s "
        f"p50 {row['p50_ms']['handrolled']:>6} ms | req/s ratio {row['rps_ratio']}, p50 ratio {row['p50_ratio']}, "
        f"CPU/request {row['cpu_ms_per_request']} ratio {row['cpu_ratio']}; req/s ratio per server pair "
        f"{row['rps_ratio_per_pair']}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------- 2. graph
def measure_graph(exports: dict[str, Path], threads: int, rounds: int, session_sets: int) -> dict[str, Any]:
    """Each ratio on ``session_sets`` fresh sets of the engines and sessions (one vote per set, the median
    of its rounds; the ratio is the median of the votes): see :func:`measure_int8` for why."""
    from serving_bench import load_texts

    singles, _ = load_texts()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    votes: dict[str, dict[str, list[float]]] = {"speed_vs_plain": {}, "cpu_speed_vs_plain": {}}
    for set_index in range(session_sets):
        with graph_cases(exports, threads, singles, engines_first=set_index % 2 == 0) as (cases, requests):
            set_wall, set_cpu = interleaved(cases, rounds * 4)
        for k in cases:
            wall.setdefault(k, []).extend(set_wall[k])
            cpu.setdefault(k, []).extend(set_cpu[k])
        for k in list(cases)[1:]:
            # plain time / engine time: > 1 means the engine is faster.
            votes["speed_vs_plain"].setdefault(k, []).append(paired(set_wall, "plain session", k))
            votes["cpu_speed_vs_plain"].setdefault(k, []).append(paired(set_cpu, "plain session", k))
    out: dict[str, Any] = {
        "session_sets": session_sets,
        "ms_per_request": {k: round(1000 * statistics.median(v) / requests, 3) for k, v in wall.items()},
        "cpu_ms_per_request": {k: round(1000 * statistics.median(v) / requests, 3) for k, v in cpu.items()},
        **{key: {k: balanced(v, 4) for k, v in per.items()} for key, per in votes.items()},
        "speed_vs_plain_per_set": votes["speed_vs_plain"],
        "order": "sets alternate: engines built first (even sets), the plain session and the control first (odd)",
    }
    print(f"graph batch 1: {out}", flush=True)
    return out


@contextlib.contextmanager
def graph_cases(
    exports: dict[str, Path], threads: int, singles: list[str], *, engines_first: bool
) -> Iterator[tuple[dict[str, Callable[[], None]], int]]:
    """Fresh engines and sessions for part 2: ``{case: one call of 16 single-text requests}`` (the plain
    session first, the baseline) and the number of requests per call. ``engines_first``: build the two
    engines before the plain session and the ``If`` control, else after them (see :func:`balanced`).
    Closes the engines on exit."""
    import numpy as np

    from aa_deploy.serving.config import ServerConfig
    from aa_deploy.serving.engine import WorkItem, execute, pad_feeds
    from aa_deploy.serving.registry import TaskRegistry

    registries = {
        "engine (default)": TaskRegistry(ServerConfig(intra_op_threads=threads)),
        "engine, own sessions": TaskRegistry(ServerConfig(intra_op_threads=threads, single_task_sessions=len(FOUR))),
    }
    try:

        def load_engines() -> None:
            for registry in registries.values():
                for name in FOUR:
                    registry.load(name, str(exports[name]))

        if engines_first:
            load_engines()
        plain = plain_session(exports["sentiment"] / "model.onnx", threads)
        # Control: the same plain graph as the only branch of one top-level ``If`` (weights at the top
        # level, built as the engine builds its branches). Its gap to the plain session is ONNX Runtime's
        # cost of running a graph as an ``If`` branch, the floor for the engine's own-branch route.
        in_if = if_wrapped_session(exports["sentiment"] / "model.onnx", threads)
        if not engines_first:
            load_engines()
        plain_inputs = {i.name for i in plain.get_inputs()}
        entry = registries["engine (default)"].view.get("sentiment")
        encoded = [entry.artifact.tokenizer.encode([t]) for t in random.Random(1).sample(singles, 16)]

        def plain_run() -> None:
            for enc in encoded:
                feeds = pad_feeds([enc], 0)
                plain.run(["logits"], {k: v for k, v in feeds.items() if k in plain_inputs})

        def engine_run(registry: TaskRegistry) -> Callable[[], None]:
            target = registry.view.get("sentiment").target

            def run() -> None:
                for enc in encoded:
                    execute([WorkItem(enc, (target,))], 16)

            return run

        in_if_inputs = {i.name for i in in_if.get_inputs()}

        def in_if_run() -> None:
            for enc in encoded:
                feeds = {k: v for k, v in pad_feeds([enc], 0).items() if k in in_if_inputs}
                in_if.run(["logits"], {**feeds, "aa_chosen": np.array(True)})

        def stacked_run() -> None:
            """The stacked graph, which mixed batches run, forced for this one task's rows."""
            target = registries["engine (default)"].view.get("sentiment").target
            for enc in encoded:
                feeds = pad_feeds([enc], 0)
                rows = np.zeros(1, dtype=np.int64)
                target.runner.run(feeds, rows, np.full(1, target.slot, dtype=np.int64), 16, stacked=True)

        yield (
            {
                "plain session": plain_run,
                **{k: engine_run(r) for k, r in registries.items()},
                "stacked graph": stacked_run,
                "plain graph in one If": in_if_run,
            },
            len(encoded),
        )
    finally:
        for registry in registries.values():
            registry.close()


def interleaved(
    cases: dict[str, Callable[[], None]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds and CPU seconds of this thread per call of every case, one timed call of each per round
    (the order alternating). With one ORT thread the session runs in the calling thread, so the CPU time
    is the model's own cost, hardly changed by other jobs on the machine.

    Each timed call follows an untimed call of the same case: the cases are different sessions with
    their own (prepacked) weights, and a call right after another session's runs on a cold cache. Cases
    that share a session (the engine's own branch and its stacked graph) were warmed by each other when
    adjacent and the others were not, which made the same graph look 3-4 % slower in one position than
    in another. A server answering requests one after another runs warm; that is what is compared."""
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cases[name]()  # warm: this case's weights into the caches
            started, started_cpu = time.perf_counter(), time.thread_time()
            cases[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.thread_time() - started_cpu)
    return wall, cpu


def if_wrapped_session(path: Path, threads: int) -> Any:
    """A session of the graph at ``path`` run as the ``then`` branch of one ``If`` on the boolean input
    ``aa_chosen`` (an empty ``[0, labels]`` tensor otherwise): the graph's tensors stay top-level
    initializers, and the branch is built by the engine's own helper, so the two differ only in the ``If``."""
    import onnx
    from onnx import TensorProto, helper

    from aa_deploy.serving.multitask import _branch_graph

    model = onnx.load(str(path), load_external_data=False)  # the backbone tensors stay in its data file
    graph = model.graph
    (output,) = [o.name for o in graph.output]
    labels = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    branch = _branch_graph("aa_plain", list(graph.node), {}, output)
    empty = helper.make_tensor("aa_empty", TensorProto.FLOAT, [0, labels], [])
    nothing = helper.make_graph(
        [helper.make_node("Identity", ["aa_empty"], ["aa_none"])], "aa_none", [],
        [helper.make_tensor_value_info("aa_none", TensorProto.FLOAT, None)],
    )  # fmt: skip
    wrapped = helper.make_graph(
        [helper.make_node("If", ["aa_chosen"], [output], then_branch=branch, else_branch=nothing)],
        "aa_if_control",
        [*graph.input, helper.make_tensor_value_info("aa_chosen", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [*graph.initializer, empty],
    )
    proto = helper.make_model(wrapped, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return plain_session(proto.SerializeToString(), threads, external_folder=path.parent)


def paired(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator/denominator, each pair measured back to back."""
    return round(statistics.median(a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)), 4)


# ---------------------------------------------------------------------------------------------- 3. engine
def measure_http_vs_engine(
    exports: dict[str, Path], threads: int, rounds: int, seconds: float, concurrency: int = 8
) -> dict[str, Any]:
    """HTTP mixed-task traffic at ``concurrency`` against the raw engine on batches of the server's mean size."""
    from serving_bench import _batch_stats, load_run, load_texts

    from aa_deploy.serving.config import ServerConfig
    from aa_deploy.serving.engine import WorkItem, execute
    from aa_deploy.serving.registry import TaskRegistry

    singles, pairs = load_texts()
    tasks = {n: exports[n] for n in FOUR}
    pair_task = {n: is_pair(f) for n, f in tasks.items()}
    turn = itertools.count()

    def mixed(rng: random.Random) -> tuple[str, dict[str, Any]]:
        name = FOUR[next(turn) % len(FOUR)]
        if pair_task[name]:
            a, b = rng.choice(pairs)
            return f"/v1/tasks/{name}/predict", {"texts": [a], "text_pairs": [b]}
        return f"/v1/tasks/{name}/predict", {"texts": [rng.choice(singles)]}

    registry = TaskRegistry(ServerConfig(intra_op_threads=threads))
    for name, folder in tasks.items():
        registry.load(name, str(folder))

    def engine_rows_per_s(size: int, seed: int) -> float:
        rng = random.Random(seed)
        batches = []
        for _ in range(max(2, 96 // size)):
            batch = []
            for _ in range(size):
                name = FOUR[next(turn) % len(FOUR)]
                entry = registry.view.get(name)
                if pair_task[name]:
                    a, b = rng.choice(pairs)
                    enc = entry.artifact.tokenizer.encode([a], [b])
                else:
                    enc = entry.artifact.tokenizer.encode([rng.choice(singles)])
                batch.append(WorkItem(enc, (entry.target,)))
            batches.append(batch)
        started, started_cpu = time.perf_counter(), time.thread_time()
        for batch in batches:
            execute(batch, 16)
        engine_cpu.append((time.thread_time() - started_cpu) / (size * len(batches)))
        return size * len(batches) / (time.perf_counter() - started)

    engine_cpu: list[float] = []
    proc, port = start_ours(tasks, threads)
    url = f"http://127.0.0.1:{port}"
    ratios, cpu_ratios, slices = [], [], []
    try:
        asyncio.run(load_run(url, concurrency, 2.0, mixed))  # warm-up
        engine_rows_per_s(4, 0)
        for r in range(rounds):
            before = _batch_stats(url)
            cpu_before = process_cpu_s(proc)
            result = asyncio.run(load_run(url, concurrency, seconds, mixed))
            server_cpu = (process_cpu_s(proc) - cpu_before) / max(1, result["requests"])
            after = _batch_stats(url)
            batches = after[0] - before[0]
            mean_rows = (after[1] - before[1]) / batches if batches else 1.0
            engine = engine_rows_per_s(max(1, int(round(mean_rows))), r)
            ratios.append(result["rps"] / engine)
            cpu_ratios.append(engine_cpu[-1] / server_cpu)
            slices.append({"http_rps": result["rps"], "p50_ms": result["p50_ms"], "mean_batch_rows": round(mean_rows, 2),
                           "engine_rows_per_s": round(engine, 1), "errors": result["errors"],
                           "server_cpu_ms_per_request": round(1000 * server_cpu, 3),
                           "engine_cpu_ms_per_row": round(1000 * engine_cpu[-1], 3)})  # fmt: skip
            print(f"http vs engine c={concurrency} round {r}: {slices[-1]}", flush=True)
    finally:
        stop(proc)
        registry.close()
    return {"concurrency": concurrency, "traffic": "mixed, 4 tasks", "slices": slices,
            "http_vs_engine": round(statistics.median(ratios), 3),
            # engine CPU per row / server CPU per request (all threads, HTTP included): the share of the
            # server's CPU that goes into the model.
            "cpu_http_vs_engine": round(statistics.median(cpu_ratios), 3)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- 4. int8
def measure_int8(
    exports: dict[str, Path], workdir: Path, threads: int, rounds: int, session_sets: int, seq: int = 128
) -> dict[str, Any]:
    """Every ratio on ``session_sets`` fresh sets of the four sessions: like two server processes, two
    sessions of the same graph in one process differ by 1-10 % for their whole life (measured A/A on this
    host), so each set gets one vote (the median of its rounds) and the ratio is the median of the votes."""
    import numpy as np
    from serving_bench import load_texts

    from aa_deploy.serving.tokenization import TaskTokenizer

    def backbone_graph(folder: Path) -> Path:
        manifest = json.loads((folder / "aa_export.json").read_text())
        return workdir / "store" / "objects" / manifest["backbone_data"]["store_object"] / "backbone.onnx"

    plain_graphs = {
        "task-fp32": exports["sentiment"] / "model.onnx",
        "backbone-fp32": backbone_graph(exports["sentiment"]),
        "task-int8": exports["sentiment-int8"] / "model.onnx",
        "task-int8-backbone": exports["sentiment-int8-backbone"] / "model.onnx",
        "backbone-int8": backbone_graph(exports["sentiment-int8"]),
    }
    # Each ratio's numerator and denominator: ``--quantize int8`` (adapters INT8 too) and ``int8-backbone``
    # (adapters float32) against the same INT8 backbone, fp32 against the fp32 backbone.
    ratios = {"int8": ("task-int8", "backbone-int8"), "int8-backbone": ("task-int8-backbone", "backbone-int8"),
              "fp32": ("task-fp32", "backbone-fp32")}  # fmt: skip
    # The same four graphs in sessions with the server's settings (serving/sessions.py: on CPU, some ORT
    # fusions off), so that the ratios hold for what the server runs, and the settings' own gain shows.
    graphs = {**plain_graphs, **{f"{k}, server": v for k, v in plain_graphs.items()}}
    manifest = json.loads((exports["sentiment"] / "aa_export.json").read_text())
    tokenizer = TaskTokenizer(exports["sentiment"] / "tokenizer.json", max_length=seq, is_pair=False)
    singles, _ = load_texts()
    feeds_of: dict[int, dict[str, Any]] = {}
    for batch in (1, 16):
        enc = tokenizer.encode([" ".join(singles[i : i + 12]) for i in range(batch)])
        ids = np.zeros((batch, seq), dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        for i, row in enumerate(enc.ids):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds_of[batch] = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    wall: dict[int, dict[str, list[float]]] = {b: {k: [] for k in graphs} for b in feeds_of}
    cpu: dict[int, dict[str, list[float]]] = {b: {k: [] for k in graphs} for b in feeds_of}
    votes: dict[int, dict[str, list[float]]] = {b: {} for b in feeds_of}
    for set_index in range(session_sets):
        names = list(graphs)[set_index % len(graphs) :] + list(graphs)[: set_index % len(graphs)]
        sessions = {
            name: server_session(graphs[name], threads)
            if name.endswith(", server")
            else plain_session(graphs[name], threads)
            for name in names
        }
        for batch, feeds in feeds_of.items():
            calls = {k: session_call(sessions[k], feeds) for k in graphs}
            set_wall, set_cpu = interleaved(calls, max(4, rounds * (4 if batch == 1 else 1)))
            for k in graphs:
                wall[batch][k] += set_wall[k]
                cpu[batch][k] += set_cpu[k]
            for precision, (task, backbone) in ratios.items():
                for kind, samples in (("", set_wall), ("cpu_", set_cpu)):
                    for suffix, side in (("", ""), ("_server", ", server")):
                        ratio = paired(samples, f"{task}{side}", f"{backbone}{side}")
                        votes[batch].setdefault(f"{kind}task_vs_backbone_{precision}{suffix}", []).append(ratio)
                    # plain time / server-settings time of the task graph: > 1, the server's settings are faster
                    gain = paired(samples, task, f"{task}, server")
                    votes[batch].setdefault(f"{kind}server_settings_speedup_{precision}", []).append(gain)
        del sessions
    out: dict[str, Any] = {"kept_layers": manifest["kept_layers"], "seq": seq, "session_sets": session_sets}
    out["batches"] = {}
    for batch in feeds_of:
        row: dict[str, Any] = {
            "median_ms": {k: round(1000 * statistics.median(v), 3) for k, v in wall[batch].items()},
            "cpu_median_ms": {k: round(1000 * statistics.median(v), 3) for k, v in cpu[batch].items()},
        }
        for key, per_set in votes[batch].items():
            row[key] = round(statistics.median(per_set), 4)
            row[key + "_per_set"] = per_set
        out["batches"][str(batch)] = row
        print(f"int8 batch {batch}: {row}", flush=True)
    return out


def plain_session(source: Path | bytes, threads: int, external_folder: Path | None = None) -> Any:
    """An ORT session as a user would build it (CPU, ``threads`` intra-op threads, sequential), the
    baseline every engine ratio is taken against."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if external_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    return ort.InferenceSession(
        source if isinstance(source, bytes) else str(source), options, providers=["CPUExecutionProvider"]
    )


def server_session(path: Path, threads: int) -> Any:
    """A session of ``path`` built as the server builds its sessions (its ORT settings, CPU)."""
    from aa_deploy.serving.sessions import SessionSettings, create_session

    settings = SessionSettings(intra_op_threads=threads, providers=("CPUExecutionProvider",))
    return create_session(None, settings, model_path=str(path))


def session_call(session: Any, feeds: dict[str, Any]) -> Callable[[], None]:
    """One run of ``session`` on the inputs of ``feeds`` it declares."""
    wanted = {i.name for i in session.get_inputs()}
    chosen = {k: v for k, v in feeds.items() if k in wanted}
    return lambda: session.run(None, chosen)


# ---------------------------------------------------------------------------------------------- main
def print_table(report: dict[str, Any]) -> None:
    print(f"\nthreads={report['threads']}, load average at start {report['machine']['load_average_start']}, "
          f"at end {report['machine']['load_average_end']} (2-core machine, shared)")  # fmt: skip
    if "http" in report:
        print("\n1. aa-deploy serve vs hand-rolled FastAPI + ORT, concurrency 1 (ratios > 1: ours better)")
        print(f"{'config':<30} {'task':<9} {'api':<4} {'ours req/s':>10} {'hr req/s':>9} {'ours p50':>9} "
              f"{'hr p50':>8} {'req/s ratio':>11} {'p50 ratio':>9} {'ours CPU':>9} {'hr CPU':>7} {'CPU ratio':>9}")  # fmt: skip
        for row in report["http"]:
            print(f"{row['config']:<30} {row['task']:<9} {row['endpoint']:<4} {row['rps']['ours']:>10} "
                  f"{row['rps']['handrolled']:>9} {row['p50_ms']['ours']:>9} {row['p50_ms']['handrolled']:>8} "
                  f"{row['rps_ratio']:>11} {row['p50_ratio']:>9} {row['cpu_ms_per_request']['ours']:>9} "
                  f"{row['cpu_ms_per_request']['handrolled']:>7} {row['cpu_ratio']:>9}")  # fmt: skip
        print("(p50 in ms; CPU: server CPU ms per request, all threads; ratios: per fresh pair of server processes")
        print(" the median of its rounds; pairs 2k (ours started first) and 2k+1 (second) combined by geometric mean;")
        print(" the median over those couples. The control row is the hand-rolled server against a copy of itself)")
        for row in report["http"]:
            print(
                f"   {row['config']:<30} {row['task']:<9} {row['endpoint']:<4} req/s ratio per pair {row['rps_ratio_per_pair']}"
            )
    if "graph" in report:
        print("\n2. engine at batch 1 vs a plain session of the task's model.onnx (speed ratio, > 1: faster)")
        g = report["graph"]
        for k, v in g["speed_vs_plain"].items():
            print(
                f"   {k:<24} wall {v} ({g['ms_per_request'][k]} vs {g['ms_per_request']['plain session']} ms), "
                f"CPU {g['cpu_speed_vs_plain'][k]} ({g['cpu_ms_per_request'][k]} vs {g['cpu_ms_per_request']['plain session']} ms)"
            )
        for k, v in g["speed_vs_plain_per_set"].items():
            print(f"   {k:<24} wall ratio per session set {v}")
    if "engine" in report:
        e = report["engine"]
        print(
            f"\n3. HTTP vs raw engine, {e['traffic']}, concurrency {e['concurrency']}: throughput {e['http_vs_engine']}, "
            f"CPU per row {e['cpu_http_vs_engine']}"
        )
    if "int8" in report:
        print(
            f"\n4. task / backbone latency (plain sessions, seq {report['int8']['seq']}, kept layers {report['int8']['kept_layers']})"
        )
        for batch, row in report["int8"]["batches"].items():
            print(
                f"   batch {batch:>2}: wall int8 {row['task_vs_backbone_int8']}, fp32 {row['task_vs_backbone_fp32']}; "
                f"CPU int8 {row['cpu_task_vs_backbone_int8']}, fp32 {row['cpu_task_vs_backbone_fp32']}  {row['cpu_median_ms']}"
            )
            print(f"            wall int8 per session set {row['task_vs_backbone_int8_per_set']}")
            print(
                f"            adapters float32 (--quantize int8-backbone): wall {row['task_vs_backbone_int8-backbone']}, "
                f"CPU {row['cpu_task_vs_backbone_int8-backbone']}, with the server's settings "
                f"{row['task_vs_backbone_int8-backbone_server']}"
            )
            print(
                f"            with the server's session settings: wall int8 {row['task_vs_backbone_int8_server']}, "
                f"fp32 {row['task_vs_backbone_fp32_server']}; the settings' speed-up of the task graph: "
                f"int8 {row['server_settings_speedup_int8']}, fp32 {row['server_settings_speedup_fp32']}"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/aa_latency_parity"))
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, both servers (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison (default 5)")
    p.add_argument("--requests", type=int, default=100, help="sequential requests per round and side (default 100)")
    p.add_argument(
        "--server-pairs",
        type=int,
        default=6,
        help="part 1: fresh pairs of server processes per comparison, an even number (default 6)",
    )
    p.add_argument(
        "--session-sets",
        type=int,
        default=6,
        help="parts 2 and 4: fresh sets of sessions, an even number (default 6)",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per HTTP slice of part 3 (default 4)")
    p.add_argument("--parts", default="http,graph,engine,int8")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.server_pairs < 2 or args.server_pairs % 2:
        p.error("--server-pairs must be an even number >= 2: half the pairs start our server first, half second")
    if args.session_sets < 2 or args.session_sets % 2:
        p.error("--session-sets must be an even number >= 2: half the sets build the engines first, half last")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    exports = build_exports(args.workdir)
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {
        "command": "python benchmarks/latency_parity.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "rounds": args.rounds,
        "machine": describe_machine(),
    }
    if "http" in parts:
        report["http"] = measure_http(exports, args.threads, args.rounds, args.requests, args.server_pairs)
    if "graph" in parts:
        report["graph"] = measure_graph(exports, args.threads, args.rounds, args.session_sets)
    if "engine" in parts:
        report["engine"] = measure_http_vs_engine(exports, args.threads, args.rounds, args.seconds)
    if "int8" in parts:
        report["int8"] = measure_int8(exports, args.workdir, args.threads, args.rounds, args.session_sets)
    report["machine"]["load_average_end"] = load_average()
    from aa_deploy.fileio import atomic_write_text

    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
