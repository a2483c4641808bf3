"""Running the app with uvicorn: in the foreground (``aa-deploy serve``) or in a background thread on a
free port of 127.0.0.1 (tests, benchmarks, notebooks)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
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
        **uvicorn_http_options(config.body_timeout_s, getattr(app.state, "open_requests", None)),
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


class PortInUseError(OSError):
    """Another process listens on the port the server was asked to use."""


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` before anything loads, so that a taken port is one clear error, not a
    uvicorn log line after every task has been loaded."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(
            f"cannot listen on host {host!r}: {exc.strerror}; pass an address such as 127.0.0.1 or 0.0.0.0 to --host"
        ) from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use (another server?): stop that process or pass another --port"
            ) from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class _NoStartupTraceback(logging.Filter):
    """Drop the traceback uvicorn logs when the app's start-up fails: ``run`` ends with the error as one line
    (AA_DEPLOY_DEBUG=1 keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Traceback (most recent call last)" not in record.getMessage()


def run(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, in-flight requests finish, the queue drains.

    Start-up failures end with one ``aa-deploy: error: ...`` line on stderr: a taken port before any task
    loads (raised, exit status 1), an app that fails to start (e.g. no task loads; exit status 3).
    """
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = listening_socket(config.host, config.port)
    app = create_app(config)
    server = uvicorn.Server(_uvicorn_config(app, config))
    quiet = _NoStartupTraceback()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not os.environ.get("AA_DEPLOY_DEBUG"):
        uvicorn_log.addFilter(quiet)
    try:
        server.run(sockets=[sock])
    except SystemExit:
        if server.started:
            raise
        # uvicorn exits (status 3) when the application's start-up fails, e.g. when no task loads.
    finally:
        uvicorn_log.removeFilter(quiet)
        sock.close()
    if not server.started:
        reason = getattr(app.state, "startup_error", None) or "the application failed to start (see the log above)"
        print(f"aa-deploy: error: {reason}", file=sys.stderr)
        return 3
    return 0


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
