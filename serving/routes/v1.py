"""The native API: task listing, and predictions (one task, or several on the same inputs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..service import InferenceService, format_predictions
from .dependencies import get_service, predicting_service, require_predict_token
from .schemas import (
    PREDICT_ERRORS,
    READ_ERRORS,
    TASK_READ_ERRORS,
    MultiPredictRequest,
    MultiPredictResponse,
    PredictRequest,
    PredictResponse,
)

# The task listing and metadata name the loaded tasks: with ``protect_predict`` they need the token too.
router = APIRouter(prefix="/v1", tags=["tasks"], dependencies=[Depends(require_predict_token)])
# Predictions share their tag and error schemas; their token check (only with ``protect_predict``) is
# ``predicting_service``, the only way a route reaches the service (a dependency costs time per request).
predict_router = APIRouter(prefix="/v1", tags=["predict"], responses=PREDICT_ERRORS)


@router.get("/tasks", summary="Loaded tasks with metadata and sizes", responses=READ_ERRORS)
async def list_tasks(service: InferenceService = Depends(get_service)) -> dict[str, Any]:
    registry = service.registry
    return {"tasks": registry.list(), "failed": service.failures(), "backbones": registry.backbones.stats()}


@router.get("/tasks/{name}", summary="One task's metadata", responses=TASK_READ_ERRORS)
async def get_task(name: str, service: InferenceService = Depends(get_service)) -> dict[str, Any]:
    return service.registry.info(name)


@predict_router.post("/tasks/{name}/predict", summary="Predict one task", response_model=PredictResponse)
async def predict(name: str, body: PredictRequest, request: Request) -> JSONResponse:
    outputs = await predicting_service(request).infer([name], body.texts, body.text_pairs, endpoint="predict")
    predictions = format_predictions(outputs[name].logits, outputs[name].label_names, body.return_logits)
    return JSONResponse({"task": name, "predictions": predictions})


@predict_router.post(
    "/predict", summary="Predict several tasks on the same inputs", response_model=MultiPredictResponse
)
async def predict_many(body: MultiPredictRequest, request: Request) -> JSONResponse:
    outputs = await predicting_service(request).infer(body.tasks, body.texts, body.text_pairs, endpoint="multi")
    results = {
        task: format_predictions(outputs[task].logits, outputs[task].label_names, body.return_logits)
        for task in dict.fromkeys(body.tasks)
    }
    return JSONResponse({"results": results})
