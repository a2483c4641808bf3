"""Side by side: ``aa-deploy serve`` against a hand-rolled server and Infinity, same tasks, same load.

    make peers-env                       # once: Infinity in its own environment (.venv-infinity)
    python benchmarks/peers.py [--quick] [--tasks 1,4,16] [--concurrency 1,16] [--threads 2]
                               [--servers ours,handrolled,infinity] [--exports DIR ...]
                               [--standalone-exports DIR ...] [--workdir /tmp/aa_peers]

Prints markdown tables and writes benchmarks/results/peers.json.

Servers (one at a time, each a subprocess on 127.0.0.1, RSS summed over its whole process tree):

- ``ours``: ``aa-deploy serve`` with its defaults (multi-task graph, dynamic batching across tasks) on
  **shared** exports: the backbone's weights are loaded once for all tasks.
- ``handrolled``: benchmarks/handrolled_server.py, FastAPI + one ONNX Runtime session per task, the
  session run in the (async) request handler: no batching, one request at a time. What serving the
  exports by hand looks like. Takes any export folder (each session loads the backbone's weights
  again); given the standalone exports.
- ``infinity``: Infinity (``infinity-emb[server,optimum]==0.0.78``, ``make peers-env``), ``v2`` with
  ``--engine optimum``: its ``/classify`` route runs Optimum's ``ORTModelForSequenceClassification``
  in a transformers ``text-classification`` pipeline, with Infinity's own dynamic batching per model.
  What it needed to run at all: a **standalone** export (``aa-deploy export --standalone``: one
  self-contained ``model.onnx`` + ``config.json`` with ``id2label`` + the tokenizer files, which is an
  Optimum-style folder); a shared export cannot be given (Optimum does not follow
  ``backbone.onnx_data``), nor the training run (its torch checkpoint is an adapter model that
  transformers' ``AutoModelForSequenceClassification``, Infinity's torch engine, cannot build).
  Started through benchmarks/infinity_launch.py, which fixes one incompatibility between Infinity
  0.0.78 and Optimum 2 (local folders fail to load; see that file). ``--no-model-warmup``: its warm-up
  sends a 514-token text, and its pipeline does not truncate, so the warm-up overflows MiniLM's 512
  positions (texts over 512 tokens fail with Infinity; ours truncates at the export's max_length, 128:
  the demo sentences are far shorter, so both see the same tokens). Its load-time graph optimisation
  (Optimum's ORTOptimizer) fails on Optimum 2's API and Infinity falls back, by design, to the plain
  graph, which is what is measured. Its ONNX Runtime thread count cannot be set (ONNX Runtime's
  default: one thread per physical core); ``--threads`` should match that (2 on the project's 2-core
  machine). One model per task, each with its own weights.
- MLServer (its Hugging Face runtime) was not tried: it serves transformers pipelines from torch
  checkpoints, which our adapter models are not, so it would need a custom runtime written for it.

Tasks: built from the repository unless ``--exports`` is given: ``aa-deploy train`` on the demo data
(aa_deploy/demo_data, 1 epoch, MiniLM) with 4 seeds/recipes, then ``aa-deploy export`` (shared) and
``aa-deploy export --standalone``, cached in ``--workdir``. N > 4 tasks are hard-linked copies of those
folders under distinct names (distinct tasks for every server). Load: the demo sentences, one text per
request, closed loop (``concurrency`` clients each send their next request when the previous answers),
``single`` (all to the first task) and ``mixed`` (tasks in turn) traffic; per scenario the medians over
``--rounds`` rounds of req/s, p50 and p99. Predictions: every task's answers on 16 demo sentences,
probabilities compared with ``ours`` (max abs difference, tolerance reported, labels equal); ours and the
hand-rolled server are asked over the Open Inference Protocol (logits, softmax here), Infinity over
``/classify`` (its pipeline's probabilities).

One server at a time by default; ``--interleave`` loads all of them at once and alternates the rounds
between them (one under load at a time, the others idle), so that a change in the machine's background
load hits every server alike, and reports ours' req/s over each peer's as the median of per-round ratios.
The machine the results come from is shared (2 cores, background training jobs): absolute numbers move
with the load; ratios within one run are what count.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from machine_info import describe_machine, load_average  # noqa: E402
from serving_bench import load_run  # noqa: E402  (the raw keep-alive load generator, one owner)

from aa_deploy.contract.layout import MANIFEST_NAME, WEIGHTS_NAME  # noqa: E402
from aa_deploy.contract.manifest import ExportManifest  # noqa: E402
from aa_deploy.demo import DEMO_DATA  # noqa: E402
from aa_deploy.fileio import atomic_write_text  # noqa: E402
from aa_deploy.serving.ports import free_port  # noqa: E402

RESULTS = BENCHMARKS / "results" / "peers.json"
SERVERS = ("ours", "handrolled", "infinity")
# The tasks built from the repository: name, training recipe, seed.
BUILT_TASKS = (("sent0", "search", 0), ("sent1", "search", 1), ("sent2", "standard", 2), ("sent3", "search", 3))
CHECK_TEXTS = 16


@dataclass
class BenchConfig:
    """Everything a run depends on; written into the JSON so that a result says how it was made."""

    servers: list[str] = field(default_factory=lambda: list(SERVERS))
    task_counts: list[int] = field(default_factory=lambda: [1, 4, 16])
    concurrencies: list[int] = field(default_factory=lambda: [1, 16])
    threads: int = 2
    rounds: int = 3
    seconds: float = 4.0  # per scenario and round
    warmup_s: float = 2.0
    tolerance: float = 1e-3  # max abs difference of probabilities against ours
    epochs: int = 1
    workdir: str = "/tmp/aa_peers"
    exports: list[str] = field(default_factory=list)  # shared (or any) exports; empty: build them
    standalone_exports: list[str] = field(default_factory=list)  # for peers that need a plain ONNX
    start_timeout_s: float = 900.0
    interleave: bool = False  # all servers loaded, rounds alternating between them (one under load at a time)
    output: str = str(RESULTS)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        values: dict[str, Any] = {"task_counts": [1, 4], "rounds": 1, "seconds": 1.5, "warmup_s": 0.5}
        return cls(**{**values, **overrides})


# ---------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskFolders:
    """One task as each kind of server wants it: a shared export and a standalone one (may be the same)."""

    name: str
    shared: Path
    standalone: Path | None
    labels: tuple[str, ...]


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log}")


def build_tasks(workdir: Path, epochs: int) -> tuple[list[Path], list[Path]]:
    """Train and export the demo tasks (cached): ``aa-deploy train`` then ``export`` and ``export --standalone``."""
    cli = [sys.executable, "-m", "aa_deploy.cli"]
    train_file, test_file = DEMO_DATA / "sentiment_train.csv", DEMO_DATA / "sentiment_test.csv"
    shared, standalone = [], []
    for name, recipe, seed in BUILT_TASKS:
        run = workdir / "runs" / name
        log = workdir / f"build_{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if not (run / WEIGHTS_NAME).is_file():
            print(f"training {name} ({recipe}, seed {seed}, {epochs} epoch) ...", flush=True)
            _run(
                cli
                + ["train", "--task", str(train_file), "--test-file", str(test_file), "--epochs", str(epochs)]
                + ["--seed", str(seed), "--recipe", recipe, "--output", str(run), "--no-progress", "--overwrite"],
                log,
            )
        for kind, extra in (("shared", ["--backbone-store", str(workdir / "store")]), ("standalone", ["--standalone"])):
            out = workdir / "exports" / kind / name
            if not (out / MANIFEST_NAME).is_file():
                print(f"exporting {name} ({kind}) ...", flush=True)
                _run(cli + ["export", str(run), "--output", str(out), "--overwrite"] + extra, log)
            (shared if kind == "shared" else standalone).append(out)
    return shared, standalone


def base_tasks(config: BenchConfig) -> list[TaskFolders]:
    """The distinct tasks: given exports (paired by position with the standalone ones) or built ones."""
    if config.exports:
        shared = [Path(p) for p in config.exports]
        standalone = [Path(p) for p in config.standalone_exports] or [None] * len(shared)
        if len(standalone) != len(shared):
            raise SystemExit("--standalone-exports must name one folder per --exports folder, in the same order")
    else:
        shared, standalone = build_tasks(Path(config.workdir), config.epochs)
    tasks = []
    for s, alone in zip(shared, standalone, strict=True):
        manifest = ExportManifest.load(s)
        if manifest.is_pair or manifest.is_regression:
            raise SystemExit(f"{s}: peers.py drives single-text classification tasks only (no pairs, no regression)")
        if alone is None and not manifest.shared:
            alone = s
        if alone is not None and ExportManifest.load(alone).shared:
            raise SystemExit(f"{alone}: not a standalone export: re-export with `aa-deploy export --standalone`")
        if alone is not None and alone.name != s.name:  # servers that name tasks by folder see one name
            alone = linked_copy(alone, Path(config.workdir) / "renamed" / s.name)
        tasks.append(TaskFolders(s.name, s, alone, tuple(manifest.label_names or ())))
    if len({t.name for t in tasks}) != len(tasks):
        raise SystemExit("export folders must have distinct names: a folder's name is its task's name")
    return tasks


def linked_copy(src: Path, dst: Path, link_over: int = 0) -> Path:
    """A copy of ``src`` (cached) whose files over ``link_over`` bytes are hard links: a distinct task for a
    server at no extra disk."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            if os.path.getsize(a) > link_over:
                os.link(a, b)
                return
        except OSError:
            pass
        shutil.copy2(a, b)

    if not (dst / MANIFEST_NAME).is_file():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, copy_function=link_or_copy)
    return dst


