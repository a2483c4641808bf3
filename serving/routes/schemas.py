"""Request and response bodies of the native API (OpenAPI schemas under /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


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
