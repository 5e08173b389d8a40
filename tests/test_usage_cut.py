"""A reply cut at ``engine.max_reply_chars`` is recorded with its usage: a streamed reply's
usage comes after its text (OpenAI's last chunk), so the rest of the stream is read in the
background for it, without holding the chat; the user sees the cut reply as before. Through the
OpenAI simulator (its :meth:`~OpenAISimulator.hold_stream` keeps a stream going mid-reply)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tgmux.backend import Notice, Text, TextDelta
from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.store.memory import MemoryStore
from tgmux.types import ReplyPart, Usage, UsageRow

KEY = "sk-cut-test"
CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: memory://
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: sim-gpt
    %(extra)s
default: gpt
engine: {max_reply_chars: 100, %(engine)s}
prices: {sim-gpt: {input: 2, output: 8}}
%(top)s
"""
LONG = "a" * 300  # "You said: " and 300 characters: 310, cut at 100
REPLY = "You said: " + LONG
CUT = Notice("The reply was cut at 100 characters.")
#: the simulator's count: 4 a message and a token a 4 characters, rounded up
LONG_TOKENS = (4 + math.ceil(len(LONG) / 4), math.ceil(len(REPLY) / 4))
LONG_COST = (LONG_TOKENS[0] * 2 + LONG_TOKENS[1] * 8) / 1e6
WAIT = 60.0  # generous: CI is a loaded 2-core machine


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("sim-gpt")]) as server:
        yield server  # type: ignore[misc]


def config(sim: OpenAISimulator, *, extra: str = "", engine: str = "", top: str = "") -> str:
    return CONFIG % {"url": sim.base_url, "key": KEY, "extra": extra, "engine": engine,
                     "top": top}


def rows(h: EngineHarness) -> list[UsageRow]:
    assert isinstance(h.store, MemoryStore)
    return sorted(h.store.usage.values(), key=lambda r: r.chat_id)


def shown_text(parts: list[ReplyPart]) -> str:
    """The text of a cut streamed reply: its deltas (no final text comes)."""
    assert not any(isinstance(p, Text) for p in parts)
    return "".join(p.text for p in parts if isinstance(p, TextDelta))


async def settled(h: EngineHarness) -> None:
    """The reads of cut replies under way have ended (each is bounded by its deadline)."""
    await asyncio.wait_for(h.engine.usage.settled(), WAIT)


def reading(h: EngineHarness) -> set[asyncio.Task[None]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("tgmux-usage")}


async def test_a_cut_streamed_reply_is_recorded_with_its_tokens_and_cost(
        sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim)) as h:
        parts = await h.say(LONG, user_id=42)
        await settled(h)
        [row] = rows(h)
        scraped = (await h.engine.metrics.render()).decode()
    # what the user sees is as before: the first 100 characters, then the note
    assert all(isinstance(p, TextDelta) for p in parts[:-1]) and parts[-1] == CUT
    assert shown_text(parts) == REPLY[:100]
    [completion] = sim.completions
    assert completion.reply == REPLY and completion.body["stream_options"] == {
        "include_usage": True}
    assert row == UsageRow(
        day=row.day, account="main", user_id=42, chat_id=42, backend="gpt", model="sim-gpt",
        messages=1, input_tokens=LONG_TOKENS[0], output_tokens=LONG_TOKENS[1],
        cached_input_tokens=0, reasoning_tokens=0, cost=pytest.approx(LONG_COST))
    assert (f'tgmux_tokens_total{{backend="gpt",kind="output",model="sim-gpt"}} '
            f'{float(LONG_TOKENS[1])}') in scraped


async def test_cut_replies_spend_the_budget_and_the_next_message_is_refused(
        sim: OpenAISimulator) -> None:
    text = config(sim, top="limits: {daily_cost_per_user: 0.001}").replace(
        "{input: 2, output: 8}", "{input: 10, output: 10}")  # 0.0016 a reply
    async with EngineHarness.from_yaml(text) as h:
        first = await h.say(LONG, user_id=42)
        await settled(h)
        [refused] = await h.say("Again", user_id=42)
        [row] = rows(h)
    assert first[-1] == CUT
    assert isinstance(refused, Notice)
    assert re.fullmatch(r"You have used your daily budget of USD 0\.001; you can write again "
                        r"in \d+ (h|min)\.", refused.text), refused.text
    assert len(sim.completions) == 1  # the provider is not asked again
    assert (row.messages, row.cost) == (1, pytest.approx(sum(LONG_TOKENS) * 10 / 1e6))


