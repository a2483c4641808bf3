"""Pushing the compact artefact of a run or export folder to the Hub (``aa-deploy push``).

The generic client (tokens, repo creation, one-commit uploads, downloads, errors) lives in
:mod:`aa_deploy.hub`; this module decides *what* goes up: only the kept layers' adapter files, the
records that explain them and a fresh model card, plus the ONNX graph on request.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi

from .contract.families import TOKENIZER_FILES
from .contract.layout import (
    BACKBONE_DATA_NAME,
    CONFIG_NAME,
    DEFAULT_HUB_TIMEOUT_S,
    GRAPH_NAME,
    LIBRARY_NAME,
    MANIFEST_NAME,
    METRICS_NAME,
    MODEL_CONFIG_NAME,
    PICTURE_NAME,
    SELECTION_NAME,
    WEIGHTS_NAME,
    adapter_files,
)
from .hub import (
    HubError,
    HubOfflineError,
    LocalFolderNotFoundError,
    NotAnArtifactError,
    _api,
    _bounded,
    _check_target,
    _commit,
    _offline_requested,
    _push_errors,
    _require_token,
    check_timeout,
)

__all__ = [
    "IncompleteArtifactError",
    "PushResult",
    "needs_pruning",
    "push_model_to_hub",
    "push_to_hub",
]


# -------------------------------------------------------------------------- compact artefacts
#
# What goes to the Hub is the smallest useful artefact: the adapter files of the kept layers, the
# records that explain them and a fresh model card. Generated files (pruned weights, card, picture)
# are written to a temporary staging folder that is always removed; the source folder is only read.

# Records pushed as they are when present (training_config.json stays local: it holds local paths).
_RECORD_FILES = (SELECTION_NAME, METRICS_NAME, MANIFEST_NAME, MODEL_CONFIG_NAME)


class IncompleteArtifactError(HubError, FileNotFoundError):
    """The folder is an artefact but lacks a file this push needs (weights, ``model.onnx``, its data)."""


@dataclass(frozen=True)
class PushResult:
    """What one push sent: the commit, the files (with their sizes) and whether a copy was pruned for it."""

    commit_url: str
    repo_id: str
    files: dict[str, int]
    pruned: bool = False
    kept_layers: tuple[int, ...] | None = None
    source_weights_bytes: int | None = None  # the unpruned weights the pruned copy replaced

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def onnx_data_bytes(self) -> int:
        return self.files.get(BACKBONE_DATA_NAME, 0)


def needs_pruning(config: Mapping[str, Any]) -> bool:
    """Whether an adapter config still carries adapters that never run at inference.

    A ``search`` run keeps every layer's adapter and switch until it is pruned; AdapterDrop with
    dropped evaluation layers keeps adapters it never uses. Pushing those would upload dead weight.
    """
    if config.get("pruned"):
        return False
    recipe = config.get("recipe")
    return recipe == "search" or (recipe == "adapterdrop" and int(config.get("adapterdrop_eval_layers") or 0) > 0)


def _read_adapter_config(folder: Path) -> dict[str, Any]:
    path = adapter_files(folder).config
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotAnArtifactError(f"{path} cannot be read ({err}): the folder is damaged") from err
    if not isinstance(data, dict):
        raise NotAnArtifactError(f"{path} is not a JSON object: the folder is damaged")
    return data


def _onnx_mode(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest.get("mode") if isinstance(manifest, dict) else None


def _artifact_files(folder: Path, with_onnx: bool) -> dict[str, Path]:
    """The source files of the compact artefact (never the ONNX graph or its data unless asked), by the
    name each gets in the repo: a folder of an older version (PEFT's file names) is pushed under today's
    names, so that the Hub copy is never mistaken for a PEFT adapter."""
    adapter = adapter_files(folder)
    if not adapter.config.is_file():
        raise NotAnArtifactError(
            f"{folder} holds no aa-deploy adapter: {CONFIG_NAME} is missing. Push a run folder "
            "(`aa-deploy train --output DIR`) or an export folder (`aa-deploy export RUN --output DIR`)"
        )
    if not adapter.weights.is_file():
        raise IncompleteArtifactError(
            f"{folder} has {adapter.config.name} but no {adapter.weights.name}: the folder is incomplete; re-run "
            "the training or export that wrote it"
        )
    names = (*_RECORD_FILES, *TOKENIZER_FILES)
    files = {CONFIG_NAME: adapter.config, WEIGHTS_NAME: adapter.weights}
    files.update({name: folder / name for name in names if (folder / name).is_file()})
    if not with_onnx:
        return files
    graph = folder / GRAPH_NAME
    if not graph.is_file():
        raise IncompleteArtifactError(
            f"--with-onnx: {folder} has no {GRAPH_NAME}, so it is not an export folder; run "
            f"`aa-deploy export {folder} --output OUT` and push OUT"
        )
    files[GRAPH_NAME] = graph
    mode = _onnx_mode(folder)
    data = folder / BACKBONE_DATA_NAME
    if mode == "shared" and not data.is_file():
        raise IncompleteArtifactError(
            f"{folder} is a shared-mode export but {BACKBONE_DATA_NAME} is missing, and ONNX Runtime needs it beside "
            f"{GRAPH_NAME}; re-run `aa-deploy export` (or export with --standalone)"
        )
    if mode == "shared" or (mode is None and data.is_file()):
        files[BACKBONE_DATA_NAME] = data
    return files


def _client_for_push(
    repo_id: str, revision: str | None, token: str | bool | None, timeout_s: float
) -> tuple[HfApi, str]:
    """A client with a resolved token, and the full ``namespace/name`` id (the card names it).

    Checked before any local work (pruning loads a backbone), so a missing login fails at once.
    """
    if _offline_requested():
        raise HubOfflineError(f"cannot push {repo_id}: offline mode is on; unset HF_HUB_OFFLINE")
    api = _api(_require_token(token))
    if "/" in repo_id:
        return api, repo_id
    with _push_errors(repo_id, revision):
        namespace = _bounded(lambda: api.whoami()["name"], timeout_s, f"checking the login to push {repo_id}")
    return api, f"{namespace}/{repo_id}"


def _plot_all_layers(model: Any, path: Path) -> None:
    """Draw every layer's learned curve from the unpruned model (the pruned copy lost the skipped ones)."""
    from .plotting import plot_model

    cfg = model.config
    plot_model(path, model, title=f"{(cfg.task or {}).get('name') or 'adapter'} · {cfg.recipe}")


def _stage_model(model: Any, staging: Path, source: Path | None) -> tuple[int, ...]:
    """Write the compact artefact of ``model`` (pruned when needed) and its records into ``staging``.

    Records of the source run folder (selection, metrics, picture) are kept as they are; a model
    without a folder gets its selection and picture computed here. Returns the kept layers.
    """
    from .fileio import atomic_write_json

    compact = model.pruned() if needs_pruning(model.config.to_dict()) else model
    compact.save_pretrained(staging)
    for name in (SELECTION_NAME, METRICS_NAME, PICTURE_NAME):
        if source is not None and (source / name).is_file():
            shutil.copyfile(source / name, staging / name)
    if not (staging / SELECTION_NAME).is_file():
        atomic_write_json(staging / SELECTION_NAME, model.selection())
    if not (staging / PICTURE_NAME).is_file():
        try:
            _plot_all_layers(model, staging / PICTURE_NAME)
        except Exception as err:  # noqa: BLE001 - the card draws the kept layers instead
            logging.getLogger(__name__).warning("no all-layer picture for the card (%s)", err)
    return tuple(compact.kept_layers())


def _staged_files(staging: Path) -> dict[str, Path]:
    return {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}


def _additions(files: Mapping[str, Path]) -> list[CommitOperationAdd]:
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in sorted(files.items())]


