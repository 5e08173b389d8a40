"""A message's media, fetched from Telegram when a backend asks for its bytes (``await
media.read()``), not when the message arrives: a message whose backend never reads them (it
takes no such kind, or the bot is not asked) downloads nothing, and one replayed from the inbox
after a restart is fetched then, by its :class:`~tgmux.types.MediaRef`.

A file id stays valid at Telegram, but the file reference inside it expires after a while
(``FILE_REFERENCE_EXPIRED``): then the message is read again for a fresh one, once. Every
fetch is bounded: the size Telegram gave is checked before, the bytes are counted while they
come (the cap holds even when the size was unknown), and the whole fetch has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

from pyrogram import Client
from pyrogram.errors import (
    FileIdInvalid,
    FileReferenceEmpty,
    FileReferenceExpired,
    FileReferenceInvalid,
    RPCError,
)

from tgmux.telegram.normalize import media_object
from tgmux.types import MediaRef, MediaUnavailable

__all__ = ["EXPIRED", "MAX_MEDIA_BYTES", "MEDIA_TIMEOUT", "NOT_FETCHED", "TOO_LARGE",
           "TelegramMedia"]

#: Largest media tgmux downloads for a backend (the Bot API's own download limit).
MAX_MEDIA_BYTES = 20 * 1024 * 1024
#: Seconds one fetch may take, a renewed file reference included.
MEDIA_TIMEOUT = 60.0

TOO_LARGE = f"Your file is too large for me (over {MAX_MEDIA_BYTES // (1024 * 1024)} MB)."
EXPIRED = "Telegram no longer has your file. Please send it again."
NOT_FETCHED = "I could not get your file from Telegram. Please send it again."

_STALE_REFERENCE = (FileReferenceExpired, FileReferenceInvalid, FileReferenceEmpty)


class TelegramMedia:
    """One account's media fetches (:meth:`fetch` is a :data:`~tgmux.types.MediaFetcher`)."""

    def __init__(self, client: Client, *, max_bytes: int = MAX_MEDIA_BYTES,
                 timeout: float = MEDIA_TIMEOUT) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def fetch(self, ref: MediaRef) -> bytes:
        """The bytes of the file ``ref`` names; :class:`MediaUnavailable` with the line the
        chat reads when they cannot be had."""
        if ref.size is not None and ref.size > self.max_bytes:
            raise MediaUnavailable(f"{ref.size} bytes, over the cap of {self.max_bytes}",
                                   user_message=TOO_LARGE)
        # Not logged here: the engine logs the failure once, with the turn's backend.
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self._download(ref.file_id)
                except _STALE_REFERENCE:
                    file_id = await self._renewed(ref)
                    if file_id is None:
                        raise MediaUnavailable("the file reference expired and the message "
                                               "is gone", user_message=EXPIRED) from None
                    return await self._download(file_id)
        except MediaUnavailable:
            raise
        except TimeoutError:
            raise MediaUnavailable(f"no file in {self.timeout:.0f} s",
                                   user_message=NOT_FETCHED) from None
        except (FileIdInvalid, *_STALE_REFERENCE) as exc:
            raise MediaUnavailable(f"Telegram: {exc}", user_message=EXPIRED) from exc
        except (RPCError, OSError, ValueError) as exc:  # Telegram, the network, a bad file id
            raise MediaUnavailable(f"{type(exc).__name__}: {exc}",
                                   user_message=NOT_FETCHED) from exc

    async def _download(self, file_id: str) -> bytes:
        chunks: list[bytes] = []
        received = 0
        # aclosing: stopping at the cap ends Pyrogram's download (and frees its semaphore)
        async with contextlib.aclosing(self.client.stream_media(file_id)) as stream:
            async for chunk in stream:
                received += len(chunk)
                if received > self.max_bytes:
                    raise MediaUnavailable(f"over {self.max_bytes} bytes", user_message=TOO_LARGE)
                chunks.append(chunk)
        return b"".join(chunks)

    async def _renewed(self, ref: MediaRef) -> str | None:
        """The file id of the message read again (a fresh file reference), or None when the
        message or its media is gone."""
        if ref.chat_id is None or ref.message_id is None:
            return None
        message = await self.client.get_messages(ref.chat_id, ref.message_id)
        if message is None or isinstance(message, list) or message.empty:
            return None
        obj = media_object(message)
        return getattr(obj, "file_id", None)
