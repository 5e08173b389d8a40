"""The sensay backend through the engine (EngineHarness) against the real simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import tgmux.backends.sensay as sensay_plugin
from tgmux.backend import Notice, Text, TextDelta, Usage
from tgmux.backends.sensay.adapter import CUT_OFF, NO_RESET, SensayBackend
from tgmux.backends.sensay.simulator import Replica, SensaySimulator
from tgmux.errors import USER_MESSAGES, ConfigError, ErrorKind
from tgmux.harness import EngineHarness
from tgmux.store.memory import MemoryStore

SECRET = "org-secret-9"
R_DATA = "11111111-1111-4111-8111-111111111111"
R_UI = "22222222-2222-4222-8222-222222222222"
R_TEXT = "33333333-3333-4333-8333-333333333333"
R_BARE = "44444444-4444-4444-8444-444444444444"
R_GONE = "99999999-9999-4999-8999-999999999999"

CONFIG = """
backends:
  replica:
    type: sensay
    base_url: ${SENSAY_URL}
    organization_secret: ${SENSAY_SECRET}
    user_id: "tg_{user_id}"
    replica_uuid: %(replica)s
    stream: %(stream)s
    long_message: %(long_message)s
routes:
  - match: {chat_type: channel}
    backend: replica
  - match: {chat_id: -300}
    backend: replica
    options: {replica_uuid: %(ui)s}
  - match: {chat_id: -400}
    backend: replica
    options: {skip_chat_history: true}
  - match: {chat_id: -500}
    backend: replica
    options: {replica_uuid: %(gone)s}
