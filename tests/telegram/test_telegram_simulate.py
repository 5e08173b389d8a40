"""``tgmux simulate``: JSON lines in, JSON lines out, through the real Pyrogram client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tgmux.telegram.simulate import parse_input_line

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
store: sqlite:///{db}
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""

ISSUE_EXAMPLE = ('{"chat_id": -1001234567890, "chat_type": "supergroup", "user_id": 42, '
                 '"username": "alice", "first_name": "Alice", "text": "@tgmux_bot hi", '
                 '"message_id": 17, "thread_id": 5, "reply_to_bot": false}')


def simulate(config: Path, lines: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tgmux", "simulate", "-c", str(config), *args],
        input="".join(line + "\n" for line in lines), capture_output=True, text=True,
        timeout=30,
    )


def actions(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace("{db}", str(tmp_path / "tgmux.db")))
    return path


def test_readme_example_and_restart_behaviour(config: Path):
    lines = ['{"user_id": 42, "username": "alice", "text": "hi"}', ISSUE_EXAMPLE]
    first = simulate(config, lines)
    assert first.returncode == 0, first.stderr
    out = actions(first)
    assert out[0]["action"] == "set_commands"
    assert [c["command"] for c in out[0]["commands"]] == ["start", "help", "reset", "backend",
                                                          "shout"]
    sent = sorted((a for a in out if a["action"] == "send_message"), key=lambda a: a["chat_id"])
    assert sent == [
        {"action": "send_message", "chat_id": -1001234567890, "message_id": 1001,
         "text": "echo: hi", "reply_to_message_id": 17, "message_thread_id": 5},
        {"action": "send_message", "chat_id": 42, "message_id": 1001, "text": "echo: hi"},
    ]
    # the same input again over the same store: nothing is answered twice
    second = simulate(config, lines)
    assert second.returncode == 0, second.stderr
    assert [a["action"] for a in actions(second)] == ["set_commands"]
    # new messages still are (ids auto-increment per chat in the input)
    third = simulate(config, [*lines, '{"user_id": 42, "text": "more"}'])
    assert [a.get("text") for a in actions(third) if a["action"] == "send_message"] == \
        ["echo: more"]


def test_bad_lines_are_reported_and_the_rest_answered(config: Path, tmp_path: Path):
    config.write_text(config.read_text().replace(str(tmp_path / "tgmux.db"), "memory://")
                      .replace("sqlite:///memory://", "memory://"))
    lines = ['{"user_id": 7, "text": "one"}', "not json", '{"text": "no user"}',
             '{"user_id": 7, "txt": "typo"}', "", '{"user_id": 7, "text": "@ai_bot two"}']
    result = simulate(config, lines, "--bot-username", "ai_bot")
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith("input line 2: not JSON")
    assert errors[1] == "input line 3: user_id is required"
    assert errors[2].startswith("input line 4: unknown field(s): txt")
    texts = [a["text"] for a in actions(result) if a["action"] == "send_message"]
    assert texts == ["echo: one", "echo: two"]  # @ai_bot is the bot's own name here


def test_photo_input_reaches_a_backend_that_takes_photos(tmp_path: Path):
    photo = tmp_path / "cat.png"
    photo.write_bytes(b"\x89PNG" + b"\x00" * 100)
    config = tmp_path / "config.yaml"
    config.write_text("store: memory://\nplugins: [tg_test_backends]\n"
                      "backends:\n  media: {type: media}\ndefault: media\n")
    env_path = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-m", "tgmux", "simulate", "-c", str(config)],
        input=json.dumps({"user_id": 9, "text": "", "photo": str(photo)}) + "\n"
        + json.dumps({"user_id": 9, "text": "photo bytes"}) + "\n",
        capture_output=True, text=True, timeout=30,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    out = [a for a in actions(result) if a["action"] not in ("set_commands", "chat_action")]
    assert out[0] == {"action": "send_message", "chat_id": 9, "message_id": 1001,
                      "text": "got photo (104 bytes)"}
    assert out[1]["action"] == "send_photo" and out[1]["text"] == "a png"
    assert out[1]["media"].startswith("bytes:") and out[1]["media"].endswith(":72")


def test_input_line_validation():
    assert parse_input_line('{"user_id": 1, "text": "x"}') == {"user_id": 1, "text": "x"}
    fields = parse_input_line(ISSUE_EXAMPLE)
    assert fields["thread_id"] == 5 and fields["reply_to_bot"] is False
    for line, problem in [
        ('[1]', "expected a JSON object"),
        ('{"user_id": "42", "text": "x"}', "user_id: expected a number"),
        ('{"user_id": true, "text": "x"}', "user_id: expected a number"),
        ('{"user_id": 1}', "text is required"),
        ('{"user_id": 1, "chat_id": 2, "text": "x"}', "a private chat's chat_id"),
        ('{"user_id": 1, "chat_id": -5, "chat_type": "supergroup", "text": "x"}', "-100"),
        ('{"user_id": 1, "chat_id": -5, "thread_id": 3, "text": "x"}', "supergroups only"),
        ('{"user_id": 1, "photo": "/nonexistent.png"}', "no such file"),
    ]:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
            parse_input_line(line)
    # chat types follow from Bot API chat ids
    group = parse_input_line('{"user_id": 1, "chat_id": -42, "text": "x"}')
    assert "chat_type" not in group  # inferred: a basic group
