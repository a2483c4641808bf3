"""The server as a Ray Serve application (``pip install 'aa-deploy[ray]'``).

Each replica runs the whole server of :func:`aa_deploy.serving.app.create_app`: the multi-task engine, its
dynamic batcher and the shared backbone stay inside the replica, so mixed-task batching works exactly as in
one process. Replicas share nothing but the read-only exports (a path every node sees, or Hub ids). Ray's
proxy forwards the same HTTP API (``/v1``, ``/v2``, ``/metrics`` of the replica that answers).

The task set belongs to the Serve config (``user_config.tasks``): Serve hands it to every replica's
:meth:`reconfigure`, which converges the registry to it without dropping requests (see
:mod:`aa_deploy.serving.task_set`). ``PUT``/``DELETE /v1/tasks`` are refused in this mode, since they would
reach only one replica.

Use with a YAML written by ``aa-deploy ray-config``::

    serve run serve.yaml          # or: ray start --head; serve deploy serve.yaml
"""

from __future__ import annotations

import asyncio
from typing import Any

from .config import ServerConfig
from .ray_config import DEPLOYMENT_NAME
from .task_set import TaskSetApplier, parse_task_set

try:
    from ray import serve
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "Ray Serve is not installed: install the `ray` extra (pip install 'aa-deploy[ray]') to run the server "
        "as a Ray Serve application"
    ) from exc

# ServerConfig fields that Ray owns in this mode, with where to set them instead.
NOT_IN_ARGS = {
    "tasks": "list the tasks under the deployment's user_config.tasks (name -> export folder or Hub id)",
    "host": "set http_options.host in the Serve config",
    "port": "set http_options.port in the Serve config",
    "deployment": "it is always 'ray' here",
}


def server_config_from_args(args: dict[str, Any] | None) -> ServerConfig:
    """The replica's ServerConfig from the application's ``args`` (ServerConfig fields, no tasks)."""
    args = dict(args or {})
    misplaced = {k: NOT_IN_ARGS[k] for k in args if k in NOT_IN_ARGS}
    if misplaced:
        hints = "; ".join(f"{k}: {why}" for k, why in misplaced.items())
        raise ValueError(f"application args may not set {sorted(misplaced)} ({hints})")
    # Tasks come from user_config after start-up, so starting empty is expected.
    return ServerConfig.from_dict({**args, "deployment": "ray", "exit_if_no_task_loads": False})


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class AdapterServer:
    """One replica: the full multi-task server, its task set driven by ``user_config``."""

    def __init__(self, server_config: dict[str, Any]) -> None:
        # Attribute names chosen not to collide with Serve's ASGI wrapper (it defines ``app``).
        self.server_config = ServerConfig.from_dict(server_config)
        self.fastapi_app: Any = None
        self.task_set: TaskSetApplier | None = None
        self._reconfigure_lock = asyncio.Lock()

    def __serve_build_asgi_app__(self) -> Any:
        """Called by Serve after ``__init__`` in the replica; Serve then runs the app's lifespan (start-up)."""
        from .app import create_app

        self.fastapi_app = create_app(self.server_config)
        return self.fastapi_app

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Converge this replica's tasks to ``user_config.tasks``; requests keep being served meanwhile."""
        wanted = parse_task_set(user_config)
        async with self._reconfigure_lock:
            service = self.fastapi_app.state.service
            if self.task_set is None:
                self.task_set = TaskSetApplier(service.registry)
            await asyncio.to_thread(self.task_set.converge, wanted)
            service.metrics.tasks_loaded.set(len(service.registry.view.tasks))

    def check_health(self) -> None:
        """Serve's health probe: the app started and its batcher accepts work."""
        app = self.fastapi_app
        if app is None or not app.state.service.accepting:
            raise RuntimeError("the aa-deploy server in this replica is not ready")


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder (``import_path: aa_deploy.serving.ray_serve:build_app``); ``args`` are
    ServerConfig fields, replicas, resources and tasks are the deployment's options in the Serve config."""
    config = server_config_from_args(args)
    return AdapterServer.bind(config.to_dict())
