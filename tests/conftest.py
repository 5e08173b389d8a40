"""Test-suite guard: nothing in the tests may reach anything but loopback.

It is the test kit's own guard (:func:`tgmux.testing.guard_sockets`: connections, name lookups
and datagrams), on for the whole session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tgmux.testing import guard_sockets


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> Iterator[None]:
    with guard_sockets(reason="tests may only reach loopback"):
        yield


@pytest.fixture
def restore_logging():
    """For tests that call tgmux's logging setup: the root logger as it was afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "websockets", "aiosqlite")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in quiet.items():
        logging.getLogger(name).setLevel(was)
