"""A local stand-in for the Hugging Face Hub, so tests can drive the *real* huggingface_hub client.

Only the part of the Hub HTTP API that huggingface_hub 2.4 calls for ``aa_deploy.hub`` is served
(plus ``whoami``, which ``login()`` uses):

====================================================  =============================================
``GET  /api/whoami-v2``                               ``HfApi.whoami``, ``login()``
``POST /api/repos/create``                            ``create_repo``
``POST /api/validate-yaml``                           README.md check in ``create_commit``
``GET  /api/models/{repo}[/revision/{rev}]``          ``model_info``/``repo_info`` (snapshot start)
``GET  /api/models/{repo}/tree/{rev}[/{path}]``       ``list_repo_tree``/``list_repo_files``
``POST /api/models/{repo}/branch/{branch}``           ``create_branch``
``POST /api/models/{repo}/preupload/{rev}``           upload-mode negotiation
``POST /api/models/{repo}/commit/{rev}``              ``create_commit`` (NDJSON, inline base64)
``HEAD|GET /{repo}/resolve/{rev}/{path}``             ``hf_hub_download`` (metadata, body, Range)
====================================================  =============================================

The preupload answer is always ``"regular"``, so the client never attempts an LFS or Xet upload:
file contents travel base64-encoded inside the commit itself. Downloads never carry Xet headers, so
the client uses plain HTTP GETs. Anything else gets a 404, which makes an unexpected call visible
instead of silently "working".

Repos live in a temp folder: content-addressed blobs (git blob sha1, like the Hub's ETags) and one
JSON file per repo holding its branches and commits (40-hex ids). Knobs simulate failures:
``fail_next_download`` cuts connections mid-body, ``fail_next_commit`` makes commits fail.

``point_client_at`` redirects the huggingface_hub client (endpoint, cache, token, offline flag) to a
FakeHub, since the library freezes most of its environment variables at import time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from huggingface_hub.utils import httpx as hub_http  # the HTTP client huggingface_hub uses

DEFAULT_TOKEN = "hf_fake_write_token"
DEFAULT_USER = "fake-user"
DEFAULT_BRANCH = "main"
_INITIAL_FILE = ".gitattributes"
_INITIAL_CONTENT = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.onnx filter=lfs diff=lfs merge=lfs -text\n"
_API_ACTIONS = {"revision", "tree", "preupload", "commit", "branch"}
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")


def git_blob_sha(data: bytes) -> str:
    """The git object id of ``data``: what the Hub uses as ETag and oid for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers (other request threads) must never see a half-written repo file or blob."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class HubHTTPError(Exception):
    """An error answer, carrying the headers the client uses to pick its exception class."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] = (),
        extra: Mapping[str, Any] = (),
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers)
        self.extra = dict(extra)  # more JSON fields: the client reads e.g. "url" from a 409 on create


# ---------------------------------------------------------------------------------- storage


class RepoStore:
    """Repos on disk: branches, commits with full file trees, and content-addressed blobs.

    One lock serialises all access; the JSON files are small, so re-reading them per request keeps
    the disk the single source of truth (nothing to get out of sync).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._counter = 0

    def _repo_file(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id}.json"

    def _blob_file(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def load(self, repo_id: str) -> dict[str, Any] | None:
        with self._lock:
            path = self._repo_file(repo_id)
            return json.loads(path.read_text()) if path.is_file() else None

    def _save(self, repo_id: str, repo: dict[str, Any]) -> None:
        _atomic_write(self._repo_file(repo_id), json.dumps(repo, indent=1, sort_keys=True).encode())

    def put_blob(self, data: bytes) -> str:
        sha = git_blob_sha(data)
        if not self._blob_file(sha).is_file():
            _atomic_write(self._blob_file(sha), data)
        return sha

    def blob(self, sha: str) -> bytes:
        return self._blob_file(sha).read_bytes()

    def blob_size(self, sha: str) -> int:
        return self._blob_file(sha).stat().st_size

    def create(self, repo_id: str, private: bool) -> bool:
        """Create a repo with the Hub's usual first commit; False if it already exists."""
        with self._lock:
            if self.load(repo_id) is not None:
                return False
            repo = {"id": repo_id, "private": private, "createdAt": _now(), "branches": {}, "commits": {}}
            self._save(repo_id, repo)
            self.commit(repo_id, DEFAULT_BRANCH, {_INITIAL_FILE: _INITIAL_CONTENT}, message="initial commit")
            return True

    @staticmethod
    def resolve(repo: Mapping[str, Any], revision: str) -> str | None:
        """Branch name or full commit id -> commit id, None if unknown."""
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if _COMMIT_ID.fullmatch(revision) and revision in repo["commits"]:
            return revision
        return None

    def commit(
        self,
        repo_id: str,
        branch: str,
        files: Mapping[str, bytes],
        *,
        deleted: Iterable[str] = (),
        message: str = "",
        description: str = "",
        parent: str | None = None,
    ) -> str:
        """Apply one atomic commit on ``branch`` (created if the repo has no commit yet)."""
        with self._lock:
            repo = self.load(repo_id)
            if repo is None:
                raise KeyError(repo_id)
            head = repo["branches"].get(branch)
            if repo["branches"] and head is None:
                raise KeyError(branch)
            if parent is not None and parent != head:
                raise ValueError(f"parent commit {parent} is not the head of {branch} ({head})")
            tree = dict(repo["commits"][head]["tree"]) if head else {}
            for path in deleted:
                prefix = path.rstrip("/") + "/"
                tree = {p: s for p, s in tree.items() if p != path and not p.startswith(prefix)}
            for path, data in files.items():
                tree[path] = self.put_blob(data)
            self._counter += 1
            identity = json.dumps([repo_id, head, tree, message, self._counter, time.time_ns()]).encode()
            sha = hashlib.sha1(identity).hexdigest()
            repo["commits"][sha] = {
                "id": sha,
                "parent": head,
                "title": message,
                "description": description,
                "date": _now(),
                "tree": tree,
            }
            repo["branches"][branch] = sha
            self._save(repo_id, repo)
            return sha

    def create_branch(self, repo_id: str, branch: str, start: str) -> bool:
        with self._lock:
            repo = self.load(repo_id)
            if repo is None:
                raise KeyError(repo_id)
            if branch in repo["branches"]:
                return False
            repo["branches"][branch] = start
            self._save(repo_id, repo)
            return True


# ------------------------------------------------------------------------------- fault knobs


@dataclass
class _Faults:
    """Failures to inject into the next requests; consumed under the hub's lock."""

    downloads_left: int = 0
    download_cut_at: int | None = None  # file offset where the connection dies; None = half the file
    commits_left: int = 0
    commit_status: int = 500


@dataclass
class RequestRecord:
    method: str
    path: str
    authenticated: bool
    range: str | None = None  # the Range header: shows whether the client resumed a download


# ------------------------------------------------------------------------------------- server


class FakeHub:
    """A real HTTP server on 127.0.0.1 (ephemeral port) speaking the Hub API subset above.

    Usable as a context manager or through the ``fake_hub`` fixture. ``tokens`` maps each valid
    token to its user name (a plain iterable of tokens maps them all to ``fake-user``); any valid
    token may write anywhere, private repos are readable with any valid token.
    """

    def __init__(self, root: str | os.PathLike[str], tokens: Mapping[str, str] | Iterable[str] | None = None):
        self.store = RepoStore(Path(root))
        if tokens is None:
            tokens = {DEFAULT_TOKEN: DEFAULT_USER}
        self.tokens: dict[str, str] = dict(tokens) if isinstance(tokens, Mapping) else {t: DEFAULT_USER for t in tokens}
        self.token = next(iter(self.tokens), None)
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._requests: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        server = self._server = _Server(self)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.drop_connections()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running: use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # knobs -------------------------------------------------------------------------------

    def fail_next_download(self, times: int = 1, after_bytes: int | None = None) -> None:
        """Cut the next ``times`` file transfers that reach file offset ``after_bytes`` (default: half).

        Only a response that would really be truncated uses up a failure (files smaller than the
        offset go through), and a client resuming with a Range request past the offset is cut right
        after the headers. ``times=1`` is a glitch the client recovers from; a large ``times`` is an
        outage it has to give up on.
        """
        with self._lock:
            self._faults.downloads_left = times
            self._faults.download_cut_at = after_bytes

    def fail_next_commit(self, times: int = 1, status: int = 500) -> None:
        """Make the next ``times`` commit requests fail with ``status`` without changing anything."""
        with self._lock:
            self._faults.commits_left = times
            self._faults.commit_status = status

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def _take_download_fault(self, size: int, end: int) -> int | None:
        """The file offset where this response must be cut, or None to send it whole."""
        with self._lock:
            cut_at = size // 2 if self._faults.download_cut_at is None else self._faults.download_cut_at
            if self._faults.downloads_left <= 0 or cut_at >= end:
                return None
            self._faults.downloads_left -= 1
            return cut_at

    def _take_commit_fault(self) -> int | None:
        with self._lock:
            if self._faults.commits_left <= 0:
                return None
            self._faults.commits_left -= 1
            return self._faults.commit_status

    # inspection and seeding ---------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def repo_exists(self, repo_id: str) -> bool:
        return self.store.load(repo_id) is not None

    def is_private(self, repo_id: str) -> bool:
        return bool(self._repo(repo_id)["private"])

    def branches(self, repo_id: str) -> dict[str, str]:
        return dict(self._repo(repo_id)["branches"])

    def history(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> list[str]:
        """Commit ids reachable from ``revision``, newest first."""
        repo = self._repo(repo_id)
        sha, out = RepoStore.resolve(repo, revision), []
        while sha:
            out.append(sha)
            sha = repo["commits"][sha]["parent"]
        return out

    def files(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        repo = self._repo(repo_id)
        sha = RepoStore.resolve(repo, revision)
        if sha is None:
            raise KeyError(f"{repo_id} has no revision {revision}")
        return {path: self.store.blob(blob) for path, blob in repo["commits"][sha]["tree"].items()}

    def create_repo(self, repo_id: str, *, private: bool = False) -> None:
        self.store.create(repo_id, private)

    def commit_files(
        self, repo_id: str, files: Mapping[str, bytes], *, branch: str = DEFAULT_BRANCH, message: str = "seed"
    ) -> str:
        """Seed content without going through the client (e.g. a repo that is not an artifact)."""
        if not self.repo_exists(repo_id):
            self.create_repo(repo_id)
        return self.store.commit(repo_id, branch, files, message=message)

    def _repo(self, repo_id: str) -> dict[str, Any]:
        repo = self.store.load(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id} on the FakeHub")
        return repo


# -------------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP requests into RepoStore operations, with the Hub's auth and error rules."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every answer carries Content-Length
    server_version = "FakeHub/1.0"

    server: _Server

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log; requests are recorded on ``FakeHub.requests``."""

    # dispatch ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""  # always drain: keep-alive stays in sync
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        token = self._bearer_token()
        self.hub._record(RequestRecord(method, split.path, token is not None, self.headers.get("Range")))
        try:
            self.user = self._authenticate(token)
            self._route(method, segments)
        except HubHTTPError as err:
            self._send_error(err, head=method == "HEAD")

    def _route(self, method: str, seg: list[str]) -> None:
        if seg[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._send_json({"errors": [], "warnings": []})
        if seg[:2] == ["api", "models"] and len(seg) >= 3:
            repo_id, rest = _split_repo_id(seg[2:], _API_ACTIONS)
            action = rest[0] if rest else None
            if method == "GET" and action is None:
                return self._model_info(repo_id, DEFAULT_BRANCH)
            if method == "GET" and action == "revision" and len(rest) == 2:
                return self._model_info(repo_id, rest[1])
            if method == "GET" and action == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if method == "POST" and action == "branch" and len(rest) == 2:
                return self._create_branch(repo_id, rest[1])
            if method == "POST" and action == "preupload" and len(rest) == 2:
                return self._preupload(repo_id, rest[1])
            if method == "POST" and action == "commit" and len(rest) == 2:
                return self._commit(repo_id, rest[1])
        if "resolve" in seg[1:3] and method in ("GET", "HEAD"):
            repo_id, rest = _split_repo_id(seg, {"resolve"})
            if len(rest) >= 3:
                return self._resolve(repo_id, rest[1], "/".join(rest[2:]), head=method == "HEAD")
        raise HubHTTPError(404, f"FakeHub does not implement {method} {urlsplit(self.path).path}")

    # auth ----------------------------------------------------------------------------------

    def _bearer_token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return token.strip() or None if scheme == "Bearer" else None

    def _authenticate(self, token: str | None) -> str | None:
        if token is None:
            return None
        user = self.hub.tokens.get(token)
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _require_user(self) -> str:
        if self.user is None:
            raise HubHTTPError(401, "You must be authenticated to do this: pass a token")
        return self.user

    def _readable_repo(self, repo_id: str) -> dict[str, Any]:
        """The repo, or the Hub's deliberately vague answer for missing *and* private repos."""
        repo = self.hub.store.load(repo_id)
        if repo is None or (repo["private"] and self.user is None):
            if self.user is None:
                raise HubHTTPError(401, "Invalid username or password.", code="RepoNotFound")
            raise HubHTTPError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _revision(self, repo: Mapping[str, Any], revision: str) -> str:
        sha = RepoStore.resolve(repo, revision)
        if sha is None:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return sha

    # endpoints ---------------------------------------------------------------------------

    def _whoami(self) -> None:
        user = self._require_user()
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
            }
        )

    def _create_repo(self) -> None:
        user = self._require_user()
        payload = self._json_body()
        if payload.get("type") not in (None, "model"):
            raise HubHTTPError(400, "FakeHub only hosts model repos")
        name, namespace = payload.get("name"), payload.get("organization") or user
        if not name:
            raise HubHTTPError(400, "missing repo name")
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.url}/{repo_id}"
        if not self.hub.store.create(repo_id, payload.get("visibility") == "private"):
            raise HubHTTPError(409, f"You already created this model repo: {repo_id}", extra={"url": url})
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_id)
        sha = self._revision(repo, revision)
        commit = repo["commits"][sha]
        self._send_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo["private"],
                "gated": False,
                "disabled": False,
                "lastModified": commit["date"],
                "createdAt": repo["createdAt"],
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": [{"rfilename": p} for p in sorted(commit["tree"])],
            }
        )

    def _tree(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(repo_id)
        sha = self._revision(repo, revision)
        tree: dict[str, str] = repo["commits"][sha]["tree"]
        recursive = (self.query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for file_path, blob in sorted(tree.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": git_blob_sha(folder.encode())})
            if recursive or len(parts) == 1:
                size = self.hub.store.blob_size(blob)
                entries[file_path] = {"type": "file", "path": file_path, "oid": blob, "size": size}
        if prefix and not entries:
            raise HubHTTPError(404, f"{path} does not exist on {revision}", code="EntryNotFound")
        self._send_json(sorted(entries.values(), key=lambda e: e["path"]))

    def _create_branch(self, repo_id: str, branch: str) -> None:
        self._require_user()
        repo = self._readable_repo(repo_id)
        start = self._revision(repo, self._json_body().get("startingPoint") or DEFAULT_BRANCH)
        if not self.hub.store.create_branch(repo_id, branch, start):
            raise HubHTTPError(409, f"Reference already exists: refs/heads/{branch}")
        self._send_json({})

    def _preupload(self, repo_id: str, revision: str) -> None:
        self._require_user()
        repo = self._readable_repo(repo_id)
        tree = repo["commits"][self._revision(repo, revision)]["tree"]
        files = self._json_body().get("files", [])
        self._send_json(
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": tree.get(f["path"])}
                    for f in files
                ]
            }
        )

    def _commit(self, repo_id: str, revision: str) -> None:
        self._require_user()
        repo = self._readable_repo(repo_id)
        if "create_pr" in self.query:
            raise HubHTTPError(400, "FakeHub does not support pull requests")
        if revision not in repo["branches"]:
            self._revision(repo, revision)  # 404 RevisionNotFound when unknown
            raise HubHTTPError(400, f"cannot commit on {revision}: not a branch")
        header, files, deleted = self._parse_commit(self.body)
        status = self.hub._take_commit_fault()
        if status is not None:
            raise HubHTTPError(status, "FakeHub: injected commit failure")
        try:
            sha = self.hub.store.commit(
                repo_id,
                revision,
                files,
                deleted=deleted,
                message=header.get("summary", ""),
                description=header.get("description", ""),
                parent=header.get("parentCommit"),
            )
        except ValueError as err:
            raise HubHTTPError(412, str(err)) from err
        self._send_json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                "hookOutput": "",
            }
        )

    @staticmethod
    def _parse_commit(body: bytes) -> tuple[dict[str, Any], dict[str, bytes], list[str]]:
        header: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubHTTPError(400, "FakeHub expects base64-encoded files")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile, copies: never requested since preupload always answers "regular"
                raise HubHTTPError(400, f"FakeHub does not support commit operation {key!r}")
        return header, files, deleted

    def _resolve(self, repo_id: str, revision: str, path: str, *, head: bool) -> None:
        repo = self._readable_repo(repo_id)
        sha = self._revision(repo, revision)
        blob = repo["commits"][sha]["tree"].get(path)
        if blob is None:
            raise HubHTTPError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        data = self.hub.store.blob(blob)
        start, end, status = self._byte_range(len(data))
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{blob}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        if head:
            return self._send(status, b"", headers, content_length=end - start)
        cut_at = self.hub._take_download_fault(len(data), end)
        if cut_at is not None:
            return self._send_cut(status, data, start, end, cut_at, headers)
        self._send(status, data[start:end], headers)

    def _byte_range(self, size: int) -> tuple[int, int, int]:
        """(start, end-exclusive, status) for a single ``bytes=a-[b]`` Range; the client resumes with it."""
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
        if match is None:
            return 0, size, 200
        start = int(match.group(1))
        end = min(int(match.group(2)) + 1, size) if match.group(2) else size
        if start >= size or start >= end:
            raise HubHTTPError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return start, end, 206

    # responses ---------------------------------------------------------------------------

    def _json_body(self) -> dict[str, Any]:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubHTTPError(400, f"invalid JSON body: {err}") from err

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] = (), content_length: int | None = None):
        self.send_response(status)
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _send_error(self, err: HubHTTPError, *, head: bool) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        body = json.dumps({"error": err.message, **err.extra}).encode()
        self._send(err.status, b"" if head else body, headers, content_length=len(body))

    def _send_cut(self, status: int, data: bytes, start: int, end: int, cut_at: int, headers: Mapping[str, str]):
        """Promise the full body, deliver it up to file offset ``cut_at``, then drop the connection."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        self.wfile.write(data[start : max(start, min(cut_at, end))])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    """One thread per connection (the client downloads in parallel); threads die with the process.

    Open connections are tracked so that stopping the hub also drops the client's keep-alive
    connections: a stopped hub must be unreachable, not half-alive on already-open sockets.
    """

    daemon_threads = True

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _split_repo_id(segments: list[str], keywords: set[str]) -> tuple[str, list[str]]:
    """Split ``ns/name/<keyword>/...`` (or canonical ``name/<keyword>/...``) into (repo_id, rest)."""
    if len(segments) >= 2 and segments[1] in keywords:
        return segments[0], segments[1:]
    return "/".join(segments[:2]), segments[2:]


# ------------------------------------------------------------------------- client redirection


def point_client_at(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """Send every huggingface_hub call of this test to ``hub``, with a private cache and no login.

    huggingface_hub copies its environment into ``huggingface_hub.constants`` when it is imported,
    and builds the module-level ``HfApi`` (behind ``login``, ``whoami``, ``create_repo``...) with
    the endpoint of that moment, so setting environment variables in a test is not enough: the
    constants and that instance are patched too. The environment is still set, for subprocesses
    and for code (like ``aa_deploy.hub``) that re-reads it. Finally the shared HTTP client refuses
    any host but the FakeHub, so a missed setting fails loudly instead of reaching the real Hub.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    hf_home.mkdir(parents=True, exist_ok=True)
    cache = hf_home / "hub"
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_OIDC_RESOURCE",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "HUGGINGFACE_CO_STAGING",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_XET_CACHE",
        "HF_ASSETS_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    patches: dict[str, Any] = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)

    allowed = urlsplit(hub.url).netloc

    def refuse_other_hosts(request: hub_http.Request) -> None:
        if request.url.netloc.decode() != allowed:
            raise RuntimeError(f"test tried to reach {request.url} instead of the FakeHub at {hub.url}")

    def guarded_client() -> hub_http.Client:
        client = _http.default_client_factory()
        client.event_hooks["request"].append(refuse_other_hosts)
        return client

    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", guarded_client)  # undone at teardown
    _http.close_session()  # the next call builds a guarded client


# ------------------------------------------------------------------------------------ fixtures


# Registered under short names; import the *_fixture functions into a test module to use them.
@pytest.fixture(name="fake_hub")
def fake_hub_fixture(tmp_path: Path) -> Iterator[FakeHub]:
    """A running FakeHub with one valid token (``hub.token``), stopped after the test."""
    with FakeHub(tmp_path / "fake-hub-storage") as hub:
        yield hub


@pytest.fixture(name="hub_client")
def hub_client_fixture(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """``fake_hub`` with the huggingface_hub client pointed at it (isolated HF_HOME, no token)."""
    from huggingface_hub.utils import _http

    point_client_at(fake_hub, monkeypatch, tmp_path / "hf-home")
    yield fake_hub
    _http.close_session()  # drop pooled connections to this test's server
