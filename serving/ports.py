"""Free TCP ports for the servers this project starts itself: the demo, local Ray clusters, tests, benchmarks.

The usual trick (bind port 0, read the number, close, hand it on) draws from the kernel's *ephemeral*
range, the same range every outgoing connection and every other ``bind(0)`` draws from. Between the pick
and the server's own bind another process can take the number; a Ray cluster, whose dozens of processes
open gRPC servers on port 0 and connections all the time, did exactly that to a Serve proxy in CI
("Failed to bind to address '127.0.0.1:44217'"). A port below the ephemeral range and above Ray's worker
ports is only ever taken by a process that asks for it by number, so picking there closes that window.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ray's default worker port range is 10002-19999 (``--min-worker-port``/``--max-worker-port``): stay above it.
LOWEST_PICKED_PORT = 20000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# IANA's dynamic range, and what macOS and Windows use, where the Linux file above does not exist.
DEFAULT_EPHEMERAL_LOW = 49152


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (the Linux setting, else the IANA default)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port that ``host`` can bind now, chosen outside the ephemeral range where that range leaves room.

    Random rather than sequential, so that test workers and benchmark processes picking at the same moment
    do not all try the same number. Where the ephemeral range starts too low to leave a useful band, or
    every try fails, it falls back to the kernel's pick (the old behaviour) instead of failing.
    """
    high = ephemeral_low()
    if high - LOWEST_PICKED_PORT >= attempts:
        rng = random.SystemRandom()
        for _ in range(attempts):
            port = rng.randrange(LOWEST_PICKED_PORT, high)
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1", exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct free ports, none of them in ``exclude``.

    Picking is not reserving: a port handed out but not yet bound is still bindable, so picks made for
    one command line (a Ray node takes seven) can repeat each other; Ray refuses a node whose components
    share a port. ``exclude`` names ports already handed to the same cluster.
    """
    picked: list[int] = []
    while len(picked) < count:
        port = free_port(host)
        if port not in picked and port not in exclude:
            picked.append(port)
    return picked
