"""tgmux.testing's own guard (users' test suites have no tests/conftest.py guard): nothing but
loopback is reachable while it is on."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tgmux.testing import guard_sockets


@pytest.mark.parametrize("call", [
    lambda: socket.create_connection(("149.154.167.50", 443), timeout=1),  # a Telegram DC
    lambda: socket.getaddrinfo("api.telegram.org", 443),
    lambda: socket.gethostbyname("api.telegram.org"),
    lambda: socket.gethostbyname_ex("api.telegram.org"),
    lambda: socket.gethostbyaddr("149.154.167.50"),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", 0, ("8.8.8.8", 53)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendmsg([b"x"], [], 0,
                                                                      ("8.8.8.8", 53)),
])
def test_the_test_kit_refuses_everything_beyond_loopback(call: Callable[[], object]) -> None:
    with guard_sockets(), pytest.raises(OSError, match=r"tgmux\.testing: no network in tests"):
        call()


def test_loopback_is_allowed_and_everything_is_restored() -> None:
    before = (socket.gethostbyname, socket.socket.sendto, socket.socket.sendmsg)
    with guard_sockets():
        assert socket.gethostbyname("localhost").startswith("127.")
        assert socket.gethostbyaddr("127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", 9))
            s.sendmsg([b"x"], [], 0, ("127.0.0.1", 9))
    assert (socket.gethostbyname, socket.socket.sendto, socket.socket.sendmsg) == before
