"""Request and response bodies (OpenAPI schemas under /docs), and the documented error statuses of each
kind of route: ``/openapi.json`` names every status, body and media type a route really answers with, so
schema-driven clients and fuzzers (tests/test_serving_openapi.py) can rely on it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # minItems is documented, not enforced here: the service refuses empty lists with its own message.
    texts: list[StrictStr] = Field(
        description="Texts to classify (first segment for pair tasks).", json_schema_extra={"minItems": 1}
    )
    text_pairs: list[StrictStr] | None = Field(
        None, description="Second segments, one per text, for pair tasks (e.g. NLI)."
    )
    return_logits: StrictBool = Field(False, description="Also return the raw logits.")


class MultiPredictRequest(PredictRequest):
    tasks: list[StrictStr] = Field(
        description="Task names; every task sees the same inputs.", json_schema_extra={"minItems": 1}
    )


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


class OipInputTensor(BaseModel):
    name: str = Field(description="'text', or 'text_pair' for pair tasks.")
    datatype: str = Field(description="BYTES.")
    shape: list[int] = Field(description="[batch] or [batch, 1].")
    data: list[Any] | None = Field(None, description="The texts (absent when sent as binary data).")
    parameters: dict[str, Any] | None = Field(None, description="e.g. binary_data_size.")


class OipRequestedOutput(BaseModel):
    name: str = Field(description="'logits' or 'label'.")
    parameters: dict[str, Any] | None = Field(None, description="e.g. binary_data: true.")


class OipInferRequest(BaseModel):
    id: str | None = None
    inputs: list[OipInputTensor]
    outputs: list[OipRequestedOutput] | None = None
    parameters: dict[str, Any] | None = Field(None, description="e.g. binary_data_output: true.")


class OipOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class OipInferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OipOutputTensor]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` with its nested models written in place, for OpenAPI entries FastAPI
    does not generate itself (a body the route reads raw)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """The native API's error body."""

    error: ErrorBody


class OipErrorResponse(BaseModel):
    """The Open Inference Protocol's error body (``/v2``), as the protocol defines it."""

    error: str


class ReadinessResponse(BaseModel):
    status: str = Field(description="'ready' or 'not_ready'.")
    tasks: list[str]
    failed: dict[str, str] = Field(description="Tasks that failed to load, with the reason.")


# What each status means, whichever route answers it.
_STATUS_MEANING: dict[int, str] = {
    400: "Malformed body: not JSON, not UTF-8, nested too deeply, or broken binary framing",
    401: "Missing or wrong bearer token",
    403: "Loading from this source is not allowed",
    404: "Unknown task, model version or route",
    408: "The request head or body did not arrive within body_timeout_s",
    409: "The task name is taken, or task changes belong to the deployment (Ray Serve)",
    413: "Body, texts, characters per text or tasks over the server's limits",
    422: "Invalid input: wrong types, missing fields, empty lists, unmatched pairs, or an export that cannot load",
    503: "Overloaded (retry after Retry-After seconds), starting, or shutting down",
}


def error_responses(*statuses: int, model: type[BaseModel] = ErrorResponse) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error statuses, all with the JSON error body ``model``, and "4XX"
    for the rest (405 for a wrong method; it also stops FastAPI from documenting its own 422 body, which
    this server never sends)."""
    entries: dict[int | str, dict[str, Any]] = {
        status: {"model": model, "description": _STATUS_MEANING[status]} for status in statuses
    }
    entries["4XX"] = {"model": model, "description": "Any other client error, e.g. 405 for a wrong method"}
    return entries


# Any request can take too long (408) or declare a body over the limit (413): BodyLimitMiddleware reads
# every body before routing.
_ANY = (408, 413)
# Routes that read the task set (503 while the server starts or stops).
READ_ERRORS = error_responses(*_ANY, 503)
TASK_READ_ERRORS = error_responses(404, *_ANY, 503)
PREDICT_ERRORS = error_responses(400, 401, 404, *_ANY, 422, 503)
# Loading and unloading tasks (the admin routes).
ERRORS = error_responses(400, 401, 403, 404, *_ANY, 409, 422, 503)
OIP_READ_ERRORS = error_responses(401, *_ANY, 503, model=OipErrorResponse)
OIP_MODEL_ERRORS = error_responses(401, 404, *_ANY, 503, model=OipErrorResponse)
OIP_INFER_ERRORS = error_responses(400, 401, 404, *_ANY, 422, 503, model=OipErrorResponse)
ANY_ERRORS = error_responses(*_ANY)
OIP_ANY_ERRORS = error_responses(*_ANY, model=OipErrorResponse)

# Answers without a body: only the status says something (the OIP health and model-ready routes).
EMPTY_OK: dict[int | str, dict[str, Any]] = {200: {"description": "Yes (no body)", "content": {}}}
