"""Hostile input: route patterns that backtrack, messages built to make text handling slow,
config files YAML cannot turn into data, variables nested in defaults. Each is one clear line
(file:line) at start and on reload, or is answered in time linear in its size."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pyrogram import enums
from pyrogram.types import Chat, Message, MessageEntity, User

from tgmux.backend import Text
from tgmux.bootstrap import load, load_config_text
from tgmux.config import parse_config_text
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.reload import Reloader
from tgmux.store import open_store
from tgmux.telegram.normalize import normalize

ECHO = 'backends:\n  e: {type: echo, prefix: "echo: "}\ndefault: e\n'


def tgmux(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    return subprocess.run([sys.executable, "-m", "tgmux", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), source="config.yaml", env=env or {})
    return info.value.problems


# -- route patterns ----------------------------------------------------------------------------

ROUTES = """\
backends:
  e: {type: echo}
routes:
  - match: {text: %s}
    backend: e
default: e
"""


def test_a_backtracking_route_pattern_takes_linear_time() -> None:
    # ^(a+)+$ backtracks exponentially in Python's re: 28 characters took 10 s, 5 000 would
    # never end. A linear-time engine answers at once. A subprocess, so a hang is a timeout.
    script = textwrap.dedent(f"""
        from tgmux.bootstrap import load_config_text
        from tgmux.router import Router
        from tgmux.types import ChatIdentity, IncomingMessage
        config = load_config_text({ROUTES % '"^(a+)+$"'!r})
        router = Router(config)
        for text in ("a" * 5000 + "!", "a" * 5000):
            message = IncomingMessage(chat=ChatIdentity("private", 42, 42), text=text)
            print(router.first_match(message))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "0"]


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(\\w+) \\1", "backreferences (\\1) are not supported"),
    ("(?<=hi )there", "lookaround ((?=…), (?!…), (?<=…), (?<!…)) is not supported"),
    ("hi(?!!)", "lookaround ((?=…), (?!…), (?<=…), (?<!…)) is not supported"),
])
def test_a_pattern_a_linear_engine_cannot_run_is_refused_at_load(pattern: str,
                                                                 reason: str) -> None:
    found = problems(ROUTES % f'"{pattern}"')
    assert len(found) == 1
    assert found[0].startswith("config.yaml:4: routes[0].match.text: ")
    assert reason in found[0]
    assert "RE2 syntax" in found[0]


def test_a_refused_pattern_is_one_line_from_tgmux_check(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ROUTES % '"(a)\\\\1"')
    result = tgmux("check", str(config))
    assert result.returncode == 2
    # one line: nothing else (the regex library's own logging) on stderr
    assert result.stderr.splitlines() == [
        f"error: {config}:4: routes[0].match.text: not a pattern tgmux can use: backreferences "
        "(\\1) are not supported (route patterns use RE2 syntax, which runs in linear time) "
        "(got '(a)\\\\1')"]


def test_route_patterns_keep_their_meaning() -> None:
    # (?i) folds any script's case; \\b and \\w are ASCII-only in RE2 (documented)
    config = load_config_text(ROUTES % '"(?i)^привет(\\\\s|$)|^/image\\\\b"')
    from tgmux.router import Router
    from tgmux.types import ChatIdentity, IncomingMessage
    router = Router(config)

    def routed(text: str) -> int | None:
        return router.first_match(IncomingMessage(chat=ChatIdentity("private", 1, 1), text=text))
    assert routed("ПРИВЕТ всем") == 0
    assert routed("/image a cat") == 0
    assert routed("/imagery") is None
    assert routed("приветствую") is None
    assert routed("say привет") is None


async def test_a_lone_surrogate_in_a_message_is_still_routed() -> None:
    # RE2 reads UTF-8: a lone UTF-16 half (which Python text may hold) cannot be encoded
    config = ('backends:\n  e: {type: echo, prefix: "e: "}\n  f: {type: echo, prefix: "f: "}\n'
              'routes:\n  - {match: {text: "^hi"}, backend: f}\ndefault: e\n')
    async with EngineHarness.from_yaml(config) as h:
        assert await h.say("hi \ud800", user_id=42) == [Text("f: hi \ufffd")]
        assert await h.say("ho \udfff", user_id=42, message_id=2) == [Text("e: ho \ufffd")]