default: replica
"""


@pytest.fixture
async def sim() -> AsyncIterator[SensaySimulator]:
    replicas = [
        Replica(R_DATA, "D", flavor="data"),
        Replica(R_UI, "U", flavor="ui"),
        Replica(R_TEXT, "T", flavor="text"),
        Replica(R_BARE, "B", flavor="data", headers=False, content_type="text/event-stream",
                crlf=True, finish=False),
    ]
    async with SensaySimulator(organization_secret=SECRET, replicas=replicas,
                               chunk_size=4) as server:
        yield server  # type: ignore[misc]


def harness(sim: SensaySimulator, *, replica: str = R_DATA, stream: bool = True,
            long_message: str = "reject") -> EngineHarness:
    text = CONFIG % {"replica": replica, "stream": str(stream).lower(), "ui": R_UI,
                     "long_message": long_message, "gone": R_GONE}
    return EngineHarness.from_yaml(
        text, store="memory://", env={"SENSAY_URL": sim.base_url, "SENSAY_SECRET": SECRET},
        plugins=[sensay_plugin],
    )


def chunks(text: str, size: int = 4) -> list[TextDelta]:
    return [TextDelta(text[i:i + size]) for i in range(0, len(text), size)]


# -- what Sensay receives ----------------------------------------------------------------------


async def test_exact_bodies_for_each_kind_of_chat(sim: SensaySimulator) -> None:
    async with harness(sim) as h:
        await h.say("private hello", user_id=42, username="alice", message_id=11)
        await h.say("group hello", user_id=7, chat_id=-100, chat_type="group", message_id=12)
        await h.say("topic hello", user_id=8, chat_id=-1001, chat_type="supergroup",
                    username="bob", message_id=13, thread_id=5)
        await h.say("plain supergroup", user_id=8, chat_id=-1001, chat_type="supergroup",
                    username="bob", message_id=14)
        await h.say("channel post", user_id=None, chat_id=-1002, chat_type="channel",
                    message_id=15)
    bodies = [r.json for r in sim.requests]
    assert bodies == [
        {"content": "private hello", "skip_chat_history": False, "telegram_data": {
            "chat_type": "private", "chat_id": 42, "user_id": 42, "username": "alice",
            "message_id": 11}},
        {"content": "group hello", "skip_chat_history": False, "telegram_data": {
            "chat_type": "group", "chat_id": -100, "user_id": 7, "message_id": 12}},
        {"content": "topic hello", "skip_chat_history": False, "telegram_data": {
            "chat_type": "supergroup", "chat_id": -1001, "user_id": 8, "username": "bob",
            "message_id": 13, "message_thread_id": 5}},
        {"content": "plain supergroup", "skip_chat_history": False, "telegram_data": {
            "chat_type": "supergroup", "chat_id": -1001, "user_id": 8, "username": "bob",
            "message_id": 14}},
        {"content": "channel post", "skip_chat_history": False, "telegram_data": {
            "chat_type": "channel", "chat_id": -1002, "message_id": 15}},
    ]
    assert [r.header("X-USER-ID") for r in sim.requests] == [
        "tg_42", "tg_7", "tg_8", "tg_8", "tg_-1002"]  # a channel post has no sender
    assert {r.header("X-ORGANIZATION-SECRET") for r in sim.requests} == {SECRET}
    assert {r.path for r in sim.requests} == {
        f"/v1/replicas/{R_DATA}/chat/completions/telegram"}
    assert {r.header("Accept") for r in sim.requests} == {"text/event-stream"}


async def test_replica_per_route(sim: SensaySimulator) -> None:
    async with harness(sim) as h:
        parts = await h.say("hi", user_id=3, chat_id=-300, chat_type="group")
    assert parts[-1] == Text("[U] hi (history: 0)")
    assert sim.requests[0].path == f"/v1/replicas/{R_UI}/chat/completions/telegram"


# -- streaming end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("replica", [R_DATA, R_UI, R_BARE])
async def test_stream_flavors_end_to_end(sim: SensaySimulator, replica: str) -> None:
    name = sim.replicas[replica].name
    async with harness(sim, replica=replica) as h:
        parts = await h.say("Grüße 😀 \"q\"", user_id=42)
    full = f'[{name}] Grüße 😀 "q" (history: 0)'
    # the v4 data stream's finish part carries usage (11 and 27 characters: 3 and 7 tokens)
    usage = [Usage(input_tokens=3, output_tokens=7)] if replica == R_DATA else []
    assert parts == [*chunks(full), Text(full), *usage]


@pytest.mark.parametrize(("replica", "stream"), [(R_DATA, True), (R_UI, True),
                                                 (R_DATA, False)])
async def test_usage_of_the_data_stream_is_recorded(sim: SensaySimulator, replica: str,
                                                    stream: bool) -> None:
    """Only the v4 data stream reports tokens; the others (and JSON) count messages only."""
    async with harness(sim, replica=replica, stream=stream) as h:
        await h.say("hello", user_id=42)
        assert isinstance(h.store, MemoryStore)
        [row] = h.store.usage.values()
    # "hello" (5 characters: 2 tokens), "[D] hello (history: 0)" (22: 6)
    tokens = (2, 6) if replica == R_DATA and stream else (0, 0)
    assert (row.backend, row.model, row.messages, row.cost) == ("replica", "", 1, None)
    assert (row.input_tokens, row.output_tokens) == tokens


async def test_plain_text_stream_end_to_end(sim: SensaySimulator) -> None:
    sim.chunk_delay = 0.01
    async with harness(sim, replica=R_TEXT) as h:
        parts = await h.say("plain words", user_id=42)
    full = "[T] plain words (history: 0)"
    assert parts[-1] == Text(full)
    deltas = parts[:-1]
    assert len(deltas) > 1 and all(isinstance(p, TextDelta) for p in deltas)
    assert "".join(p.text for p in deltas) == full


async def test_json_mode(sim: SensaySimulator) -> None:
    async with harness(sim, stream=False) as h:
        assert await h.say("hi", user_id=42) == [Text("[D] hi (history: 0)")]
    assert sim.requests[0].header("Accept") == "application/json"


@pytest.mark.parametrize("replica", [R_DATA, R_UI])
async def test_error_mid_stream_keeps_what_streamed(sim: SensaySimulator, replica: str) -> None:
    name = sim.replicas[replica].name
    sim.fail_stream(after=2, message="Internal model error: stack at line 3")
    async with harness(sim, replica=replica) as h:
        parts = await h.say("abcdefgh", user_id=42)
        partial = f"[{name}] abcdefgh"[:8]
        assert parts == [*chunks(partial), Text(partial), Notice(CUT_OFF)]
        # The broken turn is not in the replica's history; the next one works.
        again = [p for p in await h.say("again", user_id=42) if not isinstance(p, Usage)]
        assert again == [
            *chunks(f"[{name}] again (history: 0)"), Text(f"[{name}] again (history: 0)")]


async def test_error_before_any_text(sim: SensaySimulator) -> None:
    sim.fail_stream(after=0, message="boom")
    async with harness(sim) as h:
        parts = await h.say("hi", user_id=42)
    assert parts == [Notice(USER_MESSAGES[ErrorKind.UNAVAILABLE])]


async def test_dropped_stream(sim: SensaySimulator) -> None:
    sim.fail_stream(after=1, drop=True)
    async with harness(sim) as h:
        parts = await h.say("hello there", user_id=42)
    assert parts == [TextDelta("[D] "), Text("[D] "), Notice(CUT_OFF)]


# -- chat history ------------------------------------------------------------------------------


async def test_skip_chat_history_with_fresh(sim: SensaySimulator) -> None:
    async with harness(sim, stream=False) as h:
        assert await h.say("one", user_id=42) == [Text("[D] one (history: 0)")]
        assert await h.say("/fresh secret", user_id=42) == [Text("[D] secret (history: 0)")]
        assert await h.say("two", user_id=42) == [Text("[D] two (history: 2)")]
    assert [r.json["skip_chat_history"] for r in sim.requests] == [False, True, False]
    assert [m["content"] for m in sim.history(R_DATA, "tg_42")] == [
        "one", "[D] one (history: 0)", "two", "[D] two (history: 2)"]


async def test_skip_chat_history_per_route(sim: SensaySimulator) -> None:
    async with harness(sim, stream=False) as h:
        for text in ("a", "b"):
            assert await h.say(text, user_id=5, chat_id=-400, chat_type="group") == [
                Text(f"[D] {text} (history: 0)")]
    assert [r.json["skip_chat_history"] for r in sim.requests] == [True, True]
    assert sim.history(R_DATA, "tg_5") == []


async def test_help_lists_fresh(sim: SensaySimulator) -> None:
    async with harness(sim) as h:
        [help_text] = await h.say("/help", user_id=42)
        [usage] = await h.say("/fresh", user_id=42)
    assert isinstance(help_text, Text)
    assert "/fresh <text> — Ask without the chat history (not remembered)" in help_text.text
    assert usage == Notice("Write your question after the command: /fresh <text>")
    assert sim.requests == []


async def test_reset_explains_fresh(sim: SensaySimulator) -> None:
    async with harness(sim) as h:
        assert await h.say("/reset", user_id=42) == [Text(NO_RESET)]
    assert sim.requests == []


# -- content length ----------------------------------------------------------------------------


async def test_long_message_rejected_by_default(sim: SensaySimulator) -> None:
    async with harness(sim) as h:
        parts = await h.say("x" * 10001, user_id=42)
    assert parts == [Notice("Your message is 10,001 characters long; this AI accepts at most "
                            "10,000. Please send a shorter message.")]
    assert sim.requests == []


async def test_long_message_truncated(sim: SensaySimulator) -> None:
    async with harness(sim, stream=False, long_message="truncate") as h:
        parts = await h.say("y" * 9999 + "😀z", user_id=42)
    assert parts == [
        Notice("Your message is 10,002 characters long; only its first 10,000 were sent."),
        Text("[D] " + "y" * 9999 + " (history: 0)"),
    ]
    assert sim.requests[0].json["content"] == "y" * 9999  # the emoji would need 2 units


async def test_long_message_split(sim: SensaySimulator) -> None:
    text = "word " * 2500 + "end"  # 12503 characters
    async with harness(sim, long_message="split") as h:
        parts = await h.say(text, user_id=42)
    first, second = (r.json["content"] for r in sim.requests)
    assert f"{first} {second}" == text  # cut at a space, which is dropped
    assert len(first) <= 10000 and first.endswith("word")
    assert [r.header("Accept") for r in sim.requests] == ["application/json",
                                                          "text/event-stream"]
    last = f"[D] {second} (history: 2)"
    assert parts == [Text(f"[D] {first} (history: 0)"), *chunks(last), Text(last),
                     Usage(input_tokens=-(-len(second) // 4), output_tokens=-(-len(last) // 4))]


# -- errors reaching the user ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, ErrorKind.BAD_REQUEST), (401, ErrorKind.AUTH), (404, ErrorKind.NOT_FOUND),
     (415, ErrorKind.BAD_REQUEST), (500, ErrorKind.UNAVAILABLE)],
)
async def test_error_status_reaches_user(sim: SensaySimulator, status: int, kind: ErrorKind,
                                         stream: bool, caplog: pytest.LogCaptureFixture) -> None:
    fault = sim.fail(status, "provider says no", inner_exception=status == 500)
    async with harness(sim, stream=stream) as h:
        parts = await h.say("hi", user_id=42)
    assert parts == [Notice(USER_MESSAGES[kind])]
    assert len(sim.requests) == 1
    assert fault.body["request_id"] in caplog.text  # logged for reporting
    if status != 404:
        assert fault.body["fingerprint"] in caplog.text
    assert "at eval" not in caplog.text  # the provider's stack is never logged


async def test_real_unknown_replica_and_bad_secret(sim: SensaySimulator) -> None:
    async with harness(sim) as h:
        assert await h.say("hi", user_id=3, chat_id=-500, chat_type="group") == [
            Notice(USER_MESSAGES[ErrorKind.NOT_FOUND])]
    sim.organization_secret = "rotated"
    async with harness(sim) as h:
        assert await h.say("hi", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.AUTH])]


# -- config --------------------------------------------------------------------------------------


def test_config_rejects_unknown_placeholder_and_keys() -> None:
    text = """
