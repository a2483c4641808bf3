"""The Open Inference Protocol v2 (KServe v2 / Triton HTTP), so standard clients such as
``tritonclient.http`` can call the server. The model name is the task name, version "1"; the wire
format is :mod:`serving.oip_codec`. Inference goes through the same service call as ``/v1``, so OIP
requests are in the same request, latency, texts and error metrics (endpoint label ``oip``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from .. import __version__
from ..config import ServerConfig
from ..errors import TaskNotFound
from ..oip_codec import HEADER_LENGTH, OIP_PREFIX, encode_infer_response, parse_infer_request
from ..service import InferenceService
from .dependencies import get_config, get_service, predicting_service, require_predict_token
from .schemas import (
    EMPTY_OK,
    OIP_ANY_ERRORS,
    OIP_INFER_ERRORS,
    OIP_MODEL_ERRORS,
    OIP_READ_ERRORS,
    OipInferRequest,
    OipInferResponse,
    inline_schema,
)

MODEL_VERSION = "1"

router = APIRouter(prefix=OIP_PREFIX, tags=["open inference protocol"])
# The inference routes on their own router, which the app includes first: FastAPI matches routes in
# order, and every route tried before the right one costs a regex match per request.
infer_router = APIRouter(prefix=OIP_PREFIX, tags=["open inference protocol"])


def _check_version(version: str | None) -> None:
    if version not in (None, "", MODEL_VERSION):
        raise TaskNotFound(f"model version {version!r} does not exist; the only version is {MODEL_VERSION}")


def _metadata(service: InferenceService, name: str) -> dict[str, Any]:
    manifest = service.registry.view.get(name).artifact.manifest
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if manifest.is_pair:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": "aa-deploy-onnx",
        "inputs": inputs,
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, manifest.num_labels]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"label_names": list(manifest.label_names or []), "is_pair": manifest.is_pair},
    }


# The infer body is read raw (JSON, or JSON + binary tensors), so its OpenAPI entry is written here.
_INFER_OPENAPI = {
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "Binary tensor extension: the length of the JSON header; binary tensors follow it.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(OipInferRequest)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or a JSON header followed by binary tensors "
        f"({HEADER_LENGTH} gives the header's length) when binary outputs were requested",
        "model": OipInferResponse,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **OIP_INFER_ERRORS,
}
_READY_RESPONSES = {**EMPTY_OK, 503: {"description": "Not ready (no body)", "content": {}}, **OIP_ANY_ERRORS}


@router.get("", summary="Server metadata", responses=OIP_ANY_ERRORS)
async def server_metadata() -> dict[str, Any]:
    return {"name": "aa-deploy", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}


@router.get("/health/live", response_class=Response, responses={**EMPTY_OK, **OIP_ANY_ERRORS})
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", response_class=Response, responses=_READY_RESPONSES)
async def ready(service: InferenceService = Depends(get_service)) -> Response:
    return Response(status_code=200 if service.readiness().ready else 503)


# Under --protect-predict, what the server serves is as private as its predictions (like GET /v1/tasks).
_LISTING = [Depends(require_predict_token)]


@router.get("/models/{name}", responses=OIP_MODEL_ERRORS, dependencies=_LISTING)
@router.get("/models/{name}/versions/{version}", responses=OIP_MODEL_ERRORS, dependencies=_LISTING)
async def model_metadata(
    name: str, version: str | None = None, service: InferenceService = Depends(get_service)
) -> dict[str, Any]:
    _check_version(version)
    return _metadata(service, name)


@router.get(
    "/models/{name}/ready", response_class=Response, responses={**EMPTY_OK, **OIP_MODEL_ERRORS}, dependencies=_LISTING
)
@router.get(
    "/models/{name}/versions/{version}/ready",
    response_class=Response,
    responses={**EMPTY_OK, **OIP_MODEL_ERRORS},
    dependencies=_LISTING,
)
async def model_ready(
    name: str, version: str | None = None, service: InferenceService = Depends(get_service)
) -> Response:
    _check_version(version)
    service.registry.view.get(name)
    return Response(status_code=200)


@router.get("/models/{name}/config", responses=OIP_MODEL_ERRORS, dependencies=_LISTING)
async def model_config(
    name: str, service: InferenceService = Depends(get_service), config: ServerConfig = Depends(get_config)
) -> dict[str, Any]:
    meta = _metadata(service, name)
    return {
        "name": name,
        "platform": meta["platform"],
        "max_batch_size": config.max_texts_per_request,
        "input": [{"name": i["name"], "data_type": "TYPE_STRING", "dims": [1]} for i in meta["inputs"]],
        "output": [
            {"name": "logits", "data_type": "TYPE_FP32", "dims": [meta["outputs"][0]["shape"][1]]},
            {"name": "label", "data_type": "TYPE_STRING", "dims": [1]},
        ],
    }


@router.post("/repository/index", responses=OIP_READ_ERRORS, dependencies=_LISTING)
async def repository_index(service: InferenceService = Depends(get_service)) -> list[dict[str, Any]]:
    return [{"name": n, "version": MODEL_VERSION, "state": "READY"} for n in sorted(service.registry.view.tasks)]


_INFER_ROUTE: dict[str, Any] = dict(
    response_class=Response,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_OPENAPI,
)


@infer_router.post("/models/{name}/infer", **_INFER_ROUTE)
@infer_router.post("/models/{name}/versions/{version}/infer", **_INFER_ROUTE)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    service = predicting_service(request)  # the token check first
    _check_version(version)
    parsed = parse_infer_request(await request.body(), request.headers)
    output = (await service.infer([name], parsed.texts, parsed.pairs, endpoint="oip"))[name]
    body, header_length = encode_infer_response(parsed, name, MODEL_VERSION, output.logits, output.label_names)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})
