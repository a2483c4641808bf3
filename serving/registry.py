"""Loading and unloading tasks at runtime, and the immutable view the request path reads.

Requests never look at mutable state: each one reads the current :class:`RegistryView` once and binds
its rows to the runners in it. Loading or unloading builds new runners next to the old ones and then
swaps the view; requests already queued keep their references and finish on the old runners, which are
freed when the last of them completes. That is how a task can be loaded or unloaded under load with
no failed request.

Load/unload are serialised by one lock and run in a worker thread (graph compilation and session
creation take about a second for MiniLM); the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from aa_deploy.contract.manifest import ExportManifest, ManifestError

from .backbone import SharedBackbone, SharedBackbonePool
from .config import ServerConfig, validate_task_name
from .engine import MergedRunner, SoloRunner, Target, pad_feeds
from .errors import ServingError, TaskExists, TaskLoadError, TaskNotFound
from .graph_analysis import GraphShapeError
from .multitask import MergeSource, load_task_graph
from .sessions import SessionSettings, point_external_data
from .sources import resolve_source
from .tokenization import Encoded, TaskTokenizer, tokenizer_key

log = logging.getLogger("aa_deploy.serving")

PROBE_TEXTS = (
    "a",
    "the service was quick and the food was excellent",
    "Über 9000 émojis 🙂 and ünïcödé, still fine?",
    "it rained all day so we stayed in and read a long book about the history of the sea",
)


@dataclass
class Artifact:
    """One loaded export folder; several task names may serve it."""

    key: str
    manifest: ExportManifest
    tokenizer: TaskTokenizer
    model: Any
    backbone: SharedBackbone | None
    external_folder: str | None
    merge: MergeSource | None = None
    merge_note: str | None = None
    solo: SoloRunner | None = None
    reference: tuple[Encoded, np.ndarray] | None = None
    names: set[str] = field(default_factory=set)
    task_bytes: int = 0
    load_seconds: float = 0.0

    @property
    def group(self) -> str | None:
        return self.backbone.key if (self.backbone is not None and self.merge is not None) else None


@dataclass(frozen=True)
class TaskEntry:
    name: str
    artifact: Artifact
    target: Target
    loaded_at: float


@dataclass(frozen=True)
class RegistryView:
    tasks: Mapping[str, TaskEntry]
    version: int = 0

    def get(self, name: str) -> TaskEntry:
        entry = self.tasks.get(name)
        if entry is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise TaskNotFound(f"task {name!r} is not loaded (loaded tasks: {known})")
        return entry


def release_free_memory() -> None:
    """Give freed heap back to the OS after a load/unload (glibc keeps it otherwise).

    Rebuilding the multi-task graph frees the previous sessions' prepacked weights (tens of MiB); without
    this the freed chunks stay in malloc's arenas and resident memory ratchets up with every hot load.
    A no-op where glibc's ``malloc_trim`` does not exist.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def artifact_key(folder: Path, manifest: ExportManifest) -> str:
    """Same folder, same files -> same artifact (served once under several names)."""
    stats = [path.stat() for path in (manifest.manifest_path, manifest.model_path)]
    return f"{folder.resolve()}|" + "|".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)


