"""FastAPI dependencies shared by the routers: the app's service and config, and the bearer-token checks."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from ..config import RAY_TASK_CHANGES_MESSAGE, ServerConfig
from ..errors import TaskChangesRefused, Unauthorized
from ..service import InferenceService


def get_service(request: Request) -> InferenceService:
    return request.app.state.service


def get_config(request: Request) -> ServerConfig:
    return request.app.state.config


def _check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


def require_admin_token(request: Request, config: ServerConfig = Depends(get_config)) -> None:
    """Loading and unloading need the token whenever one is configured.

    In a Ray Serve deployment the Serve config owns the task set, so every replica converges to it: a
    per-replica change is refused before the token check, so that the operator learns where to make it.
    """
    if config.deployment == "ray":
        raise TaskChangesRefused(RAY_TASK_CHANGES_MESSAGE)
    _check_token(request, config.token)


def require_predict_token(request: Request, config: ServerConfig = Depends(get_config)) -> None:
    """Predictions need the token only with ``protect_predict``."""
    if config.protect_predict:
        _check_token(request, config.token)
