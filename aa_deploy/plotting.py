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


# Shared y-scale across the layer panels unless their ranges differ by more than this factor; then
# each panel keeps its own scale and says so (a ±500 curve beside a ±5 one would look flat otherwise).
SHARED_SCALE_MAX_RATIO = 10.0
# Font sizes (points) chosen to stay legible when the picture is shown at half size on a model card.
_FONTS = {"font.size": 14, "axes.titlesize": 14, "axes.labelsize": 14, "xtick.labelsize": 12,
          "ytick.labelsize": 12, "figure.titlesize": 16, "legend.fontsize": 12}  # fmt: skip
X_RANGE = (-4.0, 4.0)


def _curves(num_layers: int, rationals: dict[int, tuple[Sequence[float], Sequence[float]]], version: str,
            x: np.ndarray) -> list[tuple[np.ndarray, str]]:  # fmt: skip
    """Each layer's curve and its kind: the learned rational, ReLU (standard adapters) or nothing."""
    curves = []
    for layer in range(num_layers):
        if layer in rationals:
            num, den = rationals[layer]
            curves.append((rational_curve(num, den, x, version), "learned rational"))
        elif rationals:
            # A rational recipe whose layer has no adapter (pruned away): nothing to draw but the axis.
            curves.append((np.full_like(x, np.nan), "no adapter"))
        else:
            curves.append((np.maximum(x, 0.0), "ReLU"))
    return curves


def _scales_are_comparable(curves: list[tuple[np.ndarray, str]]) -> bool:
    spans = [float(np.nanmax(np.abs(y))) for y, _ in curves if np.isfinite(y).any()]
    spans = [s for s in spans if s > 0]
    return not spans or max(spans) / min(spans) <= SHARED_SCALE_MAX_RATIO


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed; servers and CI have none)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_run(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
    """Draw :func:`activation_figure` (same arguments after ``path``) into the PNG file ``path``, atomically."""
    plt = _pyplot()
    fig = activation_figure(*args, **kwargs)
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return target


def activation_figure(
    num_layers: int,
    kept_layers: Sequence[int],
    switch_probabilities: Sequence[float],
    rationals: dict[int, tuple[Sequence[float], Sequence[float]]],
    version: str = "A",
    title: str = "",
    has_switches: bool | None = None,
) -> Any:
    """The figure of a run: one panel per layer (its activation ``f(x)`` over the adapter's pre-activation ``x``) and, for runs
    with switches, each layer's switch probability against the 0.5 threshold that decides.

    ``has_switches`` None means: switches exist when some probability lies strictly between 0 and 1
    (layers without a switch report exactly 1 or 0).
    """
    plt = _pyplot()
    if has_switches is None:
        has_switches = any(0.0 < float(p) < 1.0 for p in switch_probabilities)
    x = np.linspace(*X_RANGE, 401)
    curves = _curves(num_layers, rationals, version, x)
    shared = _scales_are_comparable(curves)
    kept = set(kept_layers)
    cols = min(num_layers, 3 if num_layers <= 9 else 4)  # compact, so that it can be shown small
    rows = (num_layers + cols - 1) // cols
    extra = 1 if has_switches else 0
    with plt.rc_context(_FONTS):
        fig = plt.figure(figsize=(3.4 * cols + 3.6 * extra, 3.0 * rows + 1.5))
        grid = fig.add_gridspec(rows, cols + extra, width_ratios=[1.0] * cols + [1.25] * extra)
        first_ax = None
        for layer, (y, kind) in enumerate(curves):
            ax = fig.add_subplot(grid[layer // cols, layer % cols], sharey=first_ax if shared else None)
            first_ax = first_ax or ax
            is_kept = layer in kept
            ax.plot(x, y, color="tab:blue" if is_kept else "darkgray", lw=2.2, ls="-" if is_kept else "--")
            ax.set_xlim(*X_RANGE)
            if not np.isfinite(y).any():
                ax.text(0.5, 0.5, "no adapter", transform=ax.transAxes, ha="center", va="center", color="dimgray")
            ax.axhline(0, color="black", lw=0.6)
            ax.axvline(0, color="black", lw=0.6)
            state = "kept" if is_kept else "skipped"
            ax.set_title(f"layer {layer}: {state}\n{kind}", color="black" if is_kept else "dimgray")
            ax.grid(alpha=0.3)
            if layer // cols == rows - 1 or layer + cols >= num_layers:
                ax.set_xlabel("pre-activation x")
            if layer % cols == 0:
                ax.set_ylabel("f(x)" if shared else "f(x) (own scale)")
            elif shared:
                ax.tick_params(labelleft=False)
        if has_switches:
            stack = fig.add_subplot(grid[:, cols])
            colors = ["tab:blue" if i in kept else "lightgray" for i in range(num_layers)]
            stack.barh(range(num_layers), list(switch_probabilities), color=colors, edgecolor="black")
            stack.axvline(0.5, color="tab:red", ls="--", lw=1.8, label="threshold 0.5: kept if above")
            stack.set_xlim(0, 1)
            stack.set_xticks([0, 0.5, 1])
            stack.set_yticks(range(num_layers))
            stack.set_yticklabels([f"layer {i}" for i in range(num_layers)])
            stack.set_xlabel("switch P(adapter)")
            # The threshold is named in the title: a legend below the axis would collide with its label.
            stack.set_title("switches (bottom = input)\nkept if right of red 0.5")
        heading = title or "learned activations"
        if not shared:
            heading += "\n(y-scales differ per panel: each layer's curve has its own range)"
        fig.suptitle(heading)
        fig.tight_layout()
    return fig


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
        has_switches=bool(model.config.uses_switch),
    )
