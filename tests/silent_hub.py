"""A "silent Hub": a TCP server on 127.0.0.1 that accepts every connection and never answers.

It stands for a Hub endpoint that is reachable but hangs (a stuck proxy, a black-holed load balancer):
connecting succeeds at once, so only a read timeout can end the client's wait. Point the client at it
with ``fake_hub.point_client_at(SilentHub(), monkeypatch, hf_home)``.
"""

from __future__ import annotations

import socket
import threading


class SilentHub:
    """Accepts connections on 127.0.0.1 and holds them open without a byte of answer until stopped."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-hub", daemon=True)
        self.connections = 0

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._held.append(conn)  # read nothing, answer nothing

    def __enter__(self) -> SilentHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            conn.close()
        self._listener.close()
