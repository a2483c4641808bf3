"""Liveness, readiness and Prometheus metrics (readiness itself is decided by the service)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..service import InferenceService
from .dependencies import get_service
from .schemas import ANY_ERRORS, READ_ERRORS, ReadinessResponse

router = APIRouter(tags=["health"])


@router.get("/", include_in_schema=False)
async def root() -> dict[str, Any]:
    return {"name": "aa-deploy", "version": __version__, "docs": "/docs", "tasks": "/v1/tasks"}


@router.get("/health", summary="Liveness: the process answers", responses=ANY_ERRORS)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: started, not draining, at least one task loaded",
    response_model=ReadinessResponse,
    responses={**READ_ERRORS, 503: {"model": ReadinessResponse, "description": "Not ready: the same body"}},
)
async def ready(service: InferenceService = Depends(get_service)) -> JSONResponse:
    state = service.readiness()
    body = {"status": "ready" if state.ready else "not_ready", "tasks": state.tasks, "failed": state.failed}
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"description": "The Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **ANY_ERRORS,
    },
)
async def prometheus(service: InferenceService = Depends(get_service)) -> Response:
    metrics = service.metrics
    metrics.queued_rows.set(service.batcher.queued_rows)
    return Response(metrics.render(), media_type=metrics.content_type)
