"""Where an account is in Telegram's update stream (:class:`UpdatePosition`), and where that is
kept between runs (:class:`PositionStore`; :class:`SessionPosition`: the session storage).
:mod:`tgmux.telegram.updates` loads it at start and saves it after each batch it applied."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pyrogram import Client, utils
from pyrogram.storage import UpdateState

__all__ = ["PositionStore", "SessionPosition", "UpdatePosition"]


@dataclass
class UpdatePosition:
    """Where the account is in Telegram's update stream: its box and each channel's pts."""

    pts: int
    qts: int
    date: int
    seq: int
    channels: dict[int, int] = field(default_factory=dict)  # raw channel id → pts

    def copy(self) -> UpdatePosition:
        return UpdatePosition(self.pts, self.qts, self.date, self.seq, dict(self.channels))


class PositionStore(Protocol):
    """Where the update position is kept between runs (the session storage, or tgmux's
    store with the inbox)."""

    async def load(self) -> UpdatePosition | None: ...

    async def save(self, position: UpdatePosition) -> None: ...

    async def channel_seen(self, channel: int, pts: int) -> None:
        """A channel seen for the first time starts at ``pts``: kept at once, nothing else
        moved (after a crash before any of its messages was kept, the next start fetches them
        from there)."""


class SessionPosition:
    """The position in Pyrogram's session storage (its ``update_state`` table, kurigram's
    format: id 0 the account, ``-100<channel>`` a channel), committed at each save."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def load(self) -> UpdatePosition | None:
        states = await self.client.storage.get_update_states()
        common = next((s for s in states if s.id == 0), None)
        if common is None or common.pts is None:
            return None
        channels = {utils.get_raw_peer_id(s.id): s.pts for s in states
                    if s.id != 0 and s.pts is not None}
        return UpdatePosition(common.pts, common.qts or 0, common.date or 0, common.seq or 0,
                              channels)

    async def save(self, position: UpdatePosition) -> None:
        storage = self.client.storage
        if getattr(storage, "conn", None) is None:  # closed (stopping): the next start asks
            return
        states = [UpdateState(0, position.pts, position.qts, position.date, position.seq)]
        states += [UpdateState(utils.get_channel_id(channel), pts, None, None, None)
                   for channel, pts in position.channels.items()]
        await storage.set_update_state(states)
        await storage.save()

    async def channel_seen(self, channel: int, pts: int) -> None:
        storage = self.client.storage
        if getattr(storage, "conn", None) is None:
            return
        await storage.set_update_state([UpdateState(utils.get_channel_id(channel), pts, None,
                                                    None, None)])
        await storage.save()
