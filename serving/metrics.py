"""Prometheus metrics, one CollectorRegistry per app (no process-global state: several servers, e.g. in
tests, never share counters)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine import BatchStats, WorkItem

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aa_requests", "Prediction requests per task and outcome", ["task", "endpoint", "status"], registry=r
        )
        self.errors = Counter("aa_errors", "Failed requests by error code", ["code"], registry=r)
        self.latency = Histogram(
            "aa_request_latency_seconds",
            "End-to-end prediction latency per task",
            ["task"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "aa_queue_seconds", "Time a request waited for its batch", ["task"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.inference_time = Histogram(
            "aa_batch_inference_seconds", "Time to run one batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "aa_batch_rows", "Rows (texts x tasks) per batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tasks = Histogram("aa_batch_tasks", "Distinct tasks per batch", buckets=_SIZE_BUCKETS, registry=r)
        self.texts = Counter("aa_texts", "Texts predicted per task", ["task"], registry=r)
        self.queued_rows = Gauge("aa_queue_rows", "Rows waiting in the batching queue", registry=r)
        self.tasks_loaded = Gauge("aa_tasks_loaded", "Tasks currently served", registry=r)
        self.task_loads = Counter(
            "aa_task_loads", "Task loads and unloads by outcome", ["action", "status"], registry=r
        )

    def forget_task(self, name: str) -> None:
        """Remove every series labelled with task ``name`` (called on unload): without this, the series of
        every task ever loaded stay in /metrics forever, and a reloaded name would continue old counts."""
        for metric, labelnames in (
            (self.requests, ("task", "endpoint", "status")),
            (self.latency, ("task",)),
            (self.queue_time, ("task",)),
            (self.texts, ("task",)),
        ):
            position = labelnames.index("task")
            seen: set[tuple[str, ...]] = set()
            for family in metric.collect():
                for sample in family.samples:
                    values = tuple(sample.labels.get(n, "") for n in labelnames)
                    if values[position] == name:
                        seen.add(values)
            for values in seen:
                try:
                    metric.remove(*values)
                except KeyError:  # pragma: no cover - removed meanwhile
                    pass

    def observe_batch(self, items: Sequence[WorkItem], stats: BatchStats, seconds: float) -> None:
        self.inference_time.observe(seconds)
        self.batch_rows.observe(sum(item.rows for item in items))
        self.batch_tasks.observe(len(stats.tasks))
        for item in items:
            if item.started_at is not None:
                for target in item.targets:
                    self.queue_time.labels(target.name).observe(item.started_at - item.enqueued_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
