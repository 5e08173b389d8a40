"""Test-suite guard: nothing in the tests may reach anything but loopback.

It is the test kit's own guard (:func:`tgmux.testing.guard_sockets`: connections, name lookups
and datagrams), on for the whole session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tgmux.testing import guard_sockets


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> Iterator[None]:
    with guard_sockets(reason="tests may only reach loopback"):
        yield
