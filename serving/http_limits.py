"""Limits on how a client may send a request head, which uvicorn leaves open with its default parser.

uvicorn's httptools parser (the one ``uvicorn[standard]`` picks) has no cap on the size of a request
head and no deadline for it: a client can send a 64 MiB header, or open connections and trickle bytes
(or nothing) forever. :func:`uvicorn_http_options` gives uvicorn a parser that answers 431 to a head
over :data:`MAX_HEAD_BYTES` and 408 to a head not complete within the body timeout (the body itself is
bounded in size and time by :class:`~serving.http_errors.BodyLimitMiddleware`). Without httptools,
uvicorn's h11 parser gets the same size cap (``h11_max_incomplete_event_size``; it answers 400).
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

# A request head (request line + headers) larger than this is refused with 431. Browsers and HTTP
# clients send a few KiB; nginx allows 4 x 8 KiB by default, so 64 KiB leaves room for long tokens.
MAX_HEAD_BYTES = 64 * 1024
# How long an idle keep-alive connection stays open between requests (uvicorn's default, made explicit).
KEEP_ALIVE_S = 5


class OpenRequests:
    """Requests whose head the HTTP protocol has parsed and whose response has not finished.

    The server runs a lone request inline, without the batcher, only when no other request is open.
    Counting where requests are parsed (in the protocol's callbacks, before any of their handlers runs)
    sees requests that arrived together at once; without it (uvicorn's h11 parser, Ray Serve, KServe
    hosting the app) the service yields one turn of the event loop to let them show up, which costs
    about 0.3 ms per request on a busy 2-core machine.
    """

    def __init__(self) -> None:
        self.count = 0
        self.tracked = False  # set when our protocol is configured to count (uvicorn_http_options)

    def alone(self) -> bool:
        """Whether the calling request is the only one open (always False when nobody counts)."""
        return self.tracked and self.count <= 1


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": reason.lower().replace(" ", "_"), "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _bounded_httptools_protocol() -> type | None:
    """The httptools protocol with a head size cap and a head deadline (None without httptools)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """Counts the bytes of each request head before the parser sees them (up to the blank line that
        ends it, so body bytes in the same read do not count) and arms a deadline from the connection's
        opening, or a message's first byte, to the end of the head; either limit answers and closes."""

        def __init__(
            self,
            *args: Any,
            max_head_bytes: int,
            head_timeout_s: float,
            open_requests: OpenRequests | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self._open_requests = open_requests
            self._counted = False  # this connection's current request is in open_requests
            self._max_head_bytes = max_head_bytes
            self._head_timeout_s = head_timeout_s
            self._in_head = True
            self._head_bytes = 0
            self._head_tail = b""  # the last bytes seen, for a blank line split between two reads
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            self._uncount()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                seen = self._head_tail + data
                end = seen.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
                self._head_tail = seen[-3:]
                if self._head_bytes > self._max_head_bytes:
                    message = f"request head over {self._max_head_bytes} bytes: send shorter headers"
                    self._refuse(431, "Request Header Fields Too Large", message)
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_head_timer()
            if self._open_requests is not None and not self._counted:
                self._open_requests.count += 1
                self._counted = True

        def on_response_complete(self) -> None:
            self._uncount()
            super().on_response_complete()

        def _uncount(self) -> None:
            if self._counted and self._open_requests is not None:
                self._open_requests.count -= 1
                self._counted = False

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # What follows on this connection is the next request's head.
            self._in_head, self._head_bytes, self._head_tail = True, 0, b""

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(408, "Request Timeout", f"request head not received within {self._head_timeout_s:g} s")

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._cancel_head_timer()
            self.transport.write(_raw_response(status, reason, message))
            self.transport.close()

    return BoundedHttpToolsProtocol


def uvicorn_http_options(head_timeout_s: float, open_requests: OpenRequests | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that bound request heads (size and time) and keep-alive, and count
    open requests into ``open_requests``."""
    if head_timeout_s <= 0:
        raise ValueError(f"body_timeout_s must be > 0, got {head_timeout_s}")
    options: dict[str, Any] = {"timeout_keep_alive": KEEP_ALIVE_S, "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    protocol = _bounded_httptools_protocol()
    if protocol is not None and open_requests is not None:
        open_requests.tracked = True
    options["http"] = (
        "h11"
        if protocol is None
        else functools.partial(
            protocol, max_head_bytes=MAX_HEAD_BYTES, head_timeout_s=head_timeout_s, open_requests=open_requests
        )
    )
    return options
