"""What the exported tasks cost on disk and in a server's memory.

Disk: each inode is counted once (a hard-linked backbone file is one copy for all its folders); a
reflinked file is a file of its own whose blocks the file system shares, which ``stat`` cannot see,
so it is counted in full here and the summary says it is shared. Memory: a server keeps one copy of
each distinct backbone (by the manifest's content hash) for all tasks, whatever the files on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aa_deploy.contract.layout import BACKBONE_DATA_NAME, GRAPH_NAME
from aa_deploy.contract.manifest import COPY, HARDLINK, REFLINK


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class SizeReport:
    """One export folder.

    ``backbone_bytes``: the backbone data file (0 for a standalone export); ``task_bytes``: every
    other file of the folder (graph, adapters, config, tokenizer, manifest); ``full_copy_bytes``: what
    the folder costs without sharing (task + backbone); ``ratio_to_full_copy``: the marginal cost of
    this task next to a full per-task copy where the backbone is shared: in a server's memory always,
    on disk when ``backbone_sharing`` is ``hardlink`` or ``reflink``. ``backbone_sharing``: how the
    folder's backbone file relates to the store copy on disk (``hardlink``, ``reflink``, ``copy``).
    ``backbone_links`` counts the task folders (plus the store) sharing the file's inode (hard links).
    """

    backbone_bytes: int
    task_bytes: int
    full_copy_bytes: int
    ratio_to_full_copy: float
    task_graph_bytes: int = 0
    backbone_linked: bool | None = None
    backbone_sharing: str | None = None
    backbone_links: int | None = None
    files: dict[str, int] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        """The ``sizes`` block of ``aa_export.json`` (the four contract keys first)."""
        data = asdict(self)
        data.pop("files")
        data.pop("backbone_links")  # changes whenever another task links the same backbone
        return data

    @property
    def summary(self) -> str:
        if not self.backbone_bytes:
            return f"standalone: {_human(self.task_bytes)} in one folder (the backbone is inside {GRAPH_NAME})"
        on_disk = {
            HARDLINK: "hard-linked to the backbone store, one copy on disk for all task folders (tools built on "
            "the onnx package refuse hard-linked data)",
            REFLINK: "a reflink of the backbone store's copy, a file of its own whose blocks the file system shares",
            COPY: "a copy of its own, as this file system cannot share blocks (no reflinks); --hardlink-backbone "
            "keeps one copy on disk",
        }.get(self.backbone_sharing or "", "shared")
        return (
            f"backbone {_human(self.backbone_bytes)}: {on_disk}. Task {_human(self.task_bytes)} "
            f"(graph {_human(self.task_graph_bytes)}). A server keeps one backbone in memory for all its tasks, "
            f"so there this task adds {100 * self.ratio_to_full_copy:.2f}% of a full copy ({_human(self.full_copy_bytes)})"
        )


def folder_report(directory: str | os.PathLike, *, sharing: str | None = None) -> SizeReport:
    directory = Path(directory)
    backbone = directory / BACKBONE_DATA_NAME
    backbone_stat = backbone.stat() if backbone.is_file() else None
    seen: set[tuple[int, int]] = set()
    if backbone_stat is not None:
        seen.add((backbone_stat.st_dev, backbone_stat.st_ino))
    files: dict[str, int] = {}
    task_bytes = 0
    for path in _files(directory):
        stat = path.stat()
        files[str(path.relative_to(directory))] = stat.st_size
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            continue
        seen.add(key)
        task_bytes += stat.st_size
    backbone_bytes = backbone_stat.st_size if backbone_stat else 0
    full = task_bytes + backbone_bytes
    graph = directory / GRAPH_NAME
    return SizeReport(
        backbone_bytes=backbone_bytes,
        task_bytes=task_bytes,
        full_copy_bytes=full,
        ratio_to_full_copy=round(task_bytes / full, 6) if full else 0.0,
        task_graph_bytes=graph.stat().st_size if graph.is_file() else 0,
        backbone_linked=(sharing == HARDLINK) if backbone_stat else None,
        backbone_sharing=sharing if backbone_stat else None,
        backbone_links=backbone_stat.st_nlink if backbone_stat else None,
        files=files,
    )


def fleet_report(directories: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Several task folders together: bytes on disk (distinct inodes; reflinked copies count in full,
    though the file system shares their blocks) vs. one full copy per task."""
    seen: set[tuple[int, int]] = set()
    on_disk = 0
    full_copies = 0
    tasks = 0
    for directory in directories:
        tasks += 1
        full_copies += folder_report(directory).full_copy_bytes
        for path in _files(Path(directory)):
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino)
            if key not in seen:
                seen.add(key)
                on_disk += stat.st_size
    return {
        "tasks": tasks,
        "bytes_on_disk": on_disk,
        "full_copies_bytes": full_copies,
        "ratio_to_full_copies": round(on_disk / full_copies, 6) if full_copies else 0.0,
    }


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover
