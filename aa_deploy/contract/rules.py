"""Rules that more than one stage applies, stated once.

The trained model (torch), the model card (numpy, from the saved weights), the compiler and the
multi-task server all decide the same questions: which layers' adapters run at inference, and whether
a run's adapters use rational activations. They must agree exactly (the pruned graph has to equal the
trained model), so the answer lives here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Index of each branch in a switch's two logits ``[skip, adapter]``.
SKIP, ADAPTER = 0, 1
# Recipes whose adapters use the learnable rational activation (the others use ReLU).
RATIONAL_RECIPES = ("search", "focused")
# Rational version whose denominator coefficients enter as absolute values (METHOD.md).
ABS_DENOMINATOR_VERSION = "A"


def switch_keeps_adapter(logits: Sequence[Any]) -> bool:
    """The eval rule of a Gumbel switch: keep the adapter iff ``logit_adapter > logit_skip``.

    Works on a list of floats, a numpy array or a torch tensor alike.
    """
    return bool(logits[ADAPTER] > logits[SKIP])


def switch_adapter_probability(logits: Sequence[float]) -> float:
    """P(adapter) = softmax(logits)[adapter], from stored logits (no torch)."""
    return 1.0 / (1.0 + math.exp(float(logits[SKIP]) - float(logits[ADAPTER])))


def switch_margin(logits: Sequence[Any]) -> float:
    """How strongly a switch prefers its adapter: ``logit_adapter - logit_skip`` (> 0 means kept)."""
    return float(logits[ADAPTER]) - float(logits[SKIP])


def kept_by_switches(switch_logits: Mapping[int, Sequence[Any]], max_layers: int | None = None) -> list[int]:
    """The layers whose switch keeps the adapter, sorted.

    With a layer budget (``max_layers``, docs/METHOD.md §3) only the ``max_layers`` layers whose switches
    prefer their adapter most strongly stay; ties go to the lower layer so that the choice is
    deterministic. The trained model in eval mode, the compiler and the model card all call this, so a
    budgeted run compiles to exactly the layers it was evaluated with.
    """
    kept = [int(i) for i, logits in switch_logits.items() if switch_keeps_adapter(logits)]
    if max_layers is not None and len(kept) > max_layers:
        margins = {int(i): switch_margin(logits) for i, logits in switch_logits.items()}
        kept = sorted(kept, key=lambda i: (-margins[i], i))[:max_layers]
    return sorted(kept)


def adapterdrop_keeps_layer(layer: int, eval_layers: int) -> bool:
    """AdapterDrop at inference drops the adapters of the lowest ``eval_layers`` layers."""
    return layer >= eval_layers


def uses_rational(recipe: str | None) -> bool:
    """Whether a run with this recipe has rational activations (and coefficients in its weights)."""
    return recipe in RATIONAL_RECIPES


def denominator_is_absolute(version: str) -> bool:
    """Whether the rational's denominator coefficients are used as ``|b|`` (version A) or as is."""
    return version == ABS_DENOMINATOR_VERSION
