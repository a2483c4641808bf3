"""The shared backbone: its tensors are read once from ``backbone.onnx_data`` and handed to every session.

``backbone.onnx_data`` is memory-mapped (numpy memmap) and each tensor becomes an ``OrtValue`` viewing
the mapping, passed to ONNX Runtime with ``SessionOptions.add_initializer``. ORT then uses the caller's
buffer instead of loading its own copy, so N sessions (per-task sessions, or the prefix/suffix halves of
a multi-task graph, or an old and a new graph during a hot reload) cost one backbone in memory. The
mapping is read-only and file-backed, so the pages are also shared with other processes on the host.

Backbones are keyed by the content hash the manifest records (``backbone_data.sha256``), not by file:
each export folder holds its own ``backbone.onnx_data`` (a reflink or a copy of the export's store copy,
so that the ``onnx`` package accepts the folder; a hard link in older exports or with
``--hardlink-backbone``), and every folder whose file has the same hash shares the first one's mapping.
The hash of each file is checked once (per device, inode, size and mtime) before it is trusted.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aa_deploy.contract.manifest import ExportManifest


def tensor_numpy_dtype(data_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type))


def external_info(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SharedBackbone:
    """One memory-mapped backbone file and the OrtValues viewing it (created on first use, then reused)."""

    key: str
    path: Path
    size: int
    _map: np.memmap = field(repr=False)
    _values: dict[tuple, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    users: set[str] = field(default_factory=set)

    def value(self, tensor: Any) -> Any:
        """The OrtValue for an external-data TensorProto of this file (shape, dtype, offset checked)."""
        import onnxruntime as ort

        info = external_info(tensor)
        offset = int(info.get("offset", 0))
        dtype = tensor_numpy_dtype(tensor.data_type)
        shape = tuple(int(d) for d in tensor.dims)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        length = int(info.get("length", count * dtype.itemsize))
        if length != count * dtype.itemsize or offset < 0 or offset + length > self.size:
            raise ValueError(
                f"tensor {tensor.name!r} claims bytes {offset}..{offset + length} of {self.path} "
                f"({self.size} bytes) for shape {shape} {dtype}: the backbone file does not match the graph; re-export"
            )
        key = (offset, length, dtype.str, shape)
        with self._lock:
            value = self._values.get(key)
            if value is None:
                array = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape)
                value = ort.OrtValue.ortvalue_from_numpy(array)
                self._values[key] = value
            return value

    @property
    def resident_tensors(self) -> int:
        return len(self._values)


class SharedBackbonePool:
    """The memory-mapped backbone files the loaded tasks use, reference-counted, keyed by content hash (or
    file identity): N tasks on one backbone map it once. (Not the export-side store of backbone files.)"""

    def __init__(self, *, verify_sha256: bool = True) -> None:
        self.verify_sha256 = verify_sha256
        self._backbones: dict[str, SharedBackbone] = {}
        self._verified: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()

    def acquire(self, manifest: ExportManifest, user: str) -> SharedBackbone:
        if manifest.backbone_path is None:
            raise ValueError(f"{manifest.folder} is a standalone export: it has no shared backbone")
        path = manifest.backbone_path.resolve()
        stat = path.stat()
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            key = manifest.backbone_sha256 or f"inode:{stat.st_dev}:{stat.st_ino}"
            if manifest.backbone_sha256 and self.verify_sha256 and identity not in self._verified:
                actual = file_sha256(path)
                if actual != manifest.backbone_sha256.removeprefix("sha256:"):
                    raise ValueError(
                        f"{path} has sha256 {actual} but aa_export.json records {manifest.backbone_sha256}: the "
                        "backbone file was modified or belongs to another export; re-export the task"
                    )
                self._verified[identity] = actual
            backbone = self._backbones.get(key)
            if backbone is None:
                mapping = np.memmap(path, dtype=np.uint8, mode="r")
                backbone = SharedBackbone(key=key, path=path, size=stat.st_size, _map=mapping)
                self._backbones[key] = backbone
            elif backbone.size != stat.st_size:
                raise ValueError(
                    f"{path} ({stat.st_size} bytes) and {backbone.path} ({backbone.size} bytes) claim the same "
                    "backbone but differ in size; re-export one of the tasks"
                )
            backbone.users.add(user)
            return backbone

    def release(self, backbone: SharedBackbone, user: str) -> None:
        """Drop ``user``; the mapping is closed once no task and no live session uses it (GC)."""
        with self._lock:
            backbone.users.discard(user)
            if not backbone.users and self._backbones.get(backbone.key) is backbone:
                del self._backbones[backbone.key]

    def __len__(self) -> int:
        return len(self._backbones)

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"key": b.key[:16], "bytes": b.size, "exports": len(b.users), "tensors": b.resident_tensors}
                for b in self._backbones.values()
            ]
