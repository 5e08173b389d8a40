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
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from pyrogram.errors import Unauthorized

from tgmux.config import Config
from tgmux.console import read_lines
from tgmux.errors import ConfigError
from tgmux.hangup import stopping as sighup_ignored
from tgmux.hooks import PluginManager
from tgmux.ops import start_ops_server
from tgmux.redact import redact_urls
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
from tgmux.telegram.fake.faults import HANG, check_method
from tgmux.telegram.fake.updates import (
    DELIVERIES,
    MAX_INPUT_MESSAGE_ID,
    check_entities,
    is_url,
)
from tgmux.telegram.run import stop_signals
from tgmux.telegram.store_session import StoreSession
from tgmux.telegram.textsplit import utf16_len

__all__ = ["parse_control_line", "parse_fault", "parse_input_line", "simulate"]


_INPUT_FIELDS: dict[str, type] = {
    "chat_id": int, "chat_type": str, "user_id": int, "username": str, "first_name": str,
    "text": str, "message_id": int, "thread_id": int, "reply_to_bot": bool, "photo": str,
    "voice": str, "sticker": str, "document": str, "account": str, "chat_title": str,
    "delivery": str, "date": int, "entities": list, "reply_to_message_id": int, "quote": str,
    "media_group_id": str,
}
#: control lines (``{"telegram": ...}``): their fields, and which are required
_CONTROL_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    "revoke_session": {},
    "ban_account": {},
    "disconnect": {"seconds": (float, True)},
    "fault": {"method": (str, True), "error": (str, True), "times": (int, False)},
    "pause": {"seconds": (float, True)},
}
#: the longest a control line's ``seconds`` may be
_MAX_SECONDS = 3600.0
_ERROR = re.compile(r"^[A-Z][A-Z0-9_]{1,99}$")
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


def parse_control_line(data: dict[str, Any]) -> dict[str, Any]:
    """A control line (``{"telegram": "fault", ...}``): its fields, checked; ValueError
    says what is wrong."""
    kind = data["telegram"]
    if kind not in _CONTROL_FIELDS:
        raise ValueError(f"telegram: one of {', '.join(_CONTROL_FIELDS)}, not {kind!r}")
    known = _CONTROL_FIELDS[kind]
    unknown = sorted(set(data) - set(known) - {"telegram", "account"})
    if unknown:
        raise ValueError(f"unknown field(s) for telegram {kind!r}: {', '.join(unknown)} "
                         f"(known: {', '.join(['account', *known]) })")
    fields: dict[str, Any] = {"telegram": kind}
    if data.get("account") is not None:
        if not isinstance(data["account"], str):
            raise ValueError(f"account: expected str, got {data['account']!r}")
        fields["account"] = data["account"]
    for key, (wanted, required) in known.items():
        value = data.get(key)
        if value is None:
            if required:
                raise ValueError(f"{key} is required for telegram {kind!r}")
            continue
        number = wanted in (int, float)
        if (number and (isinstance(value, bool) or not isinstance(value, (int, float)))) or \
                (wanted is int and not isinstance(value, int)) or \
                (not number and not isinstance(value, wanted)):
            raise ValueError(f"{key}: expected {'a number' if number else wanted.__name__}, "
                             f"got {value!r}")
        fields[key] = value
    if "seconds" in fields and not 0 <= fields["seconds"] <= _MAX_SECONDS:
        raise ValueError(f"seconds: 0 to {_MAX_SECONDS:.0f}, not {fields['seconds']}")
    if kind == "fault":
        parse_fault(fields["method"], fields["error"], fields.get("times", 1))
    return fields


def parse_fault(method: str, error: str, times: int = 1) -> None:
    """Check a fault (``--fault`` or a control line); ValueError says what is wrong."""
    check_method(method)
    if not _ERROR.match(error) or error == HANG:  # a request that never ends: test kit only
        raise ValueError(f"error: a Telegram error as it says it (FLOOD_WAIT_30, "
                         f"RPC_CALL_FAIL, TIMEOUT...), not {error!r}")
    if times < 1:
        raise ValueError(f"times: at least 1, not {times}")