# -- mention stripping -------------------------------------------------------------------------

ME = User(id=1, is_self=True, username="tgmux_bot")


def group_message(text: str, entities: list[MessageEntity] | None = None) -> Message:
    return Message(id=5, chat=Chat(id=-4001, type=enums.ChatType.GROUP),
                   from_user=User(id=42), text=text, entities=entities)


def cpu_seconds(text: str, entities: list[MessageEntity] | None = None) -> float:
    message = group_message(text, entities)
    start = time.process_time()
    normalize(message, ME)
    return time.process_time() - start


def test_mention_stripping_is_linear_in_the_text() -> None:
    # quadratic, 4 096 spaces took 0.42 s; 30 000 would take about 20 s. Linear: well under
    # a millisecond; the budget is generous for a loaded machine and still catches quadratic.
    assert cpu_seconds("x" + " " * 30_000 + "x") < 1.0
    assert cpu_seconds("x" + " \t" * 15_000 + "@tgmux_bot") < 1.0


def _old_strip_mentions(text: str, username: str) -> tuple[str, bool]:
    """The quadratic original: the meaning to keep."""
    name = re.escape(username)
    leading = re.compile(rf"^\s*@{name}\b[,:]?", re.IGNORECASE)
    inner = re.compile(rf"[ \t]*(?<![\w@])@{name}\b", re.IGNORECASE)
    stripped, first = leading.subn("", text)
    stripped, more = inner.subn("", stripped)
    if not first and not more:
        return text, False
    return stripped.strip(), True


@pytest.mark.parametrize("text", [
    "@tgmux_bot, hi", "  @TGMUX_BOT: hi", "hey @tgmux_bot, how are you?", "hey\t \t@tgmux_bot",
    "a@tgmux_bot b", "@@tgmux_bot x", "@tgmux_bot @tgmux_bot  @tgmux_bot hi", "@tgmux_botx hi",
    "mail me: x @tgmux_bot_2 y", "no mention at all", "   ", "é @tgmux_bot", "\n@tgmux_bot\n",
    "@tgmux_bot", "x @tgmux_bot", "@tgmux_bot, @tgmux_bot: hi", "hi\n  @tgmux_bot there",
])
def test_mention_stripping_keeps_its_meaning(text: str) -> None:
    from tgmux.telegram.normalize import _strip_mentions
    assert _strip_mentions(text, "tgmux_bot") == _old_strip_mentions(text, "tgmux_bot")


# -- YAML that is not data ---------------------------------------------------------------------

SEVEN = [
    (b"extra: a\x00b\n", ":4: control character U+0000 is not allowed in YAML; remove it"),
    (b"extra: \x1b[31mred\n", ":4: control character U+001B is not allowed in YAML; remove it"),
    (b"? [1, 2]\n: x\n", ":4: a key must be a name or a number, not a list or a mapping"),
    (b"extra: !!python/object:os.system {}\n",
     ":4: extra: YAML tag '!!python/object:os.system' is not supported (plain strings, numbers, "
     "lists and mappings only)"),
    (b"extra: 2024-02-30\n",
     ":4: extra: '2024-02-30' is not a date (day is out of range for month); quote it to keep "
     "it as text"),
    (b"extra: !!int 'abc'\n",
     ":4: extra: 'abc' is not an integer (tag !!int); remove the tag to keep it as text"),
    (b"extra: !secret abc\n",
     ":4: extra: YAML tag '!secret' is not supported (plain strings, numbers, lists and "
     "mappings only)"),
]


@pytest.mark.parametrize(("content", "expected"), SEVEN)
def test_yaml_that_is_not_data_is_one_line_from_tgmux_check(tmp_path: Path, content: bytes,
                                                            expected: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(ECHO.encode() + content)
    result = tgmux("check", str(config))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"error: {config}{expected}"]


@pytest.mark.parametrize(("content", "expected"), SEVEN)
async def test_yaml_that_is_not_data_is_one_line_on_reload(tmp_path: Path, content: bytes,
                                                           expected: str, caplog) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(ECHO)
    config, pm = load(path)
    harness = EngineHarness(config, store=open_store("memory://"), plugin_manager=pm)
    await harness.engine.start()
    try:
        path.write_bytes(ECHO.encode() + content)
        with caplog.at_level(logging.INFO, "tgmux.reload"):
            assert not await Reloader(harness.engine, pm, path).reload()
        said = [r for r in caplog.records if r.name == "tgmux.reload"]
        assert said[0].getMessage() == f"{path}{expected}"
        assert not any(r.exc_info for r in said)
        assert await harness.say("still there?", user_id=42) == [Text("echo: still there?")]
    finally:
        await harness.engine.stop()