class TaskRegistry:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.settings = SessionSettings(
            intra_op_threads=config.intra_op_threads,
            prepacking=config.prepacking,
            providers=tuple(config.providers) if config.providers else None,
            graph_optimization_level=config.graph_optimization_level,
        )
        self.settings = self.settings.with_providers(self.settings.resolved_providers())
        self.backbones = SharedBackbonePool(verify_sha256=config.verify_backbone_sha256)
        self._artifacts: dict[str, Artifact] = {}
        self._names: dict[str, str] = {}
        self._loaded_at: dict[str, float] = {}
        self._groups: dict[str, MergedRunner] = {}
        self._tokenizers: weakref.WeakValueDictionary[str, TaskTokenizer] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        self._view = RegistryView(MappingProxyType({}), 0)
        self.failed: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------ reads
    @property
    def view(self) -> RegistryView:
        return self._view

    def info(self, name: str) -> dict[str, Any]:
        entry = self._view.get(name)
        return self._describe(entry)

    def list(self) -> list[dict[str, Any]]:
        view = self._view
        return [self._describe(view.tasks[n]) for n in sorted(view.tasks)]

    def _describe(self, entry: TaskEntry) -> dict[str, Any]:
        a = entry.artifact
        runner = entry.target.runner
        backbone_bytes = a.backbone.size if a.backbone is not None else 0
        info = {
            "name": entry.name,
            **a.manifest.public_info(),
            "engine": runner.kind,
            "shared_layers": runner.shared_layers if isinstance(runner, MergedRunner) else 0,
            "merge_note": a.merge_note,
            "aliases": sorted(a.names - {entry.name}),
            "sizes": {
                "task_bytes": a.task_bytes,
                "adapter_bytes": sum(
                    w.down_w.nbytes + w.up_w.nbytes + w.down_b.nbytes + w.up_b.nbytes for w in a.merge.adapters.values()
                )
                if a.merge
                else None,
                "backbone_bytes": backbone_bytes,
                "backbone_users": len(a.backbone.users) if a.backbone else 0,
                "manifest": a.manifest.sizes,
            },
            "load_seconds": round(a.load_seconds, 4),
            "loaded_at": entry.loaded_at,
        }
        return info

    # ------------------------------------------------------------------------------------------ writes
    def load(self, name: str, source: str, revision: str | None = None, *, replace: bool = False) -> dict[str, Any]:
        """Load ``source`` as task ``name``; raises a ServingError that says what is wrong."""
        try:
            validate_task_name(name)
        except ValueError as exc:
            raise TaskLoadError(str(exc), status=422, code="invalid_task_name") from None
        with self._lock:
            if name in self._names and not replace:
                raise TaskExists(f"task {name!r} is already loaded; unload it first (DELETE /v1/tasks/{name})")
            started = time.perf_counter()
            try:
                folder = resolve_source(
                    source,
                    revision,
                    allowed_roots=self.config.allowed_roots,
                    allow_hub=self.config.allow_hub,
                    allowed_hub_repos=self.config.allowed_hub_repos,
                    token=self.config.hub_token,
                )
                manifest = ExportManifest.load(folder)
                key = artifact_key(folder, manifest)
                artifact = self._artifacts.get(key)
                fresh = artifact is None
                if artifact is None:
                    artifact = self._open(key, manifest)
            except ServingError:
                raise
            except (ManifestError, ValueError, OSError) as exc:
                raise TaskLoadError(f"cannot load task {name!r} from {source}: {exc}") from None
            except Exception as exc:  # ORT and friends: report, keep serving the others
                raise TaskLoadError(f"cannot load task {name!r} from {source}: {type(exc).__name__}: {exc}") from None
            if replace and self._names.get(name) == key:
                # Already serving exactly these files: detaching would free the artifact this load is
                # about to reuse (and leave the registry pointing at nothing), so there is nothing to do.
                self.failed.pop(name, None)
                return self.info(name)
            if replace and name in self._names:
                self._detach(name)
            artifact.names.add(name)
            self._names[name] = key
            self._loaded_at[name] = time.time()
            if fresh:
                self._artifacts[key] = artifact
                try:
                    self._place(artifact)
                except Exception:
                    self._detach(name)
                    raise
                artifact.load_seconds = time.perf_counter() - started
            self.failed.pop(name, None)
            self._publish()
            log.info(
                "loaded task %s (%s engine) in %.2fs",
                name,
                self._view.tasks[name].target.runner.kind,
                time.perf_counter() - started,
            )
            return self.info(name)

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._names:
                raise TaskNotFound(f"task {name!r} is not loaded")
            self._detach(name)
            self._publish()
            log.info("unloaded task %s", name)

    def close(self) -> None:
        with self._lock:
            for name in list(self._names):
                self._detach(name)
            self._publish()

    # ------------------------------------------------------------------------------------------ internals
    def _tokenizer(self, manifest: ExportManifest) -> TaskTokenizer:
        """One tokenizer object per distinct (tokenizer.json, max_length, pairs): tasks on the same
        backbone share it (a BERT vocabulary costs ~7 MiB per copy, more than a task's adapters)."""
        key = tokenizer_key(manifest.tokenizer_path, manifest.max_length, manifest.is_pair)
        tokenizer = self._tokenizers.get(key)
        if tokenizer is None:
            tokenizer = TaskTokenizer(manifest.tokenizer_path, max_length=manifest.max_length, is_pair=manifest.is_pair)
            self._tokenizers[key] = tokenizer
        return tokenizer

    def _open(self, key: str, manifest: ExportManifest) -> Artifact:
        tokenizer = self._tokenizer(manifest)
        model = load_task_graph(manifest.model_path)
        backbone, external_folder = None, None
        if manifest.shared:
            backbone = self.backbones.acquire(manifest, key)
            real = manifest.backbone_path.resolve()  # type: ignore[union-attr]
            point_external_data(model, manifest.backbone_file or "", str(real))
            external_folder = str(real.parent)
        else:
            model = None  # standalone: ORT loads the folder's file itself
        task_bytes = manifest.model_path.stat().st_size
        artifact = Artifact(
            key=key,
            manifest=manifest,
            tokenizer=tokenizer,
            model=model,
            backbone=backbone,
            external_folder=external_folder,
            task_bytes=task_bytes,
        )
        try:
            if manifest.shared and self.config.engine == "multitask":
                try:
                    artifact.merge = MergeSource.prepare(key, manifest, model)
                except GraphShapeError as exc:
                    artifact.merge_note = f"served by its own session: {exc}"
            elif not manifest.shared:
                artifact.merge_note = "standalone export: served as its own model"
        except Exception:
            self._release(artifact)
            raise
        return artifact

    def _solo(self, artifact: Artifact, *, throwaway: bool = False) -> SoloRunner:
        return SoloRunner(
            artifact.model,
            self.settings,
            backbone=artifact.backbone,
            model_path=str(artifact.manifest.model_path),
            external_folder=artifact.external_folder,
            pad_id=artifact.manifest.pad_token_id,
            throwaway=throwaway,
        )

    def _probe(self, artifact: Artifact) -> Encoded:
        texts = list(PROBE_TEXTS)
        pairs = list(reversed(PROBE_TEXTS)) if artifact.manifest.is_pair else None
        return artifact.tokenizer.encode(texts, pairs)

    def _place(self, artifact: Artifact) -> None:
        """Give a fresh artifact a runner: join its backbone's multi-task graph, or its own session."""
        if artifact.merge is None:
            artifact.solo = self._solo(artifact)
            return
        if self.config.validate_merged:
            probe = self._probe(artifact)
            reference = self._solo(artifact, throwaway=True)
            feeds = pad_feeds([probe], artifact.manifest.pad_token_id)
            artifact.reference = (probe, reference.run(feeds))
            del reference
        group = artifact.group
        members = [a for a in self._artifacts.values() if a.group == group and a is not artifact] + [artifact]
        try:
            runner = self._build_group(members)
        except Exception as exc:
            artifact.merge, artifact.merge_note = None, f"served by its own session: merging failed ({exc})"
            log.warning("task %s cannot join the multi-task graph: %s", artifact.key, exc)
            artifact.solo = self._solo(artifact)
            return
        if artifact.merge is None and artifact.solo is None:  # rejected by validation inside _build_group
            artifact.solo = self._solo(artifact)
        self._set_group(group, runner)

    def _build_group(self, members: list[Artifact]) -> MergedRunner | None:
        """Compile and validate; members that do not reproduce their own graph leave the group."""
        while members:
            first = members[0]
            runner = MergedRunner(
                [a.merge for a in members],
                self.settings,
                first.backbone,
                external_folder=first.external_folder,
                prefix_sharing=self.config.prefix_sharing,
            )
            bad = self._validate(runner, members) if self.config.validate_merged else []
            if not bad:
                return runner
            for a, diff in bad:
                a.merge = None
                a.merge_note = f"served by its own session: the multi-task graph differs from its export by {diff:.2e}"
                log.warning("task %s left the multi-task graph (max abs diff %.2e)", a.key, diff)
                if a.solo is None and a.names:
                    a.solo = self._solo(a)
            members = [a for a in members if a.merge is not None]
        return None

    def _validate(self, runner: MergedRunner, members: list[Artifact]) -> list[tuple[Artifact, float]]:
        probes = [a for a in members if a.reference is not None]
        if not probes:
            return []
        feeds = pad_feeds([a.reference[0] for a in probes], runner.pad_id)  # type: ignore[index]
        row_map = np.arange(len(feeds["input_ids"]), dtype=np.int64)
        task_ids = np.concatenate([np.full(len(a.reference[0]), runner.slot[a.key]) for a in probes]).astype(np.int64)  # type: ignore[index]
        # In serving-sized chunks: ORT's arena keeps the largest batch it ever ran.
        logits = runner.run(feeds, row_map, task_ids, self.config.max_batch_size, self.config.split_cost_tokens)
        bad, begin = [], 0
        for a in probes:
            expected = a.reference[1]  # type: ignore[index]
            got = logits[begin : begin + len(expected), : expected.shape[1]]
            begin += len(expected)
            diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
            if not np.isfinite(diff) or diff > self.config.validation_atol:
                bad.append((a, diff))
        return bad

    def _set_group(self, group: str | None, runner: MergedRunner | None) -> None:
        if group is None:
            return
        if runner is None:
            self._groups.pop(group, None)
        else:
            self._groups[group] = runner

    def _detach(self, name: str) -> None:
        key = self._names.pop(name)
        self._loaded_at.pop(name, None)
        artifact = self._artifacts[key]
        artifact.names.discard(name)
        if artifact.names:
            return
        del self._artifacts[key]
        group = artifact.group
        if group is not None:
            rest = [a for a in self._artifacts.values() if a.group == group]
            try:
                self._set_group(group, self._build_group(rest) if rest else None)
            except Exception as exc:  # keep the others serving, each on its own session
                log.error("rebuilding the multi-task graph failed (%s); remaining tasks use their own sessions", exc)
                for a in rest:
                    a.merge, a.merge_note = (
                        None,
                        f"served by its own session: rebuilding the multi-task graph failed ({exc})",
                    )
                    a.solo = a.solo or self._solo(a)
                self._set_group(group, None)
        self._release(artifact)

    def _release(self, artifact: Artifact) -> None:
        artifact.solo = None
        if artifact.backbone is not None:
            self.backbones.release(artifact.backbone, artifact.key)

    def _publish(self) -> None:
        tasks: dict[str, TaskEntry] = {}
        for name, key in self._names.items():
            artifact = self._artifacts[key]
            group = self._groups.get(artifact.group) if artifact.group else None
            if group is not None:
                target = Target(name, group, group.slot[key], artifact.manifest.num_labels)
            elif artifact.solo is not None:
                target = Target(name, artifact.solo, None, artifact.manifest.num_labels)
            else:  # pragma: no cover - every placed artifact has a runner
                continue
            tasks[name] = TaskEntry(name, artifact, target, self._loaded_at.get(name, 0.0))
        self._view = RegistryView(MappingProxyType(tasks), self._view.version + 1)
        release_free_memory()
