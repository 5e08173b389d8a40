"""``tgmux simulate``: JSON lines in, JSON lines out, through the real Pyrogram client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
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
    assert (out[0]["action"], out[0]["scope"]) == ("set_commands", "default")
    # everyone's menu: no admin-only /status (admins get their own)
    assert [c["command"] for c in out[0]["commands"]] == ["start", "help", "reset", "backend",
                                                          "usage", "shout"]
    sent = sorted((a for a in out if a["action"] == "send_message"), key=lambda a: a["chat_id"])
    assert sent == [
        {"action": "send_message", "chat_id": -1001234567890, "message_id": 1001,
         "text": "echo: hi", "reply_to_message_id": 17, "message_thread_id": 5},
        {"action": "send_message", "chat_id": 42, "message_id": 1001, "text": "echo: hi"},
    ]
    # the same input again over the same store: nothing is answered twice
    second = simulate(config, lines)
    assert second.returncode == 0, second.stderr
    assert [(a["action"], a["scope"]) for a in actions(second)] == [
        ("set_commands", "default"), ("set_commands", "all_private_chats"),
        ("set_commands", "all_group_chats")]
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
        ('{"user_id": 1, "chat_id": -5, "thread_id": 3, "text": "x"}', "a group has no topics"),
        ('{"user_id": 1, "photo": "/nonexistent.png"}', "no such file"),
        ('{"user_id": 1, "text": "x", "media_group_id": "a1"}', "only a media"),
        ('{"user_id": 1, "sticker": "x", "media_group_id": 7}', "media_group_id: expected str"),
    ]:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
            parse_input_line(line)
    # chat types follow from Bot API chat ids
    group = parse_input_line('{"user_id": 1, "chat_id": -42, "text": "x"}')
    assert "chat_type" not in group  # inferred: a basic group


# -- input that cannot be a Telegram message, output that cannot be written, signals ----------


def test_impossible_input_lines_are_reported_and_later_lines_still_answered(config: Path):
    lines = [
        '{"user_id": 100000000000000000000000000, "text": "huge user"}',
        '{"user_id": 1099511627776, "text": "user id above 2^40 - 1"}',
        '{"user_id": 5, "message_id": 1099511627776, "text": "message id 2^40"}',
        '{"user_id": 5, "message_id": 0, "text": "message id 0"}',
        '{"user_id": 5, "chat_id": -1001234567890, "thread_id": 4294967296, "text": "x"}',
        '{"user_id": 5, "chat_id": -9000000000000, "text": "no such chat id"}',
        '{"user_id": 5, "text": "\\ud83d"}',
        '{"user_id": 5, "username": "\\udc00", "text": "x"}',
        '{"user_id": 5, "text": "' + "x" * 4097 + '"}',
        '{"user_id": 7, "text": "after"}',
    ]
    result = simulate(config, lines)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.stderr.strip().splitlines()
    assert [e.split(":", 1)[0] for e in errors] == [f"input line {n}" for n in range(1, 10)]
    for error, problem in zip(errors, [
        "user_id: a Telegram user id is 1 to 1099511627775",
        "user_id: a Telegram user id is 1 to 1099511627775",
        "message_id: a message id is 1 to 2000000000",
        "message_id: a message id is 1 to 2000000000",
        "thread_id: a message id is 1 to 2000000000",
        "chat_id: not a Telegram chat id",
        "text: not valid Unicode (a lone surrogate '\\ud83d' at character 1)",
        "username: not valid Unicode",
        "text: longer than Telegram allows (4097 UTF-16 code units; at most 4096)",
    ], strict=True):
        assert problem in error, (problem, error)
    texts = [a["text"] for a in actions(result) if a["action"] == "send_message"]
    assert texts == ["echo: after"]


def test_a_photo_url_is_refused_simulate_stays_offline(config: Path):
    for key in ("photo", "voice", "document"):
        with pytest.raises(ValueError, match=f"^{key}: simulate is offline; give a local file "
                                             "path$"):
            parse_input_line(json.dumps({"user_id": 1, key: "https://example.com/cat.jpg"}))
    result = simulate(config, ['{"user_id": 9, "photo": "https://example.com/cat.jpg"}',
                               '{"user_id": 9, "text": "after"}'])
    assert result.returncode == 1
    assert result.stderr.strip() == ("input line 1: photo: simulate is offline; give a local "
                                     "file path")
    assert [a["text"] for a in actions(result) if a["action"] == "send_message"] == \
        ["echo: after"]


def test_the_fake_telegram_never_fetches_a_url():
    from tgmux.telegram.fake import FakeTelegram

    with pytest.raises(ValueError, match="offline"):
        FakeTelegram().build_incoming(user_id=1, photo="https://example.com/cat.jpg")


class Unwritable(io.StringIO):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise self.error


@pytest.mark.parametrize("error", [
    UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range(128)"),
    BrokenPipeError(32, "Broken pipe"),
    ValueError("I/O operation on closed file."),
], ids=["encoding", "broken-pipe", "closed"])
async def test_output_that_cannot_be_written_is_an_error(tmp_path: Path, capsys, error):
    from tgmux.bootstrap import load_config_text
    from tgmux.hooks import build_plugin_manager
    from tgmux.telegram.simulate import simulate as run_simulate

    config = load_config_text("store: memory://\nbackends:\n  echo: {type: echo}\n"
                              "default: echo\n", source="config.yaml", env={})
    out = Unwritable(error)
    lines = "".join(json.dumps({"user_id": 7, "text": f"m{i}"}) + "\n" for i in range(5))
    code = await asyncio.wait_for(run_simulate(config, build_plugin_manager(),
                                               stdin=io.StringIO(lines), stdout=out), 10)
    assert code == 1
    assert out.writes == 1  # stopped at the first failure
    assert capsys.readouterr().err.strip().splitlines() == [f"cannot write output: {error}"]


def test_a_closed_output_pipe_stops_simulate_with_status_1(config: Path):
    proc = subprocess.Popen([sys.executable, "-m", "tgmux", "simulate", "-c", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader went away
    _, err = proc.communicate('{"user_id": 7, "text": "hi"}\n', timeout=30)
    assert proc.returncode == 1, err
    said = [line for line in err.splitlines() if "cannot write output" in line]
    assert said == ["cannot write output: [Errno 32] Broken pipe"], err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_sigterm_stops_reading_input_and_finishes_replies(tmp_path: Path):
    from child import Child, child_env, gated_config, hold, let_go, wait_file

    # the reply is held until SIGTERM was taken: the signal always lands mid-turn (a fixed
    # delay raced the reply on a loaded machine)
    hold(tmp_path, "reply-1")
    config = gated_config(tmp_path, "telegram: {shutdown_timeout: 10}\n")
    proc = Child("simulate", "-c", str(config), env=child_env(tmp_path))
    try:
        proc.write('{"user_id": 7, "text": "wait"}\n')  # the input stays open
        wait_file(tmp_path / "reply-1", child=proc)  # the backend has the message
        proc.signal(signal.SIGTERM)
        proc.wait_log("stop requested")
        let_go(tmp_path, "reply-1")
        code = proc.wait()
    finally:
        proc.kill()
    assert code == 0, proc.stderr()
    sent = [json.loads(line) for line in proc.stdout().splitlines()]
    assert [a["text"] for a in sent if a["action"] == "send_message"] == ["gated: wait"]
    assert "Traceback" not in proc.stderr()


def killed_and_run_again(config: Path, lines: list[str],
                         before_kill: Callable[[], None] = lambda: None
                         ) -> subprocess.CompletedProcess[str]:
    """A simulate run given ``lines``, killed with SIGKILL (nothing finished, nothing closed)
    once a backend has the first (its typing shows) and ``before_kill`` returned; then the
    next run over the same store, with no input (it answers what the first left)."""
    command = [sys.executable, "-m", "tgmux", "simulate", "-c", str(config)]
    env = {"PYTHONPATH": str(Path(__file__).parent), "PATH": "/usr/bin:/bin"}
    first = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        first.stdin.write("".join(line + "\n" for line in lines))
        first.stdin.flush()
        while "chat_action" not in first.stdout.readline():
            assert first.poll() is None, first.stderr.read()
        before_kill()
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    second = subprocess.run(command, input="", capture_output=True, text=True, timeout=30,
                            env=env)
    assert second.returncode == 0, second.stderr
    return second


@pytest.mark.parametrize("line", [
    '{"user_id": 7, "username": "alice", "text": "wait 30"}',
    '{"chat_id": -1001234567890, "user_id": 8, "text": "@tgmux_bot wait 30", "thread_id": 5}',
    '{"chat_id": -4012345678, "user_id": 9, "text": "@tgmux_bot wait 30"}',
], ids=["private", "topic", "group"])
def test_a_run_killed_mid_reply_is_told_to_its_user_by_the_next_run(tmp_path: Path, line):
    config = tmp_path / "config.yaml"
    config.write_text(f"store: sqlite:///{tmp_path / 'sim.db'}\nplugins: [tg_test_backends]\n"
                      "backends:\n  slow: {type: slow}\ndefault: slow\n")
    second = killed_and_run_again(config, [line])
    sent = [a for a in actions(second) if a["action"] == "send_message"]
    chat_id = json.loads(line).get("chat_id", 7)
    assert len(sent) == 1 and sent[0]["chat_id"] == chat_id, second.stdout + second.stderr
    assert sent[0]["text"].startswith("I was restarted while answering your message")
    if "thread_id" in line:
        assert sent[0]["message_thread_id"] == 5


def test_a_photo_replayed_after_a_kill_reaches_its_backend_with_its_bytes(tmp_path: Path):
    """The photo waits in its chat behind a slow reply (accepted, not dispatched) when the run
    is killed; the next run, a new process with a new fake Telegram, replays it and the
    backend reads the exact bytes, fetched by the file id the inbox kept."""
    photo = tmp_path / "cat.png"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
    photo.write_bytes(data)
    db = tmp_path / "sim.db"
    config = tmp_path / "config.yaml"
    config.write_text(f"store: sqlite:///{db}\nplugins: [tg_test_backends]\n"
                      "backends:\n  media: {type: media}\ndefault: media\n")

    def photo_waits_in_the_inbox() -> None:
        deadline = time.monotonic() + 10
        while inbox_state(db, 9, 2) != "pending":  # accepted, behind the first
            assert time.monotonic() < deadline, inbox_state(db, 9, 2)
            time.sleep(0.05)
        assert inbox_state(db, 9, 1) == "dispatched"

    second = killed_and_run_again(
        config, [json.dumps({"user_id": 9, "text": "wait 30"}),
                 json.dumps({"user_id": 9, "text": "sha256", "photo": str(photo)})],
        before_kill=photo_waits_in_the_inbox)
    sent = [a["text"] for a in actions(second) if a["action"] == "send_message"]
    assert len(sent) == 2, second.stdout + second.stderr
    assert sent[0].startswith("I was restarted while answering your message")  # the first
    assert sent[1] == f"got photo sha256 {hashlib.sha256(data).hexdigest()}", second.stderr
    assert inbox_state(db, 9, 2) == "done"


def inbox_state(db: Path, chat_id: int, message_id: int) -> str | None:
    """A message's inbox state, read beside the running process (SQLite in WAL mode)."""
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        try:
            row = conn.execute("SELECT state FROM inbox WHERE chat_id = ? AND message_id = ?",
                               (chat_id, message_id)).fetchone()
        except sqlite3.OperationalError:  # the table is not there yet
            return None
    return row[0] if row else None


def test_strict_flood_enforces_telegrams_limits(config: Path):
    """The config allows 100 messages/s per private chat, Telegram 1/s (bursts of 3): with
    --strict-flood the fourth reply is refused with FLOOD_WAIT, waited out, and every reply
    still arrives, in order; without it nothing is refused."""
    for user, flag, refused in ((42, "--strict-flood", True), (43, None, False)):
        lines = [json.dumps({"user_id": user, "text": f"m{i}"}) for i in range(5)]
        result = simulate(config, lines, *([flag] if flag else []))
        assert result.returncode == 0, result.stderr
        texts = [a["text"] for a in actions(result) if a["action"] == "send_message"]
        assert texts == [f"echo: m{i}" for i in range(5)]
        assert ("Telegram asks to wait 1 s" in result.stderr) is refused
