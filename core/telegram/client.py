"""Building the Pyrogram (kurigram) ``Client`` for ``tgmux run``, and its session storage.

The session lives in ``<data_dir>/<session_name>.session`` (directory 0700, file 0600), for a
bot token, a session string or an interactively authorized user account alike: a persistent
session keeps Telegram's update state, which is what lets tgmux catch up on messages that
arrived while it was down (``skip_updates: false``). A session string seeds the file; the file
is reset when the configured bot token or session string belongs to another account.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pyrogram import Client, enums
from pyrogram.storage import SQLiteStorage

from tgmux.config import Config, TelegramConfig

log = logging.getLogger("tgmux.telegram")

#: Client options every tgmux client uses (run, simulate, the test kit):
#: - one dispatcher worker: handlers see a chat's updates in arrival order (the handler only
#:   queues the message; replies run in the engine, concurrently across chats);
#: - no extra requests while parsing an update (replied-to messages, topics, stories,
#:   sticker sets): tgmux needs none of them and each would count against flood limits;
#: - plain text: what a backend wrote is what the user sees (no Markdown/HTML surprises).
CLIENT_OPTIONS: dict[str, Any] = {
    "workers": 1,
    "fetch_replies": False,
    "fetch_topics": False,
    "fetch_stories": False,
    "fetch_stickers": False,
    "parse_mode": enums.ParseMode.DISABLED,
}


class SessionFileStorage(SQLiteStorage):
    """Pyrogram's SQLite session file, private to the owner, optionally seeded from a session
    string, and reset when it belongs to another account than the configured one."""

    def __init__(self, name: str, workdir: Path, *, session_string: str | None = None,
                 expected_user_id: int | None = None) -> None:
        super().__init__(name, workdir=workdir)
        self.workdir = Path(workdir)
        self.seed = session_string
        self.expected_user_id = expected_user_id

    @property
    def path(self) -> Path:
        return self.workdir / f"{self.name}{self.FILE_EXTENSION}"

    async def _open_private(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.workdir, 0o700)
        except OSError:  # not ours to change (e.g. a shared mount): the file is still 0600
            pass
        old = os.umask(0o077)
        try:
            # SQLiteStorage.open never suspends for a file session (plain sqlite3 calls), so
            # the umask covers exactly the session file and its journal.
            await SQLiteStorage.open(self)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def open(self) -> None:
        await self._open_private()
        if self.seed:
            probe = SQLiteStorage("tgmux-probe", workdir=self.workdir,
                                  session_string=self.seed, in_memory=True)
            await probe.open()
            try:
                fields = {
                    "dc_id": await probe.dc_id(),
                    "api_id": await probe.api_id(),
                    "test_mode": await probe.test_mode(),
                    "auth_key": await probe.auth_key(),
                    "user_id": await probe.user_id(),
                    "is_bot": await probe.is_bot(),
                    "server_address": await probe.server_address(),
                    "port": await probe.port(),
                }
            finally:
                await probe.close()
            if await self.auth_key() != fields["auth_key"]:
                if await self.user_id() not in (None, fields["user_id"]):
                    await self._reset("the session string belongs to another account")
                for key, value in fields.items():
                    if value is not None:
                        await getattr(self, key)(value)
                await self.date(0)
                self.conn.commit()
        elif self.expected_user_id is not None:
            stored = await self.user_id()
            if stored is not None and stored != self.expected_user_id:
                await self._reset("the bot token belongs to another bot")

    async def _reset(self, why: str) -> None:
        log.warning("session file %s: %s; starting a fresh session", self.path, why)
        self.conn.close()
        self.path.unlink(missing_ok=True)
        await self._open_private()


def session_mode(tg: TelegramConfig) -> str:
    if tg.bot_token:
        return "bot"
    if tg.session_string:
        return "user account (session string)"
    return "user account (session file)"


def build_client(config: Config, **overrides: Any) -> Client:
    """The Client for ``tgmux run`` (credentials already checked by ``require_telegram``)."""
    tg = config.data.telegram
    workdir = Path(tg.data_dir).expanduser()
    expected = None
    if tg.bot_token and ":" in tg.bot_token and tg.bot_token.split(":", 1)[0].isdigit():
        expected = int(tg.bot_token.split(":", 1)[0])
    storage = SessionFileStorage(tg.session_name, workdir, session_string=tg.session_string,
                                 expected_user_id=expected)
    options: dict[str, Any] = {
        **CLIENT_OPTIONS,
        "api_id": tg.api_id,
        "api_hash": tg.api_hash,
        "bot_token": tg.bot_token,
        "workdir": workdir,
        "storage_engine": storage,
        "skip_updates": tg.skip_updates,
        **overrides,
    }
    return Client(tg.session_name, **options)
