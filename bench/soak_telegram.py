"""Issue 21 soak: every message answered once, in order, across ``kill -9`` (prints its figures).

N messages over C chats (private chats, basic groups, supergroups), each with a ``delivery``
form picked at random (``push``, ``short`` where Telegram has it, ``gap``, ``too_long``; a
supergroup's first message is pushed: a client learns of a channel from an update), are
fed to ``tgmux simulate --latency MS --seed S --telegram-state FILE`` on a SQLite store (after
one empty run: a bot that has run before, its update position in the store). The
process is killed with SIGKILL ``--kills`` times, each after a random (seeded) number of
replies, and started again over the same state file and the same store, fed the messages its
Telegram does not hold yet; the last run gets the rest and ends when everything Telegram
holds is answered.

Checked, from the replies of all runs together: each message is answered exactly once by the
backend (an echo), or its user is told it was cut off by the restart
(``I was restarted while answering your message “…”``); none is answered twice, none is lost,
and each chat's replies come in the order of its messages.

Run: python bench/soak_telegram.py [--messages 500] [--chats 50] [--kills 3] [--latency 50]
Import: ``soak(...)`` returns the figures as a :class:`SoakResult`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import queue
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pyrogram.raw.core import TLObject

__all__ = ["SoakResult", "soak"]

CONFIG = """
telegram:
  flood: {global_per_second: 100000, private_per_second: 100000, group_per_minute: 100000}
  shutdown_timeout: 30
store: sqlite:///{db}
backends:
  echo: {type: echo, prefix: "echo: "}
routes:
  - match: {chat_type: [group, supergroup]}
    backend: echo
    group_trigger: always
default: echo
"""

NOTICE = re.compile(r"I was restarted while answering your message “(.*?)”")
MESSAGE = re.compile(r"c(\d+)m(\d+)")
FIRST_USER = 5_000_001


@dataclass
class SoakResult:
    messages: int = 0
    answered_once: int = 0
    told_to_resend: int = 0
    answered_and_told: int = 0
    doubled: int = 0
    lost: int = 0
    order_violations: int = 0
    kills: int = 0
    runs: int = 0
    wall_time: float = 0.0
    deliveries: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.doubled or self.lost or self.order_violations)

    def lines(self) -> list[str]:
        forms = ", ".join(f"{k} {v}" for k, v in sorted(self.deliveries.items()))
        return [
            f"messages            {self.messages} ({forms})",
            f"answered once       {self.answered_once}",
            f"told to resend      {self.told_to_resend}"
            f" ({self.answered_and_told} of them also answered)",
            f"doubled             {self.doubled}",
            f"lost                {self.lost}",
            f"order violations    {self.order_violations}",
            f"kills (kill -9)     {self.kills} ({self.runs} runs)",
            f"wall time           {self.wall_time:.1f} s",
        ]


def _chats(count: int, supergroups: bool = True) -> list[tuple[int, str, int]]:
    """(chat id, chat type, user id) for each chat: 60 % private, 20 % groups, 20 %
    supergroups (without ``supergroups``: groups instead)."""
    chats = []
    for i in range(count):
        user = FIRST_USER + i
        kind = ("private", "private", "private", "group", "supergroup")[i % 5]
        if kind == "supergroup" and not supergroups:
            kind = "group"
        chat = {"private": user, "group": -(4000 + i),
                "supergroup": -1002000000000 - i}[kind]
        chats.append((chat, kind, user))
    return chats


def _inputs(messages: int, chats: int, rng: random.Random, supergroups: bool = True
            ) -> list[dict]:
    """The input lines, round-robin over the chats in a shuffled order, ids given explicitly."""
    lines = []
    counts: Counter[int] = Counter()
    table = _chats(chats, supergroups)
    for n in range(messages):
        index = n % chats if n % (2 * chats) < chats else rng.randrange(chats)
        chat, kind, user = table[index]
        counts[index] += 1
        k = counts[index]
        forms = ["push", "gap", "too_long"] + (["short"] if kind != "supergroup" else [])
        if kind == "supergroup" and k == 1:
            # a client learns of a channel from an update: a supergroup's first message is
            # pushed (one it never hears of cannot be fetched, on Telegram either)
            forms = ["push"]
        line = {"chat_id": chat, "chat_type": kind, "user_id": user, "username": f"u{user}",
                "message_id": k, "text": f"c{index}m{k}", "delivery": rng.choice(forms)}
        lines.append(line)
    return lines


def held_by_telegram(state: Path) -> set[str]:
    """Texts of the incoming messages the offline Telegram's state file holds."""
    if not state.exists():
        return set()
    with contextlib.closing(sqlite3.connect(state)) as db:
        try:
            rows = db.execute("SELECT tl FROM messages").fetchall()
        except sqlite3.OperationalError:  # killed before its schema was written
            return set()
    held = set()
    for (blob,) in rows:
        message = TLObject.read(BytesIO(blob))
        if not message.out:
            held.add(message.message)
    return held


