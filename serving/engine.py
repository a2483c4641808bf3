"""Runners (what executes a task's rows) and the batch executor the dynamic batcher calls.

Two runners exist:

* :class:`SoloRunner` - one ORT session for one export folder. Shared-mode folders get the backbone
  tensors from the :class:`~serving.backbone.SharedBackbone` (``add_initializer``), standalone folders
  are loaded as they are. Used by the ``sessions`` engine, and by the ``multitask`` engine for tasks it
  cannot stack (optimised/quantised/standalone exports).
* :class:`MergedRunner` - the multi-task graph of :mod:`serving.multitask`: all member tasks in one run,
  rows of different tasks in one batch, the adapter-free lowest layers computed once per distinct input.

:func:`execute` takes the work items of one batch, groups their rows by runner and runs each group
in length-sorted runs of at most ``chunk_rows`` rows, each padded to its own longest row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backbone import SharedBackbone
from .config import DEFAULT_SPLIT_COST_TOKENS
from .multitask import (
    LOGITS,
    SINGLE_TASK,
    TASK_IDS,
    CompiledGraph,
    MergeSource,
    compile_multitask,
    own_output,
    split_model,
    with_own_branches,
)
from .sessions import SessionSettings, create_session, run_session
from .tokenization import Encoded, pad_rows

# The config owns the default (``ServerConfig.split_cost_tokens``); direct callers of the engine get the same.
DEFAULT_SPLIT_COST = DEFAULT_SPLIT_COST_TOKENS


def plan_runs(lengths: np.ndarray, max_rows: int, split_cost: float = DEFAULT_SPLIT_COST) -> list[np.ndarray]:
    """Group rows into runs: sorted by length, contiguous groups of at most ``max_rows`` rows that
    minimise ``sum(split_cost + rows * longest)`` (each run's padded tokens plus its fixed cost).

    Padding every row of a batch to its longest row wastes work when lengths differ a lot; each run is
    trimmed to its own longest row. Exact: padded positions are masked out of attention.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        longest = float(ordered[end - 1])
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + split_cost + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs = []
    end = n
    while end > 0:
        runs.append(order[cut[end] : end])
        end = int(cut[end])
    return runs[::-1]


def lone_row(items: Sequence[WorkItem], pairs: Sequence[tuple[int, Target]]) -> dict[str, np.ndarray] | None:
    """The feeds of a call that is one row for one task (the common case at concurrency 1), else None.

    Such a call needs no padding, no length-sorted runs and no row maps: the token vectors are fed as
    views. On a busy 2-core machine the general path's dozen small NumPy operations cost ~0.4 ms per
    call, about 3 % of a MiniLM forward pass on a short text.
    """
    if len(pairs) != 1:
        return None
    encoded = items[pairs[0][0]].encoded
    if len(encoded) != 1:
        return None
    ids = encoded.ids[0][None, :]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": encoded.type_ids[0][None, :]}


class SoloRunner:
    """One session for one export folder."""

    kind = "session"

    def __init__(
        self,
        model: Any,
        settings: SessionSettings,
        *,
        backbone: SharedBackbone | None,
        model_path: str,
        external_folder: str | None,
        pad_id: int,
        throwaway: bool = False,
    ) -> None:
        self.session = create_session(
            model if backbone is not None else None,
            settings,
            backbone=backbone,
            external_folder=external_folder,
            model_path=model_path,
            throwaway=throwaway,
        )
        self.pad_id = pad_id
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return run_session(self.session, feeds, inputs=self.inputs)

    def logits_for(
        self, items: Sequence[WorkItem], pairs: Sequence[tuple[int, Target]], chunk_rows: int, split_cost: float
    ) -> list[np.ndarray]:
        """Logits of each ``(item index, target)`` of ``pairs``, in that order: the rows of all items
        padded together, run in length-sorted runs (:func:`plan_runs`)."""
        lone = lone_row(items, pairs)
        if lone is not None:
            return [self.run(lone)[:, : pairs[0][1].num_labels]]
        feeds = pad_feeds([items[i].encoded for i, _ in pairs], self.pad_id)
        lengths = feeds["attention_mask"].sum(axis=1)
        logits = np.empty((len(lengths), 0), dtype=np.float32)
        for rows in plan_runs(lengths, chunk_rows, split_cost):
            width = int(lengths[rows].max())
            out = self.run({k: v[rows, :width] for k, v in feeds.items()})
            if logits.shape[1] == 0:
                logits = np.empty((len(lengths), out.shape[1]), dtype=out.dtype)
            logits[rows] = out
        outputs, begin = [], 0
        for i, target in pairs:
            n = len(items[i].encoded)
            outputs.append(logits[begin : begin + n, : target.num_labels])
            begin += n
        return outputs


class MergedRunner:
    """The compiled multi-task graph for one backbone: sessions for prefix and suffix (or the whole graph)."""

    kind = "multitask"

    def __init__(
        self,
        sources: Sequence[MergeSource],
        settings: SessionSettings,
        backbone: SharedBackbone,
        *,
        external_folder: str,
        prefix_sharing: bool = True,
        own_branches: bool = True,
        task_runners: Mapping[int, SoloRunner] | None = None,
    ) -> None:
        self.members = [s.key for s in sources]
        self.slot = {key: j for j, key in enumerate(self.members)}
        # For isolating a failure (see task_runner): what a member's own session is built from.
        self._sources = list(sources)
        self._settings = settings
        self._backbone = backbone
        self._external_folder = external_folder
        # Members' own sessions, by slot: given (the registry's single-task sessions) or made after a failure.
        self._task_runners: dict[int, SoloRunner] = dict(task_runners or {})
        self.pad_id = sources[0].manifest.pad_token_id
        self.prefix: Any = None
        self.suffix: Any = None
        self.cut: str | None = None
        self.prefix_inputs: set[str] = set()
        self.suffix_inputs: set[str] = set()
        if len(sources) == 1:
            # One member: every call runs the member's own exported graph. A compiled one-member graph
            # would be the same computation in the stacked graph's form (power-feature activations),
            # measured 0.96x its own graph at batch 1; with nothing to stack there is nothing to gain.
            self.task_runner(0)
            self.num_labels = [sources[0].manifest.num_labels]
            self.split_layer = 0
            return
        compiled: CompiledGraph = compile_multitask(sources, prefix_sharing=prefix_sharing)
        self.num_labels = compiled.num_labels
        self.split_layer = compiled.split_layer
        if compiled.cut is not None:
            prefix, suffix = split_model(compiled.model, compiled.cut, compiled.hidden_size)
            if own_branches:
                suffix = with_own_branches(suffix, sources, cut=compiled.cut, split_layer=compiled.split_layer)
            self.prefix = create_session(prefix, settings, backbone=backbone, external_folder=external_folder)
            self.suffix = create_session(suffix, settings, backbone=backbone, external_folder=external_folder)
            self.cut = compiled.cut
        else:
            model = with_own_branches(compiled.model, sources) if own_branches else compiled.model
            self.suffix = create_session(model, settings, backbone=backbone, external_folder=external_folder)
        self.prefix_inputs = {i.name for i in self.prefix.get_inputs()} if self.prefix is not None else set()
        self.suffix_inputs = {i.name for i in self.suffix.get_inputs()}

    @property
    def own_branches(self) -> bool:
        """Whether the suffix holds every member's own graph beside the stacked one (``own_branches``)."""
        return SINGLE_TASK in self.suffix_inputs

    def task_runner(self, slot: int) -> SoloRunner:
        """Member ``slot``'s own graph as a session (made on first use, sharing the backbone tensors).

        Every head of the multi-task graph runs on every row, so a member whose graph raises fails the
        whole run; :func:`execute` then answers each task through its own session, so that only the
        failing task's rows fail. Created after such a failure, and at once for a one-member runner,
        which runs every call on it.
        """
        runner = self._task_runners.get(slot)
        if runner is None:
            source = self._sources[slot]
            runner = SoloRunner(
                source.model,
                self._settings,
                backbone=self._backbone,
                model_path=str(source.manifest.model_path),
                external_folder=self._external_folder,
                pad_id=source.manifest.pad_token_id,
            )
            self._task_runners[slot] = runner
        return runner

    def own_session(self, slot: int) -> SoloRunner | None:
        """Member ``slot``'s own session if it has one (then batches of that task alone run on it)."""
        return self._task_runners.get(slot)

    @property
    def shared_layers(self) -> int:
        """How many of the lowest layers a multi-task call computes once for all tasks."""
        return self.split_layer if self.prefix is not None else 0

    def logits_for(
        self, items: Sequence[WorkItem], pairs: Sequence[tuple[int, Target]], chunk_rows: int, split_cost: float
    ) -> list[np.ndarray]:
        """Logits of each ``(item index, target)`` of ``pairs``, in that order, in one call of :meth:`run`:
        each item's rows are fed once, and every task that item is for reads them.

        Rows of one task alone run on that task's own session when it has one: its own graph is the
        cheapest for it (the stacked graph pays for every member's adapter layers, the gathers and, when
        the prefix is split off, a second session run), and with nothing to share it gains nothing.
        """
        slots = {target.slot for _, target in pairs}
        if len(slots) == 1:
            own = self._task_runners.get(int(next(iter(slots)) or 0))
            if own is not None:
                return own.logits_for(items, pairs, chunk_rows, split_cost)
        lone = lone_row(items, pairs)
        if lone is not None:
            target = pairs[0][1]
            if self.prefix is not None:
                prefix_feeds = {k: v for k, v in lone.items() if k in self.prefix_inputs}
                lone[str(self.cut)] = self.prefix.run([self.cut], prefix_feeds)[0]
            chunk = {k: v for k, v in lone.items() if k in self.suffix_inputs}
            out = self._run_suffix(chunk, np.array([target.slot or 0], dtype=np.int64))
            return [out[:, : target.num_labels]]
        order = sorted({i for i, _ in pairs})
        offsets, start = {}, 0
        for i in order:
            offsets[i] = start
            start += len(items[i].encoded)
        feeds = pad_feeds([items[i].encoded for i in order], self.pad_id)
        row_map, task_ids, spans = [], [], []
        for i, target in pairs:
            n = len(items[i].encoded)
            spans.append((len(row_map), n, target.num_labels))
            row_map.extend(range(offsets[i], offsets[i] + n))
            task_ids.extend([target.slot] * n)
        logits = self.run(
            feeds, np.asarray(row_map, dtype=np.int64), np.asarray(task_ids, dtype=np.int64), chunk_rows, split_cost
        )
        return [logits[begin : begin + n, :labels] for begin, n, labels in spans]

    def run(
        self,
        feeds: dict[str, np.ndarray],
        row_map: np.ndarray,
        task_ids: np.ndarray,
        chunk_rows: int,
        split_cost: float = DEFAULT_SPLIT_COST,
        *,
        stacked: bool = False,
    ) -> np.ndarray:
        """Logits [len(row_map), max_labels]: row r is input ``row_map[r]`` seen by task ``task_ids[r]``.

        The prefix runs once per distinct input, the suffix once per (input, task) row; both in
        length-sorted runs trimmed to their longest row (:func:`plan_runs`). ``stacked``: every run on the
        stacked graph, also runs whose rows are all of one task (the load-time check of that graph).
        """
        if self.suffix is None:  # one member, served by its own session
            return self._run_own(feeds, row_map, chunk_rows, split_cost)
        lengths = feeds["attention_mask"].sum(axis=1)
        source = feeds
        if self.prefix is not None:
            hidden: np.ndarray | None = None
            for rows in plan_runs(lengths, chunk_rows, split_cost):
                width = int(lengths[rows].max())
                prefix_feeds = {k: v[rows, :width] for k, v in feeds.items() if k in self.prefix_inputs}
                out = self.prefix.run([self.cut], prefix_feeds)[0]
                if hidden is None:  # padding positions stay zero: they are masked out downstream
                    hidden = np.zeros((len(lengths), feeds["input_ids"].shape[1], out.shape[-1]), dtype=out.dtype)
                hidden[rows, :width] = out
            source = {**feeds, self.cut: hidden}
        row_lengths = lengths[row_map]
        # Zeros: a run of one task's rows gives only that task's columns (its own branch's output).
        logits = np.zeros((len(row_map), max(self.num_labels)), dtype=np.float32)
        for rows in plan_runs(row_lengths, chunk_rows, split_cost):
            width = int(row_lengths[rows].max())
            inputs = row_map[rows]
            chunk = {k: v[inputs, :width] for k, v in source.items() if k in self.suffix_inputs}
            out = self._run_suffix(chunk, task_ids[rows], stacked=stacked)
            logits[rows, : out.shape[1]] = out
        return logits

    def _run_suffix(self, chunk: dict[str, np.ndarray], task_ids: np.ndarray, *, stacked: bool = False) -> np.ndarray:
        """The suffix on ``chunk`` with the rows' task ids. Rows all of one task run that member's own graph
        inside the suffix (:func:`~serving.multitask.with_own_branches`), the cheapest for them; mixed rows,
        or ``stacked``, run the stacked graph."""
        chunk[TASK_IDS] = task_ids
        output = LOGITS
        if self.own_branches:
            first = int(task_ids[0])
            single = -1 if stacked or bool((task_ids != first).any()) else first
            chunk[SINGLE_TASK] = np.array(single, dtype=np.int64)
            if single >= 0:
                output = own_output(single)  # that member's head width, not the group's
        return self.suffix.run([output], chunk)[0]

    def _run_own(
        self, feeds: dict[str, np.ndarray], row_map: np.ndarray, chunk_rows: int, split_cost: float
    ) -> np.ndarray:
        own = self._task_runners[0]
        rows_feeds = {k: v[row_map] for k, v in feeds.items()}
        lengths = rows_feeds["attention_mask"].sum(axis=1)
        logits = np.empty((len(row_map), self.num_labels[0]), dtype=np.float32)
        for rows in plan_runs(lengths, chunk_rows, split_cost):
            width = int(lengths[rows].max())
            logits[rows] = own.run({k: v[rows, :width] for k, v in rows_feeds.items()})[:, : self.num_labels[0]]
        return logits


@dataclass(frozen=True)
class Target:
    """One task of a work item, bound to the runner that served it when the item was queued."""

    name: str
    runner: SoloRunner | MergedRunner
    slot: int | None
    num_labels: int


@dataclass
class WorkItem:
    """Rows of one request (one tokenisation) and the tasks that must see them."""

    encoded: Encoded
    targets: tuple[Target, ...]
    enqueued_at: float = field(default_factory=time.perf_counter)
    future: Any = None
    started_at: float | None = None
    # A part of a larger request (the batcher splits those): which of the request's texts it holds.
    row_index: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.encoded) * len(self.targets)


