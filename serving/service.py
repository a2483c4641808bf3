"""The one request path every protocol calls (native ``/v1``, Open Inference Protocol ``/v2``, and any
protocol added later): readiness, limits, tokenise, queue, wait, record metrics.

Routers only translate their wire format to :meth:`InferenceService.infer` and back, so a request is
checked, counted and timed the same way whichever protocol it came in by. Task loads and unloads go
through here too, so the load metrics have one owner. Everything raises :mod:`serving.errors` types
with clear messages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .batcher import DynamicBatcher
from .config import ServerConfig
from .engine import WorkItem
from .errors import InvalidInput, PayloadTooLarge, ServingError, ShuttingDown
from .http_limits import OpenRequests
from .metrics import ServerMetrics
from .registry import TaskEntry, TaskRegistry

log = logging.getLogger("aa_deploy.serving")

# Inputs up to this many characters are tokenised on the event loop (microseconds; a thread hop would
# cost more), larger ones in a worker thread so the loop keeps serving.
INLINE_TOKENIZE_CHARS = 4096
# Failed loads are public (``/ready``, ``/v1/tasks``): their reasons are shown with absolute paths
# replaced (POSIX, ``~`` and Windows drive paths; URLs and the API's own /v1, /v2 paths are kept) and
# cut to this length. The full message is in the server log.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:~?/(?!v[12]/)|[A-Za-z]:\\)[^\s'\"`,;:()]*")
PATH_PLACEHOLDER = "<path>"
MAX_FAILURE_REASON_CHARS = 300


def redact_paths(message: str) -> str:
    """``message`` without absolute server paths, short enough to list (a reason, not a report)."""
    reason = _ABSOLUTE_PATH.sub(PATH_PLACEHOLDER, message)
    if len(reason) > MAX_FAILURE_REASON_CHARS:
        reason = reason[: MAX_FAILURE_REASON_CHARS - 3] + "..."
    return reason


class TaskOutput(NamedTuple):
    logits: np.ndarray
    label_names: tuple[str, ...] | None


@dataclass(frozen=True)
class Readiness:
    """Whether the server takes predictions: started, not draining, at least one task loaded."""

    ready: bool
    tasks: list[str]
    failed: dict[str, str] = field(default_factory=dict)


class InferenceService:
    """Owns the registry and the batcher for one app; created by ``create_app``, started by its lifespan.

    ``registry`` may be given pre-loaded (tests, benchmarks); the service then leaves closing it to the
    caller.
    """

    def __init__(
        self,
        config: ServerConfig,
        batcher: DynamicBatcher,
        metrics: ServerMetrics,
        registry: TaskRegistry | None = None,
        *,
        open_requests: OpenRequests | None = None,
    ) -> None:
        self.config = config
        self.batcher = batcher
        # Requests the HTTP protocol has parsed and not yet answered (see _logits: the inline decision).
        self.open_requests = open_requests if open_requests is not None else OpenRequests()
        self.metrics = metrics
        self._given_registry = registry
        self._registry = registry
        self._started = False

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def registry(self) -> TaskRegistry:
        if self._registry is None:
            raise ShuttingDown("the server is starting; retry shortly")
        return self._registry

    async def start(self) -> None:
        """Open the registry, start the batcher, load the configured tasks (each failure is reported
        without stopping the others)."""
        for warning in self.config.security_warnings():
            log.warning("SECURITY: %s", warning)
        if self._registry is None:
            self._registry = await asyncio.to_thread(TaskRegistry, self.config)
        await self.batcher.start()
        if self.config.tasks:  # together: each multi-task graph is built once, not once per task
            specs = [(spec.name, spec.source, spec.revision) for spec in self.config.tasks]
            results = await asyncio.to_thread(self.registry.load_many, specs)
            for name, result in results.items():
                if isinstance(result, ServingError):  # the registry lists it in `failed` (without local paths)
                    self.metrics.task_loads.labels("load", "failed").inc()
                    log.error("task %s failed to load: %s", name, result.message)
                else:
                    self.metrics.task_loads.labels("load", "ok").inc()
            self.metrics.tasks_loaded.set(len(self.registry.view.tasks))
        tasks = self.registry.view.tasks
        if self.config.tasks and not tasks and self.config.exit_if_no_task_loads:
            await self.batcher.stop(0)
            raise RuntimeError(
                "none of the tasks could be loaded (see the errors above); fix the --task folders, or pass "
                "--start-empty to start without tasks and load them at runtime"
            )
        self._started = True
        log.info("serving %d task(s): %s", len(tasks), ", ".join(sorted(tasks)))

    async def stop(self) -> None:
        """Refuse new requests, drain the queue (``drain_timeout_s``), close what this service opened."""
        self._started = False
        await self.batcher.stop(self.config.drain_timeout_s)
        if self._given_registry is None and self._registry is not None:
            self._registry.close()

    def readiness(self) -> Readiness:
        registry = self._registry
        tasks = sorted(registry.view.tasks) if registry is not None else []
        return Readiness(bool(self.accepting and tasks), tasks, self.failures())

    def failures(self) -> dict[str, str]:
        """The tasks that failed to load, each with a short reason without server paths (public:
        ``/ready`` and the task listing show it)."""
        registry = self._registry
        failed = dict(registry.failed) if registry is not None else {}
        return {name: redact_paths(message) for name, message in sorted(failed.items())}

    @property
    def accepting(self) -> bool:
        return self._started and self.batcher.accepting

    def require_accepting(self) -> InferenceService:
        if not self.accepting:
            raise ShuttingDown("the server is starting or shutting down; retry shortly")
        return self

    # ------------------------------------------------------------------------------------------ tasks
    async def load_task(
        self, name: str, source: str, revision: str | None = None, *, replace: bool = False
    ) -> dict[str, Any]:
        try:
            info = await asyncio.to_thread(self.registry.load, name, source, revision, replace=replace)
        except ServingError:
            self.metrics.task_loads.labels("load", "failed").inc()
            raise
        self.metrics.task_loads.labels("load", "ok").inc()
        self.metrics.tasks_loaded.set(len(self.registry.view.tasks))
        return info

    async def unload_task(self, name: str) -> list[str]:
        """Unload ``name`` (requests already queued finish on it); returns the tasks still loaded."""
        await asyncio.to_thread(self.registry.unload, name)
        self.metrics.forget_task(name)
        self.metrics.task_loads.labels("unload", "ok").inc()
        self.metrics.tasks_loaded.set(len(self.registry.view.tasks))
        return sorted(self.registry.view.tasks)

    # ------------------------------------------------------------------------------------------ checks
    def check_texts(self, texts: Sequence[Any], pairs: Sequence[Any] | None) -> None:
        """The request limits and the text/pair agreement: checked here only, for every protocol."""
        cfg = self.config
        if not texts:
            raise InvalidInput("texts is empty: send at least one text")
        if len(texts) > cfg.max_texts_per_request:
            raise PayloadTooLarge(
                f"{len(texts)} texts in one request; the limit is {cfg.max_texts_per_request}: split the request",
                code="too_many_texts",
            )
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidInput(f"text_pairs has {len(pairs)} items but texts has {len(texts)}; they must match")
        for field_name, values in (("texts", texts), ("text_pairs", pairs or ())):
            for i, text in enumerate(values):
                if not isinstance(text, str):
                    raise InvalidInput(f"{field_name}[{i}] is {type(text).__name__}, expected a string")
                if len(text) > cfg.max_chars_per_text:
                    raise PayloadTooLarge(
                        f"{field_name}[{i}] has {len(text)} characters; the limit is {cfg.max_chars_per_text} "
                        "(texts are truncated to the model's max_length tokens anyway)",
                        code="text_too_long",
                    )
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInput(
                        f"{field_name}[{i}] is not valid Unicode (it contains a lone surrogate)"
                    ) from None

    def resolve(self, tasks: Sequence[str]) -> list[TaskEntry]:
        if not tasks:
            raise InvalidInput("tasks is empty: name at least one task")
        if len(tasks) > self.config.max_tasks_per_request:
            raise PayloadTooLarge(
                f"{len(tasks)} tasks in one request; the limit is {self.config.max_tasks_per_request}",
                code="too_many_tasks",
            )
        view = self.registry.view
        return [view.get(name) for name in dict.fromkeys(tasks)]

    # ------------------------------------------------------------------------------------------ predict
    async def infer(
        self, tasks: Sequence[str], texts: Sequence[str], pairs: Sequence[str] | None, *, endpoint: str
    ) -> dict[str, TaskOutput]:
        """``{task: TaskOutput}`` for every task on the same inputs, recorded in the request, latency and
        texts metrics under ``endpoint`` (a failure under its HTTP status; the error code itself is counted
        by the app's exception handler)."""
        started = time.perf_counter()
        known = self.registry.view.tasks
        metric_tasks = [t if t in known else "_unknown" for t in dict.fromkeys(tasks)] or ["_none"]
        try:
            outputs = await self._logits(tasks, texts, pairs)
        except ServingError as exc:
            for task in metric_tasks:
                self.metrics.requests.labels(task, endpoint, str(exc.status)).inc()
            raise
        elapsed = time.perf_counter() - started
        for name in outputs:
            self.metrics.requests.labels(name, endpoint, "200").inc()
            self.metrics.latency.labels(name).observe(elapsed)
            self.metrics.texts.labels(name).inc(len(texts))
        return outputs

    async def _logits(
        self, tasks: Sequence[str], texts: Sequence[str], pairs: Sequence[str] | None
    ) -> dict[str, TaskOutput]:
        """Logits [len(texts), num_labels] + labels per task. The labels come from the task version that
        computed the logits, even if the name was reloaded meanwhile."""
        self.require_accepting()
        self.check_texts(texts, pairs)
        entries = self.resolve(tasks)
        for entry in entries:
            is_pair = entry.artifact.manifest.is_pair
            if is_pair and pairs is None:
                raise InvalidInput(f"task {entry.name!r} classifies text pairs: send text_pairs as well as texts")
            if not is_pair and pairs is not None:
                raise InvalidInput(f"task {entry.name!r} classifies single texts: do not send text_pairs")
        groups: dict[str, list[TaskEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.artifact.tokenizer.fingerprint, []).append(entry)
        inline = sum(len(t) for t in texts) + sum(len(p) for p in pairs or ()) <= INLINE_TOKENIZE_CHARS
        text_list, pair_list = list(texts), list(pairs) if pairs is not None else None
        with self.batcher.arrival():
            items = []
            for members in groups.values():
                tokenizer = members[0].artifact.tokenizer
                if inline:
                    encoded = tokenizer.encode(text_list, pair_list)
                else:
                    encoded = await asyncio.to_thread(tokenizer.encode, text_list, pair_list)
                items.append(WorkItem(encoded, tuple(e.target for e in members)))
            results = None
            if len(items) == 1 and self.batcher.can_run_now(items[0]):
                if self.open_requests.tracked:
                    # The protocol counted every request parsed so far, before any handler ran: if
                    # another is open, this one queues and they batch.
                    run_inline = self.open_requests.alone()
                else:
                    # Nobody counts (another HTTP host): one turn of the event loop first, so requests
                    # that arrived meanwhile get as far as the batcher and this one queues with them.
                    await asyncio.sleep(0)
                    run_inline = self.batcher.can_run_now(items[0])
                if run_inline:
                    results = [self.batcher.run_now(items[0])]
            if results is None:
                futures: list[asyncio.Future] = []
                try:
                    for item in items:
                        futures.append(self.batcher.enqueue(item))
                except BaseException:
                    for future in futures:  # the part already queued will not be awaited
                        future.cancel()
                    raise
        if results is None:
            results = await asyncio.gather(*futures)
        labels = {e.name: e.artifact.manifest.label_names for e in entries}
        merged: dict[str, TaskOutput] = {}
        for result in results:
            for name, values in result.items():
                merged[name] = TaskOutput(values, labels[name])
        return merged


def _row_softmax(row: list[float]) -> list[float]:
    """Softmax of one row in float64 Python arithmetic: a response holds a few rows of a few labels, where
    each NumPy call costs more than the arithmetic (~0.3 ms per request with NumPy on a busy machine)."""
    top = max(row)
    e = [math.exp(v - top) for v in row]
    total = math.fsum(e)
    return [v / total for v in e]


def format_predictions(
    logits: np.ndarray, label_names: Sequence[str] | None, return_logits: bool
) -> list[dict[str, Any]]:
    """Classification: the best label, its probability and all probabilities; regression: the value."""
    out = []
    for row in logits.tolist():
        if label_names is None:
            item: dict[str, Any] = {"label": None, "score": row[0]}
        else:
            probs = _row_softmax(row)
            best = max(range(len(row)), key=row.__getitem__)  # the first maximum, as np.argmax
            item = {
                "label": label_names[best],
                "score": probs[best],
                "scores": dict(zip(label_names, probs, strict=True)),
            }
        if return_logits:
            item["logits"] = row
        out.append(item)
    return out


def labels_for(logits: np.ndarray, label_names: Sequence[str] | None) -> list[str]:
    if label_names is None:
        return [repr(float(row[0])) for row in logits]
    return [label_names[int(i)] for i in np.argmax(logits, axis=-1)]