def task_set(base: list[TaskFolders], n: int, workdir: Path) -> list[TaskFolders]:
    """n distinct tasks: the base ones, then hard-linked copies named ``<base>_<i>``."""
    out = []
    for i in range(n):
        b = base[i % len(base)]
        if i < len(base):
            out.append(b)
            continue
        name = f"{b.name}_{i}"
        shared = linked_copy(b.shared, workdir / "copies" / "shared" / name)
        alone = linked_copy(b.standalone, workdir / "copies" / "standalone" / name) if b.standalone else None
        out.append(TaskFolders(name, shared, alone, b.labels))
    return out


def load_texts() -> list[str]:
    texts = []
    for name in ("sentiment_test.csv", "sentiment_train.csv"):
        with open(DEMO_DATA / name, newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    return texts


# ---------------------------------------------------------------------------------------------- servers
Scores = list[dict[str, float]]  # per text: label -> probability


@dataclass
class Server:
    """How to start one kind of server and speak to its prediction route."""

    name: str
    model_format: str
    command: Callable[[list[TaskFolders], int, int], list[str]]
    request: Callable[[str, list[str]], tuple[str, dict[str, Any]]]  # the load: task, texts -> path, body
    check_request: Callable[[str, list[str]], tuple[str, dict[str, Any]]]  # the prediction check
    parse: Callable[[dict[str, Any], tuple[str, ...]], Scores]  # its answer, the task's labels -> scores
    ready_path: str
    needs_standalone: bool = False
    missing: Callable[[], str | None] = lambda: None
    notes: str = ""


def _oip_request(task: str, texts: list[str]) -> tuple[str, dict[str, Any]]:
    """The Open Inference Protocol's JSON form: ``aa-deploy serve`` and the hand-rolled server both answer
    it with the logits, so the check compares what the graphs computed, not a rounded summary."""
    text = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return f"/v2/models/{task}/infer", {"inputs": [text]}


def _oip_parse(body: dict[str, Any], labels: tuple[str, ...]) -> Scores:
    import numpy as np

    (logits,) = [o for o in body["outputs"] if o["name"] == "logits"]
    rows = np.asarray(logits["data"], dtype=np.float64).reshape(logits["shape"])
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return [dict(zip(labels, map(float, row), strict=True)) for row in probabilities]


def _v1_request(task: str, texts: list[str]) -> tuple[str, dict[str, Any]]:
    return f"/v1/tasks/{task}/predict", {"texts": texts}


def _ours_command(tasks: list[TaskFolders], port: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "aa_deploy.cli", "serve", "--port", str(port), "--threads", str(threads)]
    cmd += ["--log-level", "warning"]
    for t in tasks:
        cmd += ["--task", f"{t.name}={t.shared}"]
    return cmd


def _handrolled_command(tasks: list[TaskFolders], port: int, threads: int) -> list[str]:
    folders = ",".join(str(t.standalone or t.shared) for t in tasks)
    return [sys.executable, str(BENCHMARKS / "handrolled_server.py"), "--export", folders, "--port", str(port)] + [
        "--threads",
        str(threads),
    ]


def infinity_python() -> Path:
    return REPO / ".venv-infinity" / "bin" / "python"


def _infinity_missing() -> str | None:
    if not (infinity_python().parent / "infinity_emb").is_file():  # the console script: installed
        return f"{infinity_python().parent.parent} has no infinity_emb: run `make peers-env`"
    return None


def _infinity_folders(tasks: list[TaskFolders], root: Path) -> list[Path]:
    """Infinity may write an optimised graph (and its config) into the model folder: give it folders of its
    own (the graph hard-linked: a new file never overwrites it; the small files copied)."""
    return [linked_copy(t.standalone, root / t.name, link_over=2**20) for t in tasks if t.standalone]


def _infinity_command_in(root: Path) -> Callable[[list[TaskFolders], int, int], list[str]]:
    def command(tasks: list[TaskFolders], port: int, threads: int) -> list[str]:
        cmd = [str(infinity_python()), str(BENCHMARKS / "infinity_launch.py"), "v2", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--no-model-warmup"]
        for t, folder in zip(tasks, _infinity_folders(tasks, root), strict=True):
            cmd += ["--model-id", str(folder), "--served-model-name", t.name, "--engine", "optimum"]
            cmd += ["--device", "cpu", "--batch-size", "16"]
        return cmd + ["--log-level", "warning"]

    return command


def _infinity_request(task: str, texts: list[str]) -> tuple[str, dict[str, Any]]:
    return "/classify", {"model": task, "input": texts}


def _infinity_parse(body: dict[str, Any], labels: tuple[str, ...]) -> Scores:  # probabilities, by label
    return [{entry["label"]: entry["score"] for entry in row} for row in body["data"]]


def servers(workdir: Path) -> dict[str, Server]:
    return {
        "ours": Server(
            "ours",
            "shared exports (aa-deploy export): one backbone for all tasks",
            _ours_command,
            _v1_request,
            _oip_request,
            _oip_parse,
            "/ready",
            notes="aa-deploy serve defaults: multi-task graph, dynamic batching across tasks",
        ),
        "handrolled": Server(
            "handrolled",
            "any export (one ONNX Runtime session per task; given the standalone ones)",
            _handrolled_command,
            _v1_request,
            _oip_request,
            _oip_parse,
            "/ready",
            notes="benchmarks/handrolled_server.py: FastAPI + one ORT session per task, run in the request "
            "handler (no batching)",
        ),
        "infinity": Server(
            "infinity",
            "standalone exports (aa-deploy export --standalone) as Optimum folders",
            _infinity_command_in(workdir / "infinity_models"),
            _infinity_request,
            _infinity_request,
            _infinity_parse,
            "/health",
            needs_standalone=True,
            missing=_infinity_missing,
            notes="infinity-emb 0.0.78, v2 --engine optimum, plain graph (its optimiser falls back), dynamic "
            "batching per model, no warm-up; ORT threads: its default (one per physical core)",
        ),
    }


class RunningServer:
    """A server subprocess (own process group) with its URL and the RSS of its whole process tree."""

    def __init__(self, server: Server, tasks: list[TaskFolders], threads: int, workdir: Path, timeout_s: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "logs" / f"{server.name}_{len(tasks)}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HOME": str(workdir / "hf_home")}
        env.update({"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"})
        started = time.perf_counter()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                server.command(tasks, self.port, threads),
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(server.ready_path, timeout_s)
        except BaseException:  # an interrupted or failed start leaves no server behind
            self.stop()
            raise
        self.startup_s = round(time.perf_counter() - started, 1)
        self._peak = 0.0
        self._sampling = False
        self._sampler: threading.Thread | None = None

    def _wait_ready(self, path: str, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before ready; see {self.log}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s; see {self.log}")

    def rss_mib(self) -> float:
        """Resident memory of the server and all its descendants (workers, helpers)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20

    def start_sampling(self) -> None:
        """Track the peak RSS under load (every 0.25 s, in a thread of this process)."""
        self._sampling = True

        def sample() -> None:
            while self._sampling:
                self._peak = max(self._peak, self.rss_mib())
                time.sleep(0.25)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def peak_mib(self) -> float:
        self._sampling = False
        if self._sampler:
            self._sampler.join()
        return self._peak

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        r = httpx.post(self.url + path, json=body, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---------------------------------------------------------------------------------------------- measuring
def check_predictions(
    running: RunningServer, server: Server, tasks: list[TaskFolders], texts: list[str]
) -> dict[str, Scores]:
    """Each task's probabilities on the check texts (one request per task, all texts in it)."""
    out = {}
    for t in tasks:
        path, body = server.check_request(t.name, texts)
        out[t.name] = server.parse(running.post(path, body), t.labels)
    return out


def compare(reference: dict[str, Scores], answers: dict[str, Scores], tolerance: float) -> dict[str, Any]:
    """Max abs probability difference and label agreement against ``reference`` (ours)."""
    diff, labels_equal, total = 0.0, 0, 0
    for task, ref_rows in reference.items():
        for ref, got in zip(ref_rows, answers[task], strict=True):
            if set(ref) != set(got):
                raise RuntimeError(f"{task}: labels differ: {sorted(ref)} vs {sorted(got)}")
            diff = max(diff, max(abs(ref[k] - got[k]) for k in ref))
            labels_equal += max(ref, key=ref.__getitem__) == max(got, key=got.__getitem__)
            total += 1
    return {
        "texts": total,
        "max_abs_diff": diff,
        "labels_equal": labels_equal,
        "tolerance": tolerance,
        "ok": diff <= tolerance and labels_equal == total,
    }


class Trial:
    """One server with one task set: started, checked and warmed up, then measured round by round.

    Rounds are separate calls so that ``--interleave`` can alternate them between servers."""

    def __init__(
        self,
        server: Server,
        tasks: list[TaskFolders],
        config: BenchConfig,
        texts: list[str],
        reference: dict[str, Scores] | None,
    ) -> None:
        self.server, self.config, self.texts = server, config, texts
        self.names = [t.name for t in tasks]
        self.running = RunningServer(server, tasks, config.threads, Path(config.workdir), config.start_timeout_s)
        try:
            self.result: dict[str, Any] = {"server": server.name, "tasks": len(tasks)}
            self.result["startup_s"] = self.running.startup_s
            self.result["rss_loaded_mib"] = round(self.running.rss_mib(), 1)
            self.answers = check_predictions(self.running, server, tasks, texts[:CHECK_TEXTS])
            self.result["predictions"] = compare(reference, self.answers, config.tolerance) if reference else None
            self._turn = itertools.count()
            self.traffics = {"single": self._single, "mixed": self._mixed} if len(tasks) > 1 else {}
            self.traffics = self.traffics or {"single": self._single}
            asyncio.run(load_run(self.running.url, max(config.concurrencies), config.warmup_s, self._mixed))
        except BaseException:
            self.running.stop()
            raise
        self.samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.running.start_sampling()

    def _single(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        return self.server.request(self.names[0], [rng.choice(self.texts)])

    def _mixed(self, rng: random.Random) -> tuple[str, dict[str, Any]]:  # same texts as _single, tasks in turn
        return self.server.request(self.names[next(self._turn) % len(self.names)], [rng.choice(self.texts)])

    def run_round(self) -> None:
        """Every scenario once (within a round, so that a load change on the machine hits them all)."""
        for traffic, fn in self.traffics.items():
            for c in self.config.concurrencies:
                run = asyncio.run(load_run(self.running.url, c, self.config.seconds, fn))
                self.samples.setdefault((traffic, c), []).append(run)

    def finish(self) -> dict[str, Any]:
        """Stop the server; the result with per-scenario medians over the rounds."""
        self.result["rss_peak_mib"] = round(self.running.peak_mib(), 1)
        self.running.stop()
        self.result["scenarios"] = [
            {
                "traffic": traffic,
                "concurrency": c,
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
                "requests": sum(r["requests"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "rounds_rps": [r["rps"] for r in runs],
            }
            for (traffic, c), runs in self.samples.items()
        ]
        return self.result

    def stop(self) -> None:
        self.running.stop()


def measure_task_set(
    active: list[Server], tasks: list[TaskFolders], config: BenchConfig, texts: list[str]
) -> list[dict[str, Any]]:
    """All servers on one task set: one at a time (default), or all loaded and the rounds alternating
    between them (``interleave``: one server under load at a time, the others idle)."""
    results: list[dict[str, Any]] = []
    reference: dict[str, Scores] | None = None
    trials: list[Trial] = []

    def start(server: Server) -> Trial | None:
        nonlocal reference
        print(f"--- {server.name}, {len(tasks)} task(s)", flush=True)
        try:
            trial = Trial(server, tasks, config, texts, reference)
        except RuntimeError as error:
            print(f"{server.name} with {len(tasks)} tasks failed: {error}", flush=True)
            results.append({"server": server.name, "tasks": len(tasks), "error": str(error)})
            return None
        if server.name == "ours":
            reference = trial.answers
        return trial

    def done(trial: Trial) -> None:
        results.append(trial.finish())
        _print_run(results[-1])

    try:
        for server in active:
            trial = start(server)
            if trial is None:
                continue
            if config.interleave:
                trials.append(trial)
                continue
            try:
                for _ in range(config.rounds):
                    trial.run_round()
                done(trial)
            finally:
                trial.stop()
        for _ in range(config.rounds if trials else 0):
            for trial in trials:
                trial.run_round()
        for trial in trials:
            done(trial)
    finally:
        for trial in trials:
            trial.stop()
    return results


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """The whole comparison; returns (and writes to ``config.output``) the JSON-ready result."""
    started = time.time()
    load_at_start = load_average()
    workdir = Path(config.workdir)
    kinds = servers(workdir)
    unknown = set(config.servers) - set(kinds)
    if unknown:
        raise SystemExit(f"unknown server(s) {sorted(unknown)}: choose from {', '.join(kinds)}")
    base = base_tasks(config)
    texts = load_texts()
    skipped: dict[str, str] = {}
    for name in config.servers:
        reason = kinds[name].missing()
        if reason is None and kinds[name].needs_standalone and not all(t.standalone for t in base):
            reason = "needs standalone exports: pass --standalone-exports (aa-deploy export --standalone)"
        if reason:
            skipped[name] = reason
            print(f"skipping {name}: {reason}", flush=True)
    active = [kinds[n] for n in config.servers if n not in skipped]
    active.sort(key=lambda server: server.name != "ours")  # ours first: its answers are the reference
    warnings = []
    cores = psutil.cpu_count(logical=False)
    if any(s.name == "infinity" for s in active) and cores != config.threads:
        warnings.append(
            f"Infinity's ONNX Runtime uses {cores} threads (one per physical core; it cannot be set), the others "
            f"--threads {config.threads}: pass --threads {cores} for a like-for-like comparison"
        )
        print("warning:", warnings[-1], flush=True)
    runs = []
    for n in config.task_counts:
        runs += measure_task_set(active, task_set(base, n, workdir), config, texts)
    result = {
        "machine": describe_machine(
            load_average_start=load_at_start,
            load_average_end=load_average(),
            note="shared machine (background training jobs): compare ratios within one run",
        ),
        "config": asdict(config),
        "servers": {s.name: {"model_format": s.model_format, "notes": s.notes} for s in active},
        "skipped": skipped,
        "warnings": warnings,
        "runs": runs,
        "seconds": round(time.time() - started, 1),
    }
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------------------- report
def _print_run(r: dict[str, Any]) -> None:
    p = r["predictions"]
    check = "reference" if p is None else f"max|dp| {p['max_abs_diff']:.1e}, labels {p['labels_equal']}/{p['texts']}"
    print(f"  up in {r['startup_s']} s, RSS {r['rss_loaded_mib']:.0f} MiB (peak {r['rss_peak_mib']:.0f}); {check}")
    for s in r["scenarios"]:
        print(
            f"  {s['traffic']:>6} c={s['concurrency']:>2}: {s['rps']:>7.1f} req/s  p50 {s['p50_ms']} ms  "
            f"p99 {s['p99_ms']} ms  errors {s['errors']}",
            flush=True,
        )


def _scenario(run: dict[str, Any] | None, traffic: str, concurrency: int) -> dict[str, Any] | None:
    for s in (run or {}).get("scenarios", []):
        if (s["traffic"], s["concurrency"]) == (traffic, concurrency):
            return s
    return None


def _ratio(ours: dict[str, Any] | None, peer: dict[str, Any] | None, paired: bool) -> str:
    """ours' req/s over the peer's: with interleaved rounds, the median of the per-round ratios (each
    round's two numbers were measured minutes apart at most); otherwise the ratio of the medians."""
    if not (ours and peer and all(peer["rounds_rps"])):
        return "-"
    if paired and len(ours["rounds_rps"]) == len(peer["rounds_rps"]):
        value = statistics.median(a / b for a, b in zip(ours["rounds_rps"], peer["rounds_rps"], strict=True))
    else:
        value = ours["rps"] / peer["rps"]
    return f"x{value:.2f}"


def table(result: dict[str, Any]) -> str:
    """Markdown: req/s and latency with the servers side by side (and ours' req/s over each peer's, see
    ``_ratio``), then memory, start-up time and the prediction check."""
    ok_runs = [r for r in result["runs"] if "error" not in r]
    names = list(dict.fromkeys(r["server"] for r in ok_runs))
    peers = [n for n in names if n != "ours"] if "ours" in names else []
    by = {(r["server"], r["tasks"]): r for r in ok_runs}
    header = ["tasks", "traffic", "conc."] + [f"{n} req/s (p50 / p99 ms)" for n in names]
    header += [f"ours / {n}" for n in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = dict.fromkeys((r["tasks"], s["traffic"], s["concurrency"]) for r in ok_runs for s in r["scenarios"])
    for tasks, traffic, c in sorted(keys, key=lambda k: (k[0], k[1] != "single", k[2])):
        found = {n: _scenario(by.get((n, tasks)), traffic, c) for n in names}
        cells = [str(tasks), traffic, str(c)]
        for s in found.values():
            cells.append("-" if s is None else f"{s['rps']:.1f} ({s['p50_ms']:.0f} / {s['p99_ms']:.0f})")
        for n in peers:
            cells.append(_ratio(found["ours"], found[n], paired=result["config"].get("interleave", False)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| tasks | server | RSS loaded MiB | RSS peak MiB | startup s | predictions vs ours |"]
    lines.append("|---|---|---|---|---|---|")
    for r in sorted(ok_runs, key=lambda r: (r["tasks"], names.index(r["server"]))):
        p = r["predictions"]
        check = "(reference)" if p is None else f"max abs diff {p['max_abs_diff']:.1e} (tol {p['tolerance']:.0e}), "
        check += "" if p is None else f"labels {p['labels_equal']}/{p['texts']}"
        lines.append(
            f"| {r['tasks']} | {r['server']} | {r['rss_loaded_mib']:.0f} | {r['rss_peak_mib']:.0f} | "
            f"{r['startup_s']} | {check} |"
        )
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"\n{r['server']} with {r['tasks']} tasks failed: {r['error']}")
    for name, reason in result["skipped"].items():
        lines.append(f"\n{name} skipped: {reason}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: 1 and 4 tasks, 1 round of 1.5 s")
    parser.add_argument("--servers", help=f"comma-separated, from {','.join(SERVERS)} (default: all)")
    parser.add_argument("--tasks", help="comma-separated task counts (default 1,4,16; quick 1,4)")
    parser.add_argument("--concurrency", help="comma-separated client counts (default 1,16)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for every server (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds per scenario; medians are reported (default 3)")
    parser.add_argument("--seconds", type=float, help="load time per scenario and round (default 4)")
    parser.add_argument("--tolerance", type=float, help="max abs probability difference vs ours (default 1e-3)")
    parser.add_argument("--epochs", type=int, help="training epochs of the built tasks (default 1)")
    parser.add_argument("--workdir", help="built tasks, copies, logs (default /tmp/aa_peers)")
    parser.add_argument("--exports", nargs="+", help="existing export folders instead of building (task = folder name)")
    parser.add_argument("--standalone-exports", nargs="+", help="standalone exports of the same tasks, same order")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="load all servers at once and alternate the rounds between them (one under load at a time): "
        "on a machine whose background load changes, ratios then compare like with like",
    )
    parser.add_argument("--output", help=f"JSON result (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.servers:
        values["servers"] = args.servers.split(",")
    if args.tasks:
        values["task_counts"] = [int(x) for x in args.tasks.split(",")]
    if args.concurrency:
        values["concurrencies"] = [int(x) for x in args.concurrency.split(",")]
    for name in ("threads", "rounds", "seconds", "tolerance", "epochs", "workdir", "output"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values["interleave"] = args.interleave
    values["exports"] = args.exports or []
    values["standalone_exports"] = args.standalone_exports or []
    return BenchConfig.quick(**values) if args.quick else BenchConfig(**values)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    result = run_benchmark(config)
    print()
    print(table(result))
    print(f"\nwrote {config.output} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
