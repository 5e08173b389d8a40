"""The command line as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ECHO_CONFIG = (
    'store: "memory://"\nbackends:\n  echo: {type: echo, prefix: "echo: "}\ndefault: echo\n'
)


def tgmux(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    return subprocess.run([sys.executable, "-m", "tgmux", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_piped_chat_prints_the_echo_and_exits(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ECHO_CONFIG)
    result = tgmux("chat", "-c", str(config), stdin="hello\nsecond line\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\necho: second line\n"


def test_chat_backend_flag_forces_a_backend(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ECHO_CONFIG.replace("default: echo",
                                          '  other: {type: echo, prefix: "o: "}\ndefault: echo'))
    result = tgmux("chat", "-c", str(config), "--backend", "other", stdin="hi\n")
    assert result.stdout == "o: hi\n"
    bad = tgmux("chat", "-c", str(config), "--backend", "nope", stdin="hi\n")
    assert bad.returncode == 2
    assert bad.stderr == "error: --backend: unknown backend 'nope' (defined: echo, other)\n"


def test_chat_state_persists_in_the_sqlite_store(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ECHO_CONFIG.replace('"memory://"', f'"sqlite:///{tmp_path}/t.db"')
                      .replace("default: echo", '  b: {type: echo, prefix: "b: "}\ndefault: echo')
                      + "admins: [1]\n")  # the console's user (--user-id)
    first = tgmux("chat", "-c", str(config), stdin="/backend b\n")
    assert first.stdout == "This chat now talks to: b\n"
    second = tgmux("chat", "-c", str(config), stdin="again\n")
    assert second.stdout == "b: again\n"


def test_demo_answers_offline() -> None:
    result = tgmux("demo", stdin="hello demo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello demo\n"


def test_version_and_backends_listing() -> None:
    from tgmux import __version__

    assert tgmux("--version").stdout == f"tgmux, version {__version__}\n"
    listing = tgmux("backends").stdout
    assert "  echo         tgmux.backends.echo.EchoBackend  [entry point (tgmux " in listing
    assert "tgmux.plugins.event_relay    tgmux.plugins.event_relay  [builtin]" in listing


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = tgmux("chat", "-c", str(tmp_path / "nope.yaml"), stdin="")
    assert result.returncode == 2
    missing = tmp_path / "nope.yaml"
    assert result.stderr == f"error: {missing}: cannot read: No such file or directory\n"


def test_check_says_ok_only_when_everything_it_checks_passed(tmp_path: Path) -> None:
    broken = tmp_path / "tgmux.db"
    broken.write_bytes(b"not a database" * 1024)
    broken.chmod(0o600)
    config = tmp_path / "config.yaml"
    config.write_text(ECHO_CONFIG.replace('"memory://"', f'"sqlite:///{broken}"'))
    failed = tgmux("check", str(config))
    assert failed.returncode == 2
    assert "OK" not in failed.stdout  # the config is fine, the store is not: no "OK" first
    (error,) = [line for line in failed.stderr.splitlines() if not line.startswith("warning:")]
    assert error.startswith(f"error: {config}:1: store: cannot open sqlite:///")
    broken.unlink()
    passed = tgmux("check", str(config))
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.splitlines()[-1] == f"{config}: OK"
    assert passed.stdout.count("OK") == 1
