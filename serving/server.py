"""Running the app with uvicorn: in the foreground (``aa-deploy serve``) or in a background thread on a
free port of 127.0.0.1 (tests, benchmarks, notebooks)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

from .config import ServerConfig
from .http_limits import uvicorn_http_options


def _uvicorn_config(app: Any, config: ServerConfig, **overrides: Any) -> Any:
    import uvicorn

    options = dict(
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=max(1, int(config.drain_timeout_s)),
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        **uvicorn_http_options(config.body_timeout_s),
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def run(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, in-flight requests finish, the queue drains."""
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(_uvicorn_config(create_app(config), config))
    server.run()
    # uvicorn returns without raising when the application's start-up fails (e.g. no task loads).
    return 0 if server.started else 3


class BackgroundServer:
    """``with BackgroundServer(config) as server: httpx.get(server.url + "/health")``.

    Binds ``config.host`` on ``config.port`` (0 = a free port) before starting, so the URL is known
    and no other process can take the port in between.
    """

    def __init__(self, config: ServerConfig, *, app: Any = None, log_level: str = "warning") -> None:
        import uvicorn

        from .app import create_app

        self.config = config
        self.app = app if app is not None else create_app(config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((config.host, config.port))
        self.port = self._socket.getsockname()[1]
        self.server = uvicorn.Server(_uvicorn_config(self.app, config, port=self.port, log_level=log_level))
        self._thread = threading.Thread(target=self._serve, name="aa-uvicorn", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self._socket]))
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    def start(self, timeout: float = 120.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