def pad_feeds(encoded: Sequence[Encoded], pad_id: int) -> dict[str, np.ndarray]:
    ids, mask, types = pad_rows(encoded, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@dataclass
class BatchStats:
    rows: int = 0
    runs: int = 0
    tasks: set[str] = field(default_factory=set)


def execute(
    items: Sequence[WorkItem],
    chunk_rows: int,
    stats: BatchStats | None = None,
    split_cost: float = DEFAULT_SPLIT_COST,
) -> list[dict[str, np.ndarray] | BaseException]:
    """Run one batch; returns, per item, ``{task: logits [rows, num_labels]}`` or the error it hit.

    Rows are grouped by runner (one group for all tasks of the multi-task graph), then split into
    length-sorted runs of at most ``chunk_rows`` rows (:func:`plan_runs`).
    """
    results: list[dict[str, np.ndarray] | BaseException] = [{} for _ in items]
    groups: dict[int, tuple[SoloRunner | MergedRunner, list[tuple[int, Target]]]] = {}
    for i, item in enumerate(items):
        for target in item.targets:
            groups.setdefault(id(target.runner), (target.runner, []))[1].append((i, target))
    for runner, pairs in groups.values():
        answers = _isolated_logits(runner, items, pairs, chunk_rows, split_cost)
        for (i, target), values in zip(pairs, answers, strict=True):
            result = results[i]
            if isinstance(values, BaseException):
                results[i] = values  # the item fails: it asked for the task that failed
            elif isinstance(result, dict):  # not if another of its tasks failed
                result[target.name] = values
        if stats is not None:
            stats.runs += 1
            stats.tasks.update(t.name for _, t in pairs)
            stats.rows += sum(len(items[i].encoded) for i, _ in pairs)
    return results


def _isolated_logits(
    runner: SoloRunner | MergedRunner,
    items: Sequence[WorkItem],
    pairs: Sequence[tuple[int, Target]],
    chunk_rows: int,
    split_cost: float,
) -> list[np.ndarray | BaseException]:
    """``runner.logits_for(pairs)``, but a failure fails only the rows that cause it.

    When the run of all pairs fails (one task's graph raises, or one input trips it), a multi-task graph
    answers each of its tasks through that task's own session (:meth:`MergedRunner.task_runner`), and a
    session that still fails is retried per item: the healthy tasks of a mixed batch, and the healthy
    requests of a failing task, are answered; the others get the error. Costs extra runs only when
    something failed.
    """
    try:
        return list(runner.logits_for(items, pairs, chunk_rows, split_cost))
    except Exception as exc:
        error: BaseException = exc
    out: list[np.ndarray | BaseException] = [error] * len(pairs)
    if isinstance(runner, MergedRunner):
        by_slot: dict[int, list[int]] = {}
        for position, (_, target) in enumerate(pairs):
            by_slot.setdefault(int(target.slot or 0), []).append(position)
        for slot, positions in by_slot.items():
            try:
                alone = runner.task_runner(slot)
            except Exception as exc:  # pragma: no cover - the member's own graph loaded at load time
                for p in positions:
                    out[p] = exc
                continue
            subset = [pairs[p] for p in positions]
            for p, values in zip(
                positions, _isolated_logits(alone, items, subset, chunk_rows, split_cost), strict=True
            ):
                out[p] = values
        return out
    by_item: dict[int, list[int]] = {}
    for position, (i, _) in enumerate(pairs):
        by_item.setdefault(i, []).append(position)
    if len(by_item) == 1:
        return out
    for positions in by_item.values():
        subset = [pairs[p] for p in positions]
        for p, values in zip(positions, _isolated_logits(runner, items, subset, chunk_rows, split_cost), strict=True):
            out[p] = values
    return out
