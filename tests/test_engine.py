"""The engine through its harness: routing, commands, hooks, ordering, restart safety."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest

from tgmux.backend import (
    Backend,
    BackendSettings,
    ChatIdentity,
    Media,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Turn,
)
from tgmux.engine import DROP, Engine, IncomingMessage
from tgmux.errors import RateLimitedError
from tgmux.harness import CaptureFrontend, EngineHarness
from tgmux.hooks import build_plugin_manager, hookimpl
from tgmux.store import open_store

ECHO = """
backends:
  echo: {type: echo, prefix: "echo: "}
  other: {type: echo, prefix: "other: "}
  groups: {type: echo, prefix: "group: "}
routes:
  - match: {chat_type: [group, supergroup]}
    backend: groups
  - match: {user_id: 7, text: "^hi"}
    backend: other
    options: {prefix: "hi-route: "}
default: echo
"""


# -- a test backend: slow, records the order it saw -------------------------------------------


class SlowSettings(BackendSettings):
    type: Literal["slow"] = "slow"
    delay: float = 0.05
    fail_with: str | None = None


class SlowBackend(Backend):
    type_name = "slow"
    Settings = SlowSettings
    seen: list[tuple[int, str]] = []
    active = 0
    max_active = 0

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        cls = type(self)
        cls.active += 1
        cls.max_active = max(cls.max_active, cls.active)
        try:
            # Random delays so that, without per-chat ordering, replies would cross.
            await asyncio.sleep(random.uniform(0, turn.options.delay))
            if turn.options.fail_with == "rate":
                raise RateLimitedError("slow down", status=429, request_id="req-1")
            if turn.options.fail_with == "crash":
                raise RuntimeError("boom")
            cls.seen.append((turn.chat.chat_id, turn.text))
            yield Text(f"done {turn.text}")
        finally:
            cls.active -= 1


class SlowPlugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [SlowBackend]


@pytest.fixture(autouse=True)
def _reset_slow() -> None:
    SlowBackend.seen = []
    SlowBackend.active = SlowBackend.max_active = 0


# -- routing ------------------------------------------------------------------------------------


async def test_default_route_and_first_match_wins() -> None:
    async with EngineHarness.from_yaml(ECHO) as h:
        assert await h.say("hello", user_id=5) == [Text("echo: hello")]
        assert await h.say("hi there", user_id=7) == [Text("hi-route: hi there")]
        # user 7 without "hi": the route's regex does not match -> default
        assert await h.say("yo", user_id=7) == [Text("echo: yo")]
        # a group matches the first route even for user 7 saying "hi"
        assert await h.say("hi", user_id=7, chat_id=-100, chat_type="group") == [
            Text("group: hi")
        ]


async def test_override_beats_routes_and_persists_across_restart(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/state.db"
    async with EngineHarness.from_yaml(ECHO + "admins: [7]\n", store=store) as h:
        assert await h.say("/backend other", user_id=7) == [
            Text("This chat now talks to: other")
        ]
        assert await h.say("hi again", user_id=7) == [Text("other: hi again")]
    async with EngineHarness.from_yaml(ECHO + "admins: [7]\n", store=store) as h:
        assert await h.say("hi after restart", user_id=7, message_id=100) == [
            Text("other: hi after restart")
        ]
        assert await h.say("/backend default", user_id=7, message_id=101) == [
            Text("This chat follows the config again: echo")
        ]
        assert await h.say("hi", user_id=7, message_id=102) == [Text("hi-route: hi")]


async def test_a_chats_override_is_read_from_the_store_once(monkeypatch) -> None:
    async with EngineHarness.from_yaml(ECHO + "admins: [5]\n") as h:
        reads: list[int] = []
        real = h.store.get_override

        async def counted(chat_id: int, **kwargs):
            reads.append(chat_id)
            return await real(chat_id, **kwargs)

        monkeypatch.setattr(h.store, "get_override", counted)
        for n in range(3):
            await h.say(f"m{n}", user_id=5, message_id=n + 1)
        await h.say("/backend other", user_id=5, message_id=9)
        assert await h.say("after", user_id=5, message_id=10) == [Text("other: after")]
        assert await h.say("again", user_id=5, message_id=11) == [Text("other: again")]
    # once, and once after a change (its own too: the store tells every process of each)
    assert reads == [5, 5]


async def test_backend_command_lists_and_rejects_unknown_names() -> None:
    async with EngineHarness.from_yaml(ECHO + "admins: [5]\n") as h:
        (shown,) = await h.say("/backend", user_id=5)
        assert shown == Text("This chat talks to: echo\nAvailable: echo, groups, other\n"
                             "Switch with /backend NAME; /backend default goes back to the "
                             "config.")
        assert await h.say("/backend nope", user_id=5) == [
            Notice("There is no backend 'nope'. Available: echo, groups, other")
        ]


async def test_only_admins_switch_backends_when_admins_are_set() -> None:
    async with EngineHarness.from_yaml(ECHO + "admins: [99]\n") as h:
        assert await h.say("/backend other", user_id=5) == [
            Notice("Only the bot's admins can switch the AI for a chat.")
        ]
        assert await h.say("/backend other", user_id=99, chat_id=5) == [
            Text("This chat now talks to: other")
        ]
        assert await h.say("x", user_id=5) == [Text("other: x")]


async def test_group_triggers_per_route() -> None:
    cfg = """
