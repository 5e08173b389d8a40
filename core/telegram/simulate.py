"""``tgmux simulate``: JSON lines in (incoming messages), JSON lines out (what tgmux sends),
through the real Pyrogram client on the fake Telegram (:mod:`tgmux.telegram.fake`).

Kept apart from :mod:`tgmux.telegram.run`: this module loads the fake, ``tgmux run`` must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from tgmux.config import Config
from tgmux.console import read_lines
from tgmux.hooks import PluginManager
from tgmux.ops import start_ops_server
from tgmux.reload import reloading
from tgmux.store import open_store
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.fake import (
    FakeTelegram,
    FloodModel,
    check_chat,
    infer_chat_type,
    offline_client,
)
from tgmux.telegram.fake.updates import MAX_INPUT_MESSAGE_ID, is_url
from tgmux.telegram.run import stop_signals
from tgmux.telegram.textsplit import utf16_len

__all__ = ["parse_input_line", "simulate"]


_INPUT_FIELDS: dict[str, type] = {
    "chat_id": int, "chat_type": str, "user_id": int, "username": str, "first_name": str,
    "text": str, "message_id": int, "thread_id": int, "reply_to_bot": bool, "photo": str,
    "voice": str, "sticker": str, "document": str, "account": str, "chat_title": str,
}
_MEDIA_FIELDS = ("photo", "voice", "sticker", "document")
#: Telegram's longest message text (UTF-16 code units), and the longest of the other strings
_MAX_TEXT = 4096
_MAX_STRING = 4096


def _check_string(key: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{key}: not valid Unicode (a lone surrogate "
                         f"{value[exc.start]!r} at character {exc.start + 1})") from None
    limit = _MAX_TEXT if key == "text" else _MAX_STRING
    if utf16_len(value) > limit:
        raise ValueError(f"{key}: longer than Telegram allows ({utf16_len(value)} UTF-16 code "
                         f"units; at most {limit})")


def parse_input_line(line: str) -> dict[str, Any]:
    """One ``tgmux simulate`` input line as keyword arguments for
    :meth:`FakeTelegram.incoming`; ValueError says what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(data) - set(_INPUT_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)} "
                         f"(known: {', '.join(_INPUT_FIELDS)})")
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        wanted = _INPUT_FIELDS[key]
        if (wanted is int and (isinstance(value, bool) or not isinstance(value, int))) or \
                not isinstance(value, wanted):
            raise ValueError(f"{key}: expected {'a number' if wanted is int else wanted.__name__}"
                             f", got {value!r}")
        if isinstance(value, str):
            _check_string(key, value)
        fields[key] = value
    for key in ("message_id", "thread_id"):
        if key in fields and not 0 < fields[key] <= MAX_INPUT_MESSAGE_ID:
            raise ValueError(f"{key}: a message id is 1 to {MAX_INPUT_MESSAGE_ID}, "
                             f"not {fields[key]}")
    if "user_id" not in fields:
        raise ValueError("user_id is required")
    if "text" not in fields and not any(k in fields for k in _MEDIA_FIELDS):
        raise ValueError("text is required (or one of: photo, voice, sticker, document)")
    chat_id = fields.get("chat_id", fields["user_id"])
    chat_type = fields.get("chat_type") or infer_chat_type(chat_id)
    check_chat(chat_id, chat_type, fields["user_id"])
    if "thread_id" in fields and chat_type != "supergroup":
        raise ValueError("thread_id: forum topics exist in supergroups only")
    if "chat_title" in fields and chat_type == "private":
        raise ValueError("chat_title: a private chat has no title")
    for key in ("photo", "voice", "document"):
        source = fields.get(key)
        if source is None:
            continue
        if is_url(source):
            raise ValueError(f"{key}: simulate is offline; give a local file path")
        if not Path(source).expanduser().is_file():
            raise ValueError(f"{key}: no such file: {source}")
    return fields


