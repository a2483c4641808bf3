"""Load-time checks that an export folder agrees with itself: manifest, graph and backbone config.

An export whose manifest does not match its graph (more labels declared than the head produces, a
``max_length`` beyond the backbone's position embeddings, other input names) used to load fine and
then fail at predict time, taking the other tasks of its batch with it. These checks run once per
load, on the task's own graph, before the registry changes; a failure raises :class:`InvalidExport`
(HTTP 422) and nothing is published.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from aa_deploy.contract.families import SUPPORTED_FAMILIES
from aa_deploy.contract.layout import GRAPH_INPUTS, GRAPH_OUTPUT, MODEL_CONFIG_NAME
from aa_deploy.contract.manifest import ExportManifest

from .errors import InvalidExport


def backbone_positions(manifest: ExportManifest) -> int | None:
    """The longest input the backbone's position embeddings allow, from the export's ``config.json``
    through the family table; None when the folder has no config or an unknown family (the probe run
    of :func:`check_outputs` still catches an overflow then)."""
    path = manifest.folder / MODEL_CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    family = SUPPORTED_FAMILIES.get(str(config.get("model_type")))
    positions = config.get(family.positions_key) if family is not None else None
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    if family.positions_after_padding:  # type: ignore[union-attr]
        positions -= int(config.get("pad_token_id", 1) or 0) + 1
    return positions


def check_max_length(manifest: ExportManifest) -> None:
    limit = backbone_positions(manifest)
    if limit is not None and manifest.max_length > limit:
        raise InvalidExport(
            f"the manifest's max_length {manifest.max_length} exceeds the {limit} positions of the backbone "
            f"({MODEL_CONFIG_NAME}): longer inputs would fail at predict time; re-export with max_length <= {limit}"
        )


def check_io_names(manifest: ExportManifest, session: Any) -> None:
    """The graph's inputs are the manifest's (the server feeds exactly those) and it outputs logits."""
    graph_inputs = [i.name for i in session.get_inputs()]
    if set(graph_inputs) != set(manifest.inputs) or not set(graph_inputs) <= set(GRAPH_INPUTS):
        raise InvalidExport(
            f"the graph takes inputs {sorted(graph_inputs)} but the manifest declares {sorted(manifest.inputs)} "
            f"(allowed: {list(GRAPH_INPUTS)}); re-export the task"
        )
    outputs = [o.name for o in session.get_outputs()]
    if GRAPH_OUTPUT not in outputs:
        raise InvalidExport(f"the graph has outputs {outputs}, not {GRAPH_OUTPUT!r}; re-export the task")


def check_outputs(manifest: ExportManifest, logits: np.ndarray, rows: int) -> None:
    """The probe run's logits are [rows, num_labels] and finite."""
    expected = (rows, manifest.num_labels)
    if logits.ndim != 2 or tuple(logits.shape) != expected:
        raise InvalidExport(
            f"the graph returns logits of shape {list(logits.shape)} for {rows} probe inputs but the manifest "
            f"declares num_labels={manifest.num_labels} (expected {list(expected)}); re-export the task"
        )
    if not np.all(np.isfinite(logits)):
        raise InvalidExport("the graph returns non-finite logits on the probe inputs; re-export the task")
