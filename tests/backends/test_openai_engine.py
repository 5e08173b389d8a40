"""The openai backend through the engine (EngineHarness) against the simulator: the exact
``messages`` each request carries as the conversation grows, what tgmux remembers (and what
it does not), /history and /reset, photos, the context-length retry, errors as users read
them, and config errors."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import tgmux.backends.openai as openai_plugin
from tgmux.backend import Media, Metadata, Notice, Text, TextDelta, Usage
from tgmux.backends.openai.adapter import (
    CUT_OFF,
    LENGTH_NOTE,
    MEMORY_OFF,
    NO_HISTORY,
    PHOTO_NOT_SEEN,
    PHOTO_ONLY,
    TOO_LONG,
    OpenAIBackend,
)
from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.errors import USER_MESSAGES, ConfigError, ErrorKind
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl

KEY = "sk-engine-test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    models = [Model("gpt-test", context_tokens=400), Model("eyes", vision=True),
              Model("ok-bot", context_tokens=400, reply=lambda messages: "ok")]
    async with OpenAISimulator(api_keys={KEY}, models=models, chunk_size=6) as server:
        yield server  # type: ignore[misc]


def harness(sim: OpenAISimulator, extra: str = "", *, routes: str = "", store: str | None = None,
            plugins: list[Any] | None = None, model: str = "gpt-test") -> EngineHarness:
    text = f"""