backends:
  echo: {type: echo}
routes:
  - match: {chat_id: -1}
    backend: echo
    group_trigger: always
  - match: {chat_id: -2}
    backend: echo
    group_trigger: command
default: echo
"""
    async with EngineHarness.from_yaml(cfg) as h:
        group = {"user_id": 5, "chat_type": "supergroup"}
        assert await h.say("chatter", chat_id=-1, addressed=False, **group) == [Text("chatter")]
        assert await h.say("chatter", chat_id=-2, addressed=True, **group) == []
        assert await h.say("/shout hey", chat_id=-2, addressed=False, **group) == [Text("HEY")]
        # default route: mention
        assert await h.say("chatter", chat_id=-3, addressed=False, **group) == []
        assert await h.say("hey bot", chat_id=-3, addressed=True, **group) == [Text("hey bot")]
        # channels only when a route (not the default) matches them
        assert await h.say("post", chat_id=-3, chat_type="channel", user_id=5) == []
        assert await h.say("post", chat_id=-1, chat_type="channel", user_id=5) == [Text("post")]


# -- commands and non-text ------------------------------------------------------------------------


async def test_help_lists_builtin_and_backend_commands() -> None:
    async with EngineHarness.from_yaml(ECHO) as h:
        (help_text,) = await h.say("/help", user_id=5)
        assert help_text.text.splitlines()[2:] == [
            "/start — Start talking",
            "/help — What this bot can do",
            "/reset — Forget this conversation",
            "/backend [name] — Show or switch the AI behind this chat",
            "/usage — Your messages, tokens and cost, and their limits",
            "/status — Each AI's health in this process (admins only)",
            "/shout <text> — Echo in capitals",
        ]
        assert await h.say("/shout louder", user_id=5) == [Text("echo: LOUDER")]
        assert await h.say("/nosuch", user_id=5) == [
            Notice("Unknown command /nosuch. Commands here:\n/start — Start talking\n"
                   "/help — What this bot can do\n/reset — Forget this conversation\n"
                   "/backend [name] — Show or switch the AI behind this chat\n"
                   "/usage — Your messages, tokens and cost, and their limits\n"
                   "/shout <text> — Echo in capitals")
        ]


async def test_media_the_backend_cannot_take_gets_a_polite_reply() -> None:
    async with EngineHarness.from_yaml(ECHO) as h:
        parts = await h.say("", user_id=5, media=Media(kind="sticker", emoji="🙂"))
        assert parts == [Notice("I can only read text messages here. Please write your message "
                                "as text.")]


# -- errors reach the user ----------------------------------------------------------------------


async def test_backend_errors_become_a_notice_with_the_kinds_message() -> None:
    cfg = """
backends:
  rate: {type: slow, fail_with: rate, delay: 0}
  crash: {type: slow, fail_with: crash, delay: 0}
routes:
  - match: {user_id: 2}
    backend: crash
