"""Dynamic batching on the event loop, inference in one worker thread.

Requests are queued as :class:`~serving.engine.WorkItem`. The loop closes a batch when it holds
``max_batch_size`` rows (texts x tasks) or when the first item has waited ``max_delay_ms`` - the Triton
rule. While a batch runs (ONNX Runtime releases the GIL) new items pile up, so under load batches fill
up without waiting. Items for different tasks share a batch; the engine runs each runner's rows
together (one run for all tasks of the multi-task graph).

With ``eager_dispatch`` (the default) a batch is also closed before ``max_delay`` when no other request is
being received (parsed or tokenised) at that moment: waiting could only add latency then. Under load
requests keep arriving, so batches still fill; at concurrency 1 nobody waits for the delay.

Back-pressure is explicit: once ``max_queue_rows`` rows wait, :meth:`enqueue` raises
:class:`~serving.errors.Overloaded` (HTTP 503 + Retry-After) instead of letting latency grow without
bound; a request that alone needs more than ``max_queue_rows`` rows could never fit and is refused with
:class:`~serving.errors.RequestTooLarge` (413). :meth:`stop` refuses new work and drains what is queued.

Lone requests (``inline_lone_requests``, on by default): a request that finds the batcher idle - nothing
queued or running, no other request being received, and the previous batch held a single request - is
run at once on the event loop, without queueing and without the two thread hops to the inference
thread and back. At concurrency 1 that is all a request waits for besides the model (on a loaded
machine each hop can cost a scheduler time slice); as soon as requests overlap, batches hold more than
one request and every request goes through the queue again, so concurrent requests still batch. Limits,
errors and metrics are those of the batched path (the same checks, :func:`~serving.engine.execute` and
the same observer).

Fairness: a request of more than ``max_batch_size`` texts is split into parts of at most that many
texts (its texts sorted by length first, so each part pads little), and every queued request is a
lane; batches take one part from each lane in turn. A small request that arrives behind a large one
waits for about one part, not for the whole large request. Parts count texts, not rows (texts x
tasks), on purpose: the multi-task graph computes the shared lower layers once per text, and parts of
``max_batch_size // tasks`` texts made a 2-task 512-row request 1.6x slower on MiniLM
(benchmarks/fair_scheduling.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from .config import ServerConfig
from .engine import BatchStats, WorkItem, execute
from .errors import InferenceError, Overloaded, RequestTooLarge, ServingError, ShuttingDown
from .tokenization import Encoded

BatchObserver = Callable[[Sequence[WorkItem], BatchStats, float], None]


class DynamicBatcher:
    def __init__(self, config: ServerConfig, *, observer: BatchObserver | None = None) -> None:
        self.config = config
        self._max_delay_s = config.max_delay_ms / 1000.0
        self._observer = observer
        # One lane per queued request (its parts, in order); batches take a part from each lane in turn.
        self._lanes: deque[deque[WorkItem]] = deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._accepting = False
        self._busy = False
        self._arriving = 0
        # Requests in the previous batch: 1 at concurrency 1 (a lone request may then run inline).
        self._last_batch_items = 1

    # ------------------------------------------------------------------------------------------ control
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aa-infer")
        self._accepting = True
        self._task = asyncio.create_task(self._loop(), name="aa-batcher")

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued (up to ``timeout`` s), then fail the rest with 503."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while (self._lanes or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._lanes:
            for item in self._lanes.popleft():
                if not item.future.done():
                    item.future.set_exception(ShuttingDown())
        self._queued_rows = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def accepting(self) -> bool:
        return self._accepting

    # ------------------------------------------------------------------------------------------ submit
    @contextmanager
    def arrival(self) -> Iterator[None]:
        """Mark a request as being received (parsed, tokenised) until its items are enqueued, so that
        an eager batcher knows more work is about to come and keeps the batch open."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    async def submit(self, item: WorkItem) -> dict[str, Any]:
        """Queue ``item`` and wait for its result."""
        return await self.enqueue(item)

    def enqueue(self, item: WorkItem) -> asyncio.Future:
        """Queue ``item`` now (synchronously) and return the future of its result."""
        self._admit(item)
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()
        item.enqueued_at = time.perf_counter()
        parts = split_item(item, self.config.max_batch_size)
        if len(parts) > 1:
            for part in parts:
                part.future = loop.create_future()
                part.enqueued_at = item.enqueued_at
            join_parts(item, parts)
        self._lanes.append(deque(parts))
        self._queued_rows += item.rows
        self._wakeup.set()  # type: ignore[union-attr]
        return item.future

    def can_run_now(self, item: WorkItem) -> bool:
        """Whether ``item`` is a lone request that :meth:`run_now` may run inline: with ``eager_dispatch``,
        the batcher is idle,
        no other request is being received (the caller is inside its own :meth:`arrival`), the previous
        batch held one request, and the item fits in one batch."""
        return (
            self.config.inline_lone_requests
            and self.config.eager_dispatch  # without it, every batch waits max_delay_ms for company
            and self._accepting
            and not self._lanes
            and not self._busy
            and self._arriving <= 1
            and self._last_batch_items == 1
            and len(item.encoded) <= self.config.max_batch_size
        )

    def run_now(self, item: WorkItem) -> dict[str, Any]:
        """Run ``item`` at once on the calling thread (see :meth:`can_run_now`): the same limits, executor,
        errors and observer as a queued batch of one item."""
        self._admit(item)
        started = item.enqueued_at = item.started_at = time.perf_counter()
        stats = BatchStats()
        self._busy = True
        try:
            result = execute([item], self.config.max_batch_size, stats, self.config.split_cost_tokens)[0]
        finally:
            self._busy = False
        self._last_batch_items = 1
        self._observe([item], stats, time.perf_counter() - started)
        if isinstance(result, BaseException):
            raise as_serving_error(result)
        return result

    def _admit(self, item: WorkItem) -> None:
        """The checks every item passes before it runs: accepting, fits the queue at all, queue not full."""
        if not self._accepting or self._wakeup is None:
            raise ShuttingDown()
        limit = self.config.max_queue_rows
        if item.rows > limit:
            raise RequestTooLarge(
                f"this request needs {item.rows} rows (texts x tasks) but the queue holds at most {limit}; "
                f"send at most {max(1, limit // max(1, len(item.targets)))} texts per request for "
                f"{len(item.targets)} task(s)"
            )
        if self._queued_rows + item.rows > limit and self._lanes:
            raise Overloaded(
                f"the server is overloaded ({self._queued_rows} rows queued, limit {limit}); "
                f"retry after {self.config.retry_after_s}s",
                retry_after=self.config.retry_after_s,
            )

    # ------------------------------------------------------------------------------------------ loop
    async def _next_batch(self) -> list[WorkItem]:
        assert self._wakeup is not None
        while not self._lanes:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._lanes[0][0]
        deadline = first.enqueued_at + self._max_delay_s
        while self._rows_waiting() < self.config.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or (self.config.eager_dispatch and self._arriving == 0):
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[WorkItem] = []
        rows = 0
        # Round robin over the lanes: one part of each request per turn, until the batch is full.
        while self._lanes:
            lane = self._lanes[0]
            item = lane[0]
            if batch and rows + item.rows > self.config.max_batch_size:
                break
            self._lanes.popleft()
            lane.popleft()
            if lane:
                self._lanes.append(lane)
            self._queued_rows -= item.rows
            if item.future.done():  # cancelled by a disconnected client
                continue
            batch.append(item)
            rows += item.rows
        return batch

    def _rows_waiting(self) -> int:
        return self._queued_rows

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                await self._run(loop, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # pragma: no cover - a bug here must fail requests, never hang them
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(InferenceError(f"batching failed: {type(exc).__name__}: {exc}"))

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[WorkItem]) -> None:
        """Run one batch in the inference thread and resolve its items' futures."""
        self._busy = True
        started = time.perf_counter()
        for item in batch:
            item.started_at = started
        stats = BatchStats()
        try:
            results = await loop.run_in_executor(
                self._pool, execute, batch, self.config.max_batch_size, stats, self.config.split_cost_tokens
            )
        except Exception as exc:  # pragma: no cover - execute() catches per runner
            results = [exc] * len(batch)
        finally:
            self._busy = False
        elapsed = time.perf_counter() - started
        self._last_batch_items = len({id(item.future) for item in batch})
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(as_serving_error(result))
            else:
                item.future.set_result(result)
        self._observe(batch, stats, elapsed)

    def _observe(self, batch: Sequence[WorkItem], stats: BatchStats, elapsed: float) -> None:
        if self._observer is not None:
            try:
                self._observer(batch, stats, elapsed)
            except Exception:  # pragma: no cover - metrics must never break serving
                pass


