"""Issue 21 §3, CI-sized soak (bench/soak_telegram.py is the full one, with its figures):
messages over several chats with every ``delivery`` form, latency on, ``tgmux simulate`` killed
with SIGKILL twice and restarted over the same ``--telegram-state`` file and SQLite store. Each
message is answered exactly once, or its user told it was cut off by the restart; each chat's
order is kept. Kills come after a count of replies read, never after a sleep: the test waits
for output lines, not for the machine."""

from __future__ import annotations

import importlib.util
import json
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


def test_a_supergroups_messages_held_through_a_kill_are_fetched_by_the_next_run(
        tmp_path: Path) -> None:
    # A run killed while Telegram held a supergroup's messages it had not fetched (pushes lost
    # to a disconnect); the next run has no input: its catch-up (the channel's difference,
    # slowed by latency) fetches and answers them before it ends (simulate waits for the
    # catch-up to finish: ending at the end of the input cancelled it).
    import os
    import signal
    import subprocess
    import time

    soak = load_soak()
    config = tmp_path / "config.yaml"
    config.write_text(soak.CONFIG.replace("{db}", str(tmp_path / "tgmux.db")))
    state = tmp_path / "telegram.db"
    command = [sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
               "--telegram-state", str(state)]
    group = {"chat_id": -1002000000001, "chat_type": "supergroup", "user_id": 5_000_001,
             "username": "u1"}
    first = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        first.stdin.write(json.dumps({**group, "message_id": 1, "text": "c1m1"}) + "\n")
        first.stdin.flush()
        while "echo: c1m1" not in first.stdout.readline():
            assert first.poll() is None
        first.stdin.write(json.dumps({"telegram": "disconnect", "seconds": 600}) + "\n")
        for k in (2, 3):
            first.stdin.write(json.dumps({**group, "message_id": k, "text": f"c1m{k}"}) + "\n")
        first.stdin.flush()
        deadline = time.monotonic() + 120
        while not {"c1m2", "c1m3"} <= soak.held_by_telegram(state):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    second = subprocess.run([*command, "--latency", "200"], input="", capture_output=True,
                            text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    answered = [json.loads(line)["text"] for line in second.stdout.splitlines()
                if json.loads(line)["action"] == "send_message"]
    # (c1m1 may have been cut off by the kill before it was marked answered: its user is told)
    assert [text for text in answered if text.startswith("echo:")] == \
        ["echo: c1m2", "echo: c1m3"], second.stderr