default: rate
"""
    async with EngineHarness.from_yaml(cfg, plugins=[SlowPlugin()]) as h:
        assert await h.say("hello", user_id=1) == [
            Notice("The AI provider is busy right now. Please try again in a moment.")
        ]
        assert await h.say("hello", user_id=2) == [
            Notice("Something went wrong on our side while answering. Please try again.")
        ]


# -- hooks --------------------------------------------------------------------------------------


class ShoutingPlugin:
    """Changes the request, the reply, refuses some users, and records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[ReplyPart]]] = []
        self.started = self.stopped = False

    @hookimpl
    def tgmux_pre_route(self, message: IncomingMessage) -> object:
        if message.chat.user_id == 666:
            return DROP
        if message.text == "ping":
            return "pong"
        return None

    @hookimpl
    def tgmux_before_backend(self, turn: Turn) -> Turn:
        return dataclasses.replace(turn, text=turn.text + "!")

    @hookimpl
    async def tgmux_after_backend(self, part: ReplyPart) -> ReplyPart | None:
        if isinstance(part, Text):
            return Text(part.text.upper())
        return None

    @hookimpl
    def tgmux_reply_sent(self, turn: Turn, parts: list[ReplyPart]) -> None:
        self.sent.append((turn.text, parts))

    @hookimpl
    def tgmux_startup(self) -> None:
        self.started = True

    @hookimpl
    def tgmux_shutdown(self) -> None:
        self.stopped = True


async def test_a_plugin_changes_request_and_reply_and_can_drop_or_answer() -> None:
    plugin = ShoutingPlugin()
    async with EngineHarness.from_yaml(ECHO, plugins=[plugin]) as h:
        assert plugin.started
        assert await h.say("hello", user_id=5) == [Text("ECHO: HELLO!")]
        assert plugin.sent == [("hello!", [Text("ECHO: HELLO!")])]
        assert await h.say("hello", user_id=666) == []
        assert await h.say("ping", user_id=5) == [Text("pong")]
    assert plugin.stopped


async def test_error_hook_replaces_the_default_message() -> None:
    class Apologetic:
        @hookimpl
        def tgmux_error(self, error: BaseException) -> str:
            return f"sorry ({type(error).__name__})"

    cfg = "backends:\n  rate: {type: slow, fail_with: rate, delay: 0}\ndefault: rate\n"
    async with EngineHarness.from_yaml(cfg, plugins=[SlowPlugin(), Apologetic()]) as h:
        assert await h.say("x", user_id=1) == [Notice("sorry (RateLimitedError)")]


async def test_plugin_commands_show_in_help_and_run() -> None:
    from tgmux.backend import CommandSpec
    from tgmux.engine import PluginCommand

    class Dice:
        @hookimpl
        def tgmux_commands(self) -> list[PluginCommand]:
            async def roll(ctx) -> str:
                return f"rolled {ctx.args or 'd6'}"

            return [PluginCommand(CommandSpec("roll", "Roll a die", usage="[dN]"), roll)]

    async with EngineHarness.from_yaml(ECHO, plugins=[Dice()]) as h:
        assert await h.say("/roll d20", user_id=5) == [Text("rolled d20")]
        (help_text,) = await h.say("/help", user_id=5)
        assert "/roll [dN] — Roll a die" in help_text.text.splitlines()
        assert "roll" in [c.name for c in h.engine.command_specs()]


async def test_streamed_reply_passes_deltas_then_final_text_through_after_hook() -> None:
    cfg = "backends:\n  s: {type: echo, stream: true}\ndefault: s\n"
    plugin = ShoutingPlugin()
    async with EngineHarness.from_yaml(cfg, plugins=[plugin]) as h:
        assert await h.say("a b", user_id=5) == [
            TextDelta("a"), TextDelta(" b!"), Text("A B!")
        ]


# -- ordering and concurrency -------------------------------------------------------------------


async def test_each_chat_in_order_chats_concurrent() -> None:
    cfg = "backends:\n  slow: {type: slow, delay: 0.02}\ndefault: slow\nengine: {concurrency: 50}\n"
    async with EngineHarness.from_yaml(cfg, plugins=[SlowPlugin()]) as h:
        # Submit from many concurrent tasks, interleaving chats.
        futures = []
        for n in range(10):
            for chat in range(20):
                futures.append(await h.engine.submit(h.message(f"{n}", user_id=1000 + chat)))
        started = time.monotonic()
        await asyncio.gather(*futures)
        elapsed = time.monotonic() - started
    for chat in range(20):
        texts = [t for c, t in SlowBackend.seen if c == 1000 + chat]
        assert texts == [str(n) for n in range(10)], f"chat {chat} out of order: {texts}"
    assert SlowBackend.max_active > 1  # chats ran side by side
    assert elapsed < 10 * 0.02 * 20  # far less than running everything in sequence


