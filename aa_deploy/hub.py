"""The only module of aa-deploy that talks to the Hugging Face Hub.

Everything else (model ``from_pretrained``/``push_to_hub``, the exporter, the server) goes
through :func:`push_folder_to_hub` and :func:`resolve_pretrained_path`, so that Hub quirks,
authentication and error translation live in one place and the rest of the code only ever sees
local folders and the :class:`HubError` family. :func:`push_to_hub` and :func:`push_model_to_hub`
build on them to publish the *compact artefact* of a run or export folder (``aa-deploy push``).

Environment variables. ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``
and friends *once, at import time*, into ``huggingface_hub.constants``. Setting them later in the
same process (a CLI flag, a test) is silently ignored by the library. This module re-reads the two
that decide *where* we talk to and *whether* we may talk at all, ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE``, on every call, so a late setting can never send traffic to the wrong server or
to the network while offline was requested. Cache location and the stored login keep the
library's own (import-time) resolution: we do not want a second, diverging definition of where
the Hugging Face cache lives.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id
from huggingface_hub.utils import httpx as hub_http  # the HTTP client huggingface_hub itself uses

from .contract.layout import DEFAULT_HUB_TIMEOUT_S, LIBRARY_NAME

__all__ = [
    "EmptyFolderError",
    "HubAuthError",
    "HubDownloadError",
    "HubError",
    "HubOfflineError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "HubTimeoutError",
    "HubUploadError",
    "InvalidRepoIdError",
    "LocalFolderNotFoundError",
    "NotAnArtifactError",
    "is_hub_id",
    "push_folder_to_hub",
    "resolve_pretrained_path",
]

Patterns = str | Sequence[str] | None
T = TypeVar("T")

_NO_TOKEN_MESSAGE = "no Hugging Face token found: run `hf auth login` or set HF_TOKEN"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


# --------------------------------------------------------------------------------------- errors


class HubError(RuntimeError):
    """Base of every error this module raises, so callers can catch Hub trouble in one place."""


class HubAuthError(HubError):
    """No usable token, or the Hub rejected it: the user has to log in or fix HF_TOKEN."""


class HubRepoNotFoundError(HubError):
    """The repo does not exist, or it is private and we had no valid token for it.

    The Hub deliberately answers both cases identically (it does not reveal private repos), so
    the message always names both possibilities.
    """


class HubRevisionNotFoundError(HubError):
    """The repo exists but the requested branch, tag or commit does not."""


class HubOfflineError(HubError):
    """The Hub cannot be used (offline mode or unreachable) and the local cache cannot serve us."""


class HubDownloadError(HubError):
    """A download failed part-way; nothing half-written is kept, so re-running resumes cleanly."""


class HubTimeoutError(HubError):
    """The Hub endpoint did not finish an operation within the timeout (reachable but silent, or too slow)."""


class HubUploadError(HubError):
    """An upload or commit failed; commits are atomic, so the repo is left as it was."""


class NotAnArtifactError(HubError):
    """The folder or repo exists but is not an aa-deploy artifact (its marker file is missing)."""


class LocalFolderNotFoundError(HubError, FileNotFoundError):
    """A path that is clearly meant as a local folder does not exist (or is not a folder).

    Also a FileNotFoundError, so generic "missing path" handlers keep working.
    """


class EmptyFolderError(HubError, ValueError):
    """Refuse to push nothing: an empty commit would publish a repo that cannot be loaded."""


class InvalidRepoIdError(HubError, ValueError):
    """The string can be neither a Hub repo id nor an existing local folder."""


# ------------------------------------------------------------------------------------ helpers


def is_hub_id(s: str) -> bool:
    """Whether ``s`` is a syntactically valid Hub model id (``name`` or ``namespace/name``).

    Strings that look like local paths (``./x``, ``/x``, ``~/x``, ``a/b/c``, backslashes) are never
    Hub ids, even where the Hub's own validator would accept them, because treating a mistyped
    local path as a repo id would turn "file not found" into a confusing network error.
    """
    if not isinstance(s, str) or not s or _looks_like_local_path(s):
        return False
    try:
        validate_repo_id(s)
    except HFValidationError:
        return False
    return True


def _looks_like_local_path(s: str) -> bool:
    """Heuristic shared by :func:`is_hub_id` and the loader: explicit path syntax means "local"."""
    if s.startswith((".", "/", "~")):
        return True
    if s.count("/") > 1:
        return True
    separators = {os.sep, os.altsep, "\\"} - {None, "/"}
    return any(sep in s for sep in separators)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").upper() in constants.ENV_VARS_TRUE_VALUES


def _offline_requested() -> bool:
    """Offline mode, honouring a late ``HF_HUB_OFFLINE`` (the library only reads it at import)."""
    return constants.is_offline_mode() or _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def _endpoint() -> str:
    """The Hub endpoint, honouring a late ``HF_ENDPOINT`` (the library only reads it at import)."""
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or constants.ENDPOINT


def _as_list(patterns: Patterns) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def _require_token(token: str | bool | None) -> str:
    """Resolve the token for a write: explicit string, else HF_TOKEN, else the stored login.

    Resolved up front (rather than letting the first HTTP call fail with a 401) so that a missing
    login is reported before anything is created on the Hub.
    """
    if isinstance(token, str) and token:
        return token
    if token is False:
        raise HubAuthError(f"pushing needs a token but token=False was passed; {_NO_TOKEN_MESSAGE}")
    resolved = get_token()
    if not resolved:
        raise HubAuthError(_NO_TOKEN_MESSAGE)
    return resolved


def _api(token: str | bool | None) -> HfApi:
    """A fresh client per call: the library's module-level ``HfApi`` froze its endpoint at import."""
    return HfApi(endpoint=_endpoint(), token=token, library_name=LIBRARY_NAME)