def parse_input_line(line: str) -> dict[str, Any]:
    """One ``tgmux simulate`` input line as keyword arguments for
    :meth:`FakeTelegram.incoming` (or, for a control line, :func:`parse_control_line`'s
    fields, with ``telegram``); ValueError says what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if "telegram" in data:
        return parse_control_line(data)
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
    for key in ("message_id", "thread_id", "reply_to_message_id"):
        if key in fields and not 0 < fields[key] <= MAX_INPUT_MESSAGE_ID:
            raise ValueError(f"{key}: a message id is 1 to {MAX_INPUT_MESSAGE_ID}, "
                             f"not {fields[key]}")
    if "user_id" not in fields:
        raise ValueError("user_id is required")
    check_entities(fields.get("text", ""), fields.get("entities", []))
    if "quote" in fields and "reply_to_message_id" not in fields:
        raise ValueError("quote: a quote is part of the message replied to; give "
                         "reply_to_message_id too")
    if "reply_to_message_id" in fields and fields.get("reply_to_bot"):
        raise ValueError("reply_to_message_id and reply_to_bot: give one of them")
    if "text" not in fields and not any(k in fields for k in _MEDIA_FIELDS):
        raise ValueError("text is required (or one of: photo, voice, sticker, document)")
    chat_id = fields.get("chat_id", fields["user_id"])
    chat_type = fields.get("chat_type") or infer_chat_type(chat_id)
    check_chat(chat_id, chat_type, fields["user_id"])
    if "thread_id" in fields and chat_type not in ("supergroup", "private"):
        raise ValueError(f"thread_id: a {chat_type} has no topics (topics exist in supergroups "
                         "and private chats)")
    if "delivery" in fields:
        if fields["delivery"] not in DELIVERIES:
            raise ValueError(f"delivery: one of {', '.join(DELIVERIES)}, not "
                             f"{fields['delivery']!r}")
        if fields["delivery"] == "short" and chat_type in ("supergroup", "channel"):
            raise ValueError(f"delivery: Telegram has no compact form for a {chat_type} "
                             "message (push, gap or too_long)")
    if "date" in fields and not 0 <= fields["date"] < 2**31:
        raise ValueError(f"date: a unix time (0 to {2**31 - 1}), not {fields['date']}")
    if "media_group_id" in fields and not any(k in fields for k in _MEDIA_FIELDS):
        raise ValueError("media_group_id: only a media (photo, voice, sticker, document) is "
                         "in an album; give one of them too")
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
                   strict_flood: bool = False, telegram_state: str | Path | None = None,
                   latency_ms: float = 0.0, seed: int | None = None,
                   faults: list[tuple[str, str, int | None]] = ()) -> int:
    """``tgmux simulate``: JSON lines in (incoming messages), JSON lines out (what tgmux
    sends), through the real Pyrogram client with a fake network. Exits 0 when the input
    ended and every reply was sent; 1 when some input line was invalid (reported on stderr
    with its line number, the other lines are still answered) or the output could not be
    written (said once on stderr; simulate stops at once).

    On SIGINT/SIGTERM it stops reading input, finishes the replies in flight (up to
    ``telegram.shutdown_timeout``) and exits as it would at the end of the input; a second
    signal acts as usual. SIGHUP reloads the config file (:mod:`tgmux.reload`).
    ``strict_flood``: each account's fake Telegram enforces Telegram's flood limits
    (:class:`~tgmux.telegram.fake.FloodModel`). ``telegram_state``: the fake Telegram's
    state file (kept across runs; each account's client keeps its session beside it);
    ``latency_ms``, ``seed``: network latency and its random seed; ``faults``: (method,
    error, times) in force from the start. See docs/simulate.md."""
    several = len(config.accounts) > 1
    fakes: dict[str, FakeTelegram] = {}
    sessions: dict[str, Any] = {}
    store = open_store(config.data.store.url)  # the sessions and update positions, with it
    try:
        for name in config.accounts:
            state = None
            if telegram_state is not None:
                path = Path(telegram_state)
                state = path if not several else path.with_name(f"{path.name}-{name}")
                # (a session file beside the state file, of an earlier tgmux: taken over)
                sessions[name] = StoreSession(
                    store, name, session_file=state.parent / f"{state.name}.{name}.session")
            fakes[name] = FakeTelegram(
                bot_username=f"{name}_bot" if several else bot_username.lstrip("@"),
                flood=FloodModel() if strict_flood else None, latency=latency_ms / 1000,
                seed=None if seed is None else f"{seed}:{name}" if several else seed,
                state=state)
            for method, error, times in faults:
                fakes[name].fail(method, error, times=times)
    except ValueError as exc:  # a state file that is not one, of another account
        print(f"--telegram-state: {exc}", file=sys.stderr)
        for fake in fakes.values():
            fake.close()
        return 1
    clients = {name: offline_client(fake, skip_updates=config.accounts[name].telegram
                                    .skip_updates, storage=sessions.get(name))
               for name, fake in fakes.items()}
    app = TelegramApp(config, plugin_manager, clients, store=store,
                      new_telegram=telegram_state is None)
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
        try:
            await app.start()
        except Unauthorized as exc:  # a state file whose session was revoked, a banned account
            print(f"telegram: the account cannot start: {exc.ID} (the offline Telegram's "
                  "state says its session was revoked or the account banned)",
                  file=sys.stderr)
            for fake in fakes.values():
                fake.close()
            return 3
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
                    if "telegram" in fields:
                        await _control(fakes[account], fields, stopped)
                    else:
                        await fakes[account].incoming(**fields)
                except Exception as exc:  # ValueError: what is wrong; anything else: a backstop
                    bad += 1
                    print(f"input line {number}: {exc}", file=sys.stderr)
        finally:
            reload.close()  # no reload while stopping
            sighup_ignored()
            if not stop.is_set():  # what Telegram still holds for the bot is fetched first
                owed = await _caught_up(fakes, stopped,
                                        config.data.telegram.shutdown_timeout,
                                        [a.updates for a in app.accounts.values()])
                if owed:
                    bad += 1
            stopped.cancel()
            try:
                if output_error:
                    await app.stop(0)  # nobody sees the replies: do not wait for them
                elif stop.is_set():
                    await app.stop(config.data.telegram.shutdown_timeout)
                else:
                    await app.stop(None)
            finally:  # last: the replies being finished may hand out its media links
                if server is not None:
                    await server.stop()
                for fake in fakes.values():
                    fake.close()
    if output_error or app.lost:  # lost: each logged by chat and message id
        return 1
    unknown = sorted({request for fake in fakes.values() for request in fake.unknown})
    if unknown:
        print(f"the fake Telegram got requests it does not know: {unknown}", file=sys.stderr)
        return 1
    return 1 if bad else 0


async def _control(fake: FakeTelegram, fields: dict[str, Any],
                   stopped: asyncio.Future[Any]) -> None:
    """Carry out a control line on one account's fake Telegram."""
    kind = fields["telegram"]
    if kind == "revoke_session":
        fake.revoke_session()
    elif kind == "ban_account":
        fake.ban_account()
    elif kind == "disconnect":
        fake.disconnect(fields["seconds"])
    elif kind == "fault":
        fake.fail(fields["method"], fields["error"], times=fields.get("times", 1))
    elif kind == "pause":  # stop reading input for a while (a signal ends it)
        await asyncio.wait([stopped], timeout=fields["seconds"])


async def _caught_up(fakes: dict[str, FakeTelegram], stopped: asyncio.Future[Any],
                     timeout: float, streams: tuple[Any, ...] | list[Any] = ()) -> int:
    """Wait (up to ``timeout`` s, or a signal) until every account's client was served what
    its Telegram holds for it, and its update stream holds nothing back (a gap, a new
    channel's start, the catch-up at start: what a killed run was sent but never took is
    fetched by it, and the fake cannot know of it); say on stderr what was not, and return
    how many."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for fake in fakes.values():
        await fake.settle_pushes(timeout)
    while (any(f.undelivered and f.account_error is None for f in fakes.values())
           or any(s is not None and s.holding for s in streams)) \
            and loop.time() < deadline and not stopped.done():
        await asyncio.wait([stopped], timeout=0.05)
    owed = 0
    if not stopped.done():
        for stream in streams:
            if stream is not None and stream.holding:
                owed += 1
                print(f"account {stream.account}: the update stream was still fetching what "
                      f"arrived while it was down after {timeout:g} s", file=sys.stderr)
    for name, fake in fakes.items():
        if fake.undelivered and fake.account_error is None:
            keys = list(fake.undelivered)
            owed += len(keys)
            shown = ", ".join(f"chat {c} message {m}" for c, m in keys[:5])
            print(f"account {name}: the client never fetched {len(keys)} message(s) Telegram "
                  f"holds for it ({shown}{', …' if len(keys) > 5 else ''}): a gap it did not "
                  "fill, or a fetch that failed", file=sys.stderr)
    return owed


async def _remember_chats(fakes: dict[str, FakeTelegram], config: Config) -> None:
    """Tell each account's fake Telegram the chats of its unanswered messages in the store:
    an earlier run on the same store left them (killed mid-reply), the engine answers them or
    says it was restarted, and Telegram — unlike a fresh fake — would still know those chats."""
    store = open_store(config.data.store.url)
    try:  # one line and exit 2, as the engine says it when it cannot open the store
        await store.open()
    except Exception as exc:
        raise ConfigError(redact_urls(f"{config.where(('store',))}: cannot open "
                                      f"{config.data.store.url}: {exc}")) from exc
    try:
        unanswered = {name: await store.inbox_unanswered(account=name) for name in fakes}
    except Exception as exc:
        raise ConfigError(redact_urls(f"{config.where(('store',))}: cannot read "
                                      f"{config.data.store.url}: {exc}")) from exc
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
