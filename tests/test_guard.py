"""The suite's own guard: nothing but loopback is reachable from a test."""

from __future__ import annotations

import socket

import pytest


@pytest.mark.parametrize("call", [
    lambda: socket.create_connection(("149.154.167.50", 443), timeout=1),  # a Telegram DC
    lambda: socket.getaddrinfo("api.sensay.io", 443),
    lambda: socket.gethostbyname("my.lucydream.ai"),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)),
])
def test_non_loopback_traffic_is_refused(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError, match="tests may"):
        call()


def test_loopback_is_allowed() -> None:
    assert socket.gethostbyname("localhost").startswith("127.")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", 9))
