"""The console frontend (``tgmux chat``, ``tgmux demo``): the same engine, router, hooks and
store as Telegram, with the terminal as the chat.

Interactive in a terminal (streamed replies show as they come). When stdin is not a terminal it
reads one message per line, prints the replies, and exits after the last reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator
from typing import TextIO

from tgmux.backend import (
    Audio,
    ChatIdentity,
    ChatType,
    Image,
    Metadata,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Usage,
)
from tgmux.config import Config
from tgmux.engine import Engine
from tgmux.hangup import stopping as sighup_ignored
from tgmux.hooks import PluginManager
from tgmux.ops import start_ops_server
from tgmux.reload import reloading
from tgmux.store import open_store
from tgmux.types import IncomingMessage

log = logging.getLogger("tgmux.console")

#: How a console line in a group addresses the bot.
MENTION = re.compile(r"@bot\b[,:]?\s*", re.IGNORECASE)


class ConsoleFrontend:
    """Prints replies. In a terminal, streamed text is shown as it arrives."""

    def __init__(self, out: TextIO, *, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self._prefix = "bot> " if interactive else ""

    def _print(self, text: str) -> None:
        self.out.write(f"{self._prefix}{text}\n")
        self.out.flush()

    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        sent: list[ReplyPart] = []
        streamed = ""  # what is on screen of a streamed reply
        async for part in parts:
            if isinstance(part, TextDelta):
                if self.interactive:
                    if not streamed:
                        self.out.write(self._prefix)
                    self.out.write(part.text)
                    self.out.flush()
                streamed += part.text
                continue
            if streamed:
                self._finish_stream(streamed, part.text if isinstance(part, Text) else None)
                streamed = ""
                if isinstance(part, Text):
                    sent.append(part)
                    continue
            if isinstance(part, Text | Notice):
                self._print(part.text)
            elif isinstance(part, Image):
                self._print(_media_line("photo", part.url, part.data, part.caption))
            elif isinstance(part, Audio):
                kind = "voice" if part.voice else "audio"
                self._print(_media_line(kind, part.url, part.data, part.caption))
            elif isinstance(part, Metadata | Usage):
                continue
            sent.append(part)
        if streamed:
            self._finish_stream(streamed, None)
            sent.append(Text(streamed))
        return sent

    def _finish_stream(self, shown: str, final: str | None) -> None:
        if not self.interactive:
            self._print(final if final is not None else shown)
            return
        self.out.write("\n")
        if final is not None and final != shown:  # a plugin changed the final text
            self._print(final)
        self.out.flush()


def _media_line(kind: str, url: str | None, data: bytes | None, caption: str | None) -> str:
    where = url or f"{len(data or b'')} bytes"
    return f"[{kind}] {where}" + (f" — {caption}" if caption else "")


#: Lines read ahead of the engine at most (the reader thread waits when they are not taken).
MAX_PENDING_LINES = 1000


def read_lines(stream: TextIO, *, end_on_sigterm: bool = False) -> asyncio.Queue[str | None]:
    """Lines of ``stream`` read in a daemon thread (the loop never blocks on input, and an
    unfinished read never keeps the process alive, so Ctrl-C exits at once); None marks the
    end. At most :data:`MAX_PENDING_LINES` wait in the queue. With ``end_on_sigterm``, SIGTERM
    ends the input at once (lines read ahead are dropped: nothing took them yet), so the reply
    under way is finished before the process exits (a container's or systemd's stop)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_PENDING_LINES)

    def put(line: str | None) -> None:
        if loop.is_closed():
            raise RuntimeError("the event loop is gone")
        waiting = queue.put(line)
        try:
            future = asyncio.run_coroutine_threadsafe(waiting, loop)
        except RuntimeError:
            waiting.close()  # never scheduled: no "never awaited" warning
            raise
        future.result()

    def reader() -> None:
        try:
            for line in iter(stream.readline, ""):
                put(line)
        except Exception as exc:  # a closed or broken stdin ends the input
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(log.warning, "reading input failed: %s", exc)
        finally:
            with contextlib.suppress(Exception):  # the loop may be gone already
                put(None)

    if end_on_sigterm:
        def on_sigterm() -> None:
            # Once: a second SIGTERM ends the process as usual.
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGTERM)
            log.warning("stop requested; finishing the reply under way, reading no more input")
            while not queue.empty():  # lines read ahead are not taken yet: not read at all
                queue.get_nowait()
            queue.put_nowait(None)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    threading.Thread(target=reader, name="tgmux-stdin", daemon=True).start()
    return queue


async def chat_loop(engine: Engine, *, stdin: TextIO, out: TextIO, interactive: bool,
                    chat_id: int, user_id: int, chat_type: ChatType,
                    username: str | None = "console", end_on_sigterm: bool = False) -> None:
    """Read messages until end of input (or SIGTERM, with ``end_on_sigterm``); each is
    answered before the next is read (a chat is in order anyway, and the console shows one
    conversation)."""
    lines = read_lines(stdin, end_on_sigterm=end_on_sigterm)
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = await lines.get()
        if line is None:
            if interactive:
                out.write("\n")
            return
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        # In a group the bot is addressed as on Telegram: by a mention ("@bot hi", stripped as
        # the Telegram frontend strips its own @username) or a command; other lines are chatter
        # that only group_trigger: always answers.
        addressed = chat_type == "private"
        if not addressed and MENTION.match(text):
            text, addressed = MENTION.sub("", text, count=1), True
        # message_id None: the console has no message ids to deduplicate by.
        message = IncomingMessage(
            chat=ChatIdentity(chat_type=chat_type, chat_id=chat_id, user_id=user_id,
                              username=username, message_id=None),
            text=text,
            addressed=addressed,
        )
        done = await engine.submit(message)
        await done


async def run_console(config: Config, pm: PluginManager, *, chat_id: int, user_id: int,
                      chat_type: ChatType, stdin: TextIO, stdout: TextIO,
                      banner: str | None = None) -> int:
    """``tgmux chat`` (and ``tgmux demo``): the engine on the config's store with this console
    as its frontend, until the input ends. SIGHUP reloads the config file."""
    interactive = stdin.isatty()
    engine = Engine(config, pm, open_store(config.data.store.url),
                    ConsoleFrontend(stdout, interactive=interactive))
    await engine.start()
    server = None
    try:
        server = await start_ops_server(config, engine)
        if banner and interactive:
            stdout.write(banner + "\n")
        with reloading(engine, pm):
            await chat_loop(engine, stdin=stdin, out=stdout, interactive=interactive,
                            chat_id=chat_id, user_id=user_id, chat_type=chat_type,
                            end_on_sigterm=True)
    finally:
        sighup_ignored()  # stopping (also when the start never got as far as the reloader)
        try:
            await engine.stop()
        finally:  # last: the reply being finished may hand out its media links
            if server is not None:
                await server.stop()
    return 0
