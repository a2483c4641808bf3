"""Loading and unloading tasks at runtime (the bearer token, when one is configured)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from ..service import InferenceService
from .dependencies import get_service, require_admin_token
from .schemas import ERRORS, LoadRequest

router = APIRouter(prefix="/v1", tags=["tasks"], dependencies=[Depends(require_admin_token)])


@router.put("/tasks/{name}", status_code=201, summary="Load a task at runtime (bearer token if set)", responses=ERRORS)
async def load_task(name: str, body: LoadRequest, service: InferenceService = Depends(get_service)) -> dict[str, Any]:
    started = time.perf_counter()
    info = await service.load_task(name, body.source, body.revision, replace=body.replace)
    info["load_request_seconds"] = round(time.perf_counter() - started, 4)
    return info


@router.delete("/tasks/{name}", summary="Unload a task (in-flight requests finish)", responses=ERRORS)
async def unload_task(name: str, service: InferenceService = Depends(get_service)) -> dict[str, Any]:
    return {"unloaded": name, "tasks": await service.unload_task(name)}
