"""Sensay replies as they really arrive: a JSON request answered by a plain text stream, emoji
split into UTF-16 halves across stream parts (the Vercel AI SDK's JSON escapes), and UTF-8
bytes of one character split across network chunks; through the engine (EngineHarness)
against the simulator."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

import tgmux.backends.sensay as sensay_plugin
from tgmux.backend import Text, TextDelta, Usage
from tgmux.backends.sensay.client import SensayClient
from tgmux.backends.sensay.simulator import Replica, SensaySimulator
from tgmux.harness import EngineHarness

SECRET = "org-secret-u"
R_DATA = "11111111-1111-4111-8111-111111111111"
R_UI = "22222222-2222-4222-8222-222222222222"
R_TEXT = "33333333-3333-4333-8333-333333333333"
R_TEXT_ONLY = "55555555-5555-4555-8555-555555555555"  # a plain text stream, whatever Accept says
R_DATA_ONLY = "66666666-6666-4666-8666-666666666666"  # a bare data stream, whatever Accept says
TD = {"chat_type": "private", "chat_id": 42, "user_id": 42, "message_id": 7}
REPLY = "ok 😀 fine 👍🏽 done"
SURROGATE = re.compile("[\ud800-\udfff]")


def reply_fn(content: str, history: list) -> str:
    return REPLY


@pytest.fixture
async def sim() -> AsyncIterator[SensaySimulator]:
    replicas = [
        Replica(R_DATA, "D", flavor="data", reply=reply_fn),
        Replica(R_UI, "U", flavor="ui", reply=reply_fn),
        Replica(R_TEXT, "T", flavor="text", reply=reply_fn),
        Replica(R_TEXT_ONLY, "TO", flavor="text", answer_as="stream"),
        Replica(R_DATA_ONLY, "DO", flavor="data", headers=False, answer_as="stream"),
    ]
    async with SensaySimulator(organization_secret=SECRET, replicas=replicas,
                               chunk_size=4) as server:
        yield server  # type: ignore[misc]


def harness(sim: SensaySimulator, replica: str, *, stream: bool = True) -> EngineHarness:
    text = f"""
backends:
  replica:
    type: sensay
    base_url: {sim.base_url}
    organization_secret: {SECRET}
    user_id: "tg_{{user_id}}"
    replica_uuid: {replica}
    stream: {str(stream).lower()}
default: replica
"""
    return EngineHarness.from_yaml(text, plugins=[sensay_plugin])


# -- stream: false answered by a stream -----------------------------------------------------------


@pytest.mark.parametrize("replica", [R_TEXT_ONLY, R_DATA_ONLY])
async def test_json_request_answered_by_a_stream_without_vercel_header_is_read(sim, replica):
    """A ``text/plain`` answer to a JSON request (no ``x-vercel-ai-*`` header): the body is the
    reply (a bare data stream is recognized as one)."""
    async with harness(sim, replica, stream=False) as h:
        parts = await h.say("hello there")
    name = "TO" if replica == R_TEXT_ONLY else "DO"
    assert parts == [Text(f"[{name}] hello there (history: 0)")]
    assert sim.turns[-1].streamed and sim.turns[-1].flavor == ("text" if name == "TO" else "data")


async def test_client_complete_reads_a_plain_text_answer(sim):
    async with SensayClient(SECRET, user_id="u", base_url=sim.base_url) as client:
        assert await client.complete(R_TEXT_ONLY, "x 😀", TD) == "[TO] x 😀 (history: 0)"


# -- UTF-16 halves across stream parts ------------------------------------------------------------


@pytest.mark.parametrize("replica", [R_DATA, R_UI])
async def test_emoji_split_in_utf16_halves_reaches_the_user_whole(sim, replica):
    sim.split_characters = True
    sim.chunk_size = 4  # "ok 😀": 'o','k',' ','\ud83d' | '\ude00',' ','f','i' ...
    async with SensayClient(SECRET, user_id="u", base_url=sim.base_url) as client:
        raw = [d async for d in client.stream(replica, "hi", TD)]
    assert "\ud83d" in {d[-1] for d in raw}  # the parser passes a lone half through as it came
    async with harness(sim, replica) as h:
        parts = await h.say("hi")
    deltas = [p for p in parts if isinstance(p, TextDelta)]
    assert len(deltas) >= 4
    assert not any(SURROGATE.search(d.text) for d in deltas)  # the engine joined the halves
    assert "".join(d.text for d in deltas) == REPLY
    usage = [Usage(input_tokens=1, output_tokens=5)] if replica == R_DATA else []
    assert parts[len(deltas):] == [Text(REPLY), *usage]


@pytest.mark.parametrize("replica", [R_DATA, R_UI])
async def test_backend_final_text_is_valid_unicode(sim, replica):
    """The adapter's own final Text (before the engine) is valid Unicode too."""
    from tgmux.backends.sensay.adapter import SensayBackend
    from tgmux.store import MemoryStore

    sim.split_characters = True
    settings = SensayBackend.Settings.model_validate({
        "type": "sensay", "base_url": sim.base_url, "organization_secret": SECRET,
        "user_id": "u", "replica_uuid": replica})
    backend = SensayBackend("replica", settings, MemoryStore().namespace("replica"))
    h = harness(sim, replica)
    message = h.message("hi")
    from tgmux.backend import Turn

    turn = Turn(text="hi", chat=message.chat, options=settings, kv=backend.kv)
    await backend.start()
    try:
        parts = [p async for p in backend.reply(turn) if not isinstance(p, Usage)]
    finally:
        await backend.close()
    assert parts[-1] == Text(REPLY)


# -- UTF-8 bytes split across network chunks ------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_plain_text_stream_with_utf8_split_across_chunks(sim, stream):
    sim.split_characters = True
    sim.chunk_size = 3  # "😀" is 4 bytes: always cut
    sim.write_size = 1  # and every byte a write of its own
    sim.chunk_delay = 0.005
    sim.replicas[R_TEXT].answer_as = "stream"
    async with harness(sim, R_TEXT, stream=stream) as h:
        parts = await h.say("hi")
    assert parts[-1] == Text(REPLY)
    assert "\ufffd" not in "".join(p.text for p in parts)
    if stream:
        assert len([p for p in parts if isinstance(p, TextDelta)]) >= 2
