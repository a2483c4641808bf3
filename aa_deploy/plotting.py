"""Pictures of what a run learned: each layer's activation curve and which layers were kept."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_path


def rational_curve(
    numerator: Sequence[float], denominator: Sequence[float], x: np.ndarray, version: str = "A"
) -> np.ndarray:
    """NumPy twin of the rational activation, for plots and for checking folded graphs."""
    p = np.zeros_like(x)
    for c in reversed(list(numerator)):
        p = p * x + c
    q = np.zeros_like(x)
    if version == "A":
        for c in reversed([abs(b) for b in denominator]):
            q = (q + c) * np.abs(x)
        return p / (1.0 + q)
    for c in reversed(list(denominator)):
        q = (q + c) * x
    return p / (1.0 + np.abs(q))


def plot_run(
    path: str | os.PathLike,
    num_layers: int,
    kept_layers: Sequence[int],
    switch_probabilities: Sequence[float],
    rationals: dict[int, tuple[Sequence[float], Sequence[float]]],
    version: str = "A",
    title: str = "",
) -> Path:
    """One panel per layer (learned activation, or ReLU for standard adapters) plus the layer stack."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = min(num_layers, 6)
    rows = (num_layers + cols - 1) // cols
    fig = plt.figure(figsize=(2.4 * cols + 2.2, 2.2 * rows + 0.6))
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [0.8])
    x = np.linspace(-4.0, 4.0, 401)
    kept = set(kept_layers)
    for layer in range(num_layers):
        ax = fig.add_subplot(grid[layer // cols, layer % cols])
        if layer in rationals:
            num, den = rationals[layer]
            y = rational_curve(num, den, x, version)
            label = "rational"
        elif rationals:
            # A rational recipe whose layer has no adapter (pruned away): nothing to draw but the axis.
            y = np.full_like(x, np.nan)
            label = "no adapter"
        else:
            y = np.maximum(x, 0.0)
            label = "ReLU"
        color = "tab:blue" if layer in kept else "lightgray"
        ax.plot(x, y, color=color, lw=1.8)
        ax.axhline(0, color="black", lw=0.4)
        ax.axvline(0, color="black", lw=0.4)
        state = "kept" if layer in kept else "skipped"
        ax.set_title(f"layer {layer}: {state}\n{label}, p={switch_probabilities[layer]:.2f}", fontsize=8)
        ax.tick_params(labelsize=6)
    stack = fig.add_subplot(grid[:, cols])
    colors = ["tab:blue" if i in kept else "lightgray" for i in range(num_layers)]
    stack.barh(range(num_layers), list(switch_probabilities), color=colors, edgecolor="black")
    stack.set_xlim(0, 1)
    stack.set_yticks(range(num_layers))
    stack.set_yticklabels([f"L{i}" for i in range(num_layers)], fontsize=7)
    stack.set_xlabel("P(adapter)", fontsize=7)
    stack.set_title("layer stack\n(bottom = input)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return target


def plot_model(path: str | os.PathLike, model: Any, title: str = "") -> Path:
    """:func:`plot_run` for an :class:`~aa_deploy.modeling.AdaptableAdapterModel` (every layer it still has).

    Takes the model duck-typed, so that this module never imports torch.
    """
    rationals = {
        i: (r.numerator.detach().cpu().tolist(), r.denominator.detach().cpu().tolist())
        for i, r in model.rationals().items()
    }
    return plot_run(
        path,
        model.config.num_hidden_layers or 0,
        model.kept_layers(),
        model.switch_probabilities(),
        rationals,
        version=model.config.rational_version,
        title=title,
    )