backends:
  gpt:
    type: openai
    base_url: {sim.base_url}
    api_key: {KEY}
    model: {model}
    system_prompt: "You are terse."
{extra}
{routes}
default: gpt
"""
    return EngineHarness.from_yaml(text, store=store, plugins=plugins or [])


def sent_messages(sim: OpenAISimulator) -> list[list[dict[str, Any]]]:
    return [c.messages for c in sim.completions]


def texts(parts: list[Any]) -> list[str]:
    return [p.text for p in parts if isinstance(p, Text | Notice)]


async def test_three_turns_send_the_growing_conversation_exactly(sim: OpenAISimulator) -> None:
    async with harness(sim) as h:
        first = await h.say("Hi, I am Ann.", user_id=42)
        second = await h.say("I like tea.", user_id=42)
        third = await h.say("What do I like?", user_id=42)
    r1 = "You said: Hi, I am Ann."
    r2 = "You said: I like tea. (I remember 1 earlier message; the first was: Hi, I am Ann.)"
    r3 = ("You said: What do I like? (I remember 2 earlier messages; the first was: Hi, I am "
          "Ann.)")
    assert [texts(first), texts(second), texts(third)] == [[r1], [r2], [r3]]
    system = {"role": "system", "content": "You are terse."}
    assert sent_messages(sim) == [
        [system, {"role": "user", "content": "Hi, I am Ann."}],
        [system, {"role": "user", "content": "Hi, I am Ann."},
         {"role": "assistant", "content": r1}, {"role": "user", "content": "I like tea."}],
        [system, {"role": "user", "content": "Hi, I am Ann."},
         {"role": "assistant", "content": r1}, {"role": "user", "content": "I like tea."},
         {"role": "assistant", "content": r2}, {"role": "user", "content": "What do I like?"}],
    ]
    assert all(c.body["stream"] is True and c.body["model"] == "gpt-test"
               for c in sim.completions)
    assert any(isinstance(p, TextDelta) for p in first)  # streamed


async def test_chats_and_accounts_are_apart_and_sampling_is_passed(
        sim: OpenAISimulator) -> None:
    extra = "    temperature: 0.2\n    max_tokens: 300\n    top_p: 0.9\n    stream: false"
    async with harness(sim, extra) as h:
        await h.say("one", user_id=1)
        await h.say("two", user_id=2)
        await h.say("three", user_id=1, account="other")
    assert [len(m) for m in sent_messages(sim)] == [2, 2, 2]
    body = sim.completions[0].body
    assert {k: body[k] for k in ("stream", "temperature", "max_tokens", "top_p")} == \
        {"stream": False, "temperature": 0.2, "max_tokens": 300, "top_p": 0.9}
    assert "frequency_penalty" not in body  # not set: not sent


async def test_max_turns_and_max_chars_bound_what_is_sent(sim: OpenAISimulator) -> None:
    async with harness(sim, "    history: {max_turns: 2, max_chars: 100000}") as h:
        for n in range(1, 5):
            await h.say(f"m{n}", user_id=7)
    assert [m["content"] for m in sent_messages(sim)[-1][1:] if m["role"] == "user"] == \
        ["m2", "m3", "m4"]  # two remembered exchanges, then the new message
    sim.completions.clear()
    # max_chars counts the remembered texts only: "m1" + "ok" is 4 characters
    async with harness(sim, "    history: {max_turns: 20, max_chars: 8}", model="ok-bot") as h:
        for n in range(1, 5):
            await h.say(f"m{n}", user_id=8)
    assert [m["content"] for m in sent_messages(sim)[-1][1:] if m["role"] == "user"] == \
        ["m2", "m3", "m4"]


async def test_what_is_remembered_is_the_reply_the_chat_got(sim: OpenAISimulator) -> None:
    class Signature:
        @hookimpl
        def tgmux_after_backend(self, part: Any) -> Any:
            if isinstance(part, Text):
                return Text(part.text + " — AI")
            return None

    async with harness(sim, plugins=[Signature()]) as h:
        await h.say("hello", user_id=5)
        await h.say("again", user_id=5)
    assert sent_messages(sim)[1][2] == {"role": "assistant", "content": "You said: hello — AI"}


async def test_failed_and_cut_off_turns_are_not_remembered(sim: OpenAISimulator) -> None:
    async with harness(sim) as h:
        await h.say("kept", user_id=9)
        sim.fail(500, "boom")  # a POST is not repeated after a 500: one request
        failed = await h.say("failed", user_id=9)
        sim.fail_stream(after=1)
        cut = await h.say("cut off", user_id=9)
        await h.say("last", user_id=9)
    assert texts(failed) == [USER_MESSAGES[ErrorKind.UNAVAILABLE]]
    assert texts(cut) == ["You sa", CUT_OFF]  # what streamed stays, then the notice
    last = sent_messages(sim)[-1]
    assert [m["content"] for m in last if m["role"] == "user"] == ["kept", "last"]


async def test_reset_and_history_never_call_the_provider(sim: OpenAISimulator) -> None:
    async with harness(sim) as h:
        assert await h.say("/history", user_id=3) == [Text(NO_HISTORY)]
        await h.say("first", user_id=3)
        await h.say("second", user_id=3)
        calls = len(sim.requests)
        shown = await h.say("/history", user_id=3)
        assert shown == [Text(
            "you: first\nAI: You said: first\nyou: second\n"
            "AI: You said: second (I remember 1 earlier message; the first was: first)")]
        assert await h.say("/reset", user_id=3) == [Text("Done: I have forgotten our "
                                                         "conversation.")]
        assert await h.say("/history", user_id=3) == [Text(NO_HISTORY)]
        assert len(sim.requests) == calls
        await h.say("fresh start", user_id=3)
        help_text = (await h.say("/help", user_id=3))[0]
    assert sent_messages(sim)[-1][1:] == [{"role": "user", "content": "fresh start"}]
    assert isinstance(help_text, Text)
    assert "/history — Show what I remember of our conversation" in help_text.text


async def test_history_off(sim: OpenAISimulator) -> None:
    async with harness(sim, "    history: {max_turns: 0}") as h:
        await h.say("one", user_id=4)
        await h.say("two", user_id=4)
        assert await h.say("/history", user_id=4) == [Text(MEMORY_OFF)]
    assert [len(m) for m in sent_messages(sim)] == [2, 2]


async def test_a_long_history_is_shown_in_several_messages(sim: OpenAISimulator) -> None:
    sim.models["gpt-test"].context_tokens = 10**6
    async with harness(sim, "    stream: false") as h:
        for n in range(3):
            await h.say(f"{n} " + "word " * 500, user_id=6)
        shown = await h.say("/history", user_id=6)
    assert len(shown) >= 2 and all(isinstance(p, Text) and len(p.text) <= 4000 for p in shown)


async def test_context_too_long_drops_the_oldest_and_forgets_them(sim: OpenAISimulator) -> None:
    # 400 tokens of context, 4 characters a token and 4 a message: the system prompt is 8,
    # each exchange 105 + 5, the fourth message 304: it fits with no exchange only.
    async with harness(sim, "    stream: false", model="ok-bot") as h:
        for n in range(1, 4):
            assert texts(await h.say(f"m{n} " + "x" * 397, user_id=11)) == ["ok"]
        requests_before = len(sim.requests)
        parts = await h.say("m4 " + "y" * 1197, user_id=11)
        assert texts(parts) == ["ok"]
        # refused with three exchanges, refused with the newest one (half of 3, rounded up,
        # dropped), accepted with none
        assert len(sim.requests) - requests_before == 3
        sent = [r.json["messages"] for r in sim.requests[requests_before:]]
        assert [len(m) for m in sent] == [8, 4, 2]
        # what did not fit is forgotten: the next turn starts from the last exchange
        await h.say("m5", user_id=11)
        assert [m["content"][:2] for m in sent_messages(sim)[-1] if m["role"] == "user"] == \
            ["m4", "m5"]


async def test_a_message_too_long_alone(sim: OpenAISimulator) -> None:
    async with harness(sim) as h:
        for n in range(3):
            await h.say(f"short {n}", user_id=12)
        parts = await h.say("z" * 2000, user_id=12)
    assert texts(parts) == [TOO_LONG]
    assert len(sim.requests) == 3 + 3  # with 3, 1, then 0 remembered: at most two retries


async def test_the_missing_model_is_named(sim: OpenAISimulator) -> None:
    routes = """routes:
  - match: {chat_id: [-5]}
    backend: gpt
    options: {model: gpt-nonexistent, system_prompt: "Per route."}"""
    async with harness(sim, routes=routes) as h:
        parts = await h.say("@bot hi", user_id=1, chat_id=-5, chat_type="group")
    assert texts(parts) == ["The AI model “gpt-nonexistent” does not exist at the provider (or "
                            "this bot may not use it). The bot's operator has to check the "
                            "`model` setting."]
    assert sim.requests[0].json["messages"][0] == {"role": "system", "content": "Per route."}


async def test_auth_rate_limit_and_unavailable_as_users_read_them(sim: OpenAISimulator) -> None:
    async with harness(sim) as h:
        sim.api_keys = {"another"}
        auth = await h.say("a", user_id=13)
        sim.api_keys = {KEY}
        sim.fail(429, "slow down", type="requests", code="rate_limit_exceeded",
                 headers={"x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": "6m0s"}, times=3)
        limited = await h.say("b", user_id=13)
    assert texts(auth) == [USER_MESSAGES[ErrorKind.AUTH]]
    assert texts(limited) == ["The AI provider is busy; please try again in about 6 min."]
    assert not any("slow down" in t or "Incorrect" in t for t in texts(auth) + texts(limited))


async def test_finish_length_adds_a_note_and_is_remembered(sim: OpenAISimulator) -> None:
    async with harness(sim, "    max_tokens: 3") as h:
        parts = await h.say("tell me everything", user_id=14)
        await h.say("continue", user_id=14)
    assert texts(parts) == ["You said: te", LENGTH_NOTE]  # 3 tokens of 4 characters
    assert sent_messages(sim)[1][2] == {"role": "assistant", "content": "You said: te"}


async def test_usage_reaches_plugins_as_metadata(sim: OpenAISimulator) -> None:
    async with harness(sim, "    stream: false") as h:
        parts = await h.say("count me", user_id=15)
    (meta,) = [p for p in parts if isinstance(p, Metadata)]
    assert meta.data["usage"]["total_tokens"] > 0 and meta.data["model"] == "gpt-test"


# -- photos ------------------------------------------------------------------------------------


async def test_without_vision_a_photo_is_answered_by_its_caption(sim: OpenAISimulator) -> None:
    photo = Media("photo", data=PNG, mime_type="image/jpeg")
    async with harness(sim) as h:
        with_caption = await h.say("what is this?", user_id=16, media=photo)
        alone = await h.say("", user_id=16, media=photo)
    assert texts(with_caption) == [PHOTO_NOT_SEEN, "You said: what is this?"]
    assert texts(alone) == [PHOTO_ONLY]
    assert len(sim.requests) == 1  # the photo alone: no request
    assert sim.requests[0].json["messages"][-1] == {"role": "user", "content": "what is this?"}


async def test_with_vision_a_photo_goes_as_a_data_url(sim: OpenAISimulator) -> None:
    photo = Media("photo", data=PNG)
    async with harness(sim, "    vision: true", model="eyes") as h:
        parts = await h.say("what is this?", user_id=17, media=photo)
        await h.say("and now?", user_id=17)
    assert texts(parts) == ["You said: what is this? [I see 1 image]"]
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    first, second = sent_messages(sim)
    assert first[-1] == {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}}]}
    # the photo itself is not remembered, only that there was one
    assert second[1] == {"role": "user", "content": "[photo] what is this?"}


async def test_an_albums_photos_go_in_one_message_and_are_remembered_as_photos(
        sim: OpenAISimulator) -> None:
    import dataclasses

    photos = [Media("photo", data=PNG + bytes([n])) for n in range(3)]
    async with harness(sim, "    vision: true", model="eyes") as h:
        album = dataclasses.replace(h.message("which one?", user_id=18, media=photos[0]),
                                    album=tuple(photos[1:]))
        await (await h.engine.submit(album))
        await h.say("thanks", user_id=18)
    first, second = sent_messages(sim)
    assert first[-1] == {"role": "user", "content": [
        {"type": "text", "text": "which one?"},
        *({"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(p.data or b"").decode()}}
          for p in photos)]}
    assert second[1] == {"role": "user", "content": "[3 photos] which one?"}


# -- config ------------------------------------------------------------------------------------


def test_settings_defaults_and_the_key_hidden() -> None:
    settings = OpenAIBackend.Settings.model_validate(
        {"type": "openai", "model": "gpt-4o-mini", "api_key": "sk-top-secret"})
    assert settings.base_url == "https://api.openai.com/v1"
    assert settings.stream is True and settings.vision is False
    assert (settings.history.max_turns, settings.history.max_chars, settings.history.scope) == \
        (20, 24000, "chat")
    assert settings.sampling() == dict.fromkeys(settings.sampling())  # none set, none sent
    assert "sk-top-secret" not in repr(settings)
    for name, field in OpenAIBackend.Settings.model_fields.items():
        assert name == "type" or field.description, name


@pytest.mark.parametrize(("lines", "problem"), [
    ("    model: ''", "backends.gpt.model: String should have at least 1 character"),
    ("    model: m\n    base_url: https://api.openai.com/v1/chat/completions",
     "backends.gpt.base_url: give the API root (…/v1): tgmux adds "
     "/chat/completions"),
    ("    model: m\n    history: {max_turns: 20, scope: group}",
     "backends.gpt.history.scope: Input should be 'chat' or 'user'"),
    ("    model: m\n    history: {max_turn: 5}", "backends.gpt.history.max_turn: unknown key"),
    ("    model: m\n    temperature: 3", "backends.gpt.temperature: Input should be less than "
     "or equal to 2"),
    ("    model: m\n    extra_headers: {Content-Type: text/plain}",
     "backends.gpt.extra_headers: Content-Type is set by tgmux"),
    ("    model: m\n    stop: [a, b, c, d, e]", "backends.gpt.stop: 1 to 4 stop "
     "sequences"),
])
def test_bad_config_is_one_line_with_file_line_and_key(tmp_path: Path, lines: str,
                                                       problem: str) -> None:
    text = f"backends:\n  gpt:\n    type: openai\n{lines}\ndefault: gpt\n"
    with pytest.raises(ConfigError) as info:
        EngineHarness.from_yaml(text)
    (line,) = str(info.value).splitlines()
    assert line.startswith("<test config>:") and problem in line, line


def test_a_route_may_set_the_model_prompt_and_sampling_but_not_the_key() -> None:
    text = """