async def test_the_chats_next_message_is_answered_while_the_cut_reply_is_read_on(
        sim: OpenAISimulator) -> None:
    hold = sim.hold_stream(after=40)  # 4 characters a piece: past the cut, before the end
    async with EngineHarness.from_yaml(config(sim)) as h:
        cut = await h.say(LONG, user_id=42)
        await asyncio.wait_for(hold.held.wait(), WAIT)
        answer = await h.say("Hi", user_id=42)  # the same chat, while its stream is held
        [meanwhile] = rows(h)
        assert not hold.released.is_set() and len(reading(h)) == 1
        hold.release()
        await settled(h)
        [row] = rows(h)
        assert reading(h) == set()
    assert shown_text(cut) == REPLY[:100] and cut[-1] == CUT
    assert [p for p in answer if isinstance(p, Text)] == [Text("You said: Hi")]
    # the answer was recorded at once; the cut reply once its stream ended
    assert (meanwhile.messages, meanwhile.input_tokens, meanwhile.output_tokens) == (1, 5, 3)
    assert (row.messages, row.input_tokens, row.output_tokens) == (
        2, 5 + LONG_TOKENS[0], 3 + LONG_TOKENS[1])
    assert row.cost == pytest.approx((5 * 2 + 3 * 8) / 1e6 + LONG_COST)


async def test_stop_ends_the_reads_under_way_at_once_and_records_the_reply(
        sim: OpenAISimulator) -> None:
    hold = sim.hold_stream(after=40)
    h = EngineHarness.from_yaml(config(sim))  # turn_timeout 300 s: the read's own bound
    async with h:
        await h.say(LONG, user_id=42)
        await asyncio.wait_for(hold.held.wait(), WAIT)
        assert len(reading(h)) == 1
        await asyncio.wait_for(h.engine.stop(), WAIT)  # not the read's 300 s
        assert reading(h) == set()
        [row] = rows(h)
    # counted once, without the usage that never came
    assert (row.messages, row.input_tokens, row.output_tokens, row.cost) == (1, 0, 0, None)


@pytest.mark.parametrize("bound", [{"engine": "concurrency: 2"},
                                   {"extra": "max_connections: 2"}],
                         ids=["engine.concurrency", "max_connections"])
async def test_past_the_reads_at_once_a_cut_reply_is_recorded_without_usage(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture, bound: dict[str, str]) -> None:
    caplog.set_level("INFO", "tgmux.usage")
    hold = sim.hold_stream(after=40)
    # 2 connections: one read at once (half of them: a read holds a connection)
    async with EngineHarness.from_yaml(config(sim, **bound)) as h:
        await h.say(LONG, user_id=1)
        await asyncio.wait_for(hold.held.wait(), WAIT)
        second = await h.say(LONG, user_id=2)
        [unread] = rows(h)  # chat 1's reply is still being read
        hold.release()
        await settled(h)
        [read, _] = rows(h)
    assert shown_text(second) == REPLY[:100] and second[-1] == CUT
    assert (unread.chat_id, unread.messages, unread.input_tokens, unread.cost) == (
        2, 1, 0, None)
    assert (read.chat_id, read.messages, read.input_tokens) == (1, 1, LONG_TOKENS[0])
    assert [r.message for r in caplog.records if "read on" in r.message] == [
        "chat 2: gpt: the reply was cut with 1 cut replies of the backend read on for their "
        "usage already, the most at once (half of its connections): recorded without its usage"]


