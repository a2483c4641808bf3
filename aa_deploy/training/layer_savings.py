"""What a run's kept layers save against adapters in every layer: parameters, bytes and latency.

The point of the switches (and of a layer budget) is a smaller, faster model at the same quality; a
run folder therefore records the saving next to the score instead of leaving it to be inferred. The
latency is measured here in PyTorch (eval mode, batch 1, one short input, median of alternating
repeats) on the machine that trained, so it is a ratio on that machine, not a serving benchmark.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..modeling import AdaptableAdapterModel

_TEXT = "a short input of about the length of one review sentence, used only for timing"


@dataclass
class LayerSavings:
    kept_layers: list[int]
    num_layers: int
    adapter_params_kept: int
    adapter_params_full: int
    adapter_bytes_kept: int  # fp32 tensor bytes of the kept adapters (rationals included)
    adapter_bytes_full: int
    latency_ms_kept: float
    latency_ms_full: float
    latency_ratio: float  # kept / full: below 1 means the compiled model is faster
    latency_setting: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_ms(models: list[torch.nn.Module], inputs: dict[str, torch.Tensor], repeats: int) -> list[float]:
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(3):
            for model in models:
                model(**inputs)
        for _ in range(repeats):
            for i, model in enumerate(models):  # alternate, so load changes hit both alike
                start = time.perf_counter()
                model(**inputs)
                times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def measure_layer_savings(
    model: AdaptableAdapterModel, tokenizer: Any, device: str = "cpu", repeats: int = 25
) -> LayerSavings:
    pruned = model.pruned().to(device).eval()
    num_layers = int(model.config.num_hidden_layers or 0)
    full = pruned.every_layer_counterpart().to(device).eval()
    encoded = tokenizer(_TEXT, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in encoded.items()}
    kept_ms, full_ms = _median_ms([pruned, full], inputs, repeats)

    def adapter_numbers(m: AdaptableAdapterModel) -> tuple[int, int]:
        state = {k: v for k, v in m.trainable_state_dict().items() if ".adapter_layers." in f".{k}"}
        return sum(v.numel() for v in state.values()), sum(v.numel() * v.element_size() for v in state.values())

    kept_params, kept_bytes = adapter_numbers(pruned)
    full_params, full_bytes = adapter_numbers(full)
    return LayerSavings(
        kept_layers=pruned.kept_layers(),
        num_layers=num_layers,
        adapter_params_kept=kept_params,
        adapter_params_full=full_params,
        adapter_bytes_kept=kept_bytes,
        adapter_bytes_full=full_bytes,
        latency_ms_kept=round(kept_ms, 3),
        latency_ms_full=round(full_ms, 3),
        latency_ratio=round(kept_ms / full_ms, 3) if full_ms else 1.0,
        latency_setting=f"torch eval on {device}, batch 1, {inputs['input_ids'].shape[1]} tokens, "
        f"{torch.get_num_threads()} threads, median of {repeats} alternating repeats",
    )
