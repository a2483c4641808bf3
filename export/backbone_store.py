"""A content-addressed store of exported backbones, and how each task folder gets its backbone file.

Why every task folder holds its own ``backbone.onnx_data``: ONNX Runtime (1.32) refuses external-data
paths that leave the model's folder ("External data path escapes model directory"), so a task's
``model.onnx`` cannot point at ``../backbone/…``; symbolic links are resolved to their target and
refused the same way; and the ``onnx`` package (1.23: ``onnx.load``, ``onnx.checker``, and so Optimum's
``ORTQuantizer``) refuses a data file with more than one hard link ("potential hardlink attack"). What
every tool accepts is a regular file of the folder with one link. So by default each folder gets its
own file: a *reflink* of the store copy where the file system supports it (Btrfs, XFS, bcachefs, ZFS
2.2+: one copy of the blocks on disk, copy-on-write), else a plain copy. ``--hardlink-backbone`` makes
it a hard link instead: one copy on disk on any file system, which ONNX Runtime, Optimum's ORTModel
and the server load, but the ``onnx`` package refuses. Either way a server maps one copy per backbone
in memory: it keys backbones by the content hash the manifest records, not by file.

Layout::

    STORE/objects/sha256-<hex>/backbone.onnx_data   the backbone's tensors (aligned, read-only)
    STORE/objects/sha256-<hex>/backbone.onnx        the bare backbone graph reading them (benchmarks)
    STORE/objects/sha256-<hex>/index.json           name → offset/length/dtype/dims/content digest
    STORE/refs/<settings key>.json                   (backbone content, exporter, optimise, quantise) → object

The bare backbone is exported through the very same pipeline as the tasks (export, canonical names,
fusions, quantisation), so a task tensor whose bytes equal a store tensor *is* that backbone tensor:
it is renamed to the store's canonical name and pointed at the store file by offset and length.
Task-specific tensors (adapters, head, small constants) stay inline in the task's ``model.onnx``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnx import ModelProto, TensorProto

from aa_deploy.contract.layout import BACKBONE_DATA_NAME, STORE_GRAPH_NAME, STORE_INDEX_NAME, STORE_STAGING_PREFIX
from aa_deploy.contract.manifest import COPY, HARDLINK, REFLINK
from aa_deploy.fileio import Leftover, atomic_write_json, leftover_pattern, owned_temp_dir, remove_stale_leftovers

from .onnx_protos import ensure_raw_data, rename_values, tensor_digest, value_names

logger = logging.getLogger("aa_deploy.export")

STORE_FORMAT = "aa-deploy-backbone-store"
STORE_FORMAT_VERSION = 1
# Tensors smaller than this stay inline in each graph (biases of tiny models, shape constants): sharing
# them saves nothing and would add an indirection per scalar. Same threshold onnx uses by default.
SHARE_MIN_BYTES = 1024
# Page-aligned offsets let ONNX Runtime memory-map the tensors straight from the file.
ALIGNMENT = 4096
# An object being written (STORE/objects/.put-<pid>-<random>); a killed export leaves it behind.
_STAGING_LEFTOVERS = leftover_pattern(re.escape(STORE_STAGING_PREFIX), ("",))


def default_store_path() -> Path:
    """``$AA_DEPLOY_HOME/backbones``, else ``~/.cache/aa_deploy/backbones``."""
    home = os.environ.get("AA_DEPLOY_HOME")
    if home:
        return Path(home).expanduser() / "backbones"
    return Path("~/.cache/aa_deploy/backbones").expanduser()


@dataclass(frozen=True)
class StoredTensor:
    name: str
    offset: int
    length: int
    data_type: int
    dims: tuple[int, ...]
    digest: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dims"] = list(self.dims)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredTensor:
        return cls(
            name=str(data["name"]),
            offset=int(data["offset"]),
            length=int(data["length"]),
            data_type=int(data["data_type"]),
            dims=tuple(int(d) for d in data["dims"]),
            digest=str(data["digest"]),
        )


@dataclass(frozen=True)
class StoreEntry:
    """One stored backbone: its folder, the data file's sha256 and the tensor index."""

    directory: Path
    sha256: str
    tensors: tuple[StoredTensor, ...]

    @property
    def data_path(self) -> Path:
        return self.directory / BACKBONE_DATA_NAME

    @property
    def graph_path(self) -> Path:
        return self.directory / STORE_GRAPH_NAME

    @property
    def data_bytes(self) -> int:
        return self.data_path.stat().st_size

    def by_digest(self) -> dict[str, list[StoredTensor]]:
        index: dict[str, list[StoredTensor]] = {}
        for tensor in self.tensors:
            index.setdefault(tensor.digest, []).append(tensor)
        return index


