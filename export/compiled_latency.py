"""What the exported graph saves in latency against the same model with an adapter at every layer.

Why at export: a run folder records the saving of its kept layers as PyTorch measured it when training
ended (``metrics.json`` ``savings``). What users deploy is the ONNX graph, run by ONNX Runtime with the
export's fusions and quantisation, where an adapter layer costs something else (its folded rational is a
chain of small element-wise nodes; an INT8 backbone makes the fp32 adapters a larger share). So the export
also builds the full-adapter counterpart of the graph it wrote and times both in ONNX Runtime.

The counterpart is the model's ``every_layer_counterpart()``: an adapter at every layer, the added ones
copies of a kept one (the same nodes, so the same cost; their values do not matter), exported and
post-processed exactly like the task graph. Both sessions are timed in alternation (one
call of each per round) on one row of the validation inputs, and the medians are recorded.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .folding import fold_rationals
from .optimize import OptimizeSettings, postprocess
from .validation import ort_session

# Above this the counterpart graph would need its weights spilled to a file (protobuf's 2 GiB limit):
# not worth a second large graph on disk for a timing, so no measurement.
_MAX_GRAPH_BYTES = 1 << 30


@dataclass(frozen=True)
class CompiledSaving:
    """Median ms of one call at batch 1: the exported graph (kept layers) and its full-adapter counterpart."""

    kept_ms: float
    full_ms: float
    ratio: float  # kept / full: below 1, the exported graph is faster
    setting: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_compiled_saving(
    full: Any,
    kept_graph: bytes,
    example: dict[str, np.ndarray],
    input_names: list[str],
    settings: OptimizeSettings,
    repeats: int = 30,
) -> CompiledSaving | None:
    """Time the exported graph (``kept_graph``) against ``full`` (``every_layer_counterpart()`` of the
    exported model, not yet folded), exported and post-processed as the task graph was; None when its
    graph is too large to keep in memory.

    One ONNX Runtime thread, timed in CPU time of the calling thread (where that one thread runs the
    model): a per-request cost that other work on the machine hardly changes. Wall time with several
    threads on a busy machine measured the thread pools' contention instead (2.9 against 4.9 ms for a
    pair of INT8 MiniLM graphs that take 2.6 ms each on one thread)."""
    from .onnx_export import export_task_graph

    fold_rationals(full)
    graph = export_task_graph(full, example, input_names)
    graph, _ = postprocess(graph, full.backbone.config, settings)
    if graph.ByteSize() > _MAX_GRAPH_BYTES:
        return None
    sessions = (ort_session(kept_graph, 1), ort_session(graph.SerializeToString(), 1))
    feeds = {name: np.ascontiguousarray(example[name][:1]) for name in input_names}
    for session in sessions:  # warm up: first calls allocate and prepack
        for _ in range(3):
            session.run(None, feeds)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for session, samples in zip(sessions, times, strict=True):
            start = time.thread_time()
            session.run(None, feeds)
            samples.append((time.thread_time() - start) * 1000)
    kept_ms, full_ms = (statistics.median(t) for t in times)
    tokens = int(feeds[input_names[0]].shape[1])
    return CompiledSaving(
        kept_ms=round(kept_ms, 3),
        full_ms=round(full_ms, 3),
        ratio=round(kept_ms / full_ms, 3),
        setting=f"ONNX Runtime on CPU, 1 thread, CPU time of one call at batch 1 with {tokens} tokens, median "
        f"of {repeats} alternating calls, measured by the export",
    )
