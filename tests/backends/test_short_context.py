"""LucyDream and BambiSleep take one text message: what the user replied to and what the
group said before reach them as a short preamble (tgmux.context), in the exact request their
simulators get, cut to their limits (the user's text never)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import tgmux.backends.bambisleep as bambisleep_plugin
import tgmux.backends.lucydream as lucydream_plugin
from tgmux.backends.bambisleep.adapter import PROMPT_CHARS
from tgmux.backends.bambisleep.simulator import BambiSleepSimulator
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.types import ChatLine, RepliedTo

KEY = "key-one"
MODEL = "2195981"
GROUP = -4001234567
LINES = (ChatLine("Anna", "Lunch at noon?"), ChatLine("Bob", "Yes, at Luigi's"))
REPLY = RepliedTo(text="Yes, at Luigi's", author="Bob", message_id=7)
SAID = ("Anna: Lunch at noon?\nBob: Yes, at Luigi's\n"
        "[In reply to Bob: \"Yes, at Luigi's\"]\n\nwhere is that?")


class GroupContext:
    """Gives each turn the group's recent messages, as the group-context store does."""

    def __init__(self, lines: tuple[ChatLine, ...]) -> None:
        self.lines = lines

    @hookimpl
    def tgmux_before_backend(self, turn: Any, backend: Any) -> Any:
        return dataclasses.replace(turn, group_context=self.lines)


async def ask(h: EngineHarness, text: str, reply_to: RepliedTo | None) -> None:
    message = dataclasses.replace(h.message(text, user_id=42, chat_id=GROUP,
                                            chat_type="group"), reply_to=reply_to)
    await (await h.engine.submit(message))


@pytest.fixture
async def lucy():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=None,
                                  models={MODEL: "Lucy Dream"}) as server:
        yield server


@pytest.fixture
async def bambi():
    async with BambiSleepSimulator(api_keys={KEY: "bambi"}, users={"bambi": "pw"}) as server:
        yield server


def lucy_config(sim: LucyDreamSimulator) -> str:
    return (f"backends:\n  lucy: {{type: lucydream, api_key: {KEY}, base_url: "
            f"\"{sim.base_url}\"}}\ndefault: lucy\n")


def bambi_config(sim: BambiSleepSimulator) -> str:
    return (f"backends:\n  bambi: {{type: bambisleep, api_key: {KEY}, base_url: "
            f"\"{sim.base_url}\", include_audio: false}}\ndefault: bambi\n")


async def test_lucydream_gets_the_group_and_the_reply_before_the_message(
        lucy: LucyDreamSimulator) -> None:
    plugins = [lucydream_plugin, GroupContext(LINES)]
    async with EngineHarness.from_yaml(lucy_config(lucy), plugins=plugins) as h:
        await ask(h, "where is that?", REPLY)
    sends = [r.json for r in lucy.requests if r.path.endswith("send-message")]
    assert [s["message"] for s in sends] == [SAID]


async def test_bambisleep_gets_the_group_and_the_reply_before_the_message(
        bambi: BambiSleepSimulator) -> None:
    plugins = [bambisleep_plugin, GroupContext(LINES)]
    async with EngineHarness.from_yaml(bambi_config(bambi), plugins=plugins) as h:
        await ask(h, "where is that?", REPLY)
        await ask(h, "and a plain one", None)
    prompts = [r.json["prompt"] for r in bambi.requests if r.path == "/v1/ai/generate"]
    assert prompts == [SAID, "Anna: Lunch at noon?\nBob: Yes, at Luigi's\n\nand a plain one"]


async def test_bambisleep_context_is_cut_to_the_prompt_limit_never_the_text(
        bambi: BambiSleepSimulator) -> None:
    lines = tuple(ChatLine(f"User{i}", f"message {i} " + "x" * 280) for i in range(20))
    text = "q" * 3000
    plugins = [bambisleep_plugin, GroupContext(lines)]
    async with EngineHarness.from_yaml(bambi_config(bambi), plugins=plugins) as h:
        await ask(h, text, REPLY)
    [prompt] = [r.json["prompt"] for r in bambi.requests if r.path == "/v1/ai/generate"]
    assert len(prompt) <= PROMPT_CHARS and prompt.endswith("\n\n" + text)
    head = prompt[:-len(text) - 2].split("\n")
    # the newest lines, whole, then the reply; the provider did not refuse it (> 4000)
    assert head[-1] == "[In reply to Bob: \"Yes, at Luigi's\"]"
    assert head[0].startswith("User1") and all(line.startswith("User1") for line in head[:-1])
