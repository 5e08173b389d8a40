"""LucyDream through the engine (EngineHarness) against the real simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import tgmux.backends.lucydream as lucydream_plugin
from tgmux.backend import Image, Notice, Text
from tgmux.backends.lucydream.adapter import (
    HISTORY_PART_LIMIT,
    MODEL_MISSING,
    NO_HISTORY,
    PROFILE_FAILED,
)
from tgmux.backends.lucydream.client import QUOTA_USER_MESSAGE
from tgmux.backends.lucydream.simulator import IMAGE_REPLY, LucyDreamSimulator
from tgmux.errors import USER_MESSAGES, ErrorKind
from tgmux.harness import EngineHarness

KEY = "key-one"
MODEL = "2195981"


def config(sim: LucyDreamSimulator, *, key: str = KEY, extra: str = "", routes: str = "",
           timeout: float = 10) -> str:
    """(``timeout``: a stall of 2 s, the old value, on a loaded machine timed a turn out.)"""
    return f"""
backends:
  lucy:
    type: lucydream
    api_key: {key}
    base_url: {sim.base_url}
    timeout: {timeout}
{extra}
{routes}
default: lucy
"""


@pytest.fixture
async def sim():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=None,
                                  models={MODEL: "Lucy Dream", "777": "Custom"}) as server:
        yield server


def harness(text: str, **kwargs) -> EngineHarness:
    # The package is registered explicitly too, so the tests do not depend on the installed
    # entry points being current (registering it twice is a no-op).
    return EngineHarness.from_yaml(text, plugins=[lucydream_plugin], **kwargs)


def calls(sim: LucyDreamSimulator) -> list[tuple[str, str]]:
    return [(r.method, r.path.rsplit("/", 1)[-1]) for r in sim.requests]


async def test_chat_text_reply_creates_sub_user_once(sim):
    async with harness(config(sim)) as h:
        assert await h.say("hello", user_id=42) == [Text("You said: hello")]
        assert await h.say("again", user_id=42) == [Text("You said: again")]
    assert calls(sim) == [
        ("POST", "create-sub-user"), ("POST", "send-message"), ("POST", "send-message"),
    ]
    create, send, _ = sim.requests
    assert create.json == {"username": "tg_42"}
    user = sim.sub_user_by_name("tg_42")
    assert send.json == {"message": "hello", "chatbot_model": MODEL, "user_id": user.user_id}
    assert send.header("X-API-Key") == KEY


async def test_mapping_survives_restart_without_second_create(sim, tmp_path):
    store = f"sqlite:///{tmp_path}/x.db"
    async with harness(config(sim), store=store) as h:
        assert await h.say("first", user_id=42) == [Text("You said: first")]
    async with harness(config(sim), store=store) as h:
        # a new Telegram message id: the inbox remembers message 1 as answered
        parts = await h.say("second", user_id=42, message_id=2)
        assert parts == [Text("You said: second")]
    assert [c for c in calls(sim) if c[1] == "create-sub-user"] == [("POST", "create-sub-user")]
    assert len(sim.sub_users) == 1
    user = sim.sub_user_by_name("tg_42")
    assert [e.clean_message for e in sim.history(user.user_id) if e.role == "user"] == [
        "first", "second"
    ]


async def test_existing_username_is_recovered_from_sub_users(sim):
    existing = sim.add_sub_user("tg_42", api_key=KEY)  # made before tgmux knew about it
    async with harness(config(sim)) as h:
        assert await h.say("hi", user_id=42) == [Text("You said: hi")]
        assert await h.say("again", user_id=42) == [Text("You said: again")]
    assert calls(sim) == [
        ("POST", "create-sub-user"), ("GET", "sub-users"),
        ("POST", "send-message"), ("POST", "send-message"),
    ]
    assert sim.requests[2].json["user_id"] == existing.user_id
    assert len(sim.sub_users) == 1


async def test_username_taken_by_another_account_reaches_user(sim):
    sim.accounts["someone-else"] = type(sim.accounts[KEY])(api_key="someone-else")
    sim.add_sub_user("tg_42", api_key="someone-else")
    async with harness(config(sim)) as h:
        assert await h.say("hi", user_id=42) == [Notice(PROFILE_FAILED)]
    assert calls(sim) == [("POST", "create-sub-user"), ("GET", "sub-users")]


async def test_not_found_recreates_sub_user_once_and_resends_once(sim):
    async with harness(config(sim)) as h:
        await h.say("hi", user_id=42)
        old = sim.sub_user_by_name("tg_42").user_id
        sim.delete_sub_user(old)  # removed at the provider
        sim.requests.clear()
        assert await h.say("still there?", user_id=42) == [Text("You said: still there?")]
        new = sim.sub_user_by_name("tg_42").user_id
        assert new != old
        assert calls(sim) == [
            ("POST", "send-message"), ("POST", "create-sub-user"), ("POST", "send-message"),
        ]
        assert [r.json["user_id"] for r in sim.requests_to("send-message")] == [old, new]
        sim.requests.clear()
        assert await h.say("and now", user_id=42) == [Text("You said: and now")]
        assert calls(sim) == [("POST", "send-message")]  # the new mapping was stored


async def test_not_found_twice_gives_up_after_one_retry(sim):
    async with harness(config(sim)) as h:
        await h.say("hi", user_id=42)
        sim.requests.clear()
        sim.inject(path="send-message", status=404, times=2,
                   body={"code": "user_not_found", "message": "User not found"})
        assert await h.say("x", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.NOT_FOUND])]
    # recreation finds the username taken by our own sub-user and maps it again
    assert calls(sim) == [
        ("POST", "send-message"), ("POST", "create-sub-user"), ("GET", "sub-users"),
        ("POST", "send-message"),
    ]


async def test_unknown_model_is_not_mistaken_for_a_lost_user(sim):
    routes = """routes:
  - match: {chat_type: supergroup}
    backend: lucy
    options: {model: 999}