def settings_key(settings: dict[str, Any]) -> str:
    """Stable key of everything that determines the bare backbone's bytes."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:40]


class BackboneStore:
    """The store folder. Every write is atomic; concurrent exports of the same backbone are safe."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_store_path()

    # ------------------------------------------------------------------------------------ lookup
    def _ref_path(self, key: str) -> Path:
        return self.root / "refs" / f"{key}.json"

    def get(self, key: str) -> StoreEntry | None:
        """The entry recorded for these settings, or None (also when it was deleted or is damaged)."""
        ref = self._ref_path(key)
        if not ref.is_file():
            return None
        try:
            directory = self.root / "objects" / json.loads(ref.read_text())["object"]
            return self.load_entry(directory)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("backbone store entry %s is unusable (%s); exporting the backbone again", ref, exc)
            return None

    @staticmethod
    def load_entry(directory: Path) -> StoreEntry:
        index = json.loads((directory / STORE_INDEX_NAME).read_text())
        if index.get("format") != STORE_FORMAT or int(index.get("format_version", 0)) > STORE_FORMAT_VERSION:
            raise ValueError(f"{directory / STORE_INDEX_NAME} is not a backbone index this aa-deploy understands")
        entry = StoreEntry(
            directory=directory,
            sha256=str(index["sha256"]),
            tensors=tuple(StoredTensor.from_dict(t) for t in index["tensors"]),
        )
        if entry.data_bytes != int(index["data_bytes"]):
            raise ValueError(f"{entry.data_path} has the wrong size: the store copy is damaged")
        return entry

    # ------------------------------------------------------------------------------------- write
    def remove_stale_leftovers(self) -> list[Leftover]:
        """Remove objects half-written by exports that were killed (their PID is gone, and they are
        old); each export calls this, so a store never keeps such a copy of a backbone for long."""
        return remove_stale_leftovers(self.root / "objects", _STAGING_LEFTOVERS)

    def put(self, bare: ModelProto, key: str, settings: dict[str, Any]) -> StoreEntry:
        """Store the bare backbone graph's large tensors under their (canonical) names."""
        staging = owned_temp_dir(self.root / "objects", STORE_STAGING_PREFIX)
        try:
            graph = ModelProto()
            graph.CopyFrom(bare)
            tensors, digest = _write_data_file(graph, staging / BACKBONE_DATA_NAME)
            target = self.root / "objects" / f"sha256-{digest}"
            if not (target / STORE_INDEX_NAME).is_file():
                (staging / STORE_GRAPH_NAME).write_bytes(graph.SerializeToString())
                index = {
                    "format": STORE_FORMAT,
                    "format_version": STORE_FORMAT_VERSION,
                    "sha256": digest,
                    "data_file": BACKBONE_DATA_NAME,
                    "data_bytes": (staging / BACKBONE_DATA_NAME).stat().st_size,
                    "alignment": ALIGNMENT,
                    "settings": settings,
                    "tensors": [t.to_dict() for t in tensors],
                }
                (staging / STORE_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
                # Read-only: editing one task's hard link in place would silently change every task.
                os.chmod(staging / BACKBONE_DATA_NAME, 0o444)
                try:
                    os.replace(staging, target)
                except OSError as exc:  # another export published the same content first
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        entry = self.load_entry(target)
        atomic_write_json(self._ref_path(key), {"object": target.name, "settings": settings})
        return entry


def _write_data_file(graph: ModelProto, path: Path) -> tuple[list[StoredTensor], str]:
    """Move the graph's large initializers into ``path`` (aligned); return the index and sha256."""
    records: list[StoredTensor] = []
    sha = hashlib.sha256()
    offset = 0
    with open(path, "wb") as handle:
        for tensor in graph.graph.initializer:
            ensure_raw_data(tensor)
            data = tensor.raw_data
            if len(data) < SHARE_MIN_BYTES:
                continue
            padding = (-offset) % ALIGNMENT
            if padding:
                handle.write(b"\0" * padding)
                sha.update(b"\0" * padding)
                offset += padding
            records.append(
                StoredTensor(
                    tensor.name, offset, len(data), tensor.data_type, tuple(tensor.dims), tensor_digest(tensor)
                )
            )
            handle.write(data)
            sha.update(data)
            _point_to_external(tensor, BACKBONE_DATA_NAME, offset, len(data))
            offset += len(data)
    return records, sha.hexdigest()


def _point_to_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def share_backbone_tensors(task: ModelProto, entry: StoreEntry) -> list[str]:
    """Point every task initializer whose bytes equal a store tensor at the store file, in place.

    The initializer is renamed to the store's canonical name (so all task graphs of a backbone name
    its tensors alike and a server can share them by name) and becomes external data at the store
    tensor's offset in ``backbone.onnx_data``. Returns the canonical names shared, in store order.
    """
    by_digest = entry.by_digest()
    graph = task.graph
    initializer_names = {t.name for t in graph.initializer}
    other_values = value_names(graph) - initializer_names
    mapping: dict[str, str] = {}
    matches: list[tuple[TensorProto, StoredTensor]] = []
    shared: set[str] = set()
    for tensor in graph.initializer:
        ensure_raw_data(tensor)
        if len(tensor.raw_data) < SHARE_MIN_BYTES:
            continue
        for stored in by_digest.get(tensor_digest(tensor), []):
            if stored.name not in shared and stored.name not in other_values:
                mapping[tensor.name] = stored.name
                matches.append((tensor, stored))
                shared.add(stored.name)
                break
    # Unshared initializers that happen to carry a name now given to a shared one get a suffix.
    for tensor in graph.initializer:
        if tensor.name not in mapping and tensor.name in shared:
            mapping[tensor.name] = f"{tensor.name}.task"
    rename_values(graph, {old: new for old, new in mapping.items() if old != new})
    for tensor, stored in matches:
        _point_to_external(tensor, BACKBONE_DATA_NAME, stored.offset, stored.length)
    order = {t.name: i for i, t in enumerate(entry.tensors)}
    return sorted(shared, key=order.__getitem__)


# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): make ``destination`` share ``source``'s blocks.
_FICLONE = 0x40049409
# Errors meaning "this file system (or pair of paths) cannot do that", as opposed to real failures.
_UNSUPPORTED = (
    errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EACCES, errno.ENOSYS,
    errno.EINVAL, errno.ENOTTY, errno.EBADF,
)  # fmt: skip


def place_backbone_file(source: Path, destination: Path, *, hardlink: bool = False) -> str:
    """Give a task folder its backbone file; return how (``HARDLINK``, ``REFLINK`` or ``COPY``).

    Default: a file of its own (one link, so the ``onnx`` package accepts it), sharing the store
    copy's blocks where the file system can reflink, else a copy. ``hardlink``: a hard link to the
    store copy (one copy on disk anywhere; the ``onnx`` package refuses it); where a hard link is
    impossible (another file system) it falls back to the default, with a warning.
    """
    if hardlink:
        try:
            os.link(source, destination)
            return HARDLINK
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            message = (
                f"could not hard-link {destination.name} to the backbone store ({exc.strerror}); gave the folder "
                f"its own file instead. Put --backbone-store on the same file system as the output "
                f"({destination.parent}) to share it on disk."
            )
            warnings.warn(message, stacklevel=2)
            logger.warning(message)
    if _reflink(source, destination):
        return REFLINK
    shutil.copyfile(source, destination)
    return COPY


def _reflink(source: Path, destination: Path) -> bool:
    """Clone ``source`` into a new ``destination`` sharing its blocks (False where unsupported)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return False
    try:
        with open(source, "rb") as src, open(destination, "xb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                return True
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    destination.unlink(missing_ok=True)
    return False


def verify_external_data(model: ModelProto, directory: Path) -> None:
    """Check that every external tensor lies inside its file (catches a truncated backbone copy)."""
    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info["location"]
        if location not in sizes:
            sizes[location] = (directory / location).stat().st_size
        if int(info.get("offset", 0)) + int(info["length"]) > sizes[location]:
            raise ValueError(f"tensor {tensor.name} lies outside {location}: the backbone file is truncated")


__all__ = [
    "ALIGNMENT",
    "BackboneStore",
    "SHARE_MIN_BYTES",
    "StoreEntry",
    "StoredTensor",
    "default_store_path",
    "place_backbone_file",
    "settings_key",
    "share_backbone_tensors",
    "verify_external_data",
]
