"""The card's picture: each layer's learned activation and the layer stack (``activations.png``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

# The name `aa-deploy train` gives the same picture: a run folder's picture is reused as it is.
from ..contract.layout import PICTURE_NAME
from ..fileio import atomic_write_with
from .artifact import Artifact
from .facts import results_of

log = logging.getLogger("aa_deploy.card")


def ensure_picture(art: Artifact, output_dir: Path) -> list[str]:
    """Put the activation/layer-stack picture into ``output_dir``; return the picture names written.

    A picture already in the source folder (the one ``aa-deploy train`` draws from the unpruned run,
    with every layer's curve) is reused as is: it is the more informative one, and drawing is the slow
    part of the card. Drawing failures only drop the picture; they never fail the caller.
    """
    source = art.folder / PICTURE_NAME
    target = output_dir / PICTURE_NAME
    try:
        if source.is_file():
            if source.resolve() != target.resolve():
                atomic_write_with(target, lambda tmp: shutil.copyfile(source, tmp))
            return [PICTURE_NAME]
        n = art.num_layers
        if n <= 0:
            return []
        from ..plotting import plot_run

        results = results_of(art)
        score = (
            f" · {results.metric}={results.dev_split:.3f} (dev split)"
            if results and results.dev_split is not None
            else ""
        )
        plot_run(
            target,
            n,
            art.kept_layers(),
            art.switch_probabilities(),
            art.tensors.rationals if art.tensors else {},
            version=str(art.config.get("rational_version") or "A"),
            title=f"{art.task_name or 'adapter'} · {art.recipe}{score}",
            has_switches=art.recipe == "search",
        )
        return [PICTURE_NAME]
    except Exception as exc:  # noqa: BLE001 - a picture is never worth failing an export or a push
        log.warning("model card: no picture for %s (%s)", art.folder, exc)
        return []
