"""Access lists and per-user limits (``access:``, ``limits:``), checked by the engine before
any backend is called.

- Admins are the users ``admins`` lists, and only they: they may use admin-only commands
  (``/backend NAME``, ``/status``, a backend's own, e.g. BambiSleep's ``/sessions``) and are
  never denied nor limited. An empty list makes nobody an admin (:func:`is_admin`).
- ``access`` applies to every message, built-in commands included: a refused user reads
  ``denied_reply`` (or nothing, when it is null).
- ``limits`` count every message that would reach a backend (backend commands too); built-in
  commands are never counted. The counters live in the store (``Store.rate_take``), so they
  hold across restarts and across processes sharing PostgreSQL. The limit reply itself is sent
  at most once per user per window, so a flood does not become a flood of replies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tgmux.config.validate import Account, Config
from tgmux.store import Store
from tgmux.types import IncomingMessage

__all__ = ["Gate", "Verdict", "access_warnings", "format_wait", "is_admin"]

DAY = 86400.0


@dataclass(frozen=True)
class Verdict:
    """Not let through: ``reply`` is what the user reads (None: nothing)."""

    reason: str  # "denied", "limited", "quota"
    reply: str | None


def format_wait(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


def is_admin(account: Account, user_id: int | None) -> bool:
    """Whether ``user_id`` is one of ``account``'s admins. Nobody listed: nobody is (a fresh
    config must not hand every Telegram user the admin commands)."""
    return user_id is not None and user_id in account.admins


def access_warnings(config: Config) -> list[str]:
    """What ``tgmux check`` warns about, as ``file:line: key: what`` lines: an account with
    no admins, and each backend through which one user reaches other users' conversations
    (:meth:`~tgmux.backend.Backend.shared_between_users`)."""
    found: dict[str, None] = {}
    for name, account in config.accounts.items():
        if account.admins:
            continue
        own = ("accounts", name, "admins")
        path = own if own in config.lines else ("admins",)
        found[f"{config.where(path)}: no admins: nobody may use /backend NAME, /status or "
              "a backend's admin-only commands (list your Telegram user id)"] = None
    for name, settings in config.backend_settings.items():
        said = config.backend_classes[name].shared_between_users(settings)
        if said:
            found[f"{config.where(('backends', name))}: {said}"] = None
    return list(found)


class Gate:
    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def exempt(account: Account, user_id: int | None) -> bool:
        return is_admin(account, user_id)

    def denied(self, account: Account, message: IncomingMessage) -> Verdict | None:
        chat = message.chat
        if self.exempt(account, chat.user_id):
            return None
        rules = account.access
        refused = (chat.user_id in rules.deny_users
                   or (rules.allow_users is not None and chat.user_id not in rules.allow_users)
                   or (rules.allow_chats is not None and chat.chat_id not in rules.allow_chats))
        return Verdict("denied", rules.denied_reply) if refused else None

    def _windows(self, account: Account, message: IncomingMessage) -> list[tuple[str, str, int,
                                                                               float]]:
        """The sliding windows a message counts in: (what, key, messages, seconds)."""
        chat, limits = message.chat, account.limits
        found = []
        if limits.per_chat is not None:
            found.append(("this chat", f"limit:{account.name}:chat:{chat.chat_id}",
                          limits.per_chat.messages, limits.per_chat.per))
        if limits.per_user is not None and chat.user_id is not None:
            found.append(("you", f"limit:{account.name}:user:{chat.user_id}",
                          limits.per_user.messages, limits.per_user.per))
        return found

    @staticmethod
    def _day(account: Account, user_id: int) -> tuple[str, float]:
        """The daily quota's key for today (UTC) and the seconds until it resets."""
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        return f"quota:{account.name}:user:{user_id}:{day}", DAY - now % DAY

    async def limited(self, account: Account, message: IncomingMessage) -> Verdict | None:
        """Counts the message when it may go on; else what to tell the user (once per
        window)."""
        chat = message.chat
        limits = account.limits
        if self.exempt(account, chat.user_id):
            return None
        windows = self._windows(account, message)
        daily = limits.daily_per_user if chat.user_id is not None else None
        if daily is not None and windows:
            # a message the quota refuses must not use a window's slot: look before taking
            # (two processes racing past this look can still both use one)
            key, reset_in = self._day(account, chat.user_id)  # type: ignore[arg-type]
            if await self.store.rate_count(key, DAY) >= daily:
                return await self._quota(key, reset_in, daily, limits.quota_reply)
        for _, key, count, window in windows:
            wait = await self.store.rate_take(key, count, window)
            if wait > 0:
                return await self._told_once(
                    f"{key}:told", window, Verdict(
                        "limited", limits.reply.format(retry_after=format_wait(wait))))
        if daily is not None:
            key, reset_in = self._day(account, chat.user_id)  # type: ignore[arg-type]
            if await self.store.rate_take(key, daily, reset_in + 60) > 0:
                return await self._quota(key, reset_in, daily, limits.quota_reply)
        return None

    async def _quota(self, key: str, reset_in: float, daily: int, reply: str) -> Verdict:
        return await self._told_once(f"{key}:told", reset_in, Verdict("quota", reply.format(
            limit=daily, reset_in=format_wait(reset_in))))

    async def usage(self, account: Account, message: IncomingMessage) -> str:
        """What ``/usage`` tells a user: their counts against each limit, counting nothing."""
        chat, limits = message.chat, account.limits
        if self.exempt(account, chat.user_id):
            return "You are an admin here: no limits apply to you."
        lines = []
        for what, key, count, window in self._windows(account, message):
            used = await self.store.rate_count(key, window)
            lines.append(f"{'You' if what == 'you' else 'This chat'}: {used} of {count} "
                         f"messages per {format_wait(window)}")
        if limits.daily_per_user is not None and chat.user_id is not None:
            key, reset_in = self._day(account, chat.user_id)
            used = await self.store.rate_count(key, DAY)
            lines.append(f"Today: {used} of {limits.daily_per_user} messages (resets in "
                         f"{format_wait(reset_in)})")
        if not lines:
            return "There are no message limits here."
        return "Your usage:\n" + "\n".join(lines)

    async def _told_once(self, key: str, window: float, verdict: Verdict) -> Verdict:
        if await self.store.rate_take(key, 1, window) > 0:
            return Verdict(verdict.reason, None)  # told already in this window
        return verdict
