"""A rate budget in the store holds across OS processes: two processes on one SQLite file or
one PostgreSQL database, each trying 6 takes of a 5-per-2-seconds budget at the same moment,
get 5 between them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = r"""
import asyncio, sys, time
from tgmux.store import open_store

async def main(url, start):
    store = open_store(url)
    await store.open()
    try:
        await asyncio.sleep(max(0.0, start - time.time()))
        waits = await asyncio.gather(*(store.rate_take("provider:key", 5, 2.0)
                                       for _ in range(6)))
        print(sum(1 for w in waits if w == 0.0), max(waits))
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tgmux.db"
    return request.getfixturevalue("pg_url")


def test_two_processes_share_one_budget(shared_url: str) -> None:
    start = time.time() + 2.0  # both are open and waiting by then
    processes = [subprocess.Popen([sys.executable, "-c", DRIVER, shared_url, str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        taken, longest = out.split()
        results.append((int(taken), float(longest)))
    assert sum(taken for taken, _ in results) == 5, results
    assert all(0 < longest <= 2.0 for _, longest in results)  # each was refused at least once
