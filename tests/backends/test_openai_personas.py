"""Personas through ``tgmux simulate`` and the OpenAI simulator: what a user reads when they list,
choose or are refused a persona, and the exact request the provider gets after a choice (its
system prompt, its model); in groups ``persona_switch``; the choice across a restart; ``/backend``
over a persona; config mistakes as ``tgmux check`` says them."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tgmux.backends.openai.simulator import Model, OpenAISimulator

KEY = "sk-persona-test"
ADMIN = 1
GROUP_ADMINS = -4001
GROUP_EVERYONE = -4002
CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: %(store)s
admins: [1]
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: gpt-test
    system_prompt: "Be brief."
    history: {max_turns: 0}
  other:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: gpt-other
    system_prompt: "Be long."
    history: {max_turns: 0}
personas:
  tutor:
    backend: gpt
    options: {system_prompt: "You are a patient tutor.", model: gpt-tutor}
    description: "Explains step by step"
  poet:
    backend: other
    options: {system_prompt: "Answer in verse."}
routes:
  - match: {chat_id: %(admins_group)d}
    backend: gpt
    personas: [tutor]
  - match: {chat_id: %(everyone_group)d}
    backend: gpt
    personas: [tutor]
    persona_switch: everyone
  - match: {chat_type: private}
    backend: gpt
    personas: [tutor]
default: gpt
"""
LISTING = ("Current persona: none\n\nPersonas here:\ntutor — Explains step by step\n\n"
           "Choose with /persona NAME; /persona default goes back to this chat's usual AI.")


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[
            Model("gpt-test"), Model("gpt-tutor"), Model("gpt-other")]) as server:
        yield server  # type: ignore[misc]


def write_config(sim: OpenAISimulator, tmp_path: Path, store: str = "memory://") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % {"url": sim.base_url, "key": KEY, "store": store,
                                "admins_group": GROUP_ADMINS,
                                "everyone_group": GROUP_EVERYONE})
    return config


async def simulate(config: Path, lines: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """``tgmux simulate`` with these input lines: (chat, text) of each message it sent."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out, err = await asyncio.wait_for(process.communicate(data), 60)
    assert process.returncode == 0, err.decode()
    actions = [json.loads(line) for line in out.decode().splitlines()]
    return [(a["chat_id"], a["text"]) for a in actions if a["action"] == "send_message"]


def requests(sim: OpenAISimulator) -> list[tuple[str, str]]:
    """(model, system prompt) of each completion the provider was asked for."""
    return [(c.model, c.messages[0]["content"]) for c in sim.completions]


async def test_a_user_lists_chooses_and_leaves_a_persona_and_the_request_follows(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    sent = await simulate(write_config(sim, tmp_path), [
        {"user_id": 42, "text": "Name a capital."},
        {"user_id": 42, "text": "/persona"},
        {"user_id": 42, "text": "/persona Tutor"},
        {"user_id": 42, "text": "Name a capital."},
        {"user_id": 42, "text": "/persona"},
        {"user_id": 42, "text": "/persona default"},
        {"user_id": 42, "text": "Name a capital."}])
    assert [text for _, text in sent] == [
        "You said: Name a capital.",
        LISTING,
        "This chat now talks to tutor.",
        "You said: Name a capital.",
        "Current persona: tutor\n\nPersonas here:\ntutor — Explains step by step (current)\n\n"
        "Choose with /persona NAME; /persona default goes back to this chat's usual AI.",
        "No persona: this chat talks to gpt again.",
        "You said: Name a capital."]
    assert requests(sim) == [("gpt-test", "Be brief."),
                             ("gpt-tutor", "You are a patient tutor."),
                             ("gpt-test", "Be brief.")]


async def test_a_persona_the_route_does_not_offer_is_refused_with_the_choices(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    sent = await simulate(write_config(sim, tmp_path), [
        {"user_id": 42, "text": "/persona poet"},
        {"user_id": 42, "text": "/persona nobody"},
        {"user_id": 42, "text": "hi"}])
    assert [text for _, text in sent] == [
        "The persona 'poet' is not available in this chat. Choose one of: tutor",
        "There is no persona 'nobody'. Choose one of: tutor",
        "You said: hi"]
    assert requests(sim) == [("gpt-test", "Be brief.")]


async def test_in_groups_persona_switch_says_who_may_choose(sim: OpenAISimulator,
                                                            tmp_path: Path) -> None:
    sent = await simulate(write_config(sim, tmp_path), [
        # persona_switch: admins (the default): a member is refused, an admin is not
        {"chat_id": GROUP_ADMINS, "user_id": 43, "text": "/persona tutor"},
        {"chat_id": GROUP_ADMINS, "user_id": 43, "text": "@tgmux_bot hi"},
        {"chat_id": GROUP_ADMINS, "user_id": ADMIN, "text": "/persona tutor"},
        {"chat_id": GROUP_ADMINS, "user_id": 43, "text": "@tgmux_bot hi"},
        # persona_switch: everyone
        {"chat_id": GROUP_EVERYONE, "user_id": 43, "text": "/persona tutor"},
        {"chat_id": GROUP_EVERYONE, "user_id": 44, "text": "@tgmux_bot hi"},
        # anyone lists them
        {"chat_id": GROUP_ADMINS, "user_id": 43, "text": "/persona"}])
    def chat(chat_id: int) -> list[str]:  # chats are answered concurrently
        return [text for c, text in sent if c == chat_id]

    assert chat(GROUP_ADMINS) == [
        "Only the bot's admins can switch the persona in this chat.",
        "You said: hi",
        "This chat now talks to tutor.",
        "You said: hi",
        LISTING.replace("none", "tutor", 1).replace("step by step", "step by step (current)")]
    assert chat(GROUP_EVERYONE) == ["This chat now talks to tutor.", "You said: hi"]
    assert sorted(requests(sim)) == [("gpt-test", "Be brief."),
                                     ("gpt-tutor", "You are a patient tutor."),
                                     ("gpt-tutor", "You are a patient tutor.")]


async def test_the_choice_survives_a_restart(sim: OpenAISimulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path, store=f"sqlite:///{tmp_path / 'tgmux.db'}")
    assert await simulate(config, [{"user_id": 42, "text": "/persona tutor"}]) == [
        (42, "This chat now talks to tutor.")]
    # another process on the same store (message ids go on, as Telegram's would)
    assert await simulate(config, [{"user_id": 42, "text": "hi", "message_id": 2}]) == [
        (42, "You said: hi")]
    assert requests(sim) == [("gpt-tutor", "You are a patient tutor.")]


async def test_an_admins_backend_choice_beats_the_persona(sim: OpenAISimulator,
                                                          tmp_path: Path) -> None:
    sent = await simulate(write_config(sim, tmp_path), [
        {"user_id": ADMIN, "text": "/persona tutor"},
        {"user_id": ADMIN, "text": "/backend other"},
        {"user_id": ADMIN, "text": "hi"},
        {"user_id": ADMIN, "text": "/backend default"},
        {"user_id": ADMIN, "text": "hi"}])
    assert [text for _, text in sent] == [
        "This chat now talks to tutor.",
        "This chat now talks to: other",
        "You said: hi",
        "This chat follows the config again: gpt",
        "You said: hi"]
    assert requests(sim) == [("gpt-other", "Be long."),
                             ("gpt-tutor", "You are a patient tutor.")]

