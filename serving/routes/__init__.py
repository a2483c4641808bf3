"""HTTP routes, one router per protocol, all calling :class:`~serving.service.InferenceService`:

* :mod:`.health` - ``/``, ``/health``, ``/ready``, ``/metrics``
* :mod:`.v1` - the native API: task listing and predictions
* :mod:`.admin` - loading and unloading tasks at runtime (bearer token)
* :mod:`.oip` - the Open Inference Protocol v2 under ``/v2``

Routers get what they need through FastAPI dependencies (:mod:`.dependencies`) reading ``app.state``,
never through closures, so each router can be read and tested on its own.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import admin, health, oip, v1

# Prediction routes first: FastAPI tries routes in order, so the hot paths match on the first try.
ROUTERS: tuple[APIRouter, ...] = (
    v1.predict_router,
    oip.infer_router,
    health.router,
    v1.router,
    admin.router,
    oip.router,
)

__all__ = ["ROUTERS"]
