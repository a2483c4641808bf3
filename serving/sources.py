"""Where a task comes from: a local export folder or a Hugging Face Hub repo id.

``aa_deploy.hub.resolve_pretrained_path`` would do the Hub part, but importing ``aa_deploy`` imports
torch (its ``__init__`` loads the modelling code), and the serving image has no torch. So this module
talks to ``huggingface_hub`` directly, imported only when a Hub id is actually used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import Forbidden, TaskLoadError
from .manifest import MANIFEST_NAME


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def check_allowed(folder: Path, allowed_roots: Sequence[str] | None) -> None:
    if allowed_roots is None:
        return
    real = folder.resolve()
    for root in allowed_roots:
        base = Path(root).expanduser().resolve()
        if real == base or base in real.parents:
            return
    raise Forbidden(f"loading from {folder} is not allowed: the server only loads exports under {list(allowed_roots)}")


def resolve_source(
    source: str,
    revision: str | None = None,
    *,
    allowed_roots: Sequence[str] | None = None,
    allow_hub: bool = True,
    token: str | None = None,
) -> Path:
    """Map a task source to a local export folder, downloading from the Hub if it is a repo id."""
    expanded = Path(os.path.expanduser(source))
    if expanded.exists():
        if not expanded.is_dir():
            raise TaskLoadError(f"{source} is a file; pass the export folder that contains {MANIFEST_NAME}")
        check_allowed(expanded, allowed_roots)
        return expanded
    if looks_like_path(source):
        raise TaskLoadError(f"export folder {source} does not exist: pass a folder written by `aa-deploy export`")
    if not allow_hub:
        raise TaskLoadError(f"{source} is not a local folder and loading from the Hub is disabled on this server")
    return _download(source, revision, token)


def _download(repo_id: str, revision: str | None, token: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise TaskLoadError("loading from the Hub needs the huggingface_hub package: pip install huggingface_hub") from None
    try:
        folder = Path(snapshot_download(repo_id=repo_id, revision=revision, token=token))
    except HFValidationError as exc:
        raise TaskLoadError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id ({exc})") from None
    except RepositoryNotFoundError:
        raise TaskLoadError(f"Hub repo {repo_id!r} not found (or private: give the server a token)") from None
    except RevisionNotFoundError:
        raise TaskLoadError(f"revision {revision!r} of Hub repo {repo_id!r} not found") from None
    except LocalEntryNotFoundError:
        raise TaskLoadError(f"Hub repo {repo_id!r} is not cached and the Hub cannot be reached (offline?)") from None
    except Exception as exc:  # network and HTTP errors of all kinds: report, never crash the server
        raise TaskLoadError(f"downloading {repo_id!r} from the Hub failed: {exc}") from None
    if not (folder / MANIFEST_NAME).is_file():
        raise TaskLoadError(f"Hub repo {repo_id!r} is not an aa-deploy ONNX export (no {MANIFEST_NAME})")
    return folder