def _reader(stream, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _feed(stdin, lines: list[dict], close: bool) -> None:
    try:
        for line in lines:
            stdin.write(json.dumps(line) + "\n")
        stdin.flush()
        if close:
            stdin.close()
    except (BrokenPipeError, ValueError, OSError):  # killed meanwhile
        pass


def _run(cmd: list[str], lines: list[dict], kill_after: int | None, deadline: float,
         replies: list[tuple[int, str]], stderr_path: Path) -> int | None:
    """One simulate run: feed ``lines``; SIGKILL it after ``kill_after`` replies (None: let it
    end). Each reply (chat, text) is appended to ``replies`` as it is read."""
    with open(stderr_path, "a") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, text=True, bufsize=1)
    out: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_feed, args=(proc.stdin, lines, kill_after is None),
                     daemon=True).start()
    seen = 0
    killed = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the soak's deadline passed ({len(replies)} replies)")
            try:
                line = out.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                break
            action = json.loads(line)
            if action["action"] == "send_message":
                replies.append((action["chat_id"], action["text"]))
                seen += 1
                if kill_after is not None and seen >= kill_after and not killed:
                    # what it wrote before it died is still in the pipe: read on to the end
                    # (those replies reached Telegram; dropping them counted them as lost)
                    proc.send_signal(signal.SIGKILL)
                    killed = True
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def soak(messages: int = 500, chats: int = 50, kills: int = 3, latency: int = 50,
         seed: int = 21, deadline: float = 600.0, workdir: Path | None = None,
         supergroups: bool = True) -> SoakResult:
    rng = random.Random(seed)
    result = SoakResult(messages=messages)
    inputs = _inputs(messages, chats, rng, supergroups)
    result.deliveries = Counter(line["delivery"] for line in inputs)
    order = {line["text"]: i for i, line in enumerate(inputs)}
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        config = workdir / "config.yaml"
        config.write_text(CONFIG.replace("{db}", str(workdir / "tgmux.db")))
        state = workdir / "telegram.db"
        stderr_path = workdir / "stderr.log"
        # kill after a random share of what is left to answer (seeded): early, mid, late
        kill_points = [rng.randint(max(1, messages // (4 * (kills + 1))),
                                   max(2, messages // (kills + 1))) for _ in range(kills)]
        replies: list[tuple[int, str]] = []
        started = time.monotonic()
        end = started + deadline
        # a bot that has run before (as a deployed one has): its update position is in the
        # store. (A very first start killed before it wrote any position is not this case.)
        _run([sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
              "--telegram-state", str(state)], [], None, end, replies, stderr_path)
        for run, kill_after in enumerate([*kill_points, None]):
            held = held_by_telegram(state)
            todo = [line for line in inputs if line["text"] not in held]
            cmd = [sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
                   "--telegram-state", str(state), "--latency", str(latency),
                   "--seed", str(seed + run)]
            code = _run(cmd, todo, kill_after, end, replies, stderr_path)
            result.runs += 1
            if kill_after is not None:
                result.kills += 1
            elif code != 0:
                tail = stderr_path.read_text().splitlines()[-5:]
                result.problems.append(f"the last run exited {code}: " + " | ".join(tail))
        result.wall_time = time.monotonic() - started
    _score(result, inputs, order, replies)
    return result


def _score(result: SoakResult, inputs: list[dict], order: dict[str, int],
           replies: list[tuple[int, str]]) -> None:
    echoed: Counter[str] = Counter()
    told: set[str] = set()
    by_chat: dict[int, list[int]] = defaultdict(list)
    for chat, text in replies:
        if text.startswith("echo: "):
            body = text.removeprefix("echo: ")
            echoed[body] += 1
            if echoed[body] == 1:
                by_chat[chat].append(order.get(body, -1))
        elif (notice := NOTICE.search(text)) is not None:
            told.add(notice.group(1))
        else:
            result.problems.append(f"an unexpected reply in chat {chat}: {text[:80]!r}")
    for line in inputs:
        text = line["text"]
        if echoed[text] > 1:
            result.doubled += 1
            result.problems.append(f"{text} answered {echoed[text]} times")
        if text in told:
            result.told_to_resend += 1
            result.answered_and_told += echoed[text] > 0
        elif echoed[text] == 1:
            result.answered_once += 1
        elif echoed[text] == 0:
            result.lost += 1
            result.problems.append(f"{text} ({line['delivery']}) never answered")
    for chat, indexes in by_chat.items():
        for earlier, later in itertools.pairwise(indexes):
            if later < earlier:
                result.order_violations += 1
                result.problems.append(f"chat {chat}: {inputs[later]['text']} answered after "
                                       f"{inputs[earlier]['text']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--latency", type=int, default=50, help="ms, simulate's --latency")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for it all")
    parser.add_argument("--no-supergroups", action="store_true",
                        help="basic groups instead of supergroups")
    parser.add_argument("--keep", type=Path, default=None,
                        help="a directory to keep the state file, store and stderr in")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"latency 0..{args.latency} ms, seed {args.seed}"
          + (", no supergroups" if args.no_supergroups else ""))
    result = soak(args.messages, args.chats, args.kills, args.latency, args.seed,
                  args.deadline, args.keep, not args.no_supergroups)
    print("\n".join(result.lines()))
    for problem in result.problems[:30]:
        print("  problem:", problem)
    sys.exit(0 if result.ok and not result.problems else 1)


if __name__ == "__main__":
    main()