def _commit_files(
    api: HfApi,
    files: Mapping[str, Path],
    repo_id: str,
    private: bool,
    revision: str | None,
    message: str,
    timeout_s: float,
) -> tuple[str, dict[str, int]]:
    """Send ``files`` (repo path -> local file) in one commit; return its URL and the bytes pushed per file."""
    sizes = {name: path.stat().st_size for name, path in files.items()}
    url = _commit(
        api, _additions(files), repo_id, private=private, revision=revision, commit_message=message,
        timeout_s=timeout_s,
    )  # fmt: skip
    return url, sizes


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    with_onnx: bool = False,
    timeout_s: float = DEFAULT_HUB_TIMEOUT_S,
) -> PushResult:
    """Publish the compact artefact of a run or export folder to ``repo_id`` in one commit.

    Pushed: adapter config and weights, selection/metrics/manifest/config.json and tokenizer files
    where present, and a model card written for this repo. ``model.onnx`` (plus ``backbone.onnx_data``
    for a shared-mode export) only with ``with_onnx``. An unpruned ``search`` run is pruned first (in a
    staging folder), so only the kept layers' adapters are uploaded. The source folder is never
    modified, and the staging folder is removed even when the upload fails or is interrupted. Each
    exchange with the Hub (login check, then the commit) must finish within ``timeout_s`` seconds
    (:class:`aa_deploy.hub.HubTimeoutError` otherwise).
    """
    source = Path(folder).expanduser()
    if not source.is_dir():
        raise LocalFolderNotFoundError(f"cannot push {folder}: no such folder")
    _check_target(repo_id, revision)
    files = _artifact_files(source, with_onnx)
    config = _read_adapter_config(source)
    check_timeout(timeout_s)
    api, full_repo_id = _client_for_push(repo_id, revision, token, timeout_s)
    from .card import write_model_card

    with tempfile.TemporaryDirectory(prefix="aa-deploy-push-") as tmp:
        staging = Path(tmp)
        pruned = needs_pruning(config)
        kept: tuple[int, ...] | None = None
        if pruned:
            from .modeling import AdaptableAdapterModel  # torch: only for runs that need pruning

            kept = _stage_model(AdaptableAdapterModel.from_pretrained(source), staging, source)
        card_source = staging if pruned else source
        # The card describes exactly what this commit uploads (not, e.g., the local training_config.json).
        write_model_card(card_source, repo_id=full_repo_id, include_onnx=with_onnx, output_dir=staging, files=files)
        files.update(_staged_files(staging))
        url, sizes = _commit_files(
            api, files, full_repo_id, private, revision,
            commit_message or f"Upload {source.name} with {LIBRARY_NAME}", timeout_s,
        )  # fmt: skip
    return PushResult(
        commit_url=url, repo_id=full_repo_id, files=sizes, pruned=pruned, kept_layers=kept,
        source_weights_bytes=adapter_files(source).weights.stat().st_size if pruned else None,
    )  # fmt: skip


def push_model_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    timeout_s: float = DEFAULT_HUB_TIMEOUT_S,
) -> PushResult:
    """Publish an in-memory ``AdaptableAdapterModel``: its pruned compact artefact plus a card, one commit."""
    _check_target(repo_id, revision)
    check_timeout(timeout_s)
    api, full_repo_id = _client_for_push(repo_id, revision, token, timeout_s)
    from .card import write_model_card

    with tempfile.TemporaryDirectory(prefix="aa-deploy-push-") as tmp:
        staging = Path(tmp)
        kept = _stage_model(model, staging, source=None)
        write_model_card(staging, repo_id=full_repo_id, include_onnx=False)
        url, sizes = _commit_files(
            api, _staged_files(staging), full_repo_id, private, revision,
            commit_message or f"Upload adapter with {LIBRARY_NAME}", timeout_s,
        )  # fmt: skip
    return PushResult(
        commit_url=url, repo_id=full_repo_id, files=sizes, pruned=needs_pruning(model.config.to_dict()),
        kept_layers=kept,
    )  # fmt: skip
