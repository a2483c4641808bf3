"""The real server on 127.0.0.1 (uvicorn in a background thread): predictions, mixed-task batching,
concurrency, hot load/unload under load, every kind of bad request, overload, auth, metrics, graceful
shutdown. The Open Inference Protocol is in test_serving_oip.py."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import PAIRS, SERVED, TEXTS, TOKEN, Reference, logits_of, predict

from aa_deploy.serving.config import ServerConfig, TaskSpec
from aa_deploy.serving.server import BackgroundServer


def inputs(references: dict[str, Reference], name: str) -> tuple[list[str], list[str] | None]:
    return TEXTS, (PAIRS if references[name].manifest["task"]["is_pair"] else None)


# ---------------------------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("name", SERVED)
def test_predictions_equal_the_exported_model(
    name: str, client: httpx.Client, references: dict[str, Reference]
) -> None:
    texts, pairs = inputs(references, name)
    response = predict(client, name, texts, pairs)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    np.testing.assert_allclose(logits_of(predictions), references[name].logits(texts, pairs), atol=1e-4, rtol=0)
    assert [p["label"] for p in predictions] == references[name].labels(texts, pairs)
    if references[name].manifest["task"]["label_names"]:
        for p in predictions:
            assert abs(sum(p["scores"].values()) - 1) < 1e-6 and p["score"] == max(p["scores"].values())


def test_several_tasks_in_one_call_equal_single_calls(client: httpx.Client, references: dict[str, Reference]) -> None:
    tasks = ["sst", "topic", "late", "sst_standalone"]
    response = client.post("/v1/predict", json={"tasks": tasks, "texts": TEXTS, "return_logits": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert list(results) == tasks
    for name in tasks:
        np.testing.assert_allclose(logits_of(results[name]), references[name].logits(TEXTS), atol=1e-4, rtol=0)
    pair = client.post(
        "/v1/predict", json={"tasks": ["rte", "stsb"], "texts": TEXTS, "text_pairs": PAIRS, "return_logits": True}
    )
    assert pair.status_code == 200
    for name in ("rte", "stsb"):
        np.testing.assert_allclose(
            logits_of(pair.json()["results"][name]), references[name].logits(TEXTS, PAIRS), atol=1e-4
        )


def test_concurrent_clients_get_mixed_task_batches_with_exact_answers(
    server: BackgroundServer, references: dict[str, Reference]
) -> None:
    rng = random.Random(0)
    jobs = []
    for _ in range(60):
        name = rng.choice(SERVED)
        k = rng.randint(1, 4)
        start = rng.randint(0, len(TEXTS) - k)
        texts, pairs = inputs(references, name)
        jobs.append((name, texts[start : start + k], pairs[start : start + k] if pairs else None))
    expected = {i: references[n].logits(t, p) for i, (n, t, p) in enumerate(jobs)}

    def call(i: int) -> np.ndarray:
        name, texts, pairs = jobs[i]
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = predict(c, name, texts, pairs)
        assert r.status_code == 200, r.text
        return logits_of(r.json()["predictions"])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, range(len(jobs))))
    for i, value in enumerate(got):
        np.testing.assert_allclose(value, expected[i], atol=1e-4, rtol=0)
    metrics = httpx.get(server.url + "/metrics").text
    mixed = _histogram_count_above(metrics, "aa_batch_tasks", 1)
    assert mixed > 0, "no batch held more than one task"


def _histogram_count_above(text: str, name: str, threshold: float) -> float:
    total = above_le = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_count"):
            total = float(line.split()[-1])
        if line.startswith(f'{name}_bucket{{le="{float(threshold)}"}}'):
            above_le = float(line.split()[-1])
    return total - above_le


# ---------------------------------------------------------------------------------------------- load/unload
def test_load_and_unload_under_load_fail_no_request(
    server: BackgroundServer, serving_exports: dict[str, Path], references: dict[str, Reference]
) -> None:
    stop = threading.Event()
    failures: list[str] = []
    counts = {"ok": 0, "churn": 0}
    expected = references["sst"].logits(TEXTS[:3])

    def hammer(name: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                r = predict(c, name, TEXTS[:3], PAIRS[:3] if name == "rte" else None)
                if r.status_code != 200:
                    failures.append(f"{name}: {r.status_code} {r.text}")
                elif name == "sst":
                    np.testing.assert_allclose(logits_of(r.json()["predictions"]), expected, atol=1e-4)
                counts["ok"] += 1

    def churn() -> None:  # the task being loaded/unloaded: 200 or 404, never anything else
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                r = predict(c, "hot", ["hello there"])
                if r.status_code not in (200, 404):
                    failures.append(f"hot: {r.status_code} {r.text}")
                counts["churn"] += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in ("sst", "rte", "sst")] + [
        threading.Thread(target=churn)
    ]
    for t in threads:
        t.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=server.url, timeout=120, headers=auth) as admin:
            for source in ("late", "topic", "sst", "late"):
                r = admin.put("/v1/tasks/hot", json={"source": str(serving_exports[source])})
                assert r.status_code == 201, r.text
                assert r.json()["engine"] == "multitask"
                time.sleep(0.1)
                r = admin.delete("/v1/tasks/hot")
                assert r.status_code == 200, r.text
            r = admin.put("/v1/tasks/hot", json={"source": str(serving_exports["late"])})
            assert r.status_code == 201
            r = admin.put("/v1/tasks/hot", json={"source": str(serving_exports["topic"]), "replace": True})
            assert r.status_code == 201 and r.json()["task"] == "topic"
            assert admin.delete("/v1/tasks/hot").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert counts["ok"] > 10


# ---------------------------------------------------------------------------------------------- bad requests
BAD_REQUESTS = [
    # (description, method, path, kwargs, status, code)
    (
        "malformed JSON",
        "post",
        "/v1/tasks/sst/predict",
        {"content": b'{"texts": ["a"', "headers": {"content-type": "application/json"}},
        400,
        "malformed_json",
    ),
    ("JSON array body", "post", "/v1/tasks/sst/predict", {"json": ["a"]}, 422, "invalid_request"),
    ("texts is a string", "post", "/v1/tasks/sst/predict", {"json": {"texts": "a"}}, 422, "invalid_request"),
    ("texts holds numbers", "post", "/v1/tasks/sst/predict", {"json": {"texts": [1, 2]}}, 422, "invalid_request"),
    ("texts holds null", "post", "/v1/tasks/sst/predict", {"json": {"texts": [None]}}, 422, "invalid_request"),
    ("missing texts", "post", "/v1/tasks/sst/predict", {"json": {}}, 422, "invalid_request"),
    ("unknown field", "post", "/v1/tasks/sst/predict", {"json": {"texts": ["a"], "txt": 1}}, 422, "invalid_request"),
    ("empty texts", "post", "/v1/tasks/sst/predict", {"json": {"texts": []}}, 422, "invalid_input"),
    ("too many texts", "post", "/v1/tasks/sst/predict", {"json": {"texts": ["a"] * 17}}, 413, "too_many_texts"),
    ("text too long", "post", "/v1/tasks/sst/predict", {"json": {"texts": ["a" * 5001]}}, 413, "text_too_long"),
    ("body too large", "post", "/v1/tasks/sst/predict", {"json": {"texts": ["a" * 70000]}}, 413, "payload_too_large"),
    (
        "lone surrogate",
        "post",
        "/v1/tasks/sst/predict",
        {"content": b'{"texts": ["\\ud800 x"]}', "headers": {"content-type": "application/json"}},
        422,
        "invalid_input",
    ),
    ("unknown task", "post", "/v1/tasks/nope/predict", {"json": {"texts": ["a"]}}, 404, "task_not_found"),
    ("failed task", "post", "/v1/tasks/broken/predict", {"json": {"texts": ["a"]}}, 404, "task_not_found"),
    (
        "pairs for a single-text task",
        "post",
        "/v1/tasks/sst/predict",
        {"json": {"texts": ["a"], "text_pairs": ["b"]}},
        422,
        "invalid_input",
    ),
    ("no pairs for a pair task", "post", "/v1/tasks/rte/predict", {"json": {"texts": ["a"]}}, 422, "invalid_input"),
    (
        "pairs of another length",
        "post",
        "/v1/tasks/rte/predict",
        {"json": {"texts": ["a"], "text_pairs": ["b", "c"]}},
        422,
        "invalid_input",
    ),
    ("multi: no tasks", "post", "/v1/predict", {"json": {"tasks": [], "texts": ["a"]}}, 422, "invalid_input"),
    (
        "multi: unknown task",
        "post",
        "/v1/predict",
        {"json": {"tasks": ["sst", "nope"], "texts": ["a"]}},
        404,
        "task_not_found",
    ),
    (
        "multi: too many tasks",
        "post",
        "/v1/predict",
        {"json": {"tasks": ["sst"] * 17, "texts": ["a"]}},
        413,
        "too_many_tasks",
    ),
    ("load without token", "put", "/v1/tasks/x", {"json": {"source": "/tmp"}}, 401, "unauthorized"),
    (
        "load with a wrong token",
        "put",
        "/v1/tasks/x",
        {"json": {"source": "/tmp"}, "headers": {"Authorization": "Bearer nope"}},
        401,
        "unauthorized",
    ),
    ("unload without token", "delete", "/v1/tasks/sst", {}, 401, "unauthorized"),
    (
        "load a missing folder",
        "put",
        "/v1/tasks/x",
        {"json": {"source": "/nonexistent/dir"}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
        422,
        "task_load_failed",
    ),
    (
        "load a non-export folder",
        "put",
        "/v1/tasks/x",
        {"json": {"source": "/tmp"}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
        422,
        "task_load_failed",
    ),
    (
        "load under a dot name",
        "put",
        "/v1/tasks/..",
        {"json": {"source": "/tmp"}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
        404,
        "not_found",
    ),
    (
        "load under a path-like name",
        "put",
        "/v1/tasks/..%2Fetc",
        {"json": {"source": "/tmp"}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
        404,
        "not_found",
    ),
    (
        "load under an invalid name",
        "put",
        "/v1/tasks/bad%20name!",
        {"json": {"source": "/tmp"}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
        422,
        "invalid_task_name",
    ),
    (
        "load an existing name",
        "put",
        "/v1/tasks/sst",
        {"json": {"source": "/tmp"}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
        409,
        "task_exists",
    ),
    (
        "unload an unknown task",
        "delete",
        "/v1/tasks/nope",
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        404,
        "task_not_found",
    ),
    ("unknown route", "get", "/v1/nothing", {}, 404, "not_found"),
    ("wrong method", "get", "/v1/tasks/sst/predict", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_clear_json_errors(case, client: httpx.Client) -> None:
    _, method, path, kwargs, status, code = case
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    # ... and the server keeps serving.
    assert predict(client, "sst", ["still fine"]).status_code == 200


def test_unicode_edge_cases_are_served(client: httpx.Client, references: dict[str, Reference]) -> None:
    texts = [
        "",
        " ",
        "🙂" * 50,
        "\u202eright-to-left override",
        "e\u0301\u0301\u0301",
        "\u0000",
        "\ufeffbom",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    ]
    response = predict(client, "sst", texts)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(logits_of(response.json()["predictions"]), references["sst"].logits(texts), atol=1e-4)


def test_task_listing_health_and_metrics(client: httpx.Client) -> None:
    listing = client.get("/v1/tasks").json()
    names = [t["name"] for t in listing["tasks"]]
    assert set(SERVED) <= set(names)
    assert "broken" in listing["failed"] and "does not exist" in listing["failed"]["broken"]
    sst = client.get("/v1/tasks/sst").json()
    assert sst["engine"] == "multitask" and sst["label_names"] == ["negative", "positive"]
    assert sst["sizes"]["backbone_bytes"] > 0 and 0 < sst["sizes"]["adapter_bytes"] < sst["sizes"]["backbone_bytes"]
    assert client.get("/v1/tasks/sst_standalone").json()["engine"] == "session"
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    predict(client, "sst", ["metrics please"])
    text = client.get("/metrics").text
    for needle in (
        'aa_requests_total{endpoint="predict",status="200",task="sst"}',
        "aa_batch_rows_bucket",
        "aa_queue_seconds_bucket",
        'aa_request_latency_seconds_count{task="sst"}',
        'aa_errors_total{code="task_not_found"}',
    ):
        assert needle in text, needle
    assert "nope" not in text, "unknown task names must not become metric labels"
    assert client.get("/openapi.json").json()["paths"]["/v1/tasks/{name}/predict"]


# ---------------------------------------------------------------------------------------------- overload
def sst_only(serving_exports: dict[str, Path], **options: Any) -> ServerConfig:
    """A server of the sst task alone on one inference thread, with the options a test is about."""
    return ServerConfig(port=0, intra_op_threads=1, tasks=[TaskSpec("sst", str(serving_exports["sst"]))], **options)


def test_overload_answers_503_with_retry_after(serving_exports: dict[str, Path]) -> None:
    """A batch waits up to 5 s to fill; with 2 rows already queued, 3 more exceed the 4-row queue, and the
    refusal comes while the queued request is still waiting (answered at once, never after the queue drains)."""
    config = sst_only(
        serving_exports, max_batch_size=8, max_delay_ms=5000, max_queue_rows=4, retry_after_s=2, eager_dispatch=False
    )
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(predict, c, "sst", ["one", "two"])
            _wait_for_queued_rows(c, 2)
            r = predict(c, "sst", ["a", "b", "c"])
            assert not first.done(), "overload must be answered at once, not after the queued batch ran"
            assert r.status_code == 503 and r.headers["Retry-After"] == "2"
            assert r.json()["error"]["code"] == "overloaded"
            assert first.result().status_code == 200
        assert predict(c, "sst", ["a", "b", "c"]).status_code == 200


def _wait_for_queued_rows(client: httpx.Client, rows: int) -> None:
    """Until /metrics shows ``rows`` rows waiting in the batching queue (bounded: fails after 20 s)."""
    for _ in range(200):
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("aa_queue_rows ") and float(line.split()[1]) >= rows:
                return
        time.sleep(0.1)
    raise AssertionError(f"{rows} rows never showed up in the queue")


# ---------------------------------------------------------------------------------------------- shutdown
def test_graceful_shutdown_drains_queued_requests(serving_exports: dict[str, Path]) -> None:
    config = sst_only(serving_exports, max_delay_ms=800, max_batch_size=64, eager_dispatch=False)
    srv = BackgroundServer(config).start()
    with httpx.Client(base_url=srv.url, timeout=30) as c, ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(predict, c, "sst", [f"text {i}"]) for i in range(4)]
        time.sleep(0.3)  # queued, waiting for the batch delay
        srv.stop()
        assert [p.result().status_code for p in pending] == [200] * 4


def test_protect_predict_requires_the_token(serving_exports: dict[str, Path]) -> None:
    config = sst_only(serving_exports, token="abc", protect_predict=True)
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert predict(c, "sst", ["x"]).status_code == 401
        r = c.post("/v1/tasks/sst/predict", json={"texts": ["x"]}, headers={"Authorization": "Bearer abc"})
        assert r.status_code == 200
        assert c.get("/health").status_code == 200
        assert c.post("/v2/models/sst/infer", json={"inputs": []}).status_code == 401


def test_server_without_loadable_tasks_is_not_ready() -> None:
    """With --start-empty, a server whose tasks all failed keeps running (not ready) for runtime loads."""
    config = ServerConfig(port=0, tasks=[TaskSpec("gone", "/nonexistent/x")], exit_if_no_task_loads=False)
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["failed"]["gone"]
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/health").status_code == 200
        assert json.loads(c.get("/v1/tasks").text)["tasks"] == []


# ---------------------------------------------------------------------------------------------- MiniLM
@pytest.mark.slow
def test_real_minilm_tasks_served_exactly(tmp_path: Path) -> None:
    """The real backbone (all-MiniLM-L6-v2): two exports share it in one multi-task graph and answer as
    their own exported models do, over HTTP, alone and in one multi-task call."""
    pytest.importorskip("torch", reason="exports the real backbone")
    from serving_helpers import RTE, SST, make_run_folder

    from aa_deploy.backbones import resolve_backbone_path
    from aa_deploy.export import export_run

    backbone = Path(resolve_backbone_path(None))
    folders = {}
    for name, task, layers, version in (("sst", SST, [3, 4, 5], "A"), ("rte", RTE, [1, 3], "B")):
        run = make_run_folder(
            tmp_path / "runs" / name, backbone, task, "search", version, layers, seed=7, max_length=128
        )
        folders[name] = export_run(run, tmp_path / "exports" / name, backbone_store=tmp_path / "store").output
    refs = {n: Reference(f) for n, f in folders.items()}
    texts = ["a gripping, beautifully shot film", "the plot makes no sense at all", "🙂", " ".join(["word"] * 300)]
    pairs = ["the film is good", "the plot is clear", "smile", "short"]
    config = ServerConfig(port=0, intra_op_threads=1, tasks=[TaskSpec(n, str(f)) for n, f in folders.items()])
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        info = c.get("/v1/tasks").json()["tasks"]
        assert {t["engine"] for t in info} == {"multitask"}
        for name, p in (("sst", None), ("rte", pairs)):
            r = predict(c, name, texts, p)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(
                logits_of(r.json()["predictions"]), refs[name].logits(texts, p), atol=1e-4, rtol=0
            )
        both = c.post("/v1/predict", json={"tasks": ["sst"], "texts": texts, "return_logits": True}).json()["results"]
        np.testing.assert_allclose(logits_of(both["sst"]), refs["sst"].logits(texts), atol=1e-4, rtol=0)
