"""The latency fast paths: lone requests run inline (no queue, no thread hops) and single-task batches
run on the task's own session (``single_task_sessions``). Both must answer exactly like the batched
multi-task path, keep every limit and error, and be recorded in the metrics. No timing assertions:
speed is measured by benchmarks/latency_parity.py."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import BREAKING_TEXT, PAIRS, TEXTS, break_at_length, logits_of, predict

from aa_deploy.serving.batcher import DynamicBatcher
from aa_deploy.serving.config import ServerConfig, TaskSpec
from aa_deploy.serving.engine import MergedRunner, WorkItem, execute
from aa_deploy.serving.errors import RequestTooLarge, ShuttingDown
from aa_deploy.serving.registry import TaskRegistry
from aa_deploy.serving.server import BackgroundServer

TASKS = ("sst", "rte", "topic", "late")


def _registry(exports: dict[str, Path], **options: Any) -> TaskRegistry:
    registry = TaskRegistry(ServerConfig(intra_op_threads=1, **options))
    for name in TASKS:
        registry.load(name, str(exports[name]))
    return registry


def _item(registry: TaskRegistry, name: str, texts: list[str]) -> WorkItem:
    entry = registry.view.get(name)
    pairs = PAIRS[: len(texts)] if entry.artifact.manifest.is_pair else None
    return WorkItem(entry.artifact.tokenizer.encode(texts, pairs), (entry.target,))


# ---------------------------------------------------------------------------------------------- engine
def test_single_task_batches_match_the_multitask_graph(serving_exports: dict[str, Path]) -> None:
    """Own sessions (opt-in) and the stacked graph alone (the default, single_task_sessions=0) answer
    alike, for single-task batches (own session) and mixed ones (stacked graph in both)."""
    fast, stacked = _registry(serving_exports, single_task_sessions=4), _registry(serving_exports)
    try:
        for name in TASKS:
            a = execute([_item(fast, name, TEXTS)], 4)[0]
            b = execute([_item(stacked, name, TEXTS)], 4)[0]
            np.testing.assert_allclose(a[name], b[name], atol=1e-5)  # type: ignore[index]
        mixed = [execute([_item(r, n, TEXTS[:3]) for n in TASKS], 8) for r in (fast, stacked)]
        for got, expected in zip(*mixed, strict=True):
            for name, values in got.items():  # type: ignore[union-attr]
                np.testing.assert_allclose(values, expected[name], atol=1e-5)  # type: ignore[index]
        runner = fast.view.get("sst").target.runner
        assert isinstance(runner, MergedRunner) and runner.suffix is not None  # the stacked graph still serves
        assert all(fast.info(n)["own_session"] for n in TASKS)
        assert not any(stacked.info(n)["own_session"] for n in TASKS)
    finally:
        fast.close()
        stacked.close()


def test_single_task_sessions_limit_and_reuse(serving_exports: dict[str, Path]) -> None:
    """Only the first N tasks get an own session; loading another task keeps their sessions (no
    rebuild); a one-task graph runs its member's own graph and builds no stacked sessions."""
    registry = TaskRegistry(ServerConfig(intra_op_threads=1, single_task_sessions=2))
    try:
        registry.load("sst", str(serving_exports["sst"]))
        alone = registry.view.get("sst").target.runner
        assert isinstance(alone, MergedRunner) and alone.suffix is None and alone.prefix is None
        assert registry.info("sst")["own_session"]
        registry.load("rte", str(serving_exports["rte"]))
        own = registry.view.get("sst").artifact.own
        registry.load("topic", str(serving_exports["topic"]))
        assert registry.view.get("sst").artifact.own is own
        assert [registry.info(n)["own_session"] for n in ("sst", "rte", "topic")] == [True, True, False]
        registry.unload("rte")  # topic moves up to the second place
        assert registry.info("topic")["own_session"]
        assert registry.view.get("sst").artifact.own is own
    finally:
        registry.close()


