"""The FastAPI application: ``create_app(config)`` builds everything it needs and keeps it on
``app.state`` (no module-level state), so several servers can live in one process.

The app is wiring only: one :class:`~serving.service.InferenceService` (the request path every protocol
calls), the routers of :mod:`serving.routes` (native ``/v1``, admin, health and Prometheus ``/metrics``,
the Open Inference Protocol v2 under ``/v2``), and the error handling of :mod:`serving.http_errors`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .batcher import DynamicBatcher
from .config import ServerConfig
from .http_errors import BodyLimitMiddleware, JsonBodyMiddleware, install_error_handlers
from .http_limits import OpenRequests
from .metrics import ServerMetrics
from .registry import TaskRegistry
from .routes import PREDICT_ROUTERS, ROUTERS
from .routes.fast_path import PredictFastPath, fast_routes
from .service import InferenceService


def create_app(config: ServerConfig, *, registry: TaskRegistry | None = None) -> FastAPI:
    """Build the server. ``registry`` may be given pre-loaded (tests, benchmarks); otherwise the
    configured tasks are loaded at startup, each failure reported without stopping the others."""
    metrics = ServerMetrics()
    batcher = DynamicBatcher(config, observer=metrics.observe_batch)
    open_requests = OpenRequests()  # counted by our uvicorn protocol (serving/server.py), read by the service
    service = InferenceService(config, batcher, metrics, registry, open_requests=open_requests)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await service.start()
        except Exception as exc:
            # `aa-deploy serve` ends with this as its one-line error (serving/server.py: run).
            app.state.startup_error = str(exc)
            raise
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="aa-deploy server",
        version=__version__,
        description="Many adapter tasks on one shared backbone (ONNX Runtime, no PyTorch). "
        "Native API under /v1, Open Inference Protocol v2 under /v2, Prometheus metrics at /metrics.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.service = service
    app.state.open_requests = open_requests
    if config.predict_fast_path:  # innermost of ours: it sees bodies already read whole and bounded
        app.add_middleware(PredictFastPath, routes=fast_routes(PREDICT_ROUTERS))
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
