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
- budgets (``limits.daily_cost_per_user``, ``monthly_cost_per_user``, :mod:`tgmux.budgets`)
  cost one store read per message, and only when one is set.
- blocked users (the operator's console, ``POST /api/v1/users/{id}/block``): a runtime addition
  to ``access`` kept in the store (kv namespace ``blocked``), loaded at start and checked in
  memory (:meth:`Gate.set_blocked` keeps the set; another process sharing the store is told by
  whoever blocks). A blocked user is refused everywhere, admins included, with the account's
  ``denied_reply``; the config never clears a block (an allow list naming the user neither):
  only an unblock does.
- usernames: the first time this process sees a user's ``@username`` (or sees it with another
  user id) it writes ``username -> user id`` to the store's kv (namespace ``usernames``), so
  that an admin's ``/usage @name`` finds the user; remembered in a bounded map, so not a
  write per message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tgmux.budgets import Totals, budgeted, format_money, over_budget, periods, spent
from tgmux.config.validate import Account, Config
from tgmux.store import Store, StoreUnavailable
from tgmux.store.changes import EVERYTHING, Change
from tgmux.types import IncomingMessage

__all__ = ["Gate", "Verdict", "access_warnings", "format_reset", "format_wait", "is_admin"]

log = logging.getLogger("tgmux.access")

DAY = 86400.0
#: The kv namespace of ``username -> user id`` (usernames lowercased, without ``@``).
USERNAMES = "usernames"
#: The kv namespace of the console's blocks: user id -> JSON {"at": unix time, "by": who}.
BLOCKED = "blocked"
#: re-reads of blocks made elsewhere under way at most (more at once: one full read)
MAX_REREADS = 100
#: How many (username, user id) pairs a process remembers having written.
KNOWN_USERNAMES = 10_000


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