# ---------------------------------------------------------------------------------------------- batcher
def test_lone_request_runs_inline_only_when_the_batcher_is_idle(serving_exports: dict[str, Path]) -> None:
    registry = _registry(serving_exports)
    config = ServerConfig(intra_op_threads=1, max_batch_size=4, max_queue_rows=6)
    observed: list[int] = []

    async def scenario() -> None:
        batcher = DynamicBatcher(config, observer=lambda batch, stats, elapsed: observed.append(len(batch)))
        await batcher.start()
        item = _item(registry, "rte", TEXTS[:2])
        with batcher.arrival():
            assert batcher.can_run_now(item)
            inline = batcher.run_now(item)
        queued = await batcher.enqueue(_item(registry, "rte", TEXTS[:2]))
        np.testing.assert_array_equal(inline["rte"], queued["rte"])
        assert observed == [1, 1]  # the inline run is observed like a batch of one
        with batcher.arrival(), batcher.arrival():  # another request is being received: queue
            assert not batcher.can_run_now(item)
        with batcher.arrival():
            assert not batcher.can_run_now(_item(registry, "rte", TEXTS[:5]))  # more than one batch
        # Concurrent requests batch: three queued together run as one batch, and afterwards the next
        # lone request still queues (the previous batch was not a lone request).
        many = [batcher.enqueue(_item(registry, n, TEXTS[:1])) for n in ("sst", "rte", "topic")]
        results = await asyncio.gather(*many)
        assert observed[-1] == 3
        np.testing.assert_allclose(results[1]["rte"], inline["rte"][:1], atol=1e-5)
        with batcher.arrival():
            assert not batcher.can_run_now(item)
        # Limits: a lone request over the queue's size is refused as when queued.
        with batcher.arrival(), pytest.raises(RequestTooLarge):
            batcher.run_now(WorkItem(item.encoded, tuple(registry.view.get(n).target for n in TASKS)))
        await batcher.stop(5)
        with pytest.raises(ShuttingDown):
            batcher.run_now(item)

    try:
        asyncio.run(scenario())
    finally:
        registry.close()


def test_inline_off_or_without_eager_dispatch_always_queues(serving_exports: dict[str, Path]) -> None:
    registry = _registry(serving_exports)

    async def scenario(config: ServerConfig) -> None:
        batcher = DynamicBatcher(config)
        await batcher.start()
        with batcher.arrival():
            assert not batcher.can_run_now(_item(registry, "sst", TEXTS[:1]))
        await batcher.stop(5)

    try:
        asyncio.run(scenario(ServerConfig(inline_lone_requests=False)))
        asyncio.run(scenario(ServerConfig(eager_dispatch=False)))
    finally:
        registry.close()


# ---------------------------------------------------------------------------------------------- HTTP
def _config(exports: dict[str, Path], **options: Any) -> ServerConfig:
    options = {"max_batch_size": 8, "max_queue_rows": 64, **options}
    return ServerConfig(
        port=0, intra_op_threads=1, tasks=[TaskSpec(n, str(exports[n])) for n in (*TASKS, "broken")], **options
    )


def _answers(client: httpx.Client) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in TASKS:
        pairs = PAIRS[:3] if name == "rte" else None
        r = predict(client, name, TEXTS[:3], pairs)
        assert r.status_code == 200, r.text
        out[name] = logits_of(r.json()["predictions"])
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    r = client.post("/v2/models/sst/infer", json=body)
    assert r.status_code == 200, r.text
    out["oip"] = np.array(next(o for o in r.json()["outputs"] if o["name"] == "logits")["data"])
    r = client.post("/v1/predict", json={"tasks": ["sst", "late"], "texts": TEXTS[:2], "return_logits": True})
    assert r.status_code == 200, r.text
    out["multi"] = np.concatenate([logits_of(r.json()["results"][n]) for n in ("sst", "late")])
    return out


