"""Personas (tgmux.personas, tgmux.config.personas): config mistakes as `tgmux check` says them,
what `tgmux check`, /help, /status and the command menus show, where a persona ranks, a choice
the config no longer offers, and the bounded memory of choices."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgmux.bootstrap import load_text
from tgmux.chat_commands import BUILTIN_COMMANDS
from tgmux.command_menus import Scope, account_menus, chat_menu
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.reload import describe_changes
from tgmux.router import Router
from tgmux.types import Notice, Text

ECHOES = """
backends:
  a: {type: echo}
  b: {type: echo}
admins: [7]
"""
CONFIG = ECHOES + """
personas:
  tutor: {backend: b, description: "A patient tutor"}
  plain: {backend: a}
routes:
  - match: {chat_type: private}
    backend: a
    personas: [tutor, plain]
default: a
"""


def tgmux_check(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    return subprocess.run([sys.executable, "-m", "tgmux", "check", str(config)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_config_mistakes_are_one_line_each_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("""\
store: memory://
backends:
  gpt: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: k, model: m}
  echo: {type: echo}
personas:
  tutor: {backend: nope}
  lucy:
    backend: gpt
    options: {api_key: other, temperature: hot}
  fine: {backend: echo}
routes:
  - match: {chat_type: private}
    backend: gpt
    personas: [fine, ghost]
default: echo
default_personas: [gone]
""")
    result = tgmux_check(config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {config}:6: personas.tutor.backend: unknown backend 'nope' (defined: echo, "
        "gpt)",
        f"error: {config}:9: personas.lucy.options.api_key: 'api_key' cannot be set per route "
        "for openai (can: frequency_penalty, history, max_completion_tokens, max_tokens, model, "
        "presence_penalty, seed, stop, stream, system_prompt, temperature, top_p, vision)",
        f"error: {config}:9: personas.lucy.options.temperature: Input should be a valid "
        "number, unable to parse string as a number (got 'hot')",
        f"error: {config}:14: routes[0].personas[1]: unknown persona 'ghost' (defined: tutor, "
        "lucy, fine)",
        f"error: {config}:16: default_personas[0]: unknown persona 'gone' (defined: tutor, "
        "lucy, fine)"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("personas", "expected"), [
    ("personas: {default: {backend: a}}",
     "personas: persona name 'default': /persona default goes back to the route's backend; "
     "choose another name"),
    ("personas: {Tutor: {backend: a}, tutor: {backend: b}}",
     "personas: persona names 'Tutor' and 'tutor' differ only in case (/persona NAME ignores "
     "case)"),
    ("personas: {two words: {backend: a}}",
     "personas: persona name 'two words': one word of letters, digits, _ . - (at most 32)"),
    ("personas: {t: {backend: a}}\ndefault_personas: [t]",
     "default_personas: no chat falls to default: set default: (a backend), or list the "
     "personas on routes"),
])
def test_persona_names_and_default_personas(personas: str, expected: str) -> None:
    text = ECHOES + "routes: [{backend: a}]\n" + personas + "\n"
    with pytest.raises(ConfigError) as caught:
        load_text(text, source="c.yaml")
    line = text[:text.index(expected.split(":")[0] + ":")].count("\n") + 1
    assert str(caught.value) == f"c.yaml:{line}: {expected}"


def test_check_shows_the_personas_and_each_routes(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("store: memory://\n" + CONFIG + "default_personas: [plain]\n"
                      "persona_switch: everyone\n")
    result = tgmux_check(config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[3:6] == ["personas:", "  tutor -> b", "  plain -> a"]
    assert ("  1. chat_type=['private'] -> a  (groups: mention)  personas: tutor, plain "
            "(switch in groups: everyone)") in lines
    assert "  2. (default) -> a  (groups: mention)  personas: plain (switch in groups: "\
        "everyone)" in lines


def test_a_personas_options_go_over_its_routes_and_it_ranks_after_backend() -> None:
    config, _ = load_text("""
backends:
  gpt: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: k, model: m,
        system_prompt: "Be brief."}
  other: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: k, model: o}
personas:
  tutor: {backend: gpt, options: {model: m-tutor}}
  poet: {backend: other, options: {system_prompt: "In verse."}}
routes:
  - match: {chat_type: private}
    backend: gpt
    options: {system_prompt: "Be kind."}
    personas: [tutor, poet]
