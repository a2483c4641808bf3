"""The FastAPI application: ``create_app(config)`` builds everything it needs and keeps it on
``app.state`` (no module-level state), so several servers can live in one process.

Native API (``/v1``), health, Prometheus ``/metrics`` and the Open Inference Protocol v2 (:mod:`serving.oip`).
Every error is a JSON body ``{"error": {"code", "message"}}`` with a 4xx/5xx status; overload is 503
with Retry-After; bodies over ``max_body_bytes`` are refused before they are parsed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .batcher import BatcherSettings, DynamicBatcher
from .config import RAY_TASK_CHANGES_MESSAGE, ServerConfig
from .errors import InvalidInput, PayloadTooLarge, ServingError, ShuttingDown, TaskChangesRefused, Unauthorized
from .metrics import ServerMetrics
from .registry import TaskRegistry
from .service import InferenceService

log = logging.getLogger("aa_deploy.serving")


# ---------------------------------------------------------------------------------------------- schemas
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(description="Texts to classify (first segment for pair tasks).")
    text_pairs: list[StrictStr] | None = Field(
        None, description="Second segments, one per text, for pair tasks (e.g. NLI)."
    )
    return_logits: StrictBool = Field(False, description="Also return the raw logits.")


class MultiPredictRequest(PredictRequest):
    tasks: list[StrictStr] = Field(description="Task names; every task sees the same inputs.")


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: StrictStr = Field(description="Export folder on the server, or a Hub repo id.")
    revision: StrictStr | None = None
    replace: StrictBool = Field(False, description="Replace a task already loaded under this name.")


class Prediction(BaseModel):
    label: str | None
    score: float
    scores: dict[str, float] | None = None
    logits: list[float] | None = None


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class MultiPredictResponse(BaseModel):
    results: dict[str, list[Prediction]]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)
}


# ---------------------------------------------------------------------------------------------- body limit
class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413 before anything parses them."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(scope, send)
                return
        chunks, size = [], 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        payload = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, send: Any) -> None:
        message = f"request body over {self.limit} bytes: send fewer or shorter texts"
        if scope.get("path", "").startswith("/v2"):
            body = json.dumps({"error": message}).encode()
        else:
            body = json.dumps(PayloadTooLarge(message).to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------- app
def _error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    if request.url.path.startswith("/v2"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed_json", "the request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "invalid_request", "; ".join(parts) + more


def create_app(config: ServerConfig, *, registry: TaskRegistry | None = None) -> FastAPI:
    """Build the server. ``registry`` may be given pre-loaded (tests, benchmarks); otherwise the
    configured tasks are loaded at startup, each failure reported without stopping the others."""
    metrics = ServerMetrics()
    batcher = DynamicBatcher(
        BatcherSettings(
            config.max_batch_size,
            config.max_delay_ms / 1000.0,
            config.max_queue_rows,
            config.retry_after_s,
            eager=config.eager_dispatch,
            split_cost=config.split_cost_tokens,
        ),
        observer=metrics.observe_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.registry = registry or await asyncio.to_thread(TaskRegistry, config)
        state.service = InferenceService(config, state.registry, batcher, metrics)
        await batcher.start()
        for spec in config.tasks:
            try:
                await asyncio.to_thread(state.registry.load, spec.name, spec.source, spec.revision)
                metrics.task_loads.labels("load", "ok").inc()
            except ServingError as exc:
                state.registry.failed[spec.name] = exc.message
                metrics.task_loads.labels("load", "failed").inc()
                log.error("task %s failed to load: %s", spec.name, exc.message)
        metrics.tasks_loaded.set(len(state.registry.view.tasks))
        if config.tasks and not state.registry.view.tasks and config.exit_if_no_task_loads:
            await batcher.stop(0)
            raise RuntimeError(
                "none of the tasks could be loaded (see the errors above); fix the --task folders, or pass "
                "--start-empty to start without tasks and load them at runtime"
            )
        state.ready = True
        log.info("serving %d task(s): %s", len(state.registry.view.tasks), ", ".join(sorted(state.registry.view.tasks)))
        try:
            yield
        finally:
            state.ready = False
            await batcher.stop(config.drain_timeout_s)
            if registry is None:
                state.registry.close()

    app = FastAPI(
        title="aa-deploy server",
        version=__version__,
        description="Many adapter tasks on one shared backbone (ONNX Runtime, no PyTorch). "
        "Native API under /v1, Open Inference Protocol v2 under /v2, Prometheus metrics at /metrics.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.ready = False
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        metrics.errors.labels(exc.code).inc()
        return _error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(exc)
        metrics.errors.labels(code).inc()
        return _error_response(request, status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.errors.labels(code).inc()
        return _error_response(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        metrics.errors.labels("internal_error").inc()
        return _error_response(
            request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log"
        )

    def _check_token(request: Request) -> None:
        if not config.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), config.token.encode()):
            raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")

    async def admin(request: Request) -> None:
        # Ray Serve deployment: the Serve config owns the task set (checked before the token, so the
        # operator learns where to make the change).
        if config.deployment == "ray":
            raise TaskChangesRefused(RAY_TASK_CHANGES_MESSAGE)
        _check_token(request)

    async def predict_auth(request: Request) -> None:
        if config.protect_predict:
            _check_token(request)

    async def service(request: Request) -> InferenceService:
        if not request.app.state.ready or not batcher.accepting:
            raise ShuttingDown("the server is starting or shutting down; retry shortly")
        return request.app.state.service

    # ------------------------------------------------------------------------------------------ health
    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"name": "aa-deploy", "version": __version__, "docs": "/docs", "tasks": "/v1/tasks"}

    @app.get("/health", tags=["health"], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["health"],
        summary="Readiness: started, not draining, at least one task loaded",
        responses={503: {"model": ErrorResponse}},
    )
    async def ready(request: Request) -> JSONResponse:
        reg = getattr(request.app.state, "registry", None)
        tasks = sorted(reg.view.tasks) if reg else []
        ok = bool(request.app.state.ready and batcher.accepting and tasks)
        body = {"status": "ready" if ok else "not_ready", "tasks": tasks, "failed": dict(reg.failed) if reg else {}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        metrics.queued_rows.set(batcher.queued_rows)
        return Response(metrics.render(), media_type=metrics.content_type)

    # ------------------------------------------------------------------------------------------ tasks
    @app.get("/v1/tasks", tags=["tasks"], summary="Loaded tasks with metadata and sizes")
    async def list_tasks(request: Request) -> dict[str, Any]:
        reg: TaskRegistry = request.app.state.registry
        return {"tasks": reg.list(), "failed": dict(reg.failed), "backbones": reg.store.stats()}

    @app.get("/v1/tasks/{name}", tags=["tasks"], summary="One task's metadata", responses=ERRORS)
    async def get_task(name: str, request: Request) -> dict[str, Any]:
        return request.app.state.registry.info(name)

    @app.put(
        "/v1/tasks/{name}",
        tags=["tasks"],
        status_code=201,
        summary="Load a task at runtime (bearer token if set)",
        responses=ERRORS,
        dependencies=[Depends(admin)],
    )
    async def load_task(name: str, body: LoadRequest, request: Request) -> dict[str, Any]:
        reg: TaskRegistry = request.app.state.registry
        started = time.perf_counter()
        try:
            info = await asyncio.to_thread(reg.load, name, body.source, body.revision, replace=body.replace)
        except ServingError:
            metrics.task_loads.labels("load", "failed").inc()
            raise
        metrics.task_loads.labels("load", "ok").inc()
        metrics.tasks_loaded.set(len(reg.view.tasks))
        info["load_request_seconds"] = round(time.perf_counter() - started, 4)
        return info

    @app.delete(
        "/v1/tasks/{name}",
        tags=["tasks"],
        summary="Unload a task (in-flight requests finish)",
        responses=ERRORS,
        dependencies=[Depends(admin)],
    )
    async def unload_task(name: str, request: Request) -> dict[str, Any]:
        reg: TaskRegistry = request.app.state.registry
        await asyncio.to_thread(reg.unload, name)
        metrics.task_loads.labels("unload", "ok").inc()
        metrics.tasks_loaded.set(len(reg.view.tasks))
        return {"unloaded": name, "tasks": sorted(reg.view.tasks)}

    # ------------------------------------------------------------------------------------------ predict
    @app.post(
        "/v1/tasks/{name}/predict",
        tags=["predict"],
        summary="Predict one task",
        response_model=PredictResponse,
        responses=ERRORS,
        dependencies=[Depends(predict_auth)],
    )
    async def predict(name: str, body: PredictRequest, svc: InferenceService = Depends(service)) -> JSONResponse:
        out = await svc.predict(
            [name], body.texts, body.text_pairs, endpoint="predict", return_logits=body.return_logits
        )
        return JSONResponse({"task": name, "predictions": out[name]})

    @app.post(
        "/v1/predict",
        tags=["predict"],
        summary="Predict several tasks on the same inputs",
        response_model=MultiPredictResponse,
        responses=ERRORS,
        dependencies=[Depends(predict_auth)],
    )
    async def predict_many(body: MultiPredictRequest, svc: InferenceService = Depends(service)) -> JSONResponse:
        if not body.tasks:
            raise InvalidInput("tasks is empty: name at least one task")
        out = await svc.predict(
            body.tasks, body.texts, body.text_pairs, endpoint="multi", return_logits=body.return_logits
        )
        return JSONResponse({"results": {t: out[t] for t in dict.fromkeys(body.tasks)}})

    from .oip import register_oip

    register_oip(app, service, predict_auth)
    return app
