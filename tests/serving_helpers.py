"""Export folders for the serving tests, made by the real exporter (``export.export_run``) from tiny
trained-looking run folders (tests/fixtures/build_fixtures.py commits them, so the serving tests need no
torch), plus independent references (plain ONNX Runtime + transformers tokenizer)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(filename: str) -> ModuleType:
    """A script of benchmarks/ imported as module ``bench_<stem>`` (registered in ``sys.modules``: dataclasses
    look their module up while the class is built)."""
    name = "bench_" + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / filename)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


SST = {"name": "sst2", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}
RTE = {"name": "rte", "metric": "accuracy", "label_names": ["entailment", "not_entailment"], "is_pair": True}
STSB = {"name": "stsb", "metric": "pearson", "label_names": None, "is_pair": True}
TOPIC = {"name": "topic", "metric": "accuracy", "label_names": ["world", "sports", "business"], "is_pair": False}

# name -> (task, recipe, rational version, selected layers (search recipe), seed). Chosen to cover: single
# and pair inputs, regression, ReLU (standard recipe) next to both rational versions, and tasks without
# adapters in the lowest layers (so multi-task calls share them).
RUNS: dict[str, tuple[dict, str, str, list[int] | None, int]] = {
    "sst": (SST, "search", "A", [1, 2], 1),
    "rte": (RTE, "search", "B", [0, 2], 2),
    "stsb": (STSB, "search", "A", [2], 3),
    "topic": (TOPIC, "standard", "A", None, 4),
    "late": (SST, "search", "A", [2], 5),
}


def make_run_folder(
    directory: Path,
    backbone: Path,
    task: dict,
    recipe: str,
    version: str,
    layers: list[int] | None,
    seed: int,
    max_length: int = 32,
) -> Path:
    """A run folder like ``aa-deploy train`` writes, with random (non-trivial) adapters and heads;
    ``layers=None`` selects every layer."""
    from _export_helpers import make_run  # torch: only the fixture generator builds run folders

    if layers is None:
        layers = list(range(json.loads((backbone / "config.json").read_text())["num_hidden_layers"]))
    return make_run(
        directory, backbone, recipe=recipe, selected=layers, task=task, rational_version=version, seed=seed,
        max_length=max_length, reduction_factor=16, denominator=(-0.4, 0.8, 0.0, 0.1),
    )  # fmt: skip


def build_exports(root: Path, backbone: Path) -> dict[str, Path]:
    """Every run of RUNS exported in shared mode (one backbone store), plus standalone and optimised sst."""
    from aa_deploy.export import export_run

    store = root / "store"
    out: dict[str, Path] = {}
    for name, (task, recipe, version, layers, seed) in RUNS.items():
        run = make_run_folder(root / "runs" / name, backbone, task, recipe, version, layers, seed)
        out[name] = export_run(run, root / "exports" / name, backbone_store=store).output
    sst_run = root / "runs" / "sst"
    out["sst_standalone"] = export_run(sst_run, root / "exports" / "sst_standalone", standalone=True).output
    out["sst_optimized"] = export_run(
        sst_run, root / "exports" / "sst_optimized", optimize=True, backbone_store=store
    ).output
    return out


# The tasks the HTTP tests serve (the optimised export is covered by the engine tests) and their admin token.
SERVED = ("sst", "rte", "stsb", "topic", "late", "sst_standalone")
TOKEN = "t0ken-for-tests"


def served_config(exports: dict[str, Path]) -> Any:
    """The HTTP tests' server: small limits (so the limit tests stay small), the token, SERVED, and one
    task that cannot load."""
    from aa_deploy.serving.config import ServerConfig, TaskSpec

    return ServerConfig(
        port=0,
        intra_op_threads=1,
        max_batch_size=8,
        max_delay_ms=3,
        token=TOKEN,
        max_texts_per_request=16,
        max_chars_per_text=5000,
        max_body_bytes=64 * 1024,
        tasks=[TaskSpec(n, str(exports[n])) for n in SERVED] + [TaskSpec("broken", "/nonexistent/export")],
    )


def predict(client: Any, name: str, texts: list[str], pairs: list[str] | None = None) -> Any:
    """``POST /v1/tasks/{name}/predict`` with logits, through an ``httpx.Client``."""
    body: dict = {"texts": texts, "return_logits": True}
    if pairs is not None:
        body["text_pairs"] = pairs
    return client.post(f"/v1/tasks/{name}/predict", json=body)


def logits_of(predictions: list[dict]) -> np.ndarray:
    return np.array([p["logits"] for p in predictions])


class Reference:
    """What the exported model says, computed without the server: transformers' tokenizer on the export
    folder and a plain ``onnxruntime.InferenceSession`` on its ``model.onnx``, one text at a time.

    Without transformers (a serving-only install, ``AA_BLOCK_TORCH=1``) the tokenizer is the export's
    ``tokenizer.json`` read by the ``tokenizers`` library; the model run stays independent of the server
    (no batching, padding, graph merging). ``test_tokenizer_matches_transformers_and_truncates`` checks
    the two tokenizers agree wherever transformers is installed."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        self.manifest = json.loads((folder / "aa_export.json").read_text())
        try:
            from transformers import AutoTokenizer
        except ImportError:
            self.tokenizer = _TokenizersReference(folder / "tokenizer.json", self.manifest["max_length"])
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        rows = []
        for i, text in enumerate(texts):
            args: Any = (text, pairs[i]) if pairs is not None else (text,)
            enc = self.tokenizer(*args, truncation=True, max_length=self.manifest["max_length"], return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
            rows.append(self.session.run(["logits"], feeds)[0][0])
        return np.stack(rows)

    def labels(self, texts: list[str], pairs: list[str] | None = None) -> list[str | None]:
        names = self.manifest["task"].get("label_names")
        if names is None:
            return [None] * len(texts)
        return [names[int(i)] for i in np.argmax(self.logits(texts, pairs), axis=-1)]


class _TokenizersReference:
    """Called like a transformers tokenizer on one text (or pair): ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` as [1, length] arrays."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")

    def __call__(self, text: str, pair: str | None = None, **_: Any) -> dict[str, np.ndarray]:
        encoding = self._tokenizer.encode(text, pair)
        return {
            "input_ids": np.asarray([encoding.ids], dtype=np.int64),
            "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.asarray([encoding.type_ids], dtype=np.int64),
        }


TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a",
    "",
    "I LOVED this film!!! 10/10",
    "Émile a dit « ça va » 🙂 — naïve café, 東京, مرحبا",
    "zero\u200bwidth and combining e\u0301 and a NUL \u0000 char",
    " ".join(["long"] * 400),
]
# No empty second segment: transformers' Python tokenizer then drops the pair (it tests ``if text_pair``),
# while the tokenizers template (what the server uses, and the correct pair encoding) keeps [SEP][SEP].
PAIRS = [
    "a dog is sleeping",
    "b",
    "?",
    "the film was bad",
    "שלום 🙂",
    "tabs\tand\nnewlines",
    "short",
]


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``url``/ready until it answers 200; fail with the server's output if the process exits first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"the server at {url} did not become ready in {timeout_s:.0f} s"
        time.sleep(0.2)


# A text that the graph of ``break_at_length`` fails on: 5 words -> [CLS] + 5 + [SEP] = 7 tokens with the
# fixtures' tokenizer, a length none of the registry's load-time probe inputs has.
BREAKING_TEXT = "this one breaks the graph"
BREAKING_TOKENS = 7


def break_at_length(folder: Path, tokens: int = BREAKING_TOKENS) -> Path:
    """Edit ``folder/model.onnx`` (in place) so that it loads and answers like before, except that a run
    containing a row of exactly ``tokens`` tokens raises in ONNX Runtime (a Gather out of bounds): a task
    that passes every load-time check and fails at predict time on some inputs."""
    import onnx
    from onnx import TensorProto, helper

    path = folder / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    producer = next(n for n in graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "aa_break/raw_logits"
    graph.initializer.extend(
        [
            helper.make_tensor("aa_break/axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("aa_break/length", TensorProto.FLOAT, [], [float(tokens)]),
            helper.make_tensor("aa_break/far", TensorProto.INT64, [], [1000]),
            helper.make_tensor("aa_break/table", TensorProto.FLOAT, [1], [0.0]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Cast", ["attention_mask"], ["aa_break/mask"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["aa_break/mask", "aa_break/axes"], ["aa_break/lengths"], keepdims=0),
            helper.make_node("Equal", ["aa_break/lengths", "aa_break/length"], ["aa_break/hit"]),
            helper.make_node("Cast", ["aa_break/hit"], ["aa_break/hit_int"], to=TensorProto.INT64),
            helper.make_node("ReduceMax", ["aa_break/hit_int"], ["aa_break/any"], keepdims=0),
            helper.make_node("Mul", ["aa_break/any", "aa_break/far"], ["aa_break/index"]),
            helper.make_node("Gather", ["aa_break/table", "aa_break/index"], ["aa_break/zero"]),
            helper.make_node("Add", ["aa_break/raw_logits", "aa_break/zero"], ["logits"]),
        ]
    )
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"aa_break/node_{i}"
    onnx.save(model, str(path))
    return folder
