"""BambiSleep websocket transport through the engine against the simulator's real websocket:
auth frames, per-chat connections, reconnect mid-conversation, no resend after a drop
mid-reply, session re-login, replies told apart from room chatter, no secrets in logs."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from child import SimulatorProcess
from websockets.asyncio.client import ClientConnection

import tgmux.backends.bambisleep as bambisleep_plugin
from tgmux.backend import Notice, Text
from tgmux.backends.bambisleep.client import BambiSleepClient
from tgmux.backends.bambisleep.simulator import AI_USERNAME, BambiSleepSimulator
from tgmux.backends.bambisleep.ws import LOST_AFTER_SEND, PROTOCOL_LOG, ChatSocket
from tgmux.errors import USER_MESSAGES, AuthError, ErrorKind, UnavailableError
from tgmux.harness import EngineHarness

KEY = "key-one"
USER = "bambi"
PASSWORD = "pw-1"


@pytest.fixture
async def sim():
    async with BambiSleepSimulator(api_keys={KEY: USER}, users={USER: PASSWORD}) as server:
        yield server


def config(sim: BambiSleepSimulator, auth: str = f"api_key: {KEY}", extra: str = "") -> str:
    return f"""
backends:
  bambi:
    type: bambisleep
    base_url: {sim.base_url}
    transport: websocket
    ws_url: {sim.ws_url}
    ws_reconnect_delay: 0.05
    timeout: 3
    {auth}
{extra}
default: bambi
"""


def harness(text: str) -> EngineHarness:
    return EngineHarness.from_yaml(text, plugins=[bambisleep_plugin])


def hears(text: str) -> list[Text]:
    return [Text(f"Bambi hears you: {text}")]


async def test_api_key_websocket_conversation(sim):
    async with harness(config(sim)) as h:
        assert await h.say("one", user_id=1) == hears("one")
        assert await h.say("two", user_id=1) == hears("two")
        assert await h.say("hi", user_id=2) == hears("hi")
        backend = h.engine.backends["bambi"]
        assert set(backend.ws.sockets) == {("main", 1, None), ("main", 2, None)}  # per chat
    assert sim.ws_auths == 2
    assert sim.ws_messages == [(USER, "one"), (USER, "two"), (USER, "hi")]
    assert not sim.requests_to("/ai/generate")  # chat went over the websocket
    # the upgrade request is the only HTTP request per connection
    assert [r.path for r in sim.requests] == ["/ws/chat", "/ws/chat"]


async def test_reconnect_mid_conversation_and_no_resend_after_drop(sim):
    async with harness(config(sim)) as h:
        assert await h.say("one", user_id=1) == hears("one")
        await sim.close_websockets()  # the server restarts while the chat is idle
        # not sent yet when the closed line is noticed: sent on a new connection
        assert await h.say("two", user_id=1) == hears("two")
        sim.drop_next_ws_message()  # the line drops after "three" arrived, before the reply
        assert await h.say("three", user_id=1) == [Notice(LOST_AFTER_SEND)]
        assert await h.say("four", user_id=1) == hears("four")
    # "three" reached the provider once and was not sent again (no duplicated chat turn)
    assert [c for _, c in sim.ws_messages] == ["one", "two", "three", "four"]
    assert sim.ws_auths == 3


async def test_other_chats_do_not_wait_for_a_slow_reconnect(sim):
    # generous: chat 2's answer must come before chat 1 reconnects, also on a loaded machine
    text = config(sim).replace("ws_reconnect_delay: 0.05", "ws_reconnect_delay: 6")
    async with harness(text) as h:
        assert await h.say("a", user_id=1) == hears("a")
        await sim.close_websockets()
        _, slow = await h.submit("b", user_id=1)  # chat 1 will wait ~6 s to reconnect
        await asyncio.sleep(0.2)
        assert await asyncio.wait_for(h.say("fast", user_id=2), 5) == hears("fast")
        assert not slow.done()
        await slow
    assert [(c, p) for c, p in h.delivered if c == 1] == [(1, hears("a")[0]), (1, hears("b")[0])]


async def test_session_token_auth_and_relogin(sim):
    auth = f"username: {USER}\n    password: {PASSWORD}"
    async with harness(config(sim, auth)) as h:
        assert await h.say("one", user_id=1) == hears("one")
        sim.expire_sessions()
        await sim.close_websockets()
        assert await h.say("two", user_id=1) == hears("two")
    assert sim.logins == 2
    assert sim.ws_auths == 2
    assert [r.path for r in sim.requests] == [
        "/v1/auth/login", "/ws/chat", "/ws/chat", "/v1/auth/login", "/ws/chat"]


async def test_bad_key_is_an_auth_error(sim):
    async with harness(config(sim, "api_key: wrong")) as h:
        assert await h.say("hi", user_id=1) == [Notice(USER_MESSAGES[ErrorKind.AUTH])]
    assert sim.ws_messages == []


async def test_auth_frame_and_own_echo_is_skipped():
    async with BambiSleepSimulator(api_keys={KEY: USER}, ws_echo_own=True) as sim:
        frames: list[dict] = []
        client = BambiSleepClient(api_key=KEY, base_url=sim.base_url)
        sock = ChatSocket(sim.ws_url, client, timeout=3)
        try:
            reply = await sock.ask("hello")
            assert (reply.content, reply.username) == ("Bambi hears you: hello", "bambi-ai")
            # raw protocol check with a plain websocket client
            from websockets.asyncio.client import connect

            async with connect(sim.ws_url) as raw:
                await raw.send(json.dumps({"type": "auth", "token": KEY}))
                await raw.send(json.dumps({"type": "message", "content": "x"}))
                for _ in range(3):
                    frames.append(json.loads(await raw.recv()))
        finally:
            await sock.close()
            await client.aclose()
    assert frames[0] == {"type": "auth", "success": True, "username": USER}
    assert [(f["type"], f["username"], f["content"]) for f in frames[1:]] == [
        ("message", USER, "x"), ("message", "bambi-ai", "Bambi hears you: x")]


async def test_gives_up_after_max_attempts(sim):
    """Connection failures (nothing sent) are retried up to max_attempts; a drop after the
    send is not retried at all."""
    client = BambiSleepClient(api_key=KEY, base_url=sim.base_url)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}/ws/chat"
    down = ChatSocket(dead, client, timeout=3, reconnect_delay=0.01, max_attempts=3)
    sock = ChatSocket(sim.ws_url, client, timeout=3, reconnect_delay=0.01, max_attempts=3)
    sim.drop_next_ws_message()
    try:
        with pytest.raises(UnavailableError) as failed:
            await down.ask("never sent")
        assert "failed 3 times before sending" in str(failed.value)
        with pytest.raises(UnavailableError) as lost:
            await sock.ask("lost")
        assert lost.value.user_message == LOST_AFTER_SEND
        assert (await sock.ask("back")).content == "Bambi hears you: back"
    finally:
        await down.close()
        await sock.close()
        await client.aclose()
    assert [c for _, c in sim.ws_messages] == ["lost", "back"]
    assert down.connects == 0 and sock.connects == 2


async def test_refused_session_after_relogin_is_final(sim):
    client = BambiSleepClient(username=USER, password=PASSWORD, base_url=sim.base_url)
    sock = ChatSocket(sim.ws_url, client, timeout=3)
    sim.api_keys.clear()
    original = sim._ws_user
    sim._ws_user = lambda token: None  # every token refused
    try:
        with pytest.raises(AuthError):
            await sock.ask("hi")
    finally:
        sim._ws_user = original
        await sock.close()
        await client.aclose()
    assert sim.logins == 2  # the first login, then exactly one more


# -- pairing replies with questions in a chat room ---------------------------------------------


def socket_of(h: EngineHarness, chat: int) -> ChatSocket:
    return h.engine.backends["bambi"].ws.sockets[("main", chat, None)]


async def frames_queued(sock: ChatSocket, n: int = 1) -> None:
    """Wait until the client has read ``n`` frames nobody asked for."""
    for _ in range(200):
        if sock._frames.qsize() >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the frame did not reach the client")


async def test_room_chatter_is_not_taken_for_replies():
    """other_user talks right after auth, before and after every reply, and between turns:
    with ws_reply_from every reply stays with its own question."""
    async with BambiSleepSimulator(api_keys={KEY: USER}, ws_room_chatter=True) as sim:
        async with harness(config(sim, extra=f"    ws_reply_from: {AI_USERNAME}")) as h:
            assert await h.say("one", user_id=1) == hears("one")
            assert await h.say("hi", user_id=2) == hears("hi")
            await sim.ws_room_message("Anyone here?")
            assert await h.say("two", user_id=1) == hears("two")
            assert await h.say("three", user_id=1) == hears("three")
            assert await h.say("there", user_id=2) == hears("there")
        assert sim.ws_auths == 2  # chatter is not a reason to reconnect
        assert [c for _, c in sim.ws_messages] == ["one", "hi", "two", "three", "there"]


async def test_frames_that_came_while_idle_are_dropped_right_before_sending(sim):
    """A room message arriving while the next message waits for its rate-limit slot is not
    its reply (ws_reply_from unset: it cannot be told from the AI by username)."""
    # 2 per 3 s: "three" still waits when the room message comes, even if "one" and "two"
    # took seconds on a loaded machine (with 2 per 0.4 s it could be sent, and be done, already)
    text = config(sim, extra="    rate_limit: {requests: 2, period: 3}")
    async with harness(text) as h:
        assert await h.say("one", user_id=1) == hears("one")
        assert await h.say("two", user_id=1) == hears("two")
        _, third = await h.submit("three", user_id=1)  # waits ~3 s for the limiter
        await asyncio.sleep(0.1)
        assert not third.done()
        assert await sim.ws_room_message("Hi there!") == 1
        await frames_queued(socket_of(h, 1))
        await third
        assert await h.say("four", user_id=1) == hears("four")
    assert [p for _, p in h.delivered] == [*hears("one"), *hears("two"), *hears("three"),
                                           *hears("four")]


async def test_messages_arriving_late_do_not_overrun_the_provider_window(monkeypatch):
    """The provider counts a message when it arrives. Held up by 0.3 s (more than the 0.05 s
    padding) after its rate-limit slot, a message would let the one reusing its slot arrive
    within the provider's second of it; a slot counts from when its message was written, so
    never. (The provider in a process of its own: it sees arrivals as they come, whatever
    holds up the test's process.)"""
    send = ClientConnection.send

    async def late(self, message, *args, **kwargs):
        if isinstance(message, str) and '"late' in message:
            await asyncio.sleep(0.3)
        return await send(self, message, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "send", late)
    sim = SimulatorProcess("tgmux.backends.bambisleep.simulator", "--api-key", KEY,
                           "--rate-limit", "2", "--rate-period", "1")
    try:
        where = urlsplit(sim.base_url)
        text = config(SimpleNamespace(base_url=sim.base_url,
                                      ws_url=f"ws://{where.netloc}/ws/chat"),
                      extra="    rate_limit: {requests: 2, period: 1}")
        async with harness(text) as h:
            texts = [("late" if chat % 3 == 1 else "prompt") + f" {chat}" for chat in range(1, 7)]
            done = [(await h.submit(text, user_id=chat))[1]
                    for chat, text in enumerate(texts, 1)]
            await asyncio.gather(*done)
    finally:
        sim.stop()
    assert "rate limited" not in sim.log(), sim.log()
    assert sorted(p.text for _, p in h.delivered) == sorted(
        f"Bambi hears you: {text}" for text in texts)


async def test_out_of_step_frames_reconnect_before_sending(sim):
    """An AI message nobody asked for, or an unknown frame, while idle: the connection is
    replaced before the next message is sent (once), so nothing stale answers it."""
    async with harness(config(sim, extra=f"    ws_reply_from: {AI_USERNAME}")) as h:
        assert await h.say("one", user_id=1) == hears("one")
        await sim.ws_room_message("a late second answer", username=AI_USERNAME)
        await frames_queued(socket_of(h, 1))
        assert await h.say("two", user_id=1) == hears("two")
        await sim.ws_push({"type": "presence", "online": 3})
        await frames_queued(socket_of(h, 1))
        assert await h.say("three", user_id=1) == hears("three")
    assert [c for _, c in sim.ws_messages] == ["one", "two", "three"]
    assert sim.ws_auths == 3


async def test_unexpected_frame_after_sending_fails_the_turn_and_reconnects():
    async with BambiSleepSimulator(api_keys={KEY: USER}, latency=1.0) as sim:
        async with harness(config(sim, extra=f"    ws_reply_from: {AI_USERNAME}")) as h:
            assert await h.say("one", user_id=1) == hears("one")
            _, second = await h.submit("two", user_id=1)
            async with asyncio.timeout(10):  # "two" was sent; the reply is a second away
                while [c for _, c in sim.ws_messages] != ["one", "two"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await sim.ws_push({"type": "presence", "online": 3})
            await second
            assert await h.say("three", user_id=1) == hears("three")
        assert [p for c, p in h.delivered] == [
            *hears("one"), Notice(USER_MESSAGES[ErrorKind.PROTOCOL]), *hears("three")]
        assert [c for _, c in sim.ws_messages] == ["one", "two", "three"]  # never resent
        assert sim.ws_auths == 2


async def test_without_reply_from_the_first_other_message_is_the_reply():
    async with BambiSleepSimulator(api_keys={KEY: USER}, ws_echo_own=True,
                                   ws_reply_username="ai") as sim:
        async with harness(config(sim)) as h:
            assert await h.say("one", user_id=1) == hears("one")
        with_name = config(sim, extra="    ws_reply_from: bambi-ai")  # the wrong name
        async with harness(with_name.replace("timeout: 3", "timeout: 0.3")) as h:
            assert await h.say("two", user_id=1) == [Notice(USER_MESSAGES[ErrorKind.TIMEOUT])]


async def test_empty_websocket_reply_is_reported(sim):
    sim.queue_ws_reply("  ", "")
    async with harness(config(sim)) as h:
        assert await h.say("one", user_id=1) == [Notice("The AI answered with an empty message.")]
        assert await h.say("two", user_id=1) == [Notice("The AI answered with an empty message.")]
        assert await h.say("three", user_id=1) == hears("three")


async def test_a_compressed_reply_is_capped_by_its_decompressed_size(sim):
    """permessage-deflate: 8 MiB of reply is a few kB on the wire; the websocket's 1 MiB
    limit counts the inflated message, so it is refused, the user told, the chat goes on."""
    sim.queue_ws_reply("0" * (8 * 1024 * 1024))
    async with harness(config(sim)) as h:
        [said] = await h.say("one", user_id=1)
        assert isinstance(said, Notice)
        assert await h.say("two", user_id=1) == hears("two")
        assert all(ws.compress for ws in sim.ws_connections)  # permessage-deflate in use


# -- secrets stay out of the logs ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["api_key", "session"])
async def test_no_token_in_debug_logs(caplog, mode):
    secret_key = "sk-live-ws-SECRET-0123456789"
    async with BambiSleepSimulator(api_keys={secret_key: USER}, users={USER: PASSWORD}) as sim:
        caplog.set_level(logging.DEBUG)
        auth = f"api_key: {secret_key}" if mode == "api_key" \
            else f"username: {USER}\n    password: {PASSWORD}"
        async with harness(config(sim, auth)) as h:
            assert await h.say("one", user_id=1) == hears("one")
            await sim.close_websockets()
            assert await h.say("two", user_id=1) == hears("two")
        tokens = [secret_key] if mode == "api_key" else list(sim.sessions)
    assert tokens and all(tokens)
    assert sim.ws_auths == 2
    assert caplog.records  # DEBUG logging was on
    for record in caplog.records:
        text = f"{record.getMessage()} {record.msg} {record.args}"
        for token in [*tokens, PASSWORD]:
            assert token not in text, (record.name, text)
    assert not [r for r in caplog.records if r.name.startswith(("websockets", PROTOCOL_LOG))
                and r.levelno < logging.WARNING]


async def test_frames_nobody_asked_for_are_bounded():
    # A provider that talks unasked (or floods) must not fill memory: the oldest unread frames
    # are dropped, and the connection's close is still seen.
    from websockets.exceptions import ConnectionClosed
    from websockets.frames import Close

    from tgmux.backends.bambisleep.ws import MAX_UNREAD_FRAMES

    class Flood:
        def __init__(self) -> None:
            self.sent = 0

        async def recv(self) -> str:
            if self.sent == 10 * MAX_UNREAD_FRAMES:
                raise ConnectionClosed(Close(1001, "going away"), None)
            self.sent += 1
            return json.dumps({"type": "message", "content": f"m{self.sent}"})

    client = BambiSleepClient(api_key=KEY, base_url="http://127.0.0.1:9")
    sock = ChatSocket("ws://127.0.0.1:9/ws", client, timeout=3)
    frames: asyncio.Queue = asyncio.Queue()
    try:
        await sock._read(Flood(), frames)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    kept = [frames.get_nowait() for _ in range(frames.qsize())]
    assert len(kept) == MAX_UNREAD_FRAMES
    assert kept[-2]["content"] == f"m{10 * MAX_UNREAD_FRAMES}"  # the newest are kept
    assert getattr(kept[-1], "code", None) == 1001  # and the close


async def test_each_topic_and_each_account_has_its_own_connection(sim):
    async with harness(config(sim)) as h:
        backend = h.engine.backends["bambi"]
        for thread in (None, 3, 5):
            assert await h.say(f"in {thread}", user_id=1, thread_id=thread) == hears(f"in {thread}")
        assert await h.say("forum", user_id=1, chat_id=-1001, chat_type="supergroup",
                           thread_id=3) == hears("forum")
        assert await h.say("other bot", user_id=1, account="second") == hears("other bot")
        assert sim.ws_auths == 5
        # /reset in one topic starts that topic afresh, and only it
        assert await h.say("/reset", user_id=1, thread_id=3) == \
            [Text("Started a fresh connection for this chat.")]
        assert len(backend.ws.sockets) == 4
        for thread in (None, 5):
            assert await h.say("again", user_id=1, thread_id=thread) == hears("again")
        assert sim.ws_auths == 5  # the others kept their connections
        assert await h.say("again", user_id=1, thread_id=3) == hears("again")
        assert sim.ws_auths == 6
