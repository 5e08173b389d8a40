"""Test-suite guard: nothing in the tests may reach anything but loopback.

It is the test kit's own guard (:func:`tgmux.testing.guard_sockets`: connections, name lookups
and datagrams), on for the whole session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tgmux.testing import guard_sockets


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``, as .ci/run runs the suite): a file's
    tests run in one worker, in order (as without it); every test on the shared PostgreSQL
    database (tests/stores, and any asking for it) in one worker: account leases are advisory
    locks of the whole database, a schema of its own does not keep two tests apart."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        shared_pg = path.startswith("tests/stores/") or "pg_url" in item.fixturenames
        item.add_marker(pytest.mark.xdist_group("postgres" if shared_pg else path))


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
