"""Byte-stable safetensors files: equal tensors must give equal bytes, so that re-exports are identical."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from aa_deploy.fileio import atomic_write_with


def canonicalize_safetensors(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, so that equal tensors give equal bytes.

    safetensors 0.8 writes the ``__metadata__`` map in hash order, which differs between calls; the
    tensor entries and data are already deterministic. Only the header's key order changes here.
    """
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * ((-(8 + len(text))) % 8)
    body = data[8 + length :]
    atomic_write_with(path, lambda tmp: tmp.write_bytes(struct.pack("<Q", len(text)) + text + body))
