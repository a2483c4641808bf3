"""The server a user would write by hand: FastAPI + one ONNX Runtime session per task, no batching.

    python benchmarks/handrolled_server.py --export DIR[,DIR] --port N --threads T

The baseline that ``aa-deploy serve`` is compared with in benchmarks/peers.py. Deliberately minimal and
independent of ``aa_deploy``: it reads an export folder the way its files document themselves
(``model.onnx``, ``tokenizer.json``, the label names and ``max_length`` from ``aa_export.json``) with
``tokenizers``, ``onnxruntime`` and ``fastapi`` only. Each task is served under its folder's name; each
request runs its own ``session.run`` (one row per text, padded to the longest text of the request), so
concurrent requests are not merged into batches and tasks do not share the backbone's weights.

Route: ``POST /v1/tasks/{name}/predict`` with ``{"texts": [...]}`` answers
``{"predictions": [{"label", "score", "scores": {label: probability}}]}`` (the same shape as
``aa-deploy serve``, so one load generator drives both); ``GET /ready`` answers 200 once all tasks loaded.
Single-text classification tasks only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from tokenizers import Tokenizer


@dataclass
class Task:
    """One export folder: its session, tokenizer and label names."""

    session: ort.InferenceSession
    tokenizer: Tokenizer
    labels: list[str]
    input_names: set[str]

    @classmethod
    def load(cls, folder: Path, threads: int) -> Task:
        manifest = json.loads((folder / "aa_export.json").read_text())
        if manifest["task"]["is_pair"] or not manifest["task"]["label_names"]:
            raise SystemExit(f"{folder}: the hand-rolled server takes single-text classification tasks only")
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(manifest["max_length"])
        tokenizer.enable_padding(pad_id=manifest["pad_token_id"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return cls(session, tokenizer, manifest["task"]["label_names"], {i.name for i in session.get_inputs()})

    def predict(self, texts: list[str]) -> list[dict]:
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (logits,) = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.input_names})
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        out = []
        for row in probabilities:
            best = int(row.argmax())
            scores = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            out.append({"label": self.labels[best], "score": float(row[best]), "scores": scores})
        return out


class PredictRequest(BaseModel):
    texts: list[str]


def create_app(tasks: dict[str, Task]) -> FastAPI:
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True, "tasks": sorted(tasks)}

    # A plain ``def`` route: FastAPI runs it in its thread pool, so a slow session.run does not block the loop.
    @app.post("/v1/tasks/{name}/predict")
    def predict(name: str, request: PredictRequest) -> dict:
        task = tasks.get(name)
        if task is None:
            raise HTTPException(404, f"unknown task {name!r}")
        if not request.texts:
            raise HTTPException(422, "texts must not be empty")
        return {"task": name, "predictions": task.predict(request.texts)}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="export folders, comma-separated; task name = folder name")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    args = parser.parse_args()
    folders = [Path(p) for p in args.export.split(",") if p]
    tasks = {folder.name: Task.load(folder, args.threads) for folder in folders}
    uvicorn.run(create_app(tasks), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
