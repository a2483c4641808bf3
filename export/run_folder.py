"""Reading a training run folder (or a Hub id of one) with errors that say what is wrong."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aa_deploy.config import AdapterConfig
from aa_deploy.contract.layout import (
    ADAPTER_CONFIG_NAMES,
    CONFIG_NAME,
    KEPT_LAYERS_KEY,
    METRICS_NAME,
    SELECTION_NAME,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_files,
)

from .errors import RunFolderError


@dataclass
class RunFolder:
    """The files of a run folder the compiler uses (the optional ones may be None)."""

    directory: Path
    reference: str
    config: AdapterConfig
    selection: dict[str, Any] | None
    metrics: dict[str, Any] | None
    training: dict[str, Any] | None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(
            f"{path} is not valid JSON ({exc}): the run folder is damaged; retrain or restore it"
        ) from exc
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} should hold a JSON object: the run folder is damaged")
    return data


def resolve_run_folder(run_dir: str | os.PathLike) -> Path:
    """A local folder as is; anything else is tried as a Hub id (via aa_deploy.hub)."""
    text = os.fspath(run_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise RunFolderError(f"{run_dir} is a file; expected a run folder written by `aa-deploy train`")
    from aa_deploy.hub import HubError, is_hub_id, resolve_pretrained_path

    if not is_hub_id(text):
        raise RunFolderError(f"run folder {run_dir} does not exist: pass the --output folder of `aa-deploy train`")
    try:
        return Path(resolve_pretrained_path(text, required_file=ADAPTER_CONFIG_NAMES))
    except HubError as exc:
        raise RunFolderError(
            f"{run_dir!r} is not a local folder and could not be used as a Hub repo id ({exc})"
        ) from exc


def read_run_folder(run_dir: str | os.PathLike) -> RunFolder:
    """Check that the run folder is complete and self-consistent before anything heavy is loaded."""
    directory = resolve_run_folder(run_dir)
    files = adapter_files(directory)
    if not files.config.is_file():
        raise RunFolderError(
            f"{directory} has no {CONFIG_NAME}: it is not a run folder of `aa-deploy train` (or it is incomplete)"
        )
    if not files.weights.is_file():
        raise RunFolderError(
            f"{directory} has {files.config.name} but no {files.weights.name}: the run folder is incomplete; "
            "retrain or restore it"
        )
    try:
        config = AdapterConfig.load(directory)
    except (ValueError, TypeError) as exc:
        raise RunFolderError(f"{files.config} cannot be used: {exc}") from exc
    if not config.task:
        raise RunFolderError(
            f"{files.config} records no task (labels, metric): only run folders written by "
            "`aa-deploy train` (or models built with a task) can be exported"
        )
    selection = _read_json(directory / SELECTION_NAME)
    if selection is not None and not isinstance(selection.get(KEPT_LAYERS_KEY), list):
        raise RunFolderError(f"{directory / SELECTION_NAME} has no {KEPT_LAYERS_KEY} list: the file is damaged")
    return RunFolder(
        directory=directory,
        reference=os.fspath(run_dir),
        config=config,
        selection=selection,
        metrics=_read_json(directory / METRICS_NAME),
        training=_read_json(directory / TRAINING_CONFIG_NAME),
    )


def check_selection(run: RunFolder, kept_layers: list[int]) -> None:
    """selection.json must agree with the switch logits saved in the weights (same run, same epoch)."""
    if run.selection is None:
        return
    recorded = sorted(int(i) for i in run.selection[KEPT_LAYERS_KEY])
    if recorded != sorted(kept_layers):
        raise RunFolderError(
            f"{run.directory / SELECTION_NAME} lists layers {recorded} but the switch logits in {WEIGHTS_NAME} "
            f"select {sorted(kept_layers)}: the files come from different runs or epochs; retrain or restore the folder"
        )
