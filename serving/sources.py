"""Where a task comes from: a local export folder or a Hugging Face Hub repo id.

Local folders are checked here (so the server's ``allowed_roots`` policy applies before anything is
read); Hub ids go through ``aa_deploy.hub.resolve_pretrained_path``, the project's one Hub client
(it imports no torch), imported only when a Hub id is actually used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from aa_deploy.contract.layout import MANIFEST_NAME

from .errors import Forbidden, TaskLoadError


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
    from aa_deploy.hub import HubError, resolve_pretrained_path

    try:
        return resolve_pretrained_path(source, revision=revision, token=token, required_file=MANIFEST_NAME)
    except HubError as exc:
        raise TaskLoadError(f"cannot load {source!r} from the Hub: {exc}") from None