@pytest.fixture(scope="module")
def exports_with_broken(serving_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fastpath")
    broken = break_at_length(Path(shutil.copytree(serving_exports["sst"], root / "broken")))
    return {**serving_exports, "broken": broken}


def test_http_fast_paths_answer_like_the_batched_path(exports_with_broken: dict[str, Path]) -> None:
    """The same requests, one at a time, with both fast paths on (default) and both off: identical
    answers, single and pair tasks, /v1, OIP and multi-task; then concurrent requests on the fast
    server batch and answer the same."""
    with BackgroundServer(_config(exports_with_broken, inline_lone_requests=False, single_task_sessions=0)) as slow:
        with httpx.Client(base_url=slow.url, timeout=60) as c:
            expected = _answers(c)
    with BackgroundServer(_config(exports_with_broken)) as fast, httpx.Client(base_url=fast.url, timeout=60) as c:
        got = _answers(c)
        for key, values in expected.items():
            np.testing.assert_allclose(got[key], values, atol=1e-5, err_msg=key)

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=fast.url, timeout=60) as ac:
                calls = [
                    ac.post(f"/v1/tasks/{n}/predict", json={"texts": TEXTS[:3], "return_logits": True,
                            **({"text_pairs": PAIRS[:3]} if n == "rte" else {})})
                    for n in TASKS * 3
                ]  # fmt: skip
                return await asyncio.gather(*calls)

        for name, r in zip(TASKS * 3, asyncio.run(together()), strict=True):
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(logits_of(r.json()["predictions"]), expected[name], atol=1e-5)


def test_http_fast_path_keeps_limits_errors_and_metrics(exports_with_broken: dict[str, Path]) -> None:
    config = _config(exports_with_broken, max_queue_rows=12)
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert predict(c, "sst", TEXTS[:1]).status_code == 200
        # 13 texts x 1 task fit no batch queue of 12 rows: refused like a queued request.
        r = predict(c, "sst", (TEXTS * 4)[:13])
        assert r.status_code == 413, r.text
        # Two tasks x 7 texts: 14 rows > 12, refused too (the multi-task path is not inline).
        r = c.post("/v1/predict", json={"tasks": ["sst", "late"], "texts": (TEXTS * 2)[:7]})
        assert r.status_code == 413, r.text
        # A graph that fails on some inputs: the lone failing request gets a 500, the next one is fine.
        r = predict(c, "broken", [BREAKING_TEXT])
        assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed", r.text
        assert predict(c, "broken", ["fine"]).status_code == 200
        metrics = c.get("/metrics").text
    assert 'aa_requests_total{endpoint="predict",status="200",task="sst"} 1.0' in metrics
    assert 'aa_requests_total{endpoint="predict",status="500",task="broken"} 1.0' in metrics
    assert 'aa_requests_total{endpoint="predict",status="413",task="sst"} 1.0' in metrics
    batches = next(line for line in metrics.splitlines() if line.startswith("aa_batch_rows_count"))
    assert float(batches.split()[-1]) >= 3  # the inline runs are observed as batches


class CountingBatcher(DynamicBatcher):
    """The real batcher, counting the requests it ran inline."""

    inline = 0

    def run_now(self, item: WorkItem) -> dict[str, Any]:
        self.inline += 1
        return super().run_now(item)


def test_requests_arriving_together_are_batched_not_run_inline(serving_exports: dict[str, Path]) -> None:
    """Two requests started in the same turn of the event loop: the first one gives the second one a
    turn before running inline, sees it arriving, and both are queued into one batch. A request alone
    afterwards still queues (the previous batch was not a lone request); the one after runs inline."""
    from aa_deploy.serving.metrics import ServerMetrics
    from aa_deploy.serving.service import InferenceService

    registry = _registry(serving_exports)
    config = ServerConfig(intra_op_threads=1, max_delay_ms=50)
    batches: list[int] = []
    batcher = CountingBatcher(config, observer=lambda batch, stats, elapsed: batches.append(len(batch)))
    service = InferenceService(config, batcher, ServerMetrics(), registry)

    async def scenario() -> None:
        await service.start()
        together = await asyncio.gather(
            service.infer(["sst"], TEXTS[:2], None, endpoint="predict"),
            service.infer(["rte"], TEXTS[:2], PAIRS[:2], endpoint="predict"),
        )
        assert batches == [2] and batcher.inline == 0
        alone = await service.infer(["rte"], TEXTS[:2], PAIRS[:2], endpoint="predict")
        assert batches == [2, 1] and batcher.inline == 0
        again = await service.infer(["rte"], TEXTS[:2], PAIRS[:2], endpoint="predict")
        assert batches == [2, 1, 1] and batcher.inline == 1
        for values in (alone["rte"].logits, again["rte"].logits):
            np.testing.assert_allclose(values, together[1]["rte"].logits, atol=1e-5)
        await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        registry.close()