def as_serving_error(error: BaseException) -> ServingError:
    """What a request sees when its rows failed: serving errors as they are, anything else as a 500."""
    if isinstance(error, ServingError):
        return error
    return InferenceError(f"inference failed: {type(error).__name__}: {error}")


def split_item(item: WorkItem, max_texts: int) -> list[WorkItem]:
    """``item`` as parts of at most ``max_texts`` texts, its texts sorted by length so that each part
    pads little; ``part.row_index`` says which of ``item``'s texts a part holds."""
    texts = len(item.encoded)
    per_part = max(1, max_texts)
    if texts <= per_part:
        return [item]
    lengths = np.fromiter((len(ids) for ids in item.encoded.ids), dtype=np.int64, count=texts)
    order = np.argsort(lengths, kind="stable")
    parts = []
    for begin in range(0, texts, per_part):
        index = order[begin : begin + per_part]
        encoded = Encoded(tuple(item.encoded.ids[i] for i in index), tuple(item.encoded.type_ids[i] for i in index))
        parts.append(WorkItem(encoded, item.targets, row_index=index))
    return parts


def join_parts(item: WorkItem, parts: Sequence[WorkItem]) -> None:
    """Resolve ``item.future`` from its parts' futures: the logits in ``item``'s row order once all are
    done, the first error as soon as one fails; cancelling ``item`` (client gone) cancels the parts."""
    texts = len(item.encoded)
    pending = {id(part) for part in parts}

    def part_done(part: WorkItem, future: asyncio.Future) -> None:
        pending.discard(id(part))
        if item.future.done():
            return
        if future.cancelled():
            item.future.cancel()
            return
        error = future.exception()
        if error is not None:
            item.future.set_exception(error)
            for other in parts:
                other.future.cancel()
            return
        if pending:
            return
        merged: dict[str, np.ndarray] = {}
        for p in parts:
            for name, values in p.future.result().items():
                out = merged.get(name)
                if out is None:
                    out = merged[name] = np.empty((texts, *values.shape[1:]), dtype=values.dtype)
                out[p.row_index] = values
        item.future.set_result(merged)

    for part in parts:
        part.future.add_done_callback(lambda future, part=part: part_done(part, future))

    def cancel_parts(future: asyncio.Future) -> None:
        if future.cancelled():
            for part in parts:
                part.future.cancel()

    item.future.add_done_callback(cancel_parts)