backends:
  r:
    type: sensay
    organization_secret: s
    user_id: "tg_{first_name}"
    replica_uuid: x
    streaming: true
default: r
"""
    with pytest.raises(ConfigError) as info:
        EngineHarness.from_yaml(text, plugins=[sensay_plugin])
    message = str(info.value)
    assert "unknown placeholder {first_name}" in message
    assert "unknown key 'streaming'" in message


def test_route_may_override_only_replica_history_and_group_context() -> None:
    assert SensayBackend.route_options == {"replica_uuid", "skip_chat_history",
                                           "record_group_context"}
    text = """
backends:
  r: {type: sensay, organization_secret: s, user_id: u, replica_uuid: x}
routes:
  - match: {chat_id: 1}
    backend: r
    options: {stream: false}
default: r
"""
    with pytest.raises(ConfigError, match="'stream' cannot be set per route"):
        EngineHarness.from_yaml(text, plugins=[sensay_plugin])


def test_settings_defaults_and_secret_hidden() -> None:
    settings = SensayBackend.Settings.model_validate(
        {"type": "sensay", "organization_secret": "top-secret", "user_id": "u",
         "replica_uuid": "r"})
    assert settings.base_url == "https://api.sensay.io"
    assert settings.stream is True
    assert settings.skip_chat_history is False
    assert settings.long_message == "reject"
    assert settings.timeout == 30.0
    assert "top-secret" not in repr(settings)
    for name, field in SensayBackend.Settings.model_fields.items():
        assert name == "type" or field.description, name


async def test_demo_backend_answers() -> None:
    [demo] = sensay_plugin.tgmux_demo_backends()
    config, stop = await demo.start()
    try:
        body: dict[str, Any] = {"backends": {"demo": config}, "default": "demo"}
        import yaml

        async with EngineHarness.from_yaml(yaml.safe_dump(body),
                                           plugins=[sensay_plugin]) as h:
            parts = await h.say("hello demo", user_id=42)
    finally:
        await stop()
    assert [p for p in parts if isinstance(p, Text)][-1] == \
        Text("[Sensay demo replica] hello demo (history: 0)")
    assert any(isinstance(p, TextDelta) for p in parts)