async def simulate(config: Config, plugin_manager: PluginManager, *, stdin: TextIO,
                   stdout: TextIO, bot_username: str = "tgmux_bot",
                   strict_flood: bool = False) -> int:
    """``tgmux simulate``: JSON lines in (incoming messages), JSON lines out (what tgmux
    sends), through the real Pyrogram client with a fake network. Exits 0 when the input
    ended and every reply was sent; 1 when some input line was invalid (reported on stderr
    with its line number, the other lines are still answered) or the output could not be
    written (said once on stderr; simulate stops at once).

    On SIGINT/SIGTERM it stops reading input, finishes the replies in flight (up to
    ``telegram.shutdown_timeout``) and exits as it would at the end of the input; a second
    signal acts as usual. SIGHUP reloads the config file (:mod:`tgmux.reload`).
    ``strict_flood``: each account's fake Telegram enforces Telegram's flood limits
    (:class:`~tgmux.telegram.fake.FloodModel`)."""
    several = len(config.accounts) > 1
    fakes = {name: FakeTelegram(bot_username=f"{name}_bot" if several
                                else bot_username.lstrip("@"),
                                flood=FloodModel() if strict_flood else None)
             for name in config.accounts}
    clients = {name: offline_client(fake, skip_updates=config.accounts[name].telegram
                                    .skip_updates)
               for name, fake in fakes.items()}
    app = TelegramApp(config, plugin_manager, clients)
    first = next(iter(fakes))
    stop = asyncio.Event()  # a signal, or the output failed
    output_error: list[BaseException] = []

    def write(action: dict[str, Any], account: str | None = None) -> None:
        if output_error:
            return
        if account is not None:  # a multi-account config says whose each action is
            action = {"account": account, **action}
        try:
            stdout.write(json.dumps(action, ensure_ascii=False) + "\n")
            stdout.flush()
        except (OSError, ValueError) as exc:  # a closed pipe, a closed file, an encoding
            output_error.append(exc)
            print(f"cannot write output: {exc}", file=sys.stderr)
            _forget_output(stdout, exc)
            stop.set()

    def on_signal() -> None:
        print("stop requested: the rest of the input is not read; finishing replies",
              file=sys.stderr)

    for name, fake in fakes.items():
        fake.listeners.append(functools.partial(write, account=name) if several else write)
    bad = 0
    await _remember_chats(fakes, config)
    with stop_signals(stop, on_signal), contextlib.ExitStack() as reload:
        await app.start()
        reload.enter_context(reloading(app.engine, plugin_manager))
        server = None
        stopped = asyncio.ensure_future(stop.wait())
        try:
            server = await start_ops_server(config, app.engine)
            if server is not None:  # the offline Telegram counts as connected
                for name, account in app.accounts.items():
                    server.add_check(f"account {name}", account.ready)
            lines = read_lines(stdin)
            number = 0
            while not stop.is_set():
                next_line = asyncio.ensure_future(lines.get())
                await asyncio.wait([next_line, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not next_line.done():
                    next_line.cancel()
                    break
                line = next_line.result()
                if line is None:
                    break
                number += 1
                if not line.strip():
                    continue
                try:
                    fields = parse_input_line(line)
                    account = fields.pop("account", first)
                    if account not in fakes:
                        raise ValueError(f"account: no account {account!r} (the config has: "
                                         f"{', '.join(fakes)})")
                    await fakes[account].incoming(**fields)
                except Exception as exc:  # ValueError: what is wrong; anything else: a backstop
                    bad += 1
                    print(f"input line {number}: {exc}", file=sys.stderr)
        finally:
            reload.close()  # no reload while stopping
            stopped.cancel()
            if server is not None:
                await server.stop()
            if output_error:
                await app.stop(0)  # nobody sees the replies: do not wait for them
            elif stop.is_set():
                await app.stop(config.data.telegram.shutdown_timeout)
            else:
                await app.stop(None)
    if output_error:
        return 1
    unknown = sorted({request for fake in fakes.values() for request in fake.unknown})
    if unknown:
        print(f"the fake Telegram got requests it does not know: {unknown}", file=sys.stderr)
        return 1
    return 1 if bad else 0


async def _remember_chats(fakes: dict[str, FakeTelegram], config: Config) -> None:
    """Tell each account's fake Telegram the chats of its unanswered messages in the store:
    an earlier run on the same store left them (killed mid-reply), the engine answers them or
    says it was restarted, and Telegram — unlike a fresh fake — would still know those chats."""
    store = open_store(config.data.store.url)
    await store.open()
    try:
        unanswered = {name: await store.inbox_unanswered(account=name) for name in fakes}
    finally:
        await store.close()
    for name, entries in unanswered.items():
        for entry in entries:
            chat = entry.payload.get("chat") if isinstance(entry.payload, dict) else None
            if isinstance(chat, dict):
                try:
                    fakes[name].remember_chat(**chat)
                except (TypeError, ValueError) as exc:  # a payload of another version
                    print(f"store: a chat of an earlier run is unusable here: {exc}",
                          file=sys.stderr)


def _forget_output(stdout: TextIO, exc: BaseException) -> None:
    """After a broken pipe, point the output's file descriptor at /dev/null: what is left in
    its buffer would fail again when the interpreter flushes it at exit."""
    if not isinstance(exc, BrokenPipeError):
        return
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stdout.fileno())
        finally:
            os.close(devnull)
