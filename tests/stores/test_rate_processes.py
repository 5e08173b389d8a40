"""A rate budget in the store holds across OS processes: two processes on one SQLite file or
one PostgreSQL database, each trying 6 takes of a 5-per-minute budget at the same moment, get 5
between them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: The budget's window: long enough that both processes take within it however slow the
#: machine (with a window of 2 s, a process started late found a new window and took 5 more).
WINDOW = 60.0

DRIVER = r"""
import asyncio, sys
from tgmux.store import open_store

async def main(url, window):
    store = open_store(url)
    await store.open()
    try:
        print("open", flush=True)
        sys.stdin.readline()  # "go": both are open
        waits = await asyncio.gather(*(store.rate_take("provider:key", 5, window)
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
    processes = [subprocess.Popen([sys.executable, "-c", DRIVER, shared_url, str(WINDOW)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    try:
        for process in processes:  # (a hang is the test's timeout)
            assert process.stdout is not None and process.stderr is not None
            assert process.stdout.readline() == "open\n", process.stderr.read()
        for process in processes:  # both take at the same moment
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            taken, longest = out.split()
            results.append((int(taken), float(longest)))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert sum(taken for taken, _ in results) == 5, results
    assert all(0 < longest <= WINDOW for _, longest in results)  # each was refused at least once
