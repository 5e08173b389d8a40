"""Providers misbehaving at scale, through the engine (EngineHarness) against the bundled
simulators on 127.0.0.1: what the user sees must stay bounded, and come quickly."""

from __future__ import annotations

import time

import pytest

import tgmux.backends.lucydream as lucydream_plugin
from tgmux.backend import Notice, Text
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.harness import EngineHarness

KEY = "key-one"
MAX_REPLY_CHARS = 16384  # engine.max_reply_chars' default
CUT = "The reply was cut at 16,384 characters."
FEW_SECONDS = 5.0


@pytest.fixture
async def sim():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=None) as server:
        yield server


def harness(sim: LucyDreamSimulator) -> EngineHarness:
    text = f"""
backends:
  lucy:
    type: lucydream
    api_key: {KEY}
    base_url: {sim.base_url}
    timeout: 20
default: lucy
"""
    return EngineHarness.from_yaml(text, plugins=[lucydream_plugin])


def shown(parts) -> int:
    return sum(len(p.text) for p in parts if isinstance(p, Text | Notice))


async def test_a_50_mb_reply_gets_the_user_a_bounded_notice_quickly(sim):
    """A 50 MB ``reply``: the HTTP layer stops reading at its cap (4 MiB by default) and the
    user gets a notice, within a few seconds; never 50 MB of text, never a hung chat."""
    sim.answer_huge(50 * 1024 * 1024)
    async with harness(sim) as h:
        started = time.monotonic()
        parts = await h.say("tell me everything")
        elapsed = time.monotonic() - started
        assert await h.say("still there?") == [Text("You said: still there?")]
    assert elapsed < FEW_SECONDS
    assert parts and isinstance(parts[-1], Notice)
    assert shown(parts) <= MAX_REPLY_CHARS + 200
    assert sim.huge_bytes_sent < 50 * 1024 * 1024  # stopped reading before the end


async def test_a_1_6_mb_reply_is_cut_at_max_reply_chars_quickly(sim):
    """Under the byte cap: read whole, then cut by the engine, with a note."""
    size = 1_600_000
    sim.answer_huge(size)
    async with harness(sim) as h:
        started = time.monotonic()
        parts = await h.say("tell me a lot")
        elapsed = time.monotonic() - started
    assert elapsed < FEW_SECONDS
    text, notice = parts
    assert isinstance(text, Text) and len(text.text) == MAX_REPLY_CHARS
    assert text.text.startswith("lorem ipsum dolor sit amet")
    assert notice == Notice(CUT)
    assert sim.huge_bytes_sent == size


@pytest.mark.parametrize("retry_after", ["inf", "1e308", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_an_absurd_retry_after_is_told_as_a_date_not_a_crash(sim, retry_after):
    sim.inject(status=429, headers={"Retry-After": retry_after}, body={"message": "slow"})
    async with harness(sim) as h:
        [notice] = await h.say("hello")
    assert isinstance(notice, Notice)
    assert notice.text.startswith("The AI provider is busy; please try again after ")
    assert len(notice.text) < 80