"""
    async with harness(config(sim, routes=routes)) as h:
        parts = await h.say("hi", user_id=42, chat_id=-100, chat_type="supergroup")
    assert parts == [Notice(MODEL_MISSING)]
    assert calls(sim) == [("POST", "create-sub-user"), ("POST", "send-message")]
    assert sim.requests[-1].json["chatbot_model"] == "999"


async def test_route_model_override(sim):
    routes = """routes:
  - match: {chat_type: supergroup}
    backend: lucy
    options: {model: "777"}
"""
    async with harness(config(sim, routes=routes)) as h:
        await h.say("in group", user_id=42, chat_id=-100, chat_type="supergroup")
        await h.say("in private", user_id=42)
    models = [r.json["chatbot_model"] for r in sim.requests_to("send-message")]
    assert models == ["777", MODEL]
    assert len(sim.requests_to("create-sub-user")) == 1  # one sub-user per user, any chat


async def test_concurrent_first_messages_create_one_sub_user(sim):
    sim.latency = 0.2
    async with harness(config(sim)) as h:
        # same new user, two chats: the engine answers different chats concurrently
        (m1, d1), (m2, d2) = await asyncio.gather(
            h.submit("from private", user_id=42),
            h.submit("from group", user_id=42, chat_id=-100, chat_type="supergroup"),
        )
        await asyncio.gather(d1, d2)
        assert h.frontend.by_message[(42, m1.chat.message_id)] == [Text("You said: from private")]
        assert h.frontend.by_message[(-100, m2.chat.message_id)] == [Text("You said: from group")]
    assert len(sim.requests_to("create-sub-user")) == 1
    assert len(sim.sub_users) == 1
    user = sim.sub_user_by_name("tg_42").user_id
    assert {r.json["user_id"] for r in sim.requests_to("send-message")} == {user}


async def test_per_chat_sub_users(sim):
    extra = "    sub_user: per_chat"
    async with harness(config(sim, extra=extra)) as h:
        await h.say("a", user_id=1, chat_id=-100, chat_type="supergroup")
        await h.say("b", user_id=2, chat_id=-100, chat_type="supergroup")
        await h.say("c", user_id=1)
    assert [r.json for r in sim.requests_to("create-sub-user")] == [
        {"username": "tg_chat_-100"}, {"username": "tg_chat_1"},
    ]


async def test_channel_post_without_sender_maps_the_chat(sim):
    async with harness(config(sim, routes="routes:\n  - {match: {chat_type: channel}, "
                                           "backend: lucy}")) as h:
        message = h.message("post", user_id=0, chat_id=-1005, chat_type="channel")
        message = dataclasses.replace(
            message, chat=dataclasses.replace(message.chat, user_id=None)
        )
        await (await h.engine.submit(message))
        assert h.frontend.by_message[(-1005, 1)] == [Text("You said: post")]
    assert sim.requests[0].json == {"username": "tg_chat-1005"}


async def test_username_template(sim):
    extra = '    username_template: "mybot_{backend}_{user_id}"'
    async with harness(config(sim, extra=extra)) as h:
        await h.say("a", user_id=5)
    assert sim.requests[0].json == {"username": "mybot_lucy_5"}


async def test_image_arrives_as_photo_with_caption(sim):
    async with harness(config(sim)) as h:
        parts = await h.say("/image", user_id=42)
    [image] = parts
    assert isinstance(image, Image)
    assert image.caption == IMAGE_REPLY
    assert image.url and image.url.startswith(sim.root_url + "/wp-content/uploads/")
    req = sim.requests_to("request-image")[0]
    user = sim.sub_user_by_name("tg_42").user_id
    assert req.json == {"chatbot_model": MODEL, "user_id": user}


async def test_image_caption_is_passed_whole_for_the_frontend_to_fit(sim):
    # The backend knows no caption limit; the Telegram frontend sends the rest as text
    # (tests/telegram/test_telegram_delivery.py).
    long_reply = "x" * 1500
    sim.inject(path="request-image", status=200,
               body={"image_url": "http://127.0.0.1/i.jpg", "reply": long_reply})
    async with harness(config(sim)) as h:
        parts = await h.say("/image", user_id=42)
    assert parts == [Image(url="http://127.0.0.1/i.jpg", caption=long_reply)]


async def test_history_empty_without_creating_a_profile(sim):
    async with harness(config(sim)) as h:
        assert await h.say("/history", user_id=42) == [Text(NO_HISTORY)]
        assert calls(sim) == [("GET", "sub-users")]
        await h.say("hi", user_id=42)
        sim.history(sim.sub_user_by_name("tg_42").user_id).clear()
        assert await h.say("/history", user_id=42) == [Text(NO_HISTORY)]
    req = sim.requests_to("get-history")[0]
    assert req.query == {"chatbot_model": MODEL, "user_id": sim.sub_user_by_name("tg_42").user_id}
    assert req.body == b""


async def test_history_lines_newest_last_and_limited(sim):
    extra = "    history_limit: 3"
    async with harness(config(sim, extra=extra)) as h:
        await h.say("one", user_id=42)
        await h.say("two", user_id=42)
        parts = await h.say("/history", user_id=42)
    assert parts == [Text("assistant: You said: one\nuser: two\nassistant: You said: two")]


async def test_history_is_split_into_readable_messages(sim):
    user = sim.add_sub_user("tg_42", api_key=KEY)
    lines = []
    for i in range(12):
        role = "user" if i % 2 == 0 else "assistant"
        text = f"message {i:02d} " + "word " * 180  # ~920 characters each
        sim.add_history(user.user_id, MODEL, role, text)
        lines.append(f"{role}: {text.strip()}")
    async with harness(config(sim, extra="    history_limit: 50")) as h:
        parts = await h.say("/history", user_id=42)
    assert len(parts) >= 3
    assert all(isinstance(p, Text) and len(p.text) <= HISTORY_PART_LIMIT for p in parts)
    # nothing lost, nothing cut in the middle of a line, newest last
    assert [line for p in parts for line in p.text.split("\n")] == lines


async def test_help_lists_image_and_history(sim):
    async with harness(config(sim)) as h:
        [help_text] = await h.say("/help", user_id=42)
    assert "/image — get a picture from the chatbot" in help_text.text
    assert "/history — show your recent conversation with the chatbot" in help_text.text


# -- every error kind reaches the user --------------------------------------------------------


async def test_invalid_api_key_reaches_user(sim):
    async with harness(config(sim, key="wrong")) as h:
        assert await h.say("hi", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.AUTH])]
        assert await h.say("/image", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.AUTH])]
        assert await h.say("/history", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.AUTH])]


async def test_exhausted_credits_reach_user():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=1) as sim:
        async with harness(config(sim)) as h:
            assert await h.say("free", user_id=42) == [Text("You said: free")]
            assert await h.say("paid", user_id=42) == [Notice(QUOTA_USER_MESSAGE)]
            assert await h.say("/image", user_id=42) == [Notice(QUOTA_USER_MESSAGE)]
            # reading the history costs nothing
            assert await h.say("/history", user_id=42) == [
                Text("user: free\nassistant: You said: free")
            ]
        assert len(sim.requests_to("send-message")) == 2  # the refused one was not repeated


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"code": "rest_invalid_param", "message": "Invalid parameter(s): message"},
         ErrorKind.BAD_REQUEST),
        (500, {"code": "internal_error", "message": "Database error"}, ErrorKind.UNAVAILABLE),
        (503, {"code": "maintenance", "message": "Down for maintenance"}, ErrorKind.UNAVAILABLE),
    ],
)
async def test_provider_errors_reach_user(sim, status, body, kind):
    async with harness(config(sim)) as h:
        await h.say("hi", user_id=42)
        sim.inject(path="send-message", status=status, body=body)
        assert await h.say("again", user_id=42) == [Notice(USER_MESSAGES[kind])]
        assert await h.say("and again", user_id=42) == [Text("You said: and again")]
    assert len(sim.requests_to("send-message")) == 3  # the failed POST was not repeated


async def test_timeout_reaches_user(sim):
    async with harness(config(sim, timeout=0.3)) as h:
        await h.say("hi", user_id=42)
        sim.inject(path="send-message", status=0, delay=1.0)
        assert await h.say("slow", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.TIMEOUT])]
    assert len(sim.requests_to("send-message")) == 2


async def test_unreadable_answer_reaches_user(sim):
    async with harness(config(sim)) as h:
        await h.say("hi", user_id=42)
        sim.inject(path="send-message", status=200, body={"unexpected": True})
        assert await h.say("x", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.PROTOCOL])]
        sim.inject(path="send-message", status=200, body={"reply": "  "})
        assert await h.say("y", user_id=42) == [Notice(USER_MESSAGES[ErrorKind.PROTOCOL])]


async def test_demo_backend_starts_a_working_simulator():
    [offer] = lucydream_plugin.tgmux_demo_backends()
    assert offer.name == "lucydream"
    settings, stop = await offer.start()
    try:
        body = "\n".join(f"    {k}: {v}" for k, v in settings.items() if k != "type")
        text = f"backends:\n  lucy:\n    type: {settings['type']}\n{body}\ndefault: lucy\n"
        async with harness(text) as h:
            assert await h.say("hi", user_id=1) == [Text("You said: hi")]
            [image] = await h.say("/image", user_id=1)
            assert isinstance(image, Image) and image.caption == IMAGE_REPLY
            assert await h.say("/history", user_id=1) == [Text(
                f"user: hi\nassistant: You said: hi\nassistant: {IMAGE_REPLY}"
            )]
    finally:
        await stop()


async def test_console_chat(sim, tmp_path):
    """The console frontend (what `tgmux chat` runs) against the simulator."""
    import io

    from tgmux.bootstrap import load_config_text
    from tgmux.console import ConsoleFrontend, chat_loop
    from tgmux.engine import Engine
    from tgmux.hooks import build_plugin_manager
    from tgmux.store import open_store

    pm = build_plugin_manager()
    pm.register_from(lucydream_plugin, lucydream_plugin.__name__, "test")
    cfg = load_config_text(config(sim), env={}, plugin_manager=pm)
    out = io.StringIO()
    engine = Engine(cfg, pm, open_store(f"sqlite:///{tmp_path}/c.db"), ConsoleFrontend(
        out, interactive=False))
    await engine.start()
    try:
        await chat_loop(engine, stdin=io.StringIO("hello\n/image\n/history\n"), out=out,
                        interactive=False, chat_id=7, user_id=7, chat_type="private")
    finally:
        await engine.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "You said: hello"
    assert lines[1].startswith(f"[photo] {sim.root_url}/wp-content/uploads/lucydream/")
    assert lines[1].endswith(f" — {IMAGE_REPLY}")
    assert lines[2:] == ["user: hello", "assistant: You said: hello", f"assistant: {IMAGE_REPLY}"]
