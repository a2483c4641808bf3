"""Loading and unloading tasks at runtime, and the immutable view the request path reads.

Requests never look at mutable state: each one reads the current :class:`RegistryView` once and binds
its rows to the runners in it. Loading or unloading builds new runners next to the old ones and then
swaps the view; requests already queued keep their references and finish on the old runners, which are
freed when the last of them completes. That is how a task can be loaded or unloaded under load with
no failed request.

Every change is a transaction: :meth:`TaskRegistry._plan` builds the complete next state (the export
opened and checked by :mod:`serving.export_checks`, the affected multi-task graphs compiled and
validated, sessions for tasks that leave a graph) without touching the published one, and
:meth:`TaskRegistry._commit` publishes it with assignments that cannot fail. An error before the commit
releases what was built, so the previous tasks keep serving exactly as they were.

Load/unload are serialised by one lock and run in a worker thread (graph compilation and session
creation take about a second for MiniLM); the event loop keeps serving meanwhile. Finding a load's
files (a Hub download, bounded by ``hub_timeout_s``) happens *before* the lock is taken: a slow or
silent Hub delays only that load, never other loads, unloads or shutdown.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from aa_deploy.contract.manifest import ExportManifest, ManifestError

from .backbone import SharedBackbone, SharedBackbonePool
from .config import ServerConfig, validate_task_name
from .engine import MergedRunner, SoloRunner, Target, pad_feeds
from .errors import InferenceError, ServingError, TaskExists, TaskLoadError, TaskNotFound
from .export_checks import check_io_names, check_max_length, check_outputs
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
    # A member of a multi-task graph with its own session too (``single_task_sessions``): kept across
    # rebuilds of the graph, so that a load does not rebuild the other members' sessions.
    own: SoloRunner | None = None
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


def _check_task_name(name: str) -> None:
    """A name that cannot be a task name is the caller's error (422), raised before anything is loaded."""
    try:
        validate_task_name(name)
    except ValueError as exc:
        raise TaskLoadError(str(exc), status=422, code="invalid_task_name") from None


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
            disabled_optimizers=(
                tuple(config.ort_disabled_optimizers) if config.ort_disabled_optimizers is not None else None
            ),
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
        # Names whose last load failed -> why (no absolute paths), until a later load succeeds or an unload.
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
            "own_session": not isinstance(runner, MergedRunner)
            or runner.own_session(entry.target.slot or 0) is not None,
            # A batch of this task alone runs its own graph inside the multi-task session.
            "own_branch": isinstance(runner, MergedRunner) and runner.own_branches,
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
        """Load ``source`` as task ``name`` (a transaction: on any error nothing changes and the error,
        a ServingError that says what is wrong, is also recorded in :attr:`failed`)."""
        _check_task_name(name)
        self._refuse_existing(name, replace)  # before any download: fail fast
        started = time.perf_counter()
        try:
            folder = self._resolve(name, source, revision)  # network I/O: outside the lock
        except ServingError as exc:
            with self._lock:
                self.failed[name] = short_reason(exc.message)
            raise
        with self._lock:
            self._refuse_existing(name, replace)  # again: another load of this name may have finished meanwhile
            try:
                artifact, fresh = self._artifact_for(name, source, folder)
                if self._names.get(name) == artifact.key:  # replace with exactly the files it serves: no-op
                    self.failed.pop(name, None)
                    return self.info(name)
                plan = self._plan({**self._names, name: artifact.key}, fresh=[artifact] if fresh else [])
            except ServingError as exc:
                self.failed[name] = short_reason(exc.message)
                raise
            except Exception as exc:  # pragma: no cover - _artifact_for and _plan wrap what they expect
                self.failed[name] = short_reason(f"{type(exc).__name__}: {exc}")
                raise TaskLoadError(f"cannot load task {name!r}: {type(exc).__name__}: {exc}") from None
            if fresh:
                artifact.load_seconds = time.perf_counter() - started
            self._commit(plan, {**self._loaded_at, name: time.time()})
            self.failed.pop(name, None)
            log.info(
                "loaded task %s (%s engine) in %.2fs",
                name,
                self._view.tasks[name].target.runner.kind,
                time.perf_counter() - started,
            )
            return self.info(name)

    def load_many(self, specs: Sequence[tuple[str, str, str | None]]) -> dict[str, dict[str, Any] | ServingError]:
        """Load ``(name, source, revision)`` tasks together: each multi-task graph is built once for all of
        them, where loading them one by one rebuilds it per task (it holds every member's own branch, so
        its build time grows with its size: one by one, ``n`` tasks cost ~``n^2 / 2`` branch builds).

        What the server does at startup. Each task that cannot be opened fails alone, as with
        :meth:`load` (its error is returned and recorded in :attr:`failed`); if placing the opened ones
        together fails, they are loaded one by one. Returns each name's info or error.
        """
        started = time.perf_counter()
        results: dict[str, dict[str, Any] | ServingError] = {}
        chosen: dict[str, Artifact] = {}
        fresh: dict[str, Artifact] = {}
        for name, source, revision in specs:
            try:
                _check_task_name(name)
                if name in chosen:
                    raise TaskExists(f"task {name!r} is given twice")
                self._refuse_existing(name, replace=False)
                folder = self._resolve(name, source, revision)
                with self._lock:
                    artifact, new = self._artifact_for(name, source, folder, pending=fresh)
            except ServingError as exc:
                with self._lock:
                    self.failed[name] = short_reason(exc.message)
                results[name] = exc
                continue
            chosen[name] = artifact
            if new:
                fresh[artifact.key] = artifact
        if not chosen:
            return results
        with self._lock:
            try:
                plan = self._plan({**self._names, **{n: a.key for n, a in chosen.items()}}, fresh=list(fresh.values()))
            except Exception as exc:
                log.warning("loading %d tasks together failed (%s); loading them one by one", len(chosen), exc)
                plan = None
            if plan is not None:
                for artifact in fresh.values():
                    artifact.load_seconds = time.perf_counter() - started
                now = time.time()
                self._commit(plan, {**self._loaded_at, **dict.fromkeys(chosen, now)})
                for name in chosen:
                    self.failed.pop(name, None)
                    results[name] = self.info(name)
                    log.info("loaded task %s (%s engine)", name, self._view.tasks[name].target.runner.kind)
                log.info("loaded %d task(s) together in %.2fs", len(chosen), time.perf_counter() - started)
                return results
        for name, source, revision in specs:
            if name in chosen:
                try:
                    results[name] = self.load(name, source, revision)
                except ServingError as exc:
                    results[name] = exc
        return results

    def _refuse_existing(self, name: str, replace: bool) -> None:
        with self._lock:
            if name in self._names and not replace:
                raise TaskExists(f"task {name!r} is already loaded; unload it first (DELETE /v1/tasks/{name})")

    def unload(self, name: str) -> None:
        """Unload ``name`` (a transaction: if the tasks left cannot be re-placed, nothing changes).
        Also forgets a recorded load failure of that name."""
        with self._lock:
            if name not in self._names:
                if self.failed.pop(name, None) is not None:
                    return
                raise TaskNotFound(f"task {name!r} is not loaded")
            names = {n: k for n, k in self._names.items() if n != name}
            try:
                plan = self._plan(names, fresh=[])
            except Exception as exc:
                raise InferenceError(
                    f"cannot unload task {name!r}: re-placing the other tasks failed ({type(exc).__name__}: {exc}); "
                    "it keeps serving"
                ) from None
            self._commit(plan, {n: t for n, t in self._loaded_at.items() if n != name})
            self.failed.pop(name, None)
            log.info("unloaded task %s", name)

    def close(self) -> None:
        with self._lock:
            dropped = list(self._artifacts.values())
            self._names, self._artifacts, self._groups, self._loaded_at = {}, {}, {}, {}
            self._view = RegistryView(MappingProxyType({}), self._view.version + 1)
            for artifact in dropped:
                self._release(artifact)

    # ------------------------------------------------------------------------------------------ internals
    def _resolve(self, name: str, source: str, revision: str | None) -> Path:
        """The local folder of ``source`` (downloaded from the Hub if needed); called without the lock."""
        try:
            return resolve_source(
                source,
                revision,
                allowed_roots=self.config.allowed_roots,
                allow_hub=self.config.allow_hub,
                allowed_hub_repos=self.config.allowed_hub_repos,
                token=self.config.hub_token,
                hub_timeout_s=self.config.hub_timeout_s,
            )
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. an OSError while looking at the folder
            raise TaskLoadError(f"cannot load task {name!r} from {source}: {type(exc).__name__}: {exc}") from None

    def _artifact_for(
        self, name: str, source: str, folder: Path, *, pending: Mapping[str, Artifact] | None = None
    ) -> tuple[Artifact, bool]:
        """The artifact serving ``folder`` (already loaded, opened earlier in the same :meth:`load_many`
        (``pending``), or opened and checked now) and whether it is new."""
        try:
            manifest = ExportManifest.load(folder)
            key = artifact_key(folder, manifest)
            artifact = self._artifacts.get(key)
            if artifact is None and pending is not None and key in pending:
                return pending[key], False
            if artifact is not None:
                return artifact, False
            return self._open(key, manifest), True
        except ServingError:
            raise
        except (ManifestError, ValueError, OSError) as exc:
            raise TaskLoadError(f"cannot load task {name!r} from {source}: {exc}") from None
        except Exception as exc:  # ORT and friends: report, keep serving the others
            raise TaskLoadError(f"cannot load task {name!r} from {source}: {type(exc).__name__}: {exc}") from None

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
        """A new artifact, checked (:mod:`serving.export_checks`) on its own graph; nothing published."""
        check_max_length(manifest)
        tokenizer = self._tokenizer(manifest)
        model = load_task_graph(manifest.model_path)
        backbone, external_folder = None, None
        if manifest.shared:
            backbone = self.backbones.acquire(manifest, key)
            real = manifest.backbone_path.resolve()  # type: ignore[union-attr]
            try:
                point_external_data(model, manifest.backbone_file or "", str(real))
            except Exception:
                self.backbones.release(backbone, key)
                raise
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
            self._check(artifact)
        except Exception:
            self._release(artifact)
            raise
        return artifact

    def _check(self, artifact: Artifact) -> None:
        """Run the task's own graph once on the probe inputs (one row at max_length): inputs, output shape.

        A task that will be served alone gets its serving session here; a task for the multi-task graph
        gets a throwaway one, and keeps its answers as the reference the merged graph must reproduce.
        """
        merging = artifact.merge is not None
        session = self._solo(artifact, throwaway=merging)
        check_io_names(artifact.manifest, session.session)
        probe = self._probe(artifact)
        logits = session.run(pad_feeds([probe], artifact.manifest.pad_token_id))
        check_outputs(artifact.manifest, logits, len(probe))
        if merging:
            artifact.reference = (probe, logits)
        else:
            artifact.solo = session

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
        """Short, Unicode and one input truncated to exactly ``max_length`` tokens (position overflow)."""
        long_text = " ".join(["word"] * (2 * artifact.manifest.max_length))
        texts = [*PROBE_TEXTS, long_text]
        pairs = list(reversed(texts)) if artifact.manifest.is_pair else None
        return artifact.tokenizer.encode(texts, pairs)

    def _plan(self, names: dict[str, str], *, fresh: list[Artifact]) -> Plan:
        """Build everything the registry needs for task set ``names`` (multi-task graphs, sessions of
        tasks leaving a graph) without changing the published state; on failure releases ``fresh``."""
        try:
            return self._build_plan(names, fresh)
        except Exception:
            for artifact in fresh:
                self._release(artifact)
            raise

    def _build_plan(self, names: dict[str, str], fresh: list[Artifact]) -> Plan:
        new = {a.key: a for a in fresh}
        artifacts = {key: self._artifacts.get(key) or new.get(key) for key in dict.fromkeys(names.values())}
        assert all(a is not None for a in artifacts.values())
        dropped = [a for key, a in self._artifacts.items() if key not in artifacts]
        affected = {a.group for a in dropped if a.group is not None}
        affected |= {a.group for a in fresh if a.group is not None}
        groups = dict(self._groups)
        demoted: list[tuple[Artifact, str, SoloRunner]] = []
        for group in affected:
            members = [a for a in artifacts.values() if a is not None and a.group == group]
            runner, rejected = None, []
            if members:
                try:
                    runner, rejected = self._build_group(members)
                except Exception as exc:
                    newcomers = [a for a in members if a.key in new]
                    if newcomers:
                        # The newcomers cannot join: they serve alone, the others stay as they were (or
                        # are rebuilt without them when one of them left too).
                        for a in newcomers:
                            log.warning("task %s cannot join the multi-task graph: %s", a.key, exc)
                        rejected = [(a, f"served by its own session: merging failed ({exc})") for a in newcomers]
                        rest = [a for a in members if a.key not in new]
                        if [a.key for a in rest] == (groups[group].members if group in groups else None):
                            runner = groups[group]
                        elif rest:
                            try:
                                runner, more = self._build_group(rest)
                                rejected += more
                            except Exception as again:
                                rejected += self._all_alone(rest, again)
                    else:
                        rejected = self._all_alone(members, exc)
            for a, note in rejected:
                solo = a.solo or a.own or self._solo(a)
                demoted.append((a, note, solo))
            if runner is None:
                groups.pop(group, None)
            else:
                groups[group] = runner
        return Plan(names=dict(names), artifacts=artifacts, groups=groups, demoted=demoted, dropped=dropped)  # type: ignore[arg-type]

    @staticmethod
    def _all_alone(members: list[Artifact], exc: Exception) -> list[tuple[Artifact, str]]:
        log.error("building the multi-task graph failed (%s); its tasks use their own sessions", exc)
        return [(a, f"served by its own session: building the multi-task graph failed ({exc})") for a in members]

    def _build_group(self, members: list[Artifact]) -> tuple[MergedRunner | None, list[tuple[Artifact, str]]]:
        """Compile and validate; members that do not reproduce their own graph are returned as rejected
        (with the note they get) instead of being changed: the caller commits or drops the result."""
        rejected: list[tuple[Artifact, str]] = []
        while members:
            first = members[0]
            runner = MergedRunner(
                [a.merge for a in members],  # type: ignore[misc]
                self.settings,
                first.backbone,  # type: ignore[arg-type]
                external_folder=first.external_folder,  # type: ignore[arg-type]
                prefix_sharing=self.config.prefix_sharing,
                own_branches=self.config.own_branches,
                task_runners=self._single_task_sessions(members),
            )
            bad = self._validate(runner, members) if self.config.validate_merged else []
            if not bad:
                return runner, rejected
            for a, diff in bad:
                log.warning("task %s left the multi-task graph (max abs diff %.2e)", a.key, diff)
                rejected.append(
                    (a, f"served by its own session: the multi-task graph differs from its export by {diff:.2e}")
                )
            members = [a for a in members if all(a is not b for b, _ in bad)]
        return None, rejected

    def _single_task_sessions(self, members: list[Artifact]) -> dict[int, SoloRunner]:
        """Own sessions for the first ``single_task_sessions`` members (in load order), by slot: kept
        from the previous graph (:attr:`Artifact.own`) or made now. Batches of one of these tasks alone
        run on its own graph, the fastest for it; each costs a prepacked copy of the backbone."""
        sessions = {}
        for slot, artifact in enumerate(members[: self.config.single_task_sessions]):
            sessions[slot] = artifact.own or self._solo(artifact)
        return sessions

    def _validate(self, runner: MergedRunner, members: list[Artifact]) -> list[tuple[Artifact, float]]:
        probes = [a for a in members if a.reference is not None]
        if not probes:
            return []
        feeds = pad_feeds([a.reference[0] for a in probes], runner.pad_id)  # type: ignore[index]
        row_map = np.arange(len(feeds["input_ids"]), dtype=np.int64)
        task_ids = np.concatenate([np.full(len(a.reference[0]), runner.slot[a.key]) for a in probes]).astype(np.int64)  # type: ignore[index]
        chunk, cost = self.config.max_batch_size, self.config.split_cost_tokens  # ORT's arena keeps the largest batch
        # Both ways a member's rows run: the stacked graph (forced, also for runs of one task's rows) and,
        # for each member alone, its own branch of the graph.
        stacked = runner.run(feeds, row_map, task_ids, chunk, cost, stacked=True)
        bad, begin = [], 0
        for a in probes:
            expected = a.reference[1]  # type: ignore[index]
            rows = slice(begin, begin + len(expected))
            begin += len(expected)
            alone = runner.run(
                {k: v[rows] for k, v in feeds.items()}, row_map[: len(expected)], task_ids[rows], chunk, cost
            )
            diffs = [np.max(np.abs(got[:, : expected.shape[1]] - expected)) for got in (stacked[rows], alone)]
            diff = float(max(diffs)) if expected.size else 0.0
            if not np.isfinite(diff) or diff > self.config.validation_atol:
                bad.append((a, diff))
        return bad

    def _commit(self, plan: Plan, loaded_at: dict[str, float]) -> None:
        """Publish ``plan`` in one step: plain assignments that cannot fail, then the new view."""
        for a, note, solo in plan.demoted:
            a.merge, a.merge_note, a.solo, a.own = None, note, solo, None
        for group in plan.groups.values():
            for key, slot in group.slot.items():
                if key in plan.artifacts:
                    plan.artifacts[key].own = group.own_session(slot)
        for key, artifact in plan.artifacts.items():
            artifact.names = {n for n, k in plan.names.items() if k == key}
        view = self._view_of(plan, loaded_at)
        self._names, self._artifacts, self._groups, self._loaded_at = (
            plan.names,
            plan.artifacts,
            plan.groups,
            loaded_at,
        )
        self._view = view
        for artifact in plan.dropped:
            artifact.names = set()
            self._release(artifact)
        release_free_memory()

    def _view_of(self, plan: Plan, loaded_at: dict[str, float]) -> RegistryView:
        tasks: dict[str, TaskEntry] = {}
        for name, key in plan.names.items():
            artifact = plan.artifacts[key]
            group = plan.groups.get(artifact.group) if artifact.group else None
            if group is not None:
                target = Target(name, group, group.slot[key], artifact.manifest.num_labels)
            elif artifact.solo is not None:
                target = Target(name, artifact.solo, None, artifact.manifest.num_labels)
            else:  # pragma: no cover - every placed artifact has a runner
                raise RuntimeError(f"task {name!r} has no runner")
            tasks[name] = TaskEntry(name, artifact, target, loaded_at.get(name, 0.0))
        return RegistryView(MappingProxyType(tasks), self._view.version + 1)

    def _release(self, artifact: Artifact) -> None:
        artifact.solo = None
        artifact.own = None
        if artifact.backbone is not None:
            self.backbones.release(artifact.backbone, artifact.key)


@dataclass
class Plan:
    """The registry's next state, fully built (graphs compiled, sessions created) before it is published."""

    names: dict[str, str]
    artifacts: dict[str, Artifact]
    groups: dict[str, MergedRunner]
    demoted: list[tuple[Artifact, str, SoloRunner]]
    dropped: list[Artifact]


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[^\s/'\"():,]+)+/?")


def short_reason(message: str, limit: int = 300) -> str:
    """A load error as ``/v1/tasks`` and ``/ready`` list it: absolute paths cut to their last part (the
    listing is public; the server's folders are not), at most ``limit`` characters."""
    text = _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
    return text if len(text) <= limit else text[: limit - 3] + "..."
