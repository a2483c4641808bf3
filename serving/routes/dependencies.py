"""FastAPI dependencies shared by the routers: the app's service and config, and the bearer-token checks."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from ..config import RAY_TASK_CHANGES_MESSAGE, ServerConfig
from ..errors import Forbidden, TaskChangesRefused, Unauthorized
from ..service import InferenceService


# Every dependency is ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread
# pool, and three such hops per request cost more than the rest of the HTTP layer at concurrency 1.
# The prediction routes go further and resolve no dependency at all (``predicting_service`` below does
# their token check): each dependency FastAPI resolves costs tens of microseconds per request, which at
# concurrency 1 is the margin against a bare FastAPI handler.
async def get_service(request: Request) -> InferenceService:
    return request.app.state.service


async def get_config(request: Request) -> ServerConfig:
    return request.app.state.config


ADMIN_OFF_MESSAGE = (
    "loading and unloading tasks is off on this server because it has no token: start it with a token "
    "(--token-file or AA_DEPLOY_TOKEN) and send 'Authorization: Bearer <token>', or, on a loopback host "
    "only, with --allow-unauthenticated-admin (AA_DEPLOY_ALLOW_UNAUTHENTICATED_ADMIN=1)"
)


def _check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


async def require_admin_token(request: Request, config: ServerConfig = Depends(get_config)) -> None:
    """Loading and unloading fail closed: they need the token, and without a token they are off (403)
    unless explicitly opened to loopback clients (``allow_unauthenticated_admin``).

    In a Ray Serve deployment the Serve config owns the task set, so every replica converges to it: a
    per-replica change is refused before the token check, so that the operator learns where to make it.
    """
    if config.deployment == "ray":
        raise TaskChangesRefused(RAY_TASK_CHANGES_MESSAGE)
    if config.token is None:
        if not config.admin_open_without_token:
            raise Forbidden(ADMIN_OFF_MESSAGE, code="admin_disabled")
        return
    _check_token(request, config.token)


async def require_predict_token(request: Request) -> None:
    """Predictions, and the task listing and metadata, need the token only with ``protect_predict``."""
    _check_predict_token(request)


def _check_predict_token(request: Request) -> None:
    config: ServerConfig = request.app.state.config
    if config.protect_predict:
        _check_token(request, config.token)


def predicting_service(request: Request) -> InferenceService:
    """The app's service for a prediction route, after the token check of ``protect_predict``: a
    prediction route cannot reach the service without passing it, and resolves no dependency."""
    _check_predict_token(request)
    return request.app.state.service