def format_reset(seconds: float) -> str:
    """:func:`format_wait`, in days from 36 h (a month's budget resets in up to 31 days)."""
    if seconds < 1.5 * DAY:
        return format_wait(seconds)
    days = round(seconds / DAY)
    return f"{days} days"


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
        self._usernames: OrderedDict[str, int] = OrderedDict()  # written by this process
        #: users the console blocked (the store's ``blocked`` namespace, kept here)
        self.blocked: set[int] = set()
        self._unfollow: Callable[[], None] | None = None
        self._rereads: set[asyncio.Task[None]] = set()
        self._full_read_queued = False

    async def load_blocked(self) -> None:
        """Read the console's blocks from the store (at start; a failing store is logged and
        the blocks known so far are kept), and from then on follow the blocks any process
        sharing the store makes (its change feed: PostgreSQL's LISTEN)."""
        if self._unfollow is None:
            self._unfollow = self.store.changes().subscribe(self._changed)
        try:
            rows = await self.store.kv_items(BLOCKED)
        except Exception as exc:
            log.warning("blocked users not read: the store failed: %s", exc)
            return
        self.blocked = {int(key) for key, _ in rows if key.lstrip("-").isdigit()}

    def _changed(self, change: Change) -> None:
        """A block or unblock somewhere (or anything, unheard): read it again, off the
        feed's callback (it must not block). Bounded: a flood is one full read."""
        if change.kind not in (BLOCKED, EVERYTHING):
            return
        user_id = change.user_id if change.kind == BLOCKED else None
        if len(self._rereads) >= MAX_REREADS:  # a flood: one read of the whole set, after those
            if self._full_read_queued:
                return
            self._full_read_queued, user_id = True, None
        task = asyncio.create_task(self._reread(user_id), name="tgmux-blocked-reread")
        self._rereads.add(task)
        task.add_done_callback(self._rereads.discard)

    async def _reread(self, user_id: int | None) -> None:
        if user_id is None:
            self._full_read_queued = False
            await self.load_blocked()
            return
        try:
            value = await self.store.kv_get(BLOCKED, str(user_id))
        except Exception as exc:
            log.warning("user %s: a block made elsewhere not read: the store failed: %s",
                        user_id, exc)
            return
        self.set_blocked(user_id, value is not None)

    def set_blocked(self, user_id: int, blocked: bool) -> None:
        """Refuse (or let through again) ``user_id`` from now on, in this process (the store
        is written by :meth:`block`; a process told of another's block calls this)."""
        if blocked:
            self.blocked.add(user_id)
        else:
            self.blocked.discard(user_id)

    async def block(self, user_id: int, blocked: bool, *, by: str) -> None:
        """Keep the block in the store (or remove it), then apply it here."""
        if blocked:
            await self.store.kv_set(BLOCKED, str(user_id),
                                    json.dumps({"at": time.time(), "by": by}))
        else:
            await self.store.kv_delete(BLOCKED, str(user_id))
        self.set_blocked(user_id, blocked)

    async def remember(self, message: IncomingMessage) -> None:
        """Write the sender's ``@username -> user id`` the first time this process sees the
        pair (a failing store is logged, not raised: the message goes on)."""
        chat = message.chat
        if not chat.username or chat.user_id is None:
            return
        name = chat.username.lower().lstrip("@")
        if self._usernames.get(name) == chat.user_id:
            self._usernames.move_to_end(name)
            return
        try:
            await self.store.kv_set(USERNAMES, name, str(chat.user_id))
        except Exception as exc:  # the store's outage is said where it matters
            log.debug("@%s not remembered: %s", name, exc)
            return
        self._usernames[name] = chat.user_id
        while len(self._usernames) > KNOWN_USERNAMES:
            self._usernames.popitem(last=False)

    async def user_by_name(self, username: str) -> int | None:
        """The user id last seen with ``@username`` (None: never seen)."""
        value = await self.store.kv_get(USERNAMES, username.lower().lstrip("@"))
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    @staticmethod
    def exempt(account: Account, user_id: int | None) -> bool:
        return is_admin(account, user_id)

    def denied(self, account: Account, message: IncomingMessage) -> Verdict | None:
        chat = message.chat
        if self.blocked and chat.user_id in self.blocked:  # the console's: admins too
            return Verdict("blocked", account.access.denied_reply)
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
        await self.remember(message)
        if self.exempt(account, chat.user_id):
            return None
        if budgeted(limits) and chat.user_id is not None:
            # before the windows: a message the budget refuses uses no slot
            if (refused := await self._budget(account, chat.user_id)) is not None:
                return refused
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

    async def _budget(self, account: Account, user_id: int) -> Verdict | None:
        now = periods(time.time())
        try:
            today, month = await spent(self.store, account.name, user_id, now)
        except StoreUnavailable:  # as the rate windows during an outage: not checked (the
            return None  # guard said the outage once; a line per message would flood)
        over = over_budget(account.limits, today, month, now)
        if over is None:
            return None
        reply = account.limits.cost_reply.format(
            limit=format_money(over.limit, account.currency), period=over.period,
            reset_in=format_reset(over.reset_in))
        return await self._told_once(f"budget:{account.name}:user:{user_id}:{over.key}:told",
                                     over.reset_in, Verdict("budget", reply))

    async def _quota(self, key: str, reset_in: float, daily: int, reply: str) -> Verdict:
        return await self._told_once(f"{key}:told", reset_in, Verdict("quota", reply.format(
            limit=daily, reset_in=format_wait(reset_in))))

    async def usage(self, account: Account, message: IncomingMessage,
                    user_id: int | None = None, shown_as: str | None = None) -> str:
        """What ``/usage`` tells a user (or an admin about ``user_id``, called ``shown_as``):
        their counts against each limit and what they used today and this month (one store
        read of the month's usage rows), counting nothing."""
        chat, limits = message.chat, account.limits
        own = user_id is None
        who = chat.user_id if own else user_id
        exempt = self.exempt(account, who)
        lines = ["Your usage:" if own else f"Usage of {shown_as or who}:"]
        windows = self._windows(account, message) if own and not exempt else []
        for what, key, count, window in windows:
            used = await self.store.rate_count(key, window)
            lines.append(f"{'You' if what == 'you' else 'This chat'}: {used} of {count} "
                         f"messages per {format_wait(window)}")
        if limits.daily_per_user is not None and who is not None and not exempt:
            key, reset_in = self._day(account, who)
            used = await self.store.rate_count(key, DAY)
            lines.append(f"Today: {used} of {limits.daily_per_user} messages (resets in "
                         f"{format_wait(reset_in)})")
        if who is not None:
            now = periods(time.time())
            today, month = await spent(self.store, account.name, who, now)
            daily, monthly = ((None, None) if exempt else
                              (limits.daily_cost_per_user, limits.monthly_cost_per_user))
            lines.append(self._used("Used today", today, daily, now.day_ends_in,
                                    account.currency))
            lines.append(self._used("Used this month", month, monthly, now.month_ends_in,
                                    account.currency))
        if exempt:
            lines.append("You are an admin here: no limits apply to you." if own else
                         "An admin here: no limits apply.")
        elif not windows and limits.daily_per_user is None and not budgeted(limits):
            lines.append("There are no limits here.")
        return "\n".join(lines)

    @staticmethod
    def _used(what: str, totals: Totals, limit: float | None, ends_in: float,
              currency: str) -> str:
        cost = format_money(totals.cost, currency)
        if limit is not None:
            cost += f" of {format_money(limit, currency)} (resets in {format_reset(ends_in)})"
        if totals.unpriced:
            cost += f"; {totals.unpriced} of unknown price"
        messages = "1 message" if totals.messages == 1 else f"{totals.messages} messages"
        return (f"{what}: {messages}, {totals.tokens:,} tokens "
                f"({totals.input_tokens:,} in, {totals.output_tokens:,} out), {cost}")

    async def _told_once(self, key: str, window: float, verdict: Verdict) -> Verdict:
        if await self.store.rate_take(key, 1, window) > 0:
            return Verdict(verdict.reason, None)  # told already in this window
        return verdict
