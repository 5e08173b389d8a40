"""``Backend.observe``: untriggered group messages reach a backend that asks for them, in the
chat's order, never for a denied user, never counted by limits, never shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, Turn
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.types import ChatIdentity, IncomingMessage

#: what the backends saw, in order: ("observe" | "reply", backend, chat id, text)
SEEN: list[tuple[str, str, int, str]] = []


class WatcherSettings(BackendSettings):
    type: Literal["watcher"] = "watcher"
    fail: bool = False


class WatcherBackend(Backend):
    type_name = "watcher"
    Settings = WatcherSettings

    async def observe(self, turn: Turn) -> None:
        if turn.options.fail:
            raise RuntimeError("the provider is down")
        SEEN.append(("observe", self.name, turn.chat.chat_id, turn.text))

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        SEEN.append(("reply", self.name, turn.chat.chat_id, turn.text))
        yield Text(f"{self.name}: {turn.text}")


class Plugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [WatcherBackend]


CONFIG = """
backends:
  watch: {type: watcher}
  broken: {type: watcher, fail: true}
  echo: {type: echo}
access: {deny_users: [666]}
limits: {per_user: {messages: 1, per: 1h}, reply: "slow down"}
routes:
  - match: {chat_id: -200}
    backend: echo
  - match: {chat_id: -300}
    backend: broken
default: watch
"""


def harness() -> EngineHarness:
    SEEN.clear()
    return EngineHarness.from_yaml(CONFIG, plugins=[Plugin()])


async def test_untriggered_group_messages_are_observed_in_order_before_the_mention() -> None:
    async with harness() as h:
        await h.submit("first", user_id=1, chat_id=-100, chat_type="group", addressed=False)
        await h.submit("second", user_id=2, chat_id=-100, chat_type="supergroup",
                       addressed=False)
        parts = await h.say("and you?", user_id=3, chat_id=-100, chat_type="group")
    assert parts == [Text("watch: and you?")]
    assert SEEN == [("observe", "watch", -100, "first"), ("observe", "watch", -100, "second"),
                    ("reply", "watch", -100, "and you?")]
    assert h.delivered == [(-100, Text("watch: and you?"))]  # observing sends nothing


async def test_limits_do_not_count_observed_messages_and_denied_users_are_not_observed() -> None:
    async with harness() as h:
        for n in range(3):  # a limit of 1 message an hour: observing counts none
            await h.say(f"chat {n}", user_id=5, chat_id=-100, chat_type="group",
                        addressed=False)
        await h.say("from a denied user", user_id=666, chat_id=-100, chat_type="group",
                    addressed=False)
        assert await h.say("question", user_id=5, chat_id=-100,
                           chat_type="group") == [Text("watch: question")]
    assert [s[3] for s in SEEN] == ["chat 0", "chat 1", "chat 2", "question"]


async def test_only_group_messages_of_an_observing_backend_and_failures_stay_silent(
        caplog) -> None:
    async with harness() as h:
        await h.say("other backend", user_id=5, chat_id=-200, chat_type="group",
                    addressed=False)
        await h.say("broken provider", user_id=5, chat_id=-300, chat_type="group",
                    addressed=False)
        await h.say("a channel post", user_id=None, chat_id=-1002, chat_type="channel",
                    addressed=False)
        await h.say("   ", user_id=5, chat_id=-100, chat_type="group", addressed=False)
    assert SEEN == []
    assert h.delivered == []
    assert [r.getMessage() for r in caplog.records if "observe" in r.getMessage()] == [
        "chat -300 message 1: broken could not observe it: the provider is down"]


def test_chat_title_round_trips_through_the_inbox_payload() -> None:
    chat = ChatIdentity("supergroup", -1001, 7, "bob", 3, chat_title="Book club")
    message = IncomingMessage(chat=chat, text="hi", addressed=False)
    assert IncomingMessage.from_payload(message.to_payload()) == message
    # a payload an earlier version stored (no chat_title) still reads
    payload = message.to_payload()
    del payload["chat"]["chat_title"]
    assert IncomingMessage.from_payload(payload).chat.chat_title is None