""")
    router = Router(config)
    harness = EngineHarness(config)
    message = harness.message("hi", user_id=5)
    tutor = router.decide(message, persona="tutor")
    assert tutor is not None and (tutor.backend, tutor.reason, tutor.persona) == \
        ("gpt", "persona", "tutor")
    # the route's options stay where the persona says nothing (same backend)
    assert (tutor.options.model, tutor.options.system_prompt) == ("m-tutor", "Be kind.")
    poet = router.decide(message, persona="poet")
    assert poet is not None and (poet.options.model, poet.options.system_prompt) == \
        ("o", "In verse.")  # another backend: the route's options are not its
    override = router.decide(message, persona="tutor", override="other")
    assert override is not None and (override.backend, override.reason) == ("other", "override")


async def test_help_status_and_menus_list_persona_only_where_offered() -> None:
    group = -100
    async with EngineHarness.from_yaml(CONFIG) as h:
        [help_private] = await h.say("/help", user_id=5)
        [help_group] = await h.say("/help", user_id=5, chat_id=group, chat_type="group")
        [none_here] = await h.say("/persona", user_id=5, chat_id=group, chat_type="group")
        await h.say("/persona tutor", user_id=7)
        [status] = await h.say("/status", user_id=7)
    assert isinstance(help_private, Text) and isinstance(help_group, Text)
    assert "/persona [name] — Show or choose who you talk to" in help_private.text
    assert "/persona" not in help_group.text
    assert none_here == Notice("This chat has no personas to choose from.")
    assert isinstance(status, Text)
    assert status.text.splitlines()[-1] == "This chat's persona: tutor (b)"
    menus = {m.scope: [c.name for c in m.commands]
             for m in account_menus(h.config.account(), list(BUILTIN_COMMANDS), {})}
    assert "persona" in menus[Scope("all_private_chats")]
    assert "persona" not in menus[Scope("all_group_chats")]
    assert "persona" not in menus[Scope("default")]


async def test_a_choice_no_longer_offered_falls_back_to_the_route_logged_once(caplog) -> None:
    async with EngineHarness.from_yaml(CONFIG) as h:
        assert await h.say("/persona tutor", user_id=5) == [Text("This chat now talks to tutor.")]
        assert (await h.engine.decide(h.message("hi", user_id=5))).backend == "b"
        new, _ = load_text(ECHOES + "personas: {plain: {backend: a}}\n"
                           "routes: [{match: {chat_type: private}, backend: a, personas: [plain]}]"
                           "\ndefault: a\n")
        await h.engine.reload(new)
        with caplog.at_level(logging.INFO, "tgmux.router"):
            for _ in range(3):
                decision = await h.engine.decide(h.message("hi", user_id=5))
                assert (decision.backend, decision.reason) == ("a", "route 0")
        assert caplog.messages == ["chat 5: persona 'tutor' is not offered here any more; "
                                   "the chat's route answers"]
        [listing] = await h.say("/persona", user_id=5)
        assert isinstance(listing, Text) and listing.text.startswith("Current persona: none\n")


async def test_choices_are_kept_in_memory_bounded_and_not_read_without_personas() -> None:
    async with EngineHarness.from_yaml(CONFIG) as h:
        choices = h.engine.personas
        choices._known.limit = 2
        for chat in (1, 2, 3):
            await choices.choice("main", chat, h.config)
        assert list(choices._known) == [("main", 2), ("main", 3)]
    async with EngineHarness.from_yaml(ECHOES + "default: a\n") as h:
        reads = []
        h.engine.personas.kv.get = lambda key: reads.append(key)  # type: ignore[method-assign]
        assert await h.say("hi", user_id=5) == [Text("hi")]
        assert reads == []


def test_a_groups_own_menu_lists_persona_where_its_route_offers_them() -> None:
    config, _ = load_text(ECHOES + """
personas: {tutor: {backend: b}}
routes:
  - match: {chat_id: -100}
    backend: a
    personas: [tutor]
default: a
""")
    account = config.account()
    common = list(BUILTIN_COMMANDS)
    offering = chat_menu(account, common, {}, "supergroup", -100, None)
    other = chat_menu(account, common, {}, "supergroup", -200, None)
    assert "persona" in [c.name for c in offering.commands]
    assert "persona" not in [c.name for c in other.commands]


async def test_an_account_offers_its_own_default_personas() -> None:
    text = ECHOES + """
personas:
  tutor: {backend: b, description: "A tutor"}
  plain: {backend: a}
default: a
default_personas: [plain]
persona_switch: admins
accounts:
  one:
    telegram: {session_name: one}
    default_personas: [tutor]
    persona_switch: everyone
  two:
    telegram: {session_name: two}
"""
    async with EngineHarness.from_yaml(text) as h:
        group = {"chat_id": -5, "chat_type": "group", "user_id": 9}
        assert await h.say("/persona tutor", account="one", **group) == [
            Text("This chat now talks to tutor.")]
        assert await h.say("/persona plain", account="two", **group) == [
            Notice("Only the bot's admins can switch the persona in this chat.")]
        assert await h.say("/persona tutor", account="two", user_id=9) == [
            Notice("The persona 'tutor' is not available in this chat. Choose one of: plain")]


def test_a_reload_says_the_personas_changed() -> None:
    old, _ = load_text(CONFIG)
    new, _ = load_text(CONFIG.replace('"A patient tutor"', '"Patient"'))
    offered, _ = load_text(CONFIG.replace("personas: [tutor, plain]", "personas: [tutor]"))
    assert describe_changes(old, new) == ["personas: changed"]
    assert describe_changes(old, offered) == ["routes: changed", "personas: changed"]
