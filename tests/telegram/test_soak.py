"""Issue 21 §3, CI-sized soak (bench/soak_telegram.py is the full one, with its figures):
messages over several chats with every ``delivery`` form, latency on, ``tgmux simulate`` killed
with SIGKILL twice and restarted over the same ``--telegram-state`` file and SQLite store. Each
message is answered exactly once, or its user told it was cut off by the restart; each chat's
order is kept. Kills come after a count of replies read, never after a sleep: the test waits
for output lines, not for the machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak_telegram.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak_telegram", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_soak_kill_9_restarts_answer_each_message_once_in_order(tmp_path: Path) -> None:
    soak = load_soak()
    # (2 of the 10 chats are supergroups: one whose messages all came while the bot was down
    # was lost until the update stream fetched a channel named by updateChannel)
    result = soak.soak(messages=100, chats=10, kills=2, latency=50, seed=7, deadline=240,
                       workdir=tmp_path)
    report = "\n".join(result.lines() + result.problems)
    assert result.kills == 2, report
    assert sum(result.deliveries.values()) == 100 and set(result.deliveries) == {
        "push", "short", "gap", "too_long"}, report
    assert (result.doubled, result.lost, result.order_violations) == (0, 0, 0), report
    assert result.answered_once + result.told_to_resend == 100, report
    assert not result.problems, report
