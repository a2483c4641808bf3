"""The simplest alternative to ``aa-deploy serve``: FastAPI + one ONNX Runtime session per export folder.

What a user would write in an afternoon: each task's ``model.onnx`` in its own session, the
``tokenizers`` library for the tokenizer, inference run directly in the request handler (no queue, no
batching, no limits, no metrics). Benchmarks compare our server against it on the same exports
(``benchmarks/latency_parity.py``; ``benchmarks/peers.py``).

    python benchmarks/handrolled_server.py --export DIR[,DIR...] --port N [--threads T] [--host H]

Each ``DIR`` is an export folder (``aa-deploy export``), served under its folder name, or
``NAME=DIR``. Routes, with the same request bodies as ``aa-deploy serve``:

* ``POST /v1/tasks/{name}/predict`` ``{"texts": [...], "text_pairs": [...]}`` ->
  ``{"task", "predictions": [{"label", "score"}]}``;
* ``POST /v2/models/{name}/infer``, the Open Inference Protocol's JSON form (inputs ``text``,
  ``text_pair``; outputs ``logits``, ``label``);
* ``GET /ready`` (200 once every session is loaded).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Task:
    """One export folder: its session, tokenizer and labels."""

    session: Any
    tokenizer: Any
    inputs: frozenset[str]
    label_names: tuple[str, ...] | None
    is_pair: bool

    @classmethod
    def load(cls, folder: Path, threads: int) -> Task:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from aa_deploy.contract.manifest import ExportManifest

        manifest = ExportManifest.load(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(manifest.model_path), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(manifest.tokenizer_path))
        tokenizer.enable_truncation(max_length=manifest.max_length)
        tokenizer.enable_padding(pad_id=manifest.pad_token_id)
        return cls(
            session=session,
            tokenizer=tokenizer,
            inputs=frozenset(i.name for i in session.get_inputs()),
            label_names=manifest.label_names,
            is_pair=manifest.is_pair,
        )

    def logits(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        batch = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
        encodings = self.tokenizer.encode_batch(batch)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.inputs})[0]

    def labels(self, logits: np.ndarray) -> list[str]:
        if self.label_names is None:
            return [repr(float(row[0])) for row in logits]
        return [self.label_names[int(i)] for i in logits.argmax(axis=-1)]


class PredictRequest(BaseModel):
    texts: list[str]
    text_pairs: list[str] | None = None


def parse_exports(value: str) -> dict[str, Path]:
    """``DIR[,DIR]`` or ``NAME=DIR[,NAME=DIR]`` -> {name: folder}."""
    out: dict[str, Path] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, folder = part.rpartition("=")
        path = Path(folder)
        out[name or path.name] = path
    return out


def create_app(exports: dict[str, Path], threads: int) -> Any:
    from fastapi import FastAPI, HTTPException

    tasks = {name: Task.load(folder, threads) for name, folder in exports.items()}
    app = FastAPI(title="hand-rolled FastAPI + ONNX Runtime")

    def task(name: str) -> Task:
        if name not in tasks:
            raise HTTPException(404, f"unknown task {name!r}")
        return tasks[name]

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        return {"status": "ready", "tasks": sorted(tasks)}

    @app.post("/v1/tasks/{name}/predict")
    async def predict(name: str, body: PredictRequest) -> dict[str, Any]:
        t = task(name)
        logits = t.logits(body.texts, body.text_pairs)
        if t.label_names is None:
            return {"task": name, "predictions": [{"label": None, "score": float(r[0])} for r in logits]}
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        best = probs.argmax(axis=-1)
        predictions = [{"label": t.label_names[int(b)], "score": float(p[b])} for b, p in zip(best, probs, strict=True)]
        return {"task": name, "predictions": predictions}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, body: dict[str, Any]) -> dict[str, Any]:
        t = task(name)
        by_name = {i["name"]: i["data"] for i in body.get("inputs", [])}
        texts = [str(x) for x in by_name["text"]]
        pairs = [str(x) for x in by_name["text_pair"]] if t.is_pair else None
        logits = t.logits(texts, pairs)
        return {
            "model_name": name,
            "model_version": "1",
            "id": body.get("id"),
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.ravel().tolist()},
                {"name": "label", "datatype": "BYTES", "shape": [len(texts)], "data": t.labels(logits)},
            ],
        }

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="export folder(s): DIR[,DIR] or NAME=DIR[,NAME=DIR]")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: ORT's default)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import uvicorn

    app = create_app(parse_exports(args.export), args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