async def test_concurrency_bound_is_respected() -> None:
    cfg = "backends:\n  slow: {type: slow, delay: 0.02}\ndefault: slow\nengine: {concurrency: 3}\n"
    async with EngineHarness.from_yaml(cfg, plugins=[SlowPlugin()]) as h:
        futures = [await h.engine.submit(h.message("x", user_id=u)) for u in range(1, 30)]
        await asyncio.gather(*futures)
    assert SlowBackend.max_active <= 3


# -- restart safety -----------------------------------------------------------------------------


async def test_duplicate_message_ids_are_answered_once(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/s.db"
    async with EngineHarness.from_yaml(ECHO, store=store) as h:
        assert await h.say("one", user_id=5, message_id=1) == [Text("echo: one")]
    async with EngineHarness.from_yaml(ECHO, store=store) as h:
        assert await h.say("one", user_id=5, message_id=1) == []
        assert await h.say("two", user_id=5, message_id=2) == [Text("echo: two")]


async def test_messages_pending_at_a_crash_are_answered_after_restart(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    pm = build_plugin_manager()
    from tgmux.bootstrap import load_config_text

    config = load_config_text(ECHO, plugin_manager=pm)
    # Simulate a crash: the message reached the inbox, the process died before answering.
    store = open_store(url)
    await store.open()
    message = IncomingMessage(chat=ChatIdentity("private", 5, 5, "bob", 41), text="lost?")
    assert await store.inbox_accept(5, 41, message.to_payload())
    await store.close()

    frontend = CaptureFrontend()
    engine = Engine(config, pm, open_store(url), frontend)
    await engine.start()
    await engine.drain()
    # The same update arriving again (Telegram redelivers) is not answered twice.
    again = await engine.submit(message)
    await again
    await engine.stop()
    assert frontend.delivered == [(5, Text("echo: lost?"))]


async def test_stop_finishes_in_flight_replies() -> None:
    cfg = "backends:\n  slow: {type: slow, delay: 0.2}\ndefault: slow\n"
    h = EngineHarness.from_yaml(cfg, plugins=[SlowPlugin()])
    await h.__aenter__()
    for u in range(1, 6):
        await h.submit("late", user_id=u)
    await h.engine.stop(timeout=5)
    assert sorted(c for c, _ in h.delivered) == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError):
        await h.engine.submit(h.message("after stop", user_id=1))


async def test_a_turn_a_backend_already_had_is_not_replayed_after_a_crash(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    cfg = "backends:\n  slow: {type: slow, delay: 0}\ndefault: slow\n"
    pm = build_plugin_manager()
    pm.register(SlowPlugin(), name="slow")
    from tgmux.bootstrap import load_config_text

    config = load_config_text(cfg, plugin_manager=pm)
    store = open_store(url)
    await store.open()
    had = IncomingMessage(chat=ChatIdentity("private", 5, 5, "bob", 41), text="order a pizza")
    never = IncomingMessage(chat=ChatIdentity("private", 5, 5, "bob", 42), text="and a soda")
    assert await store.inbox_accept(5, 41, had.to_payload())
    await store.inbox_dispatched(5, 41)  # the provider got it, then the process died
    assert await store.inbox_accept(5, 42, never.to_payload())
    await store.close()

    frontend = CaptureFrontend()
    engine = Engine(config, pm, open_store(url), frontend)
    await engine.start()
    await engine.drain()
    await engine.stop()
    assert SlowBackend.seen == [(5, "and a soda")]  # only the one no provider had
    assert frontend.delivered == [
        (5, Notice("I was restarted while answering your message “order a pizza” and may not "
                   "have finished. Please send it again if you still need an answer.")),
        (5, Text("done and a soda")),
    ]
    store = open_store(url)
    await store.open()
    assert await store.inbox_unanswered() == []
    await store.close()


async def test_admin_only_backend_commands() -> None:
    from tgmux.backend import CommandSpec

    class GuardedSettings(BackendSettings):
        type: Literal["guarded"] = "guarded"

    class Guarded(SlowBackend):
        type_name = "guarded"
        Settings = GuardedSettings

        def commands(self) -> list[CommandSpec]:
            return [CommandSpec("wipe", "Wipe the shared account", admin_only=True)]

        async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
            yield Text("wiped")

    class GuardedPlugin:
        @hookimpl
        def tgmux_backend_types(self) -> list[type[Backend]]:
            return [Guarded]

    cfg = "admins: [99]\nbackends:\n  g: {type: guarded}\ndefault: g\n"
    async with EngineHarness.from_yaml(cfg, plugins=[GuardedPlugin()]) as h:
        assert await h.say("/wipe", user_id=5) == [
            Notice("Only the bot's admins can use /wipe.")
        ]
        assert await h.say("/wipe", user_id=99) == [Text("wiped")]
        (help_text,) = await h.say("/help", user_id=5)
        assert "/wipe — Wipe the shared account (admins only)" in help_text.text


async def test_slow_delivery_does_not_count_against_the_turn_timeout() -> None:
    """Flood waits and edit pacing happen while the engine's stream is paused at a yield:
    they must neither time the turn out nor kill the chat's worker."""

    class SlowFrontend(CaptureFrontend):
        async def deliver(self, chat, parts, *, reply_to_message_id):
            sent = []
            async for part in parts:
                await asyncio.sleep(0.6)  # e.g. a FloodWait between two edits
                self.delivered.append((chat.chat_id, part))
                sent.append(part)
            return sent

    # Each turn's pauses (2 or 3 x 0.6 s) are past its timeout; the turn's own work is far
    # below it (a loaded machine's stall of a second inside it must not time it out).
    cfg = ("backends:\n  s: {type: echo, stream: true}\ndefault: s\n"
           "engine: {turn_timeout: 1.0}\n")
    pm = build_plugin_manager()
    from tgmux.bootstrap import load_config_text

    frontend = SlowFrontend()
    engine = Engine(load_config_text(cfg, plugin_manager=pm), pm, open_store("memory://"),
                    frontend)
    await engine.start()
    first = await engine.submit(IncomingMessage(ChatIdentity("private", 5, 5, None, 1), "a b"))
    second = await engine.submit(IncomingMessage(ChatIdentity("private", 5, 5, None, 2), "c"))
    await asyncio.wait_for(asyncio.gather(first, second), 30)
    await engine.stop()
    assert frontend.delivered == [
        (5, TextDelta("a")), (5, TextDelta(" b")), (5, Text("a b")),
        (5, TextDelta("c")), (5, Text("c")),
    ]


async def test_a_backend_slower_than_the_turn_timeout_is_reported() -> None:
    cfg = "backends:\n  slow: {type: slow, delay: 5}\ndefault: slow\nengine: {turn_timeout: 0.1}\n"
    SlowBackend.seen = []
    random.seed(1)  # SlowBackend sleeps uniform(0, delay): with this seed, 0.67 s
    async with EngineHarness.from_yaml(cfg, plugins=[SlowPlugin()]) as h:
        assert await h.say("x", user_id=1) == [
            Notice("The AI provider took too long to answer. Please try again.")
        ]
        assert SlowBackend.seen == []


async def test_a_store_that_refuses_the_message_still_gets_it_answered() -> None:
    async with EngineHarness.from_yaml(ECHO) as h:
        async def broken(*args: object) -> bool:
            raise OSError("database is locked")

        h.store.inbox_accept = broken  # type: ignore[method-assign]
        assert await h.say("still there?", user_id=5) == [Text("echo: still there?")]


async def test_a_failing_reply_sent_hook_does_not_tell_the_user_to_retry() -> None:
    class Broken:
        @hookimpl
        def tgmux_reply_sent(self) -> None:
            raise RuntimeError("metrics server down")

    async with EngineHarness.from_yaml(ECHO, plugins=[Broken()]) as h:
        assert await h.say("hello", user_id=5) == [Text("echo: hello")]


def test_command_parsing() -> None:
    def parse(text: str) -> tuple[str | None, str]:
        m = IncomingMessage(ChatIdentity("private", 1), text)
        return m.command, m.args

    assert parse("/image a cat\nplease") == ("image", "a cat\nplease")
    assert parse("/Start") == ("start", "")
    assert parse("/ ") == (None, "")
    assert parse("/ x") == (None, "")
    assert parse("/") == (None, "")
    assert parse("hello /image") == (None, "")
