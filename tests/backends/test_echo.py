"""The echo backend: a streamed echo comes word by word at its ``delay``, so a frontend shows
it growing; without ``delay`` (0) nothing changes."""

from __future__ import annotations

import asyncio
import itertools
import time

import tgmux.backends.echo as echo
from tgmux.backend import Text, TextDelta
from tgmux.harness import EngineHarness

WORDS = "one two three four five six seven eight"


def timed(h: EngineHarness) -> list[float]:
    """Record when each part reaches the harness's frontend."""
    times: list[float] = []
    deliver = h.frontend.deliver

    async def recording(chat, parts, **kwargs):
        async def stamped():
            async for part in parts:
                times.append(time.monotonic())
                yield part

        return await deliver(chat, stamped(), **kwargs)

    h.frontend.deliver = recording
    return times


async def test_streamed_echo_is_paced_by_delay() -> None:
    cfg = "backends:\n  s: {type: echo, stream: true, delay: 0.1}\ndefault: s\n"
    async with EngineHarness.from_yaml(cfg) as h:
        times = timed(h)
        parts = await h.say(WORDS)
    words = WORDS.split(" ")
    assert parts == [TextDelta(words[0])] + [TextDelta(" " + w) for w in words[1:]] + [
        Text(WORDS)]
    gaps = [b - a for a, b in itertools.pairwise(times[: len(words)])]
    assert min(gaps) >= 0.1 * 0.9
    assert times[len(words) - 1] - times[0] >= 0.7 * 0.95
    # (an upper bound only catches a pause far too long: a loaded machine may be late by a
    # second, which a bound of 4 x delay per gap did not allow)
    assert times[len(words) - 1] - times[0] < 0.7 * 10


async def test_streamed_echo_without_delay_is_one_burst(monkeypatch) -> None:
    """The default (``delay: 0``) keeps existing configs' output and timing as they were: the
    echo never pauses (what it waits for, not a stopwatch: a loaded machine is slow anyway)."""
    pauses: list[float] = []

    class Pauses:  # the echo module's asyncio, with its sleeps recorded
        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

        async def sleep(self, delay: float, *args: object) -> object:
            pauses.append(delay)
            return await asyncio.sleep(delay, *args)

    monkeypatch.setattr(echo, "asyncio", Pauses())
    cfg = ("backends:\n  s: {type: echo, stream: true}\n"
           "  plain: {type: echo}\n"
           "routes:\n  - match: {user_id: 3}\n    backend: plain\ndefault: s\n")
    async with EngineHarness.from_yaml(cfg) as h:
        assert await h.say("a b c", user_id=1) == [
            TextDelta("a"), TextDelta(" b"), TextDelta(" c"), Text("a b c")]
        assert await h.say("a b c", user_id=3) == [Text("a b c")]
    assert [p for p in pauses if p] == []


async def test_streamed_echo_shows_several_drafts_and_edits_in_telegram(tgmux_bot) -> None:
    cfg = ("telegram:\n  flood: {private_per_second: 100, group_per_minute: 6000}\n"
           "backends:\n  s: {type: echo, stream: true, delay: 0.1}\ndefault: s\n")
    bot = await tgmux_bot(cfg, edit_interval=0.2)
    private = await bot.send(WORDS, user_id=42)
    drafts = private.of("send_draft")
    assert len(drafts) >= 2
    assert all(WORDS.startswith(d["text"]) and d["text"] != WORDS for d in drafts)
    assert private.texts == [WORDS]
    group = await bot.send(f"@tgmux_bot {WORDS}", user_id=42, chat_id=-1001234567890)
    assert group.messages[0]["text"] != WORDS and len(group.of("edit_message")) >= 2
    assert group.of("edit_message")[-1]["text"] == WORDS