async def test_a_chats_second_cut_reply_is_read_in_its_own_turn(
        sim: OpenAISimulator) -> None:
    """One read a chat in the background: a chat asking for endless replies waits for its
    own (nobody else does), and each is paid for."""
    hold = sim.hold_stream(after=40)
    async with EngineHarness.from_yaml(config(sim)) as h:
        await h.say(LONG, user_id=42)
        await asyncio.wait_for(hold.held.wait(), WAIT)
        second = await h.say(LONG, user_id=42)  # its rest read before its turn ended
        [meanwhile] = rows(h)
        assert len(reading(h)) == 1  # the first, still held
        hold.release()
        await settled(h)
        [row] = rows(h)
    assert shown_text(second) == REPLY[:100] and second[-1] == CUT
    assert (meanwhile.messages, meanwhile.output_tokens) == (1, LONG_TOKENS[1])
    assert (row.messages, row.output_tokens) == (2, 2 * LONG_TOKENS[1])


async def test_a_cut_json_reply_is_recorded_at_once_as_before(sim: OpenAISimulator) -> None:
    # stream: false: the usage came before the text, nothing is read on
    async with EngineHarness.from_yaml(config(sim, extra="stream: false")) as h:
        parts = await h.say(LONG, user_id=42)
        [row] = rows(h)
        assert reading(h) == set()
    assert [p for p in parts if isinstance(p, Text | Notice)] == [Text(REPLY[:100]), CUT]
    assert (row.messages, row.input_tokens, row.output_tokens) == (1, *LONG_TOKENS)


async def as_is(part: Usage) -> Usage:
    return part


async def turn_of(h: EngineHarness) -> tuple[Any, Any]:
    message = h.message("Hi", user_id=42)
    backend = h.engine.backends["gpt"]
    decision = await h.engine.decide(message)
    assert decision is not None
    return h.engine.turn_for(message, decision, backend), backend


async def test_a_read_stopped_before_it_began_still_closes_its_stream_and_records(
        sim: OpenAISimulator) -> None:
    never = asyncio.Event()
    closed: list[bool] = []

    async def endless() -> AsyncIterator[ReplyPart]:
        try:
            yield TextDelta("a" * 100)  # the engine cuts here
            await never.wait()
            yield Text("never")
        finally:
            closed.append(True)

    async with EngineHarness.from_yaml(config(sim)) as h:
        turn, backend = await turn_of(h)
        source = endless()
        await anext(source)
        await h.engine.usage.settle(h.config, turn, backend, [], None, False, source=source,
                                    cut=True, after_backend=as_is)
        async with asyncio.timeout(WAIT):  # (wait_for would run it in a task of its own)
            await h.engine.usage.stop()  # at once: the read's task has not run yet
        [row] = rows(h)
        assert h.engine._in_use._counts == {}  # the backend is not held any more
    assert closed == [True]
    assert (row.messages, row.input_tokens) == (1, 0)


async def test_a_read_past_turn_timeout_records_the_reply_without_usage(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "tgmux.usage")

    async def stalled() -> AsyncIterator[ReplyPart]:
        yield TextDelta("a" * 100)
        await asyncio.Event().wait()  # a provider that never ends its stream
        yield Usage("sim-gpt", 1, 1)

    async with EngineHarness.from_yaml(config(sim, engine="turn_timeout: 0.5")) as h:
        turn, backend = await turn_of(h)
        source = stalled()
        await anext(source)
        await h.engine.usage.settle(h.config, turn, backend, [], None, False, source=source,
                                    cut=True, after_backend=as_is)
        await settled(h)
        [row] = rows(h)
    assert (row.messages, row.input_tokens, row.cost) == (1, 0, None)
    assert "chat 42: gpt: the cut reply did not end within 0.5 s (turn_timeout); recorded " \
        "with the usage it had" in caplog.messages


class Rewrite:
    """A tgmux_after_backend hook that passes usage parts on, rewritten."""

    @hookimpl
    def tgmux_after_backend(self, part: Any) -> Any:
        if isinstance(part, Usage):
            return [Text("not shown"), Usage("sim-gpt", part.input_tokens * 10, 1)]
        return part


async def test_usage_read_on_is_what_the_after_backend_hooks_pass_on(
        sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim), plugins=[Rewrite()]) as h:
        parts = await h.say(LONG, user_id=42)
        await settled(h)
        [row] = rows(h)
    assert shown_text(parts) == REPLY[:100] and parts[-1] == CUT
    assert (row.input_tokens, row.output_tokens) == (LONG_TOKENS[0] * 10, 1)
