"""Build and write the model card: read the folder, compute the template's variables, render the template.

The card is ``model_card.md.j2`` (shipped with the package) rendered by
:meth:`huggingface_hub.ModelCard.from_template`, which puts the Hub metadata in the YAML header.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from huggingface_hub import ModelCard

from ..contract.layout import BACKBONE_DATA_NAME, CARD_NAME, GRAPH_NAME
from ..fileio import atomic_write_text
from . import sections
from .artifact import Artifact, read_artifact
from .facts import results_of, sizes_of
from .picture import PICTURE_NAME, ensure_picture

TEMPLATE = Path(__file__).with_name("model_card.md.j2")

log = logging.getLogger("aa_deploy.card")
_T = TypeVar("_T")


def _safely(what: str, build: Callable[[], _T], default: _T) -> _T:
    """Build one optional part of the card; malformed inputs drop that part instead of failing the caller."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - any malformed optional input must only cost its section
        log.warning("model card: %s left out (%s)", what, exc)
        return default


def artefact_files(folder: Path, include_onnx: bool | None) -> list[str]:
    """The names of the files that travel with the card: the folder's, without the ONNX graph and its
    data when they stay behind (``include_onnx=False``, e.g. a push without ``--with-onnx``)."""
    names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    if include_onnx is False:
        names = [n for n in names if n not in (GRAPH_NAME, BACKBONE_DATA_NAME)]
    return names


def render(
    art: Artifact,
    pictures: Sequence[str],
    repo_id: str | None,
    include_onnx: bool | None,
    files: Collection[str] | None = None,
) -> ModelCard:
    """The card of ``art``; a section whose inputs are malformed is left out (``None`` in the template).

    ``files`` are the names of the files that travel with the card (default: the folder's, see
    :func:`artefact_files`); the card's statements about its contents are derived from them.
    """
    names = set(artefact_files(art.folder, include_onnx) if files is None else files) | set(pictures)
    with_onnx = GRAPH_NAME in names
    target = repo_id or sections.PLACEHOLDER_REPO
    model_name = target.rsplit("/", 1)[-1] if repo_id else f"{sections.slug(art.task_name or 'task')}-adaptable-adapter"
    results = _safely("results", lambda: results_of(art), None)
    kept = _safely("layer selection", art.kept_layers, [])
    data = _safely(
        "metric metadata",
        lambda: sections.card_data(art, results, with_onnx, model_name),
        sections.card_data(art, None, with_onnx, model_name),
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        title=model_name,
        intro=sections.intro(art, kept),
        results=_safely("results", lambda: sections.results_table(results), None),
        layers=_safely("selected layers", lambda: sections.layers(art, kept, pictures), None),
        sizes=_safely("size comparison", lambda: sections.sizes(sizes_of(art, kept)), None),
        latency=_safely("latency saving", lambda: sections.latency_saving(art), None),
        onnx=_safely("ONNX report", lambda: sections.onnx_report(art, names), None),
        usage=sections.usage(art, target),
        contents=sections.contents(art, names),
        onnx_usage=_safely("ONNX Runtime snippet", lambda: sections.onnx_usage(art, names, target), None),
        training=_safely("training settings", lambda: sections.training(art), None),
    )


def build_model_card(
    folder: str | os.PathLike[str], *, repo_id: str | None = None, include_onnx: bool | None = None
) -> ModelCard:
    """The card of a run folder or an export folder, without writing anything.

    ``repo_id`` is the repo the card will live in (used in the loading instructions); ``include_onnx``
    says whether ``model.onnx`` travels with the card (default: whether the folder has one), which
    decides the ``onnx`` tag. The picture is referenced only if the folder already has it; use
    :func:`write_model_card` to draw it.
    """
    directory = Path(folder)
    art = read_artifact(directory)
    pictures = [PICTURE_NAME] if (directory / PICTURE_NAME).is_file() else []
    return render(art, pictures, repo_id, include_onnx)


def write_model_card(
    folder: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    include_onnx: bool | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    files: Collection[str] | None = None,
) -> Path:
    """Write README.md and its picture into ``output_dir`` (default: ``folder``) and return the README path.

    ``files``: the names of the files that will travel with the card (default: ``folder``'s, without the
    ONNX files when ``include_onnx`` is False); what the card says about its contents follows from them.
    The README is replaced atomically. Only a missing or unreadable ``adapter_config.json`` is an error;
    any other missing input just leaves its section out, so an export never fails because of its card.
    """
    directory = Path(folder)
    art = read_artifact(directory)
    out = Path(output_dir) if output_dir is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    pictures = ensure_picture(art, out)
    card = render(art, pictures, repo_id, include_onnx, files)
    path = out / CARD_NAME
    atomic_write_text(path, str(card))
    return path