@pytest.mark.parametrize(("text", "expected"), [
    ("a: !!map [1]\n", "config.yaml:1: cannot read this YAML: expected a mapping node, but "
                       "found sequence"),
    ("a: [1]\nc:\n  <<: 3\n", "config.yaml:3: cannot read this YAML: expected a mapping or "
                             "list of mappings for merging, but found scalar"),
    ("a: !!timestamp x\n", "config.yaml:1: a: 'x' is not a date; quote it to keep it as text"),
    ("a: !!bool maybe\n", "config.yaml:1: a: 'maybe' is not true or false (tag !!bool); remove "
                          "the tag to keep it as text"),
    ("!foo k: v\n", "config.yaml:1: YAML tag '!foo' is not supported"),
    ("k: v\n" * 300 + "bad: \x00\n", "config.yaml:301: control character U+0000 is not "
                                     "allowed in YAML; remove it"),
])
def test_more_yaml_that_is_not_data(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, source="config.yaml")
    assert info.value.problems == [expected]


# -- variables in defaults ---------------------------------------------------------------------

NESTED = 'backends:\n  e: {type: echo, prefix: "%s"}\ndefault: e\n'


@pytest.mark.parametrize(("value", "env", "expected"), [
    ("${A:-${B}}", {"B": "key"}, "key"),
    ("${A:-${B}}", {"A": "a", "B": "key"}, "a"),
    ("${A:-${B}}", {"A": "", "B": "key"}, "key"),
    ("${A:-x${B:-${C}}y}", {"C": "c"}, "xcy"),
    ("${A:-${B:-plain}}!", {}, "plain!"),
    ("${A:-{not a var}}", {}, "{not a var}"),  # as before: a default ends at the first }
    ("${A:-$$}", {}, "$"),
    ("${A}", {"A": "${B}"}, "${B}"),  # a value is never expanded again
])
def test_variables_nest_in_defaults(value: str, env: dict[str, str], expected: str) -> None:
    config = load_config_text(NESTED % value, env=env)
    assert config.backend_settings["e"].prefix == expected


def test_a_nested_default_that_is_unset_names_the_variable() -> None:
    assert problems(NESTED % "${A:-${B}}") == [
        "config.yaml:2: backends.e.prefix: environment variable B is not set"]


def test_defaults_nested_too_deeply_are_refused() -> None:
    value = "${A:-" * 9 + "x" + "}" * 9
    assert problems(NESTED % value) == [
        "config.yaml:2: backends.e.prefix: variables nested more than 8 deep in defaults "
        "(${A:-${B:-...}})"]
    assert load_config_text(NESTED % ("${A:-" * 8 + "x" + "}" * 8)).backend_settings[
        "e"].prefix == "x"


@pytest.mark.parametrize("value", ["${A:-${B}", "${A:-${1}}", "${A:-${B:x}}"])
def test_a_broken_nested_variable_is_refused(value: str) -> None:
    found = problems(NESTED % value)
    assert len(found) == 1 and found[0].startswith("config.yaml:2: backends.e.prefix: cannot "
                                                   "read '${")


@pytest.mark.parametrize("name", ["off", "yes", "On", "null"])
def test_a_backend_named_like_a_yaml_boolean_keeps_its_name(tmp_path: Path, name: str) -> None:
    # YAML 1.1 reads `off:` as the key False: `tgmux check` died sorting names (a traceback).
    config = tmp_path / "config.yaml"
    config.write_text(f"backends:\n  {name}:\n    type: echo\ndefault: '{name}'\n")
    result = tgmux("check", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{name}: echo" in result.stdout


def test_an_unquoted_boolean_where_a_backend_name_is_wanted_is_a_line_not_a_traceback(
        tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backends:\n  off:\n    type: echo\ndefault: off\n")
    result = tgmux("check", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {config}:4: default: " in result.stderr.splitlines()[0]