def _rev_label(revision: str | None) -> str:
    return revision or constants.DEFAULT_REVISION


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` as a float, refused unless positive and finite (a wait must always end)."""
    value = float(timeout_s)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the Hub timeout must be a positive number of seconds, got {timeout_s!r}")
    return value


def _bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run the Hub operation ``fn`` and give up after ``timeout_s`` seconds with :class:`HubTimeoutError`.

    Why a deadline around the whole operation: huggingface_hub 2.x builds its shared httpx client with
    ``timeout=None`` and most ``HfApi`` methods take no timeout, and its retries multiply any per-request
    limit; a silent endpoint would hold the caller (and any lock it holds) forever. The operation runs in
    a daemon thread; on time-out the caller gets the error at once and the thread, left to the library's
    own per-request limits, cannot keep the process alive.
    """
    limit = check_timeout(timeout_s)
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=work, name="aa-deploy-hub", daemon=True).start()
    if not done.wait(limit):
        raise HubTimeoutError(
            f"the Hub at {_endpoint()} did not answer within {limit:g} s while {what}; check the network and "
            "HF_ENDPOINT, or raise the limit with --hub-timeout (AA_DEPLOY_HUB_TIMEOUT_S for a server)"
        )
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- push


def _collect_additions(folder: Path, allow_patterns: Patterns, ignore_patterns: Patterns) -> list[CommitOperationAdd]:
    """The files to commit, selected exactly like ``upload_folder`` would (same default ignores)."""
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    if not files:
        raise EmptyFolderError(f"cannot push {folder}: the folder is empty")
    ignore = (_as_list(ignore_patterns) or []) + list(DEFAULT_IGNORE_PATTERNS)
    selected = list(filter_repo_objects(files, allow_patterns=_as_list(allow_patterns), ignore_patterns=ignore))
    if not selected:
        raise EmptyFolderError(
            f"cannot push {folder}: no file is left after applying allow_patterns={allow_patterns!r}, "
            f"ignore_patterns={ignore_patterns!r} and the default ignores (.git/, .cache/huggingface/)"
        )
    return [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=files[rel]) for rel in selected]


@contextmanager
def _push_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Translate client exceptions raised while pushing into actionable :class:`HubError`s."""
    where = f"{repo_id}@{_rev_label(revision)}"
    try:
        yield
    except OfflineModeIsEnabled as err:
        raise HubOfflineError(f"cannot push {where}: offline mode is on; unset HF_HUB_OFFLINE") from err
    except LocalTokenNotFoundError as err:
        raise HubAuthError(_NO_TOKEN_MESSAGE) from err
    except RevisionNotFoundError as err:
        raise HubRevisionNotFoundError(
            f"cannot push to {where}: the Hub does not know that revision ({err.server_message or err})"
        ) from err
    except RepositoryNotFoundError as err:
        raise HubRepoNotFoundError(
            f"cannot push to {repo_id}: the Hub reports the repo as missing or not accessible with this token; "
            "check the repo id and that the token may write to its namespace"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise HubAuthError(
                f"the Hub rejected the token while pushing {where}: run `hf auth login --force` or fix HF_TOKEN"
            ) from err
        if status == 403:
            raise HubAuthError(
                f"the token may not write to {repo_id}: use a token with write access to that namespace"
            ) from err
        raise HubUploadError(
            f"pushing {where} failed (HTTP {status}): {err.server_message or err}. "
            "Nothing was committed; re-run to retry"
        ) from err
    except hub_http.HTTPError as err:
        raise HubUploadError(
            f"pushing {where} failed ({type(err).__name__}: {err}); check the network and HF_ENDPOINT="
            f"{_endpoint()}. Commits are atomic and re-running is safe: unchanged files make no new commit"
        ) from err


def _check_target(repo_id: str, revision: str | None) -> None:
    """Refuse a push target that can never work, before any file is read or request made."""
    if not is_hub_id(repo_id):
        raise InvalidRepoIdError(f"cannot push to {repo_id!r}: not a valid Hub repo id ('name' or 'namespace/name')")
    if revision is not None and _COMMIT_SHA.fullmatch(revision):
        raise ValueError(f"cannot push to revision {revision!r}: that is a commit id; pass a branch name")


def _commit(
    api: HfApi,
    additions: Sequence[CommitOperationAdd],
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    commit_message: str,
    timeout_s: float = DEFAULT_HUB_TIMEOUT_S,
) -> str:
    """Create the repo (and branch) if needed, then send every file in one atomic commit; return its URL.

    The whole exchange must finish within ``timeout_s`` (:class:`HubTimeoutError` otherwise; the commit is
    atomic, so the repo holds either all files or none of them)."""

    def send() -> str:
        full_repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and revision != constants.DEFAULT_REVISION:
            api.create_branch(full_repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(full_repo_id, list(additions), commit_message=commit_message, revision=revision)
        return commit.commit_url

    with _push_errors(repo_id, revision):
        return _bounded(send, timeout_s, f"pushing {repo_id}@{_rev_label(revision)}")


def push_folder_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    allow_patterns: Patterns = None,
    ignore_patterns: Patterns = None,
    timeout_s: float = DEFAULT_HUB_TIMEOUT_S,
) -> str:
    """Publish ``folder`` to the model repo ``repo_id`` as a single commit and return its URL.

    The repo is created if needed (``private`` only applies on creation; an existing repo keeps
    its visibility). With ``revision`` the commit goes to that branch, created from the default
    branch if missing.

    One commit, always: ``HfApi.upload_folder`` in huggingface_hub 2.4 switches to a streamed
    multi-commit pipeline whenever ``hf_xet`` is installed (it splits large folders and retries
    commit POSTs), which could publish a half-updated artifact (new weights, old config). We
    select files exactly as ``upload_folder`` does and send them through ``create_commit``,
    which the Hub applies atomically: either the whole folder lands or nothing does.
    """
    folder_path = Path(folder).expanduser()
    if not folder_path.is_dir():
        raise LocalFolderNotFoundError(f"cannot push {folder}: no such folder")
    _check_target(repo_id, revision)
    additions = _collect_additions(folder_path, allow_patterns, ignore_patterns)
    if _offline_requested():
        raise HubOfflineError(f"cannot push {repo_id}: offline mode is on; unset HF_HUB_OFFLINE")
    api = _api(_require_token(token))
    message = commit_message or f"Upload {folder_path.name} with {LIBRARY_NAME}"
    return _commit(
        api, additions, repo_id, private=private, revision=revision, commit_message=message, timeout_s=timeout_s
    )


# --------------------------------------------------------------------------------------- load


def _local_folder(name_or_path: str) -> Path | None:
    """The local folder ``name_or_path`` names, None if it should be looked up on the Hub.

    An existing folder always wins, even when the string is also a valid repo id: this is the
    convention of ``transformers`` and what users of a saved ``org/name`` folder expect.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LocalFolderNotFoundError(f"{name_or_path} is a file; expected a folder holding an artifact")
    if _looks_like_local_path(name_or_path):
        raise LocalFolderNotFoundError(f"no such local folder: {name_or_path}")
    if not is_hub_id(name_or_path):
        raise LocalFolderNotFoundError(
            f"{name_or_path!r} is neither an existing local folder nor a valid Hub repo id ('namespace/name')"
        )
    return None


def _required_names(required_file: str | Sequence[str] | None) -> list[str]:
    if required_file is None:
        return []
    return [required_file] if isinstance(required_file, str) else list(required_file)


def _check_artifact(folder: Path, required_file: str | Sequence[str] | None, what: str) -> Path:
    names = _required_names(required_file)
    if names and not any((folder / name).is_file() for name in names):
        raise NotAnArtifactError(f"{what} holds no aa-deploy adapter: {names[0]} is missing")
    return folder


@contextmanager
def _download_errors(repo_id: str, revision: str | None, offline: bool) -> Iterator[None]:
    """Translate client exceptions raised while downloading into actionable :class:`HubError`s.

    Order matters: the library's cache-miss errors are FileNotFoundErrors and its HTTP errors are
    OSErrors, so the specific cases come before the generic transport/IO fallback.
    """
    where = f"{repo_id}@{_rev_label(revision)}"
    try:
        yield
    except IncompleteSnapshotError as err:
        raise HubOfflineError(
            f"the cached copy of {where} is incomplete (an earlier download was interrupted) and the Hub "
            "cannot be used right now; re-run with network access to complete it"
        ) from err
    except LocalEntryNotFoundError as err:
        if offline or isinstance(err.__cause__, OfflineModeIsEnabled):
            raise HubOfflineError(
                f"{where} is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1): "
                "load it once with network access, or unset HF_HUB_OFFLINE"
            ) from err
        raise HubOfflineError(
            f"could not reach the Hub at {_endpoint()} and {where} is not in the local cache; "
            "check the network connection and HF_ENDPOINT"
        ) from err
    except RevisionNotFoundError as err:
        raise HubRevisionNotFoundError(
            f"repo {repo_id} has no revision {revision!r}: pass an existing branch, tag or commit id "
            "with --revision (or leave it unset for the default branch)"
        ) from err
    except RepositoryNotFoundError as err:
        raise HubRepoNotFoundError(
            f"{repo_id!r} is not a local folder, and the Hub has no repo {repo_id!r} that this token can see: "
            "either the id is wrong (check the spelling, and --revision), or the repo is private and you need "
            "a valid token (pass token=..., set HF_TOKEN or run `hf auth login`)"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise HubRepoNotFoundError(
                f"the Hub rejected the token while reading {where}: the repo may be private or missing, and the "
                "token is invalid; fix HF_TOKEN or run `hf auth login --force`"
            ) from err
        raise HubDownloadError(
            f"downloading {where} failed (HTTP {status}): {err.server_message or err}; re-run to retry"
        ) from err
    except (hub_http.HTTPError, OSError) as err:
        raise HubDownloadError(
            f"downloading {where} was interrupted ({type(err).__name__}: {err}); no partial file was kept, "
            "re-run to resume"
        ) from err


def resolve_pretrained_path(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    allow_patterns: Patterns = None,
    required_file: str | Sequence[str] | None = None,
    timeout_s: float = DEFAULT_HUB_TIMEOUT_S,
) -> Path:
    """Turn a local folder or a Hub repo id into a local folder holding the artifact.

    A local folder is returned as is (``revision`` does not apply to it). Anything else must be
    a Hub repo id; its snapshot is fetched into the Hugging Face cache (only what changed since
    the last download) and the cached snapshot folder is returned. A commit id as ``revision``
    pins the exact content; with ``HF_HUB_OFFLINE=1`` the cache alone is used.

    With ``required_file`` (one name, or alternatives of which one suffices: a current and a legacy
    name) the returned folder is guaranteed to contain it; this is how callers tell "not an aa-deploy
    artifact" apart from "not found". The file is always fetched even when ``allow_patterns`` would
    leave it out, since the check needs it. The download must finish
    within ``timeout_s`` seconds (:class:`HubTimeoutError` otherwise).
    """
    name = os.fspath(name_or_path)
    local = _local_folder(name)
    if local is not None:
        return _check_artifact(local, required_file, f"folder {name}")

    patterns = _as_list(allow_patterns)
    if patterns is not None:
        patterns.extend(name for name in _required_names(required_file) if name not in patterns)
    offline = _offline_requested()
    limit = check_timeout(timeout_s)
    with _download_errors(name, revision, offline):
        snapshot = _bounded(
            lambda: snapshot_download(
                name,
                revision=revision,
                token=token,
                allow_patterns=patterns,
                local_files_only=offline,
                endpoint=_endpoint(),
                library_name=LIBRARY_NAME,
                etag_timeout=limit,
            ),
            limit,
            f"downloading {name}@{_rev_label(revision)}",
        )
    return _check_artifact(Path(snapshot), required_file, f"repo {name}" + (f"@{revision}" if revision else ""))