backends:
  gpt: {type: openai, model: m}
routes:
  - match: {chat_id: 1}
    backend: gpt
    options: {api_key: other}
default: gpt
"""
    with pytest.raises(ConfigError, match="'api_key' cannot be set per route"):
        EngineHarness.from_yaml(text)


async def test_demo_backend_remembers_the_conversation() -> None:
    [demo] = openai_plugin.tgmux_demo_backends()
    config, stop = await demo.start()
    try:
        body: dict[str, Any] = {"backends": {"demo": config}, "default": "demo"}
        async with EngineHarness.from_yaml(yaml.safe_dump(body)) as h:
            await h.say("my name is Ann", user_id=42)
            parts = await h.say("what is my name?", user_id=42)
    finally:
        await stop()
    shown = [p for p in parts if not isinstance(p, Metadata | Usage)]
    assert shown[-1] == Text("You said: what is my name? (I remember 1 earlier message; the "
                             "first was: my name is Ann)")


def test_tgmux_demo_shows_a_remembered_conversation() -> None:
    lines = "/backend openai\nmy name is Ann\nwhat is my name?\n/reset\nhi\n"
    result = subprocess.run([sys.executable, "-m", "tgmux", "demo"], input=lines,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "This chat now talks to: openai",
        "You said: my name is Ann",
        "You said: what is my name? (I remember 1 earlier message; the first was: my name "
        "is Ann)",
        "Done: I have forgotten our conversation.",
        "You said: hi",
    ]


async def test_the_key_and_extra_headers_never_reach_the_logs(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    extra = '    extra_headers: {X-Proxy-Token: "proxy-token-0123456789"}'
    async with harness(sim, extra) as h:
        assert texts(await h.say("hello", user_id=20)) == ["You said: hello"]
        sim.api_keys = {"another"}
        assert texts(await h.say("hello", user_id=20)) == [USER_MESSAGES[ErrorKind.AUTH]]
    assert sim.requests[0].header("X-Proxy-Token") == "proxy-token-0123456789"
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "kind=auth" in logged and "Incorrect API key provided" in logged  # the reason, for ops
    assert "request_id=req_" in logged
    assert KEY not in logged and "proxy-token-0123456789" not in logged


async def test_history_is_shown_while_the_circuit_is_open(sim: OpenAISimulator) -> None:
    # /history reads what tgmux keeps: an open circuit (the provider down) does not refuse
    # it, and its success does not close the circuit
    async with harness(sim, "    circuit: {failures: 1, cooldown: 1m}") as h:
        await h.say("Hi, I am Ann.", user_id=8)
        sim.fail(503, times=10)
        [failed] = await h.say("Still there?", user_id=8)
        assert failed == Notice(USER_MESSAGES[ErrorKind.UNAVAILABLE])
        assert h.engine.circuits["gpt"].state == "open"
        shown = texts(await h.say("/history", user_id=8))
        assert "Hi, I am Ann." in "\n".join(shown)
        assert h.engine.circuits["gpt"].state == "open"
        asked = len(sim.completions)
        [refused] = await h.say("Hello?", user_id=8)
    assert isinstance(refused, Notice) and len(sim.completions) == asked
