"""benchmarks/latency_parity.py's ``If`` control: the plain task graph as the only branch of one ``If``
must compute exactly what the plain session computes (else the control would measure another graph),
and the branch not taken must give an empty ``[0, labels]`` answer. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from serving_helpers import TEXTS, load_benchmark

from aa_deploy.contract.manifest import ExportManifest
from aa_deploy.serving.engine import pad_feeds
from aa_deploy.serving.tokenization import TaskTokenizer


def test_if_control_computes_the_plain_graph(serving_exports: dict[str, Path]) -> None:
    folder = serving_exports["sst"]
    manifest = ExportManifest.load(folder)
    wrapped = load_benchmark("latency_parity.py").if_wrapped_session(folder / "model.onnx", threads=1)
    plain = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = TaskTokenizer(folder / "tokenizer.json", max_length=manifest.max_length, is_pair=False)
    feeds = pad_feeds([tokenizer.encode(list(TEXTS[:3]))], manifest.pad_token_id)
    inputs = {i.name for i in plain.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    assert {i.name for i in wrapped.get_inputs()} == inputs | {"aa_chosen"}

    (expected,) = plain.run(["logits"], feeds)
    (taken,) = wrapped.run(["logits"], {**feeds, "aa_chosen": np.array(True)})
    (skipped,) = wrapped.run(["logits"], {**feeds, "aa_chosen": np.array(False)})
    np.testing.assert_array_equal(taken, expected)
    assert skipped.shape == (0, manifest.num_labels)