def test_requests_counted_by_the_protocol_decide_inline_without_yielding(serving_exports: dict[str, Path]) -> None:
    """Behind our uvicorn protocol the service reads the count of open requests instead of yielding a
    turn of the event loop: alone, a request runs inline; with another request open, it queues."""
    from aa_deploy.serving.http_limits import OpenRequests
    from aa_deploy.serving.metrics import ServerMetrics
    from aa_deploy.serving.service import InferenceService

    registry = _registry(serving_exports)
    config = ServerConfig(intra_op_threads=1, max_delay_ms=5)
    open_requests = OpenRequests()
    open_requests.tracked = True
    batches: list[int] = []
    batcher = CountingBatcher(config, observer=lambda batch, stats, elapsed: batches.append(len(batch)))
    service = InferenceService(config, batcher, ServerMetrics(), registry, open_requests=open_requests)

    async def scenario() -> None:
        await service.start()
        open_requests.count = 1  # this request only
        first = await service.infer(["sst"], TEXTS[:2], None, endpoint="predict")
        assert batcher.inline == 1
        open_requests.count = 2  # another one was parsed and has not been answered
        second = await service.infer(["sst"], TEXTS[:2], None, endpoint="predict")
        assert batcher.inline == 1 and batches == [1, 1]
        np.testing.assert_allclose(first["sst"].logits, second["sst"].logits, atol=1e-6)
        await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        registry.close()


def test_http_protocol_counts_open_requests_and_concurrent_clients_still_batch(
    serving_exports: dict[str, Path],
) -> None:
    """A real server: the count returns to zero after every answer (also for a client that hangs up),
    sequential requests run inline, and 8 concurrent clients are batched together."""
    import socket

    config = ServerConfig(
        port=0, intra_op_threads=1, tasks=[TaskSpec("sst", str(serving_exports["sst"]))], max_delay_ms=20
    )
    with BackgroundServer(config) as server:
        open_requests = server.app.state.open_requests
        service = server.app.state.service
        assert open_requests.tracked
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(3):
                assert predict(client, "sst", TEXTS[:1]).status_code == 200
        assert open_requests.count == 0
        with socket.create_connection(("127.0.0.1", server.port)) as raw:  # head sent, then gone
            raw.sendall(b"POST /v1/tasks/sst/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        for _ in range(100):
            if open_requests.count == 0:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert open_requests.count == 0
        rows_before = service.metrics.batch_rows.collect()[0].samples

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                bodies = [{"texts": [t]} for t in (TEXTS * 2)[:8]]
                answers = await asyncio.gather(*(client.post("/v1/tasks/sst/predict", json=b) for b in bodies))
                return [a.status_code for a in answers]

        assert asyncio.run(burst()) == [200] * 8
        assert open_requests.count == 0

        def histogram(samples: list[Any]) -> tuple[float, float]:
            values = {s.name: s.value for s in samples if s.name.endswith(("_sum", "_count"))}
            return values["aa_batch_rows_sum"], values["aa_batch_rows_count"]

        rows_sum, batches = (a - b for a, b in zip(histogram(service.metrics.batch_rows.collect()[0].samples),
                                                  histogram(rows_before), strict=True))  # fmt: skip
        assert rows_sum == 8 and batches < 8  # at least two of the concurrent requests shared a batch
