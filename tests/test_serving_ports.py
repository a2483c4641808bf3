"""Ports handed to the servers we start: below the kernel's ephemeral range, bindable, with safe fallbacks."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from aa_deploy.serving import ports


def test_free_port_is_bindable_and_outside_the_ephemeral_and_ray_worker_ranges() -> None:
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST_PICKED_PORT <= port < ports.ephemeral_low()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if the port was not free


def test_the_ephemeral_range_is_read_from_the_kernel_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("40000\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", setting)
    assert ports.ephemeral_low() == 40000
    assert all(ports.free_port() < 40000 for _ in range(20))
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ports.ephemeral_low() == ports.DEFAULT_EPHEMERAL_LOW


def test_a_taken_port_is_never_handed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # A band of exactly one port, the busy one: the pick must fail and fall back to the kernel's choice.
        monkeypatch.setattr(ports, "LOWEST_PICKED_PORT", busy)
        monkeypatch.setattr(ports, "ephemeral_low", lambda: busy + 1)
        port = ports.free_port(attempts=1)
        assert port != busy
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_too_narrow_band_falls_back_to_the_kernel_pick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "ip_local_port_range"
    setting.write_text(f"{ports.LOWEST_PICKED_PORT + 10} 60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", setting)
    port = ports.free_port()
    assert not ports.LOWEST_PICKED_PORT <= port < ports.LOWEST_PICKED_PORT + 10


def test_free_ports_never_repeats_a_pick_nor_hands_out_an_excluded_port(monkeypatch) -> None:
    """Picks are not reservations, so one command line's ports can repeat: Ray refuses such a node."""
    draws = iter([21010, 21010, 22000, 23000, 24000])
    monkeypatch.setattr(ports, "free_port", lambda host="127.0.0.1": next(draws))
    assert ports.free_ports(2, exclude={22000}) == [21010, 23000]
