"""The fake network: a real Pyrogram ``Client`` whose ``connect``, ``disconnect`` and
``get_session`` are replaced, so that every raw request (``Session.invoke``) reaches the fake
Telegram instead of a socket. Everything above that is Pyrogram's own code."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from pyrogram import Client, raw
from pyrogram.errors import InternalServerError, RPCError, ServiceUnavailable
from pyrogram.raw.core import TLObject

from tgmux.telegram.client import CLIENT_OPTIONS

__all__ = ["FakeSession", "Network", "attach", "offline_client"]


class Network(Protocol):
    """What the session needs of the fake Telegram."""

    me: TLObject
    is_bot: bool
    retry_delay: float
    client: Client | None

    async def answer(self, query: TLObject, client: Client) -> Any: ...

    def known_peers(self) -> list[TLObject]: ...


class FakeSession:
    """Stands in for ``pyrogram.session.Session``: ``invoke`` goes to the fake Telegram."""

    def __init__(self, fake: Network, client: Client) -> None:
        self.fake = fake
        self.client = client
        self.auth_key = b"\x00" * 256
        self.is_started = asyncio.Event()
        self.is_started.set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def invoke(self, query: TLObject, retries: int = 10, timeout: float = 15,
                     sleep_threshold: float = 10, retry_delay: float = 1, **_: Any) -> Any:
        """As ``Session.invoke``: sleeps through flood waits up to ``sleep_threshold``, and
        sends the same request again (up to ``retries`` times in all) after a timeout or a
        server error, then raises TimeoutError. Between those attempts it waits
        ``fake.retry_delay`` (default 0: time is compressed), not ``retry_delay``."""
        inner = query
        while isinstance(inner, (raw.functions.InvokeWithoutUpdates,
                                 raw.functions.InvokeWithTakeout)):
            inner = inner.query
        name = inner.QUALNAME.removeprefix("functions.")
        attempts = 0
        while True:
            try:
                return await self.fake.answer(inner, self.client)
            except (OSError, InternalServerError, ServiceUnavailable):
                attempts += 1
                if attempts >= retries:
                    raise TimeoutError(f'Failed to invoke "{name}" after {retries} '
                                       "retries") from None
                await asyncio.sleep(self.fake.retry_delay)
            except RPCError as exc:
                seconds = exc.value if exc.ID == "FLOOD_WAIT_X" else None
                if not isinstance(seconds, int) or seconds > sleep_threshold or \
                        sleep_threshold < 0:
                    raise
                await asyncio.sleep(seconds)


def attach(fake: Network, client: Client) -> Client:
    """Route ``client``'s network layer to ``fake``; returns the client."""

    async def connect() -> bool:
        if client.is_connected:
            raise ConnectionError("Client is already connected")
        await client.storage.open()
        # Never load_session() an empty session: it would create an auth key on a socket.
        if await client.storage.user_id() is None or await client.storage.auth_key() is None:
            await client.storage.dc_id(2)
            await client.storage.api_id(client.api_id or 1)
            await client.storage.test_mode(False)
            await client.storage.auth_key(os.urandom(256))
            await client.storage.user_id(fake.me.id)
            await client.storage.is_bot(fake.is_bot)
            await client.storage.date(int(time.time()))
        # What the fake knows from before (remember_chat) the client knows too, as a client
        # whose session file kept its peers would.
        await client.fetch_peers(fake.known_peers())
        client.session = FakeSession(fake, client)
        client.is_connected = True
        if callable(connected := getattr(fake, "connected", None)):
            connected()
        return True

    async def disconnect() -> None:
        if not client.is_connected:
            raise ConnectionError("Client is already disconnected")
        if client.is_initialized:
            raise ConnectionError("Can't disconnect an initialized client")
        await client.storage.close()
        client.session = None
        client.is_connected = False

    async def get_session(*args: Any, **kwargs: Any) -> FakeSession:
        if client.session is None:
            raise ConnectionError("Client is not connected")
        return client.session

    client.connect = connect  # type: ignore[method-assign]
    client.disconnect = disconnect  # type: ignore[method-assign]
    client.get_session = get_session  # type: ignore[method-assign]
    fake.client = client
    return client


def offline_client(fake: Network, *, skip_updates: bool = False, storage: Any = None,
                   name: str = "tgmux-offline") -> Client:
    """A Client with tgmux's options, attached to ``fake``; in memory unless ``storage`` (a
    Pyrogram Storage, e.g. a session file to show catch-up after a restart) is given."""
    options: dict[str, Any] = {**CLIENT_OPTIONS, "api_id": 1, "api_hash": "0" * 32,
                               "skip_updates": skip_updates}
    if storage is not None:
        options["storage_engine"] = storage
    else:
        options["in_memory"] = True
    return attach(fake, Client(name, **options))
