"""Where a task comes from: a local export folder or a Hugging Face Hub repo id.

The server's source policy is applied here, before anything touches the file system or the network:

* ``allowed_roots``: the requested path is made absolute *lexically* (no ``stat``, no symlink lookup)
  and compared with the roots first; only a path inside a root is then looked at, its real path
  (symlinks followed) checked again, and its existence tested. Everything outside a root, and anything
  missing inside one, gets the same :data:`SOURCE_NOT_ALLOWED` answer, so a client cannot learn which
  paths exist on the server.
* ``allowed_hub_repos``: Hub ids must match one of these ``fnmatch`` patterns (``org/*``) before any
  download starts; the same neutral answer otherwise.

Without ``allowed_roots`` (the token holder may load any folder the server can read) the errors say
exactly what is wrong. Hub ids go through ``aa_deploy.hub.resolve_pretrained_path``, the project's one
Hub client (it imports no torch), imported only when a Hub id is actually used.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from pathlib import Path

from aa_deploy.contract.layout import DEFAULT_HUB_TIMEOUT_S, MANIFEST_NAME

from .errors import Forbidden, HubTimeout, TaskLoadError

# One answer for "outside the allowed roots", "missing", "a file, not a folder" and "Hub id not on the
# allow-list": neither the source nor the roots are echoed, so two refusals cannot be told apart.
SOURCE_NOT_ALLOWED = (
    "source not allowed or not found: this server loads only export folders under its allowed roots "
    "(--allow-root) and allow-listed Hub repos (--allow-hub-repo); ask its operator"
)
SOURCE_NOT_ALLOWED_CODE = "source_not_allowed"
# ``org/name``: the only Hub id form accepted, checked before the allow-list and before any request.
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def not_allowed() -> Forbidden:
    """The neutral refusal (403), the same for every source the policy keeps out."""
    return Forbidden(SOURCE_NOT_ALLOWED, code=SOURCE_NOT_ALLOWED_CODE)


def lexical_path(source: str) -> Path:
    """``source`` as an absolute, normalised path, computed from the string alone (``..`` removed, no
    file-system access), so it can be checked against the roots before anything is looked at."""
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(source))))


def _root_paths(allowed_roots: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """The roots as written (absolute, normalised) and with their symlinks resolved (the operator's own
    paths: safe to look at). A request may name a root either way (``/models`` linked to
    ``/data/models``); its real path must lie under a real root."""
    written = [lexical_path(root) for root in allowed_roots]
    return written + [Path(os.path.realpath(root)) for root in written], [Path(os.path.realpath(r)) for r in written]


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_hub_id(repo_id: str, allowed_hub_repos: Sequence[str] | None) -> None:
    """Raise the neutral refusal unless ``repo_id`` is a plain ``org/name`` matching an allow-list pattern
    (``None``: any Hub id)."""
    if allowed_hub_repos is None:
        return
    if not HUB_ID_PATTERN.match(repo_id) or ".." in repo_id:
        raise not_allowed()
    if not any(fnmatch.fnmatchcase(repo_id, pattern) for pattern in allowed_hub_repos):
        raise not_allowed()


def resolve_source(
    source: str,
    revision: str | None = None,
    *,
    allowed_roots: Sequence[str] | None = None,
    allow_hub: bool = True,
    allowed_hub_repos: Sequence[str] | None = None,
    token: str | None = None,
    hub_timeout_s: float = DEFAULT_HUB_TIMEOUT_S,
) -> Path:
    """Map a task source to a local export folder, downloading from the Hub if it is a repo id (which
    must finish within ``hub_timeout_s``: :class:`HubTimeout`, a 504, otherwise)."""
    if allowed_roots is not None:
        local = _restricted_local_folder(source, allowed_roots)
        if local is not None:
            return local
    else:
        expanded = Path(os.path.expanduser(source))
        if expanded.exists():
            if not expanded.is_dir():
                raise TaskLoadError(f"{source} is a file; pass the export folder that contains {MANIFEST_NAME}")
            return expanded
        if looks_like_path(source):
            raise TaskLoadError(f"export folder {source} does not exist: pass a folder written by `aa-deploy export`")
    if not allow_hub:
        raise TaskLoadError(f"{source} is not a local folder and loading from the Hub is disabled on this server")
    check_hub_id(source, allowed_hub_repos)
    from aa_deploy.hub import HubError, HubTimeoutError, resolve_pretrained_path

    try:
        return resolve_pretrained_path(
            source, revision=revision, token=token, required_file=MANIFEST_NAME, timeout_s=hub_timeout_s
        )
    except HubTimeoutError as exc:
        raise HubTimeout(f"cannot load {source!r} from the Hub: {exc}") from None
    except HubError as exc:
        raise TaskLoadError(f"cannot load {source!r} from the Hub: {exc}") from None


def _restricted_local_folder(source: str, allowed_roots: Sequence[str]) -> Path | None:
    """The export folder ``source`` names under the allowed roots; ``None`` when ``source`` is a Hub id
    (not path-like, and no such folder under a root); the neutral refusal for everything else. Nothing
    outside the roots is looked at: the check is on the string first."""
    either, real_roots = _root_paths(allowed_roots)
    written = lexical_path(source)
    if not _within(written, either):
        if looks_like_path(source):
            raise not_allowed()
        return None  # a Hub id (org/name): the Hub policy decides
    real = Path(os.path.realpath(written))
    if not _within(real, real_roots):  # a symlink inside a root pointing out of it
        raise not_allowed()
    if real.is_dir():
        return real
    if looks_like_path(source) or real.exists():
        raise not_allowed()
    return None
