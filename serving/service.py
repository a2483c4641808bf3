"""The request path shared by the native API and the Open Inference Protocol: check limits, tokenise,
queue, wait, shape the answer. Everything here raises :mod:`serving.errors` types with clear messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .batcher import DynamicBatcher
from .config import ServerConfig
from .engine import WorkItem
from .errors import InvalidInput, PayloadTooLarge, ServingError
from .metrics import ServerMetrics
from .registry import TaskEntry, TaskRegistry

INLINE_TOKENIZE_CHARS = 4096


class TaskOutput(NamedTuple):
    logits: np.ndarray
    label_names: tuple[str, ...] | None


class InferenceService:
    def __init__(
        self, config: ServerConfig, registry: TaskRegistry, batcher: DynamicBatcher, metrics: ServerMetrics
    ) -> None:
        self.config = config
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics

    # ------------------------------------------------------------------------------------------ checks
    def check_texts(self, texts: Sequence[Any], pairs: Sequence[Any] | None) -> None:
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
        for field, values in (("texts", texts), ("text_pairs", pairs or ())):
            for i, text in enumerate(values):
                if not isinstance(text, str):
                    raise InvalidInput(f"{field}[{i}] is {type(text).__name__}, expected a string")
                if len(text) > cfg.max_chars_per_text:
                    raise PayloadTooLarge(
                        f"{field}[{i}] has {len(text)} characters; the limit is {cfg.max_chars_per_text} "
                        "(texts are truncated to the model's max_length tokens anyway)",
                        code="text_too_long",
                    )
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInput(f"{field}[{i}] is not valid Unicode (it contains a lone surrogate)") from None

    def resolve(self, tasks: Sequence[str]) -> list[TaskEntry]:
        if not tasks:
            raise InvalidInput("tasks is empty: name at least one task")
        if len(tasks) > self.config.max_tasks_per_request:
            raise PayloadTooLarge(
                f"{len(tasks)} tasks in one request; the limit is {self.config.max_tasks_per_request}",
                code="too_many_tasks",
            )
        view = self.registry.view
        unique = list(dict.fromkeys(tasks))
        return [view.get(name) for name in unique]

    # ------------------------------------------------------------------------------------------ predict
    async def logits(
        self, tasks: Sequence[str], texts: Sequence[str], pairs: Sequence[str] | None
    ) -> dict[str, TaskOutput]:
        """``{task: TaskOutput}`` (logits [len(texts), num_labels] + labels) for every task on the same
        inputs. The labels come from the task version that computed the logits, even if the name was
        reloaded meanwhile."""
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
        # Small inputs are tokenised right here (microseconds; a thread hop would cost more), large ones
        # in a worker thread so the event loop keeps serving.
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
            futures: list[asyncio.Future] = []
            try:
                for item in items:
                    futures.append(self.batcher.enqueue(item))
            except BaseException:
                for future in futures:  # the part already queued will not be awaited
                    future.cancel()
                raise
        results = await asyncio.gather(*futures)
        labels = {e.name: e.artifact.manifest.label_names for e in entries}
        merged: dict[str, TaskOutput] = {}
        for result in results:
            for name, values in result.items():
                merged[name] = TaskOutput(values, labels[name])
        return merged

    async def predict(
        self,
        tasks: Sequence[str],
        texts: Sequence[str],
        pairs: Sequence[str] | None,
        *,
        endpoint: str,
        return_logits: bool = False,
    ) -> dict[str, list[dict[str, Any]]]:
        started = time.perf_counter()
        known = self.registry.view.tasks
        metric_tasks = [t if t in known else "_unknown" for t in dict.fromkeys(tasks)] or ["_none"]
        try:
            logits = await self.logits(tasks, texts, pairs)
        except ServingError as exc:  # the error itself is counted by the app's exception handler
            for t in metric_tasks:
                self.metrics.requests.labels(t, endpoint, str(exc.status)).inc()
            raise
        elapsed = time.perf_counter() - started
        out = {}
        for name, output in logits.items():
            out[name] = format_predictions(output.logits, output.label_names, return_logits)
            self.metrics.requests.labels(name, endpoint, "200").inc()
            self.metrics.latency.labels(name).observe(elapsed)
            self.metrics.texts.labels(name).inc(len(texts))
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def format_predictions(
    logits: np.ndarray, label_names: Sequence[str] | None, return_logits: bool
) -> list[dict[str, Any]]:
    """Classification: the best label, its probability and all probabilities; regression: the value."""
    rows = []
    if label_names is None:
        for row in logits:
            item: dict[str, Any] = {"label": None, "score": float(row[0])}
            if return_logits:
                item["logits"] = [float(v) for v in row]
            rows.append(item)
        return rows
    probabilities = softmax(logits.astype(np.float64))
    for row, probs in zip(logits, probabilities, strict=True):
        best = int(np.argmax(row))
        item = {
            "label": label_names[best],
            "score": float(probs[best]),
            "scores": {name: float(p) for name, p in zip(label_names, probs, strict=True)},
        }
        if return_logits:
            item["logits"] = [float(v) for v in row]
        rows.append(item)
    return rows


def labels_for(logits: np.ndarray, label_names: Sequence[str] | None) -> list[str]:
    if label_names is None:
        return [repr(float(row[0])) for row in logits]
    return [label_names[int(i)] for i in np.argmax(logits, axis=-1)]
