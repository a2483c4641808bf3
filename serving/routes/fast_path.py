"""The prediction routes answered without FastAPI's per-request machinery.

Why: between the server and a route, FastAPI runs its exception, telemetry, body-limit and exit-stack
middlewares, the router, and the dependency solver. On this server that costs 0.2-0.3 ms per request,
measured in process (``benchmarks/latency_parity.py``). A MiniLM prediction of one short text takes
about 4 ms, so at concurrency 1 this decides whether we are slower or faster than a bare FastAPI handler.

What keeps the answers FastAPI's own:

* The routes come from the prediction routers themselves: their path patterns (``route.matches``, so a
  ``root_path`` behind Ray Serve or a proxy is handled as FastAPI does), endpoint functions, and pydantic
  body models. No path or field is written twice.
* Only the plain case is taken: a ``POST`` without a query string to a route that has no dependencies,
  a body its model accepts, and an endpoint that returns a ``Response``.
* Everything else goes on to FastAPI unchanged, the body replayed. That covers malformed JSON, bodies
  the model refuses, query parameters, other methods and other paths. So FastAPI still writes every
  validation error.
* Errors raised by an endpoint are answered by the app's own handlers (:mod:`serving.http_errors`).
  Unexpected errors propagate to the server-error middleware, as they would from a route.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from starlette.responses import Response
from starlette.routing import Match

from ..http_errors import replay_body, route_error_handler


@dataclass(frozen=True)
class FastRoute:
    """One route the fast path answers: its endpoint's parameters sorted by where their values come from."""

    route: APIRoute
    body_param: str | None  # the pydantic body model's parameter, if any
    body_model: type[BaseModel] | None
    request_param: str | None  # the parameter that receives the Request, if any

    @classmethod
    def of(cls, route: Any) -> FastRoute | None:
        """The fast form of ``route``, or None when only FastAPI can call it the way it declares. FastAPI's
        own analysis of the endpoint (``route.dependant``) decides: no dependencies, no header, cookie or
        special parameters, no required query parameter, at most one pydantic body, and a Response
        returned (nothing for FastAPI to serialise)."""
        if not isinstance(route, APIRoute) or "POST" not in (route.methods or ()):
            return None
        dependant = route.dependant
        special = (
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
        if route.dependencies or dependant.dependencies or dependant.header_params or dependant.cookie_params:
            return None
        if any(name is not None for name in special) or len(dependant.body_params) > 1:
            return None
        if any(field.default is PydanticUndefined for field in dependant.query_params):
            return None
        try:
            returns = get_typed_return_annotation(route.endpoint)
        except Exception:  # an annotation that does not resolve
            return None
        if not (isinstance(returns, type) and issubclass(returns, Response)):
            return None
        body_model = dependant.body_params[0].field_info.annotation if dependant.body_params else None
        if body_model is not None and not (isinstance(body_model, type) and issubclass(body_model, BaseModel)):
            return None
        return cls(
            route=route,
            body_param=dependant.body_params[0].name if dependant.body_params else None,
            body_model=body_model,
            request_param=dependant.request_param_name,
        )


def fast_routes(routers: Iterable[APIRouter]) -> tuple[FastRoute, ...]:
    """The routes of ``routers`` the fast path can answer, in their order."""
    found = (FastRoute.of(route) for router in routers for route in router.routes)
    return tuple(route for route in found if route is not None)


class PredictFastPath:
    """ASGI middleware: ``routes`` answered directly, every other request passed on to ``app``."""

    def __init__(self, app: Any, routes: tuple[FastRoute, ...]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        for fast in self.routes:
            match, child = fast.route.matches(scope)
            if match is Match.FULL:
                break
        else:
            await self.app(scope, receive, send)
            return
        scope = {**scope, **child}
        request = Request(scope, receive)
        body = await request.body()
        kwargs: dict[str, Any] = dict(scope["path_params"])
        if fast.body_param is not None:
            try:
                kwargs[fast.body_param] = fast.body_model.model_validate(json.loads(body))  # type: ignore[union-attr]
            except Exception:
                # FastAPI writes the answer to every body the model refuses.
                await self.app(scope, replay_body(body, receive), send)
                return
        if fast.request_param is not None:
            kwargs[fast.request_param] = request
        try:
            response = await fast.route.endpoint(**kwargs)
        except Exception as exc:
            handler = route_error_handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
