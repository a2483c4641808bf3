"""The prediction fast path (serving/routes/fast_path.py) answers like FastAPI would, on a real server.

Two servers on 127.0.0.1, identical but for ``predict_fast_path``, get the same requests: valid ones,
service errors (answered by the app's handlers from the fast path), and the ones the fast path hands on
to FastAPI (malformed or refused bodies, query strings). Status, content type, body and error counts
must agree. A counter on FastAPI's own route handlers shows which requests reached FastAPI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from serving_helpers import PAIRS, TEXTS, TOKEN, served_config

from aa_deploy.serving.routes import PREDICT_ROUTERS
from aa_deploy.serving.routes.fast_path import PredictFastPath, fast_routes
from aa_deploy.serving.server import BackgroundServer

_OIP_ONE_TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
_FORM = {"content-type": "text/plain"}

# (name, method, path, keyword arguments of httpx.Client.request, reaches FastAPI on the fast server)
CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    ("v1 single", "POST", "/v1/tasks/sst/predict", {"json": {"texts": TEXTS[:2], "return_logits": True}}, False),
    ("v1 pair", "POST", "/v1/tasks/rte/predict", {"json": {"texts": TEXTS[:2], "text_pairs": PAIRS[:2]}}, False),
    ("v1 form body", "POST", "/v1/tasks/sst/predict", {"content": b'{"texts": ["ok"]}', "headers": _FORM}, False),
    ("v1 multi", "POST", "/v1/predict", {"json": {"tasks": ["sst", "topic"], "texts": TEXTS[:1]}}, False),
    ("v1 unknown task", "POST", "/v1/tasks/nope/predict", {"json": {"texts": ["a"]}}, False),
    (
        "v1 pairs to a single task",
        "POST",
        "/v1/tasks/sst/predict",
        {"json": {"texts": ["a"], "text_pairs": ["b"]}},
        False,
    ),
    ("v1 too many texts", "POST", "/v1/tasks/sst/predict", {"json": {"texts": ["a"] * 17}}, False),
    ("v1 failed task", "POST", "/v1/tasks/broken/predict", {"json": {"texts": ["a"]}}, False),
    ("v1 multi unknown", "POST", "/v1/predict", {"json": {"tasks": ["sst", "nope"], "texts": ["a"]}}, False),
    ("v1 malformed json", "POST", "/v1/tasks/sst/predict", {"content": b'{"texts": ['}, True),
    ("v1 missing field", "POST", "/v1/tasks/sst/predict", {"json": {"text": ["a"]}}, True),
    ("v1 wrong type", "POST", "/v1/tasks/sst/predict", {"json": {"texts": "a"}}, True),
    ("v1 empty body", "POST", "/v1/tasks/sst/predict", {"content": b""}, True),
    ("v1 query string", "POST", "/v1/tasks/sst/predict?return_logits=1", {"json": {"texts": ["a"]}}, True),
    ("oip infer", "POST", "/v2/models/sst/infer", {"json": {"id": "7", **_OIP_ONE_TEXT}}, False),
    ("oip version 1", "POST", "/v2/models/sst/versions/1/infer", {"json": _OIP_ONE_TEXT}, False),
    ("oip version 7", "POST", "/v2/models/sst/versions/7/infer", {"json": _OIP_ONE_TEXT}, False),
    ("oip version query", "POST", "/v2/models/sst/infer?version=7", {"json": _OIP_ONE_TEXT}, True),
    ("oip malformed", "POST", "/v2/models/sst/infer", {"content": b"{"}, False),
    ("oip no inputs", "POST", "/v2/models/sst/infer", {"json": {"inputs": []}}, False),
    ("v1 get", "GET", "/v1/tasks/sst/predict", {}, True),
]


def _count_handed_on(app: Any) -> list[int]:
    """Count the requests the app's fast path hands on to FastAPI (a counter around its inner app)."""
    layer = app.middleware_stack
    while not isinstance(layer, PredictFastPath):
        layer = layer.app
    handed_on = [0]
    inner = layer.app

    async def counted(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handed_on[0] += 1
        await inner(scope, receive, send)

    layer.app = counted
    return handed_on


@pytest.fixture(scope="module")
def servers(serving_exports: dict[str, Path]) -> Iterator[dict[bool, tuple[BackgroundServer, dict[str, int]]]]:
    config = served_config(serving_exports)
    with (
        BackgroundServer(config) as fast,
        BackgroundServer(dataclasses.replace(config, predict_fast_path=False)) as slow,
    ):
        assert not _has_fast_path(slow.app)
        yield {True: (fast, _count_handed_on(fast.app)), False: (slow, None)}


def _has_fast_path(app: Any) -> bool:
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, PredictFastPath):
        layer = getattr(layer, "app", None)
    return layer is not None


def _errors(client: httpx.Client) -> dict[str, float]:
    counts = {}
    for line in client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text.splitlines():
        if line.startswith("aa_errors_total{"):
            name, _, value = line.rpartition(" ")
            counts[name] = float(value)
    return counts


def _answer(response: httpx.Response) -> tuple[int, str, Any]:
    kind = response.headers.get("content-type", "")
    return response.status_code, kind, response.json() if "json" in kind else response.content


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fast_path_answers_like_fastapi(servers: dict, case: tuple) -> None:
    """Same status, content type, body and error counts with and without the fast path; FastAPI sees
    exactly the requests the fast path hands on."""
    _, method, path, kwargs, reaches_fastapi = case
    answers, error_deltas, handed_on = {}, {}, 0
    for fast, (server, counter) in servers.items():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            before = _errors(client)
            counted = counter[0] if fast else 0
            answers[fast] = _answer(client.request(method, path, **kwargs))
            if fast:
                handed_on = counter[0] - counted
            after = _errors(client)
            error_deltas[fast] = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert answers[True] == answers[False]
    assert error_deltas[True] == error_deltas[False]
    assert handed_on == (1 if reaches_fastapi else 0)


def test_fast_path_takes_exactly_the_prediction_routes() -> None:
    """Every POST route of the prediction routers qualifies (no dependencies, a Response, body and path
    parameters only); a route with a dependency or a required query parameter does not."""
    routes = fast_routes(PREDICT_ROUTERS)
    assert [f.route.path for f in routes] == [r.path for router in PREDICT_ROUTERS for r in router.routes]

    async def check() -> None:
        return None

    router = APIRouter()

    @router.post("/with-dependency", dependencies=[Depends(check)])
    async def with_dependency(request: Request) -> JSONResponse:
        return JSONResponse({})

    @router.post("/with-query")
    async def with_query(q: int, request: Request) -> JSONResponse:
        return JSONResponse({})

    @router.post("/returns-dict")
    async def returns_dict(request: Request) -> dict:
        return {}

    @router.post("/plain/{name}")
    async def plain(name: str, request: Request, version: str | None = None) -> JSONResponse:
        return JSONResponse({})

    assert [f.route.path for f in fast_routes([router])] == ["/plain/{name}"]
