"""Config errors name file, line, key path and what was expected; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tgmux.bootstrap import load_config, load_config_text
from tgmux.errors import ConfigError


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), source="config.yaml", env=env or {})
    return info.value.problems


def test_missing_environment_variable_names_file_line_and_key() -> None:
    assert problems("""\
        store: "memory://"
        backends:
          echo:
            type: echo
            prefix: ${PREFIX}
        default: echo
        """) == ["config.yaml:5: backends.echo.prefix: environment variable PREFIX is not set"]


def test_env_defaults_and_escapes() -> None:
    config = load_config_text(
        'backends:\n  e: {type: echo, prefix: "${P:-hi} $${LITERAL} ${Q}"}\ndefault: e\n',
        env={"Q": "q"},
    )
    assert config.backend_settings["e"].prefix == "hi ${LITERAL} q"


def test_every_problem_is_reported_at_once() -> None:
    found = problems("""\
        store: "memory://"
        backends:
          echo: {type: echo, colour: red}
          x: {type: nosuch}
        routes:
          - match: {chat_type: [grop], text: "(unclosed"}
            backend: echo
          - match: {}
            backend: ghost
        default: nowhere
        surprise: 1
        """)
    assert [p for p in found if "nosuch" not in p] == [
        "config.yaml:6: routes[0].match.chat_type[0]: Input should be 'private', 'group', "
        "'supergroup' or 'channel' (got 'grop')",
        "config.yaml:6: routes[0].match.text: not a valid regular expression (RE2 syntax): "
        "missing ): (unclosed (got '(unclosed')",
        "config.yaml:11: surprise: unknown key 'surprise'",
        "config.yaml:3: backends.echo.colour: unknown key 'colour'",
        "config.yaml:9: routes[1].backend: unknown backend 'ghost' (defined: echo, x)",
        "config.yaml:10: default: unknown backend 'nowhere' (defined: echo, x)",
    ]
    assert next(p for p in found if "nosuch" in p).startswith(
        "config.yaml:4: backends.x.type: unknown backend type 'nosuch' (installed: ")


def test_unknown_backend_type_lists_installed_types() -> None:
    (problem,) = problems("backends:\n  x: {type: nosuch}\ndefault: x\n")
    assert problem.startswith("config.yaml:2: backends.x.type: unknown backend type 'nosuch' "
                              "(installed: ")
    assert "echo" in problem


def test_route_options_are_validated_against_the_backend_settings() -> None:
    assert problems("""\
        backends:
          e: {type: echo}
        routes:
          - backend: e
            options: {prefix: 3, type: other}
        """) == [
        "config.yaml:5: routes[0].options.type: 'type' cannot be set per route for echo "
        "(can: none)",
        "config.yaml:5: routes[0].options.prefix: Input should be a valid string (got 3)",
    ]


def test_yaml_syntax_error_has_a_line() -> None:
    assert problems("backends:\n  e: {type: echo\n") == [
        "config.yaml:3: not valid YAML: expected ',' or '}', but got '<stream end>'"
    ]


def test_telegram_credentials_are_only_required_to_run(tmp_path: Path) -> None:
    text = ("telegram:\n  api_id: ${TG_API_ID}\n  api_hash: ${TG_API_HASH}\n"
            "  bot_token: ${TG_BOT_TOKEN}\nbackends:\n  e: {type: echo}\ndefault: e\n")
    config = load_config_text(text, source="c.yaml", env={})
    with pytest.raises(ConfigError) as info:
        config.require_telegram()
    assert info.value.problems == [
        "c.yaml:2: telegram.api_id: environment variable TG_API_ID is not set",
        "c.yaml:3: telegram.api_hash: environment variable TG_API_HASH is not set",
        "c.yaml:4: telegram.bot_token: environment variable TG_BOT_TOKEN is not set",
    ]
    ok = load_config_text(text, env={"TG_API_ID": "12345", "TG_API_HASH": "0" * 32,
                                     "TG_BOT_TOKEN": "1:" + "x" * 35})
    assert ok.require_telegram().api_id == 12345


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {
        "TG_API_ID": "1", "TG_API_HASH": "0" * 32, "TG_BOT_TOKEN": "1:" + "t" * 35,
        "LUCYDREAM_API_KEY": "k", "SENSAY_ORG_SECRET": "s", "SENSAY_USER_ID": "u",
        "SENSAY_REPLICA_UUID":
        "03db5651-cb61-4bdf-9ef0-89561f7c9c53", "BAMBI_API_KEY": "b", "OPENAI_API_KEY": "o",
    }
    config = load_config(root / "config.example.yaml", env=env)
    assert config.data.default


def test_cli_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("backends:\n  e: {type: echo, prefx: x}\ndefault: e\n")
    result = subprocess.run([sys.executable, "-m", "tgmux", "check", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}:2: backends.e.prefx: unknown key 'prefx'\n"
    assert result.stdout == ""


def test_secret_values_are_never_echoed_in_errors() -> None:
    found = problems("""\
        backends:
          e: {type: echo, prefix: "x"}
        telegram:
          api_hash: 31415926535897932384
          bot_token: [1, 2]
        default: e
        """)
    assert "31415926535897932384" not in "\n".join(found)
    assert ("config.yaml:4: telegram.api_hash: Input should be a valid string (got a int; "
            "value not shown)") in found


def test_a_plugin_that_cannot_be_imported_has_file_and_line() -> None:
    (problem,) = problems("backends:\n  e: {type: echo}\ndefault: e\nplugins:\n  - no_such_mod\n")
    assert problem.startswith("config.yaml:5: plugins[0]: cannot import 'no_such_mod': ")


async def test_the_store_file_is_private(tmp_path: Path) -> None:
    import stat

    from tgmux.store import SQLiteStore

    store = SQLiteStore(tmp_path / "state" / "tgmux.db")
    await store.open()
    await store.kv_set("ns", "k", "v")
    await store.close()
    assert stat.S_IMODE((tmp_path / "state" / "tgmux.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_an_unusable_store_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    blocker = tmp_path / "file"
    blocker.write_text("")
    config.write_text(f'store: "sqlite:///{blocker}/sub/tgmux.db"\n'
                      "backends:\n  e: {type: echo}\ndefault: e\n")
    result = subprocess.run([sys.executable, "-m", "tgmux", "chat", "-c", str(config)],
                            input="hi\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {config}:1: store: cannot open sqlite:///{blocker}")
    assert "Traceback" not in result.stderr


def test_group_context_is_a_count_up_to_50() -> None:
    text = """\
        backends:
          echo: {type: echo}
        routes:
          - match: {chat_type: group}
            backend: echo
            group_context: %s
        """
    assert problems(text % 51) == [
        "config.yaml:6: routes[0].group_context: Input should be less than or equal to 50 "
        "(got 51)"]
    assert problems(text % -1) == [
        "config.yaml:6: routes[0].group_context: Input should be greater than or equal to 0 "
        "(got -1)"]
    config = load_config_text(textwrap.dedent(text % 50), source="config.yaml", env={})
    assert config.accounts["main"].routes[0].group_context == 50


def test_the_route_decides_the_group_context_whichever_backend_answers() -> None:
    from tgmux.router import Router
    from tgmux.types import ChatIdentity, IncomingMessage

    config = load_config_text(textwrap.dedent("""\
        backends:
          echo: {type: echo}
          other: {type: echo}
        routes:
          - match: {chat_type: group}
            backend: echo
            group_context: 7
        default: echo
        """), source="config.yaml", env={})
    router = Router(config)
    group = IncomingMessage(ChatIdentity("group", -5, user_id=1), "hi")
    private = IncomingMessage(ChatIdentity("private", 1, user_id=1), "hi")
    assert router.decide(group).group_context == 7
    assert router.decide(group, override="other").group_context == 7  # /backend other
    assert router.decide(private).group_context == 0  # default: has no such key
