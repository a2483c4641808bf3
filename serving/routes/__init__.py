"""HTTP routes, one router per protocol, all calling :class:`~serving.service.InferenceService`:

* :mod:`.health` - ``/``, ``/health``, ``/ready``, ``/metrics``
* :mod:`.v1` - the native API: task listing and predictions
* :mod:`.admin` - loading and unloading tasks at runtime (bearer token)
* :mod:`.oip` - the Open Inference Protocol v2 under ``/v2``
* :mod:`.fast_path` - the prediction routes of :mod:`.v1` and :mod:`.oip` answered without FastAPI's
  per-request machinery (same endpoints, models and error handlers)

Routers get what they need through FastAPI dependencies (:mod:`.dependencies`) reading ``app.state``,
never through closures, so each router can be read and tested on its own.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import admin, health, oip, v1

# The hot paths: answered by the fast path (.fast_path) when it is on, and first among FastAPI's
# routes (FastAPI tries routes in order) when it is off or hands a request on.
PREDICT_ROUTERS: tuple[APIRouter, ...] = (v1.predict_router, oip.infer_router)
ROUTERS: tuple[APIRouter, ...] = (
    *PREDICT_ROUTERS,
    health.router,
    v1.router,
    admin.router,
    oip.router,
)

__all__ = ["PREDICT_ROUTERS", "ROUTERS"]
