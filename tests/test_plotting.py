"""The run picture (activations.png): labelled axes, honest y-scales, the switch threshold, readable fonts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aa_deploy.plotting import activation_figure, plot_run

# Numerator/denominator coefficients: a tame curve (about ±4) and a wild one (about ±1000 at |x| = 4).
TAME = ([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
WILD = ([0.0, 1.0, 0.0, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0])
MIN_POINTS = 10  # at half size on a card, smaller text is unreadable


def layer_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_title().startswith("layer ")]


def all_font_sizes(fig) -> list[float]:
    sizes = [fig._suptitle.get_fontsize()] if fig._suptitle else []
    for ax in fig.axes:
        sizes += [ax.title.get_fontsize(), ax.xaxis.label.get_fontsize(), ax.yaxis.label.get_fontsize()]
        sizes += [t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return sizes


def test_search_run_picture_shows_the_threshold_labels_and_title() -> None:
    fig = activation_figure(3, [0, 2], [0.9, 0.3, 0.7], {0: TAME, 1: TAME, 2: TAME}, "A",
                            title="sentiment · search · accuracy=0.700 (dev split)", has_switches=True)  # fmt: skip
    assert fig._suptitle.get_text().startswith("sentiment · search")
    panels = layer_axes(fig)
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["layer 0: kept", "layer 1: skipped", "layer 2: kept"]
    assert all(ax.get_xlabel() == "pre-activation x" for ax in panels)
    assert panels[0].get_ylabel() == "f(x)"
    (switches,) = [ax for ax in fig.axes if ax.get_xlabel() == "switch P(adapter)"]
    threshold = [line for line in switches.get_lines() if list(line.get_xdata()) == [0.5, 0.5]]
    assert threshold and "threshold 0.5" in threshold[0].get_label()
    assert min(all_font_sizes(fig)) >= MIN_POINTS


def test_comparable_curves_share_one_y_scale() -> None:
    fig = activation_figure(3, [0, 1, 2], [1.0] * 3, {0: TAME, 1: TAME, 2: ([0.0, 2.0, 0, 0, 0, 0], [0, 0, 0, 0])}, "A")
    limits = {tuple(np.round(ax.get_ylim(), 6)) for ax in layer_axes(fig)}
    assert len(limits) == 1
    assert "differ" not in fig._suptitle.get_text()


def test_very_different_ranges_are_said_to_have_their_own_scales() -> None:
    fig = activation_figure(2, [0, 1], [0.9, 0.8], {0: TAME, 1: WILD}, "A", title="t", has_switches=True)
    assert "y-scales differ per panel" in fig._suptitle.get_text()
    assert layer_axes(fig)[0].get_ylabel() == "f(x) (own scale)"


def test_standard_run_has_no_switch_panel() -> None:
    fig = activation_figure(2, [0, 1], [1.0, 1.0], {}, "A", title="sentiment · standard")
    assert not [ax for ax in fig.axes if "switch" in ax.get_xlabel()]
    assert all("ReLU" in ax.get_title() for ax in layer_axes(fig))


@pytest.mark.parametrize("num_layers", [1, 6, 12])
def test_plot_run_writes_a_png(num_layers: int, tmp_path: Path) -> None:
    path = plot_run(tmp_path / "a.png", num_layers, [0], [0.6] + [0.2] * (num_layers - 1),
                    {i: TAME for i in range(num_layers)}, "A", title="x", has_switches=True)  # fmt: skip
    assert path.read_bytes().startswith(b"\x89PNG")
