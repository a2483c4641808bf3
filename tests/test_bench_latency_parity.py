"""benchmarks/latency_parity.py's ``If`` control: the plain task graph as the only branch of one ``If``
must compute exactly what the plain session computes (else the control would measure another graph),
and the branch not taken must give an empty ``[0, labels]`` answer. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
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


def test_http_ratio_cancels_the_start_order() -> None:
    """Part 1's ratio: one vote per server pair (the median of its rounds), pairs of opposite start order
    combined by geometric mean, the median over those. A server that is 5 % faster whenever it starts
    second must read as level, not as whichever order the odd pair had."""
    http_row = load_benchmark("latency_parity.py").http_row
    # 4 pairs x 3 rounds of 10 requests; the hand-rolled server takes 1.0 s per request, ours runs at 0.95
    # of its speed in the pairs where ours starts first (even indices) and at 1.05 in the others.
    ours_speed = {0: 0.95, 1: 1.05, 2: 0.95, 3: 1.05}
    pair_of_round = [p for p in range(4) for _ in range(3)]
    samples = {
        "ours": [[1.0 / ours_speed[p]] * 10 for p in pair_of_round],
        "handrolled": [[1.0] * 10 for _ in pair_of_round],
    }
    cpu = {"ours": [1.0 / ours_speed[p] for p in pair_of_round], "handrolled": [1.0] * len(pair_of_round)}
    row = http_row("cfg", "sentiment", "v1", samples, cpu, pair_of_round, {})
    assert row["rps_ratio_per_pair"] == [0.95, 1.05, 0.95, 1.05]
    assert row["server_pairs"] == 4
    for key in ("rps_ratio", "p50_ratio", "cpu_ratio"):
        assert row[key] == round((0.95 * 1.05) ** 0.5, 3)


def test_session_set_ratio_cancels_the_build_order() -> None:
    """Part 2's ratio: sets alternate whether the engines or the plain session are built first, and the
    sessions built last run faster; a vote of 0.95 when the engines come first and 1.05 when they come
    last must read as level. An odd number of sets cannot be balanced and is refused."""
    balanced = load_benchmark("latency_parity.py").balanced
    assert balanced([0.95, 1.05, 0.95, 1.05, 0.96, 1.04], 4) == round((0.95 * 1.05) ** 0.5, 4)
    with pytest.raises(ValueError):
        balanced([0.95, 1.05, 1.0], 4)
