"""What the operator's console reads and does, for the JSON API and the pages alike.

Everything here answers from what the process and the store already keep: nothing is added to
a message's path (the console idle costs a message nothing). Nothing secret leaves it: the
config is shown with every secret replaced (as logs mask them, :mod:`tgmux.redact`), and no
view carries a key, token, session string or DSN password. A view's ``to_json()`` is its API
form (docs/console.md documents each field).

Where each answer comes from:

- accounts: the config's accounts, each one's lease holder in the store (as ``tgmux status``),
  this process's readiness checks for those it runs, the store's inbox backlog;
- backends: this process's circuits and p50 (as ``/status``), and the last hour's replies and
  errors per minute (:mod:`tgmux.activity`, fed where the engine counts replies);
- chats: those this process saw (:mod:`tgmux.activity`, in memory, bounded) and those any
  process answered today or yesterday (the store's usage rows: every process's, without a
  title); a chat's backend and why are what the engine decides for a plain message in it;
- users: the chats' senders, today's and this month's usage rows, the console's blocks and the
  config's lists; usage against limits from the store's counters and usage rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

from tgmux.access import BLOCKED, DAY, is_admin
from tgmux.activity import SeenChat
from tgmux.budgets import Totals, periods
from tgmux.redact import MASK, NOT_SECRET_KEYS, SECRET_KEY, redact
from tgmux.reload import reloader_for
from tgmux.store.base import AccountHolder
from tgmux.turns import history_for
from tgmux.types import ChatIdentity, IncomingMessage

if TYPE_CHECKING:
    from tgmux.engine import Engine
    from tgmux.router import RouteDecision

#: The console's audit log: every action, with who did it.
log = logging.getLogger("tgmux.console")

#: Seconds a read of the store for one view may take (a hung store must not hang a page).
STORE_TIMEOUT = 5.0
#: when this process started (an account it runs on a store without leases is held since)
_STARTED = time.time()
#: Chats a search looks at at most (the latest first).
MAX_EXAMINED = 2000
#: Exchanges of a chat's memory shown at most (with show_messages).
EXCHANGES_SHOWN = 20
#: Characters of one side of an exchange shown at most.
EXCHANGE_CHARS = 4000
#: Readiness checks: a callable giving {check name: {"ok": bool, "detail": str}}.
Readiness = Callable[[], Awaitable[dict[str, dict[str, object]]]]

__all__ = ["AccountView", "AdminService", "BackendView", "ChatDetail", "ChatView",
           "ConfigView", "ReloadReport", "UserView"]


class _View:
    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class AccountView(_View):
    """A Telegram account of the deployment (every account in the store, not only this
    process's): who holds it, whether it is ready, its backlog."""

    name: str
    kind: str  # "bot" or "user"
    holder_host: str | None = None
    holder_pid: int | None = None
    held_since: float | None = None  # unix time
    held_here: bool = False  # this process holds it
    ready: bool = False
    not_ready_because: str | None = None
    backlog: int = 0  # messages accepted and not answered yet


@dataclass(frozen=True)
class BackendView(_View):
    name: str
    type: str
    circuit: str  # closed, open, half_open
    p50_seconds: float | None = None
    last_error: str | None = None  # redacted
    last_error_at: float | None = None
    replies_last_hour: int = 0
    errors_last_hour: int = 0


@dataclass(frozen=True)
class ChatView(_View):
    """A chat seen recently: what answers it and why."""

    account: str
    chat_id: int
    type: str
    title: str | None = None  # a group's title
    username: str | None = None  # a private chat's user
    backend: str | None = None  # what answers it now (None: nothing)
    reason: str | None = None  # override, persona, route N, default, plugin
    override: str | None = None  # its /backend choice, if any
    last_message_at: float | None = None


@dataclass(frozen=True)
class ChatDetail(_View):
    chat: ChatView
    memory_exchanges: int | None = None  # conversation memory length (None: none kept)
    limits: dict[str, Any] = field(default_factory=dict)  # usage against the chat's limits
    #: the last exchanges from the memory, only with server.console.show_messages
    exchanges: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class UserView(_View):
    user_id: int
    username: str | None = None
    verdict: str = "allowed"  # allowed, denied, admin, blocked
    blocked_in_console: bool = False  # a runtime block (kept in the store), not the config's
    usage: dict[str, Any] = field(default_factory=dict)  # today / month against limits


@dataclass(frozen=True)
class ConfigView(_View):
    """The running config, secrets replaced by ``***``, each value with where it came from
    (``file:line``)."""

    source: str
    data: dict[str, Any]
    lines: dict[str, str]  # dotted key path -> "file:line"


@dataclass(frozen=True)
class ReloadReport(_View):
    """What a reload did, as SIGHUP reports it."""

    applied: bool
    changes: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # with file:line


class AdminService:
    """The console's reads and actions on a running engine. ``who`` names the session that
    acts (it is logged with the action)."""

    def __init__(self, engine: Engine, *, show_messages: bool = False,
                 readiness: Readiness | None = None) -> None:
        self.engine = engine
        self.show_messages = show_messages
        self.readiness = readiness

    # -- accounts and backends ----------------------------------------------------------------

    async def accounts(self) -> list[AccountView]:
        engine = self.engine
        checks = await self.readiness() if self.readiness is not None else {}
        store_check = checks.get("store")
        views = []
        for name, account in engine.config.accounts.items():
            tg = account.telegram
            kind = "user" if not tg.bot_token and (tg.session_string or tg.user_account) \
                else "bot"
            holder, backlog, problem = None, 0, None
            try:
                async with asyncio.timeout(STORE_TIMEOUT):
                    holder = await (await engine.store.hold_account(name)).holder()
                    backlog = await engine.store.inbox_backlog(account=name)
            except Exception as exc:  # shown, not raised: the rest of the page still answers
                problem = f"the store did not answer: {redact(str(exc)) or type(exc).__name__}"
            here = name in engine.served
            held_here = here and (holder is None or _ours(holder))
            if held_here and holder is None:  # a store without leases (memory, SQLite): us
                holder = AccountHolder(name, socket.gethostname(), os.getpid(), _STARTED)
            ready, why = True, None
            if problem is not None:
                ready, why = False, problem
            elif held_here:
                check = checks.get(f"account {name}")
                for found in (check, store_check):
                    if found is not None and not found["ok"]:
                        ready, why = False, str(found["detail"])
                        break
            elif holder is None:
                ready, why = False, "no process runs it"
            views.append(AccountView(
                name, kind, holder.hostname if holder else None, holder.pid if holder else None,
                holder.since if holder else None, held_here, ready, why, backlog))
        return views

    async def backends(self) -> list[BackendView]:
        engine = self.engine
        activity = engine.metrics.activity
        now = time.time()
        views = []
        for name, backend in engine.backends.items():
            circuit = engine.circuits.get(name)
            recent = engine.recent_latency.get(name)
            seen = activity.backends.get(name)
            views.append(BackendView(
                name, backend.type_name, circuit.state if circuit is not None else "closed",
                round(statistics.median(recent), 3) if recent else None,
                seen.last_error if seen else None, seen.last_error_at if seen else None,
                sum(seen.replies.last_hour(now)) if seen else 0,
                sum(seen.errors.last_hour(now)) if seen else 0))
        return views

    async def messages_per_minute(self) -> list[int]:
        """Messages received in each of the last 60 minutes, oldest first."""
        return self.engine.metrics.activity.messages.last_hour()

    # -- chats ----------------------------------------------------------------------------------

    async def chats(self, query: str = "", *, limit: int = 200) -> list[ChatView]:
        """Chats seen recently, the latest first; ``query`` filters by id, title, username,
        account, backend."""
        seen = list(reversed(self.engine.metrics.activity.chats.values()))
        known = {(s.chat.account, s.chat.chat_id) for s in seen}
        for key in await self._chats_in_usage():  # other processes' (and before a restart)
            if key not in known:
                known.add(key)
                seen.append(SeenChat(ChatIdentity(_chat_type(key[1]), key[1], account=key[0]),
                                     0.0))
        wanted = query.strip().lower().lstrip("@")
        views = []
        # each view may read the store (the chat's /backend choice): at most so many are made
        for entry in seen[:MAX_EXAMINED]:
            view = await self._chat_view(entry)
            if wanted and not any(wanted in str(value).lower() for value in (
                    view.account, view.chat_id, view.title, view.username, view.backend,
                    view.type) if value is not None):
                continue
            views.append(view)
            if len(views) >= limit:
                break
        return views

    async def _chats_in_usage(self) -> list[tuple[str, int]]:
        """(account, chat id) of the chats answered today and yesterday, by any process."""
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - DAY))
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                rows = await self.engine.store.usage_rows(since=since)
        except Exception as exc:
            log.debug("usage rows not read: %s", exc)
            return []
        keys: dict[tuple[str, int], None] = {}
        for row in reversed(rows):  # the latest day first
            if row.chat_id is not None:
                keys[(row.account, row.chat_id)] = None
        return list(keys)

    def _seen(self, account: str, chat_id: int) -> SeenChat:
        found = self.engine.metrics.activity.chats.get((account, chat_id))
        if found is not None:
            return found
        return SeenChat(ChatIdentity(_chat_type(chat_id), chat_id, account=account,
                                     user_id=chat_id if chat_id > 0 else None), 0.0)

    async def _decide(self, chat: ChatIdentity) -> RouteDecision | None:
        """What answers a plain message in ``chat`` now (its route may match text too: a
        plain, empty message is what is decided for)."""
        return await self.engine.decide(IncomingMessage(chat=chat))

    async def _chat_view(self, entry: SeenChat) -> ChatView:
        chat = entry.chat
        engine = self.engine
        try:
            override = await engine.override(chat.account, chat.chat_id)
            decision = await self._decide(chat)
        except Exception as exc:  # a store outage: shown without its backend
            log.debug("chat %s: not decided: %s", chat.chat_id, exc)
            override, decision = None, None
        return ChatView(
            chat.account, chat.chat_id, chat.chat_type, chat.chat_title,
            chat.username if chat.chat_type == "private" else None,
            decision.backend if decision else None, decision.reason if decision else None,
            override, entry.at or None)

    def _known_account(self, account: str) -> None:
        if account not in self.engine.config.accounts:
            raise LookupError(f"no account {account!r}")

    async def chat(self, account: str, chat_id: int) -> ChatDetail | None:
        if account not in self.engine.config.accounts:
            return None
        entry = self._seen(account, chat_id)
        view = await self._chat_view(entry)
        decision = await self._decide(entry.chat)
        memory, exchanges = None, None
        backend = self.engine.backends.get(decision.backend) if decision else None
        if decision is not None and backend is not None:
            history = history_for(self.engine.store, backend, entry.chat, decision.options)
            if history is not None:
                remembered = await history.read()
                memory = len(remembered)
                if self.show_messages:
                    exchanges = [{"user": e.user[:EXCHANGE_CHARS],
                                  "reply": e.reply[:EXCHANGE_CHARS]}
                                 for e in remembered[-EXCHANGES_SHOWN:]]
        return ChatDetail(view, memory, await self._chat_limits(entry.chat), exchanges)

    async def _chat_limits(self, chat: ChatIdentity) -> dict[str, Any]:
        """The chat's (and, in a private chat, its user's) counts against the limits."""
        account = self.engine.config.accounts[chat.account]
        limits, store = account.limits, self.engine.store
        found: dict[str, Any] = {}
        if limits.per_chat is not None:
            found["per_chat"] = {
                "used": await store.rate_count(f"limit:{account.name}:chat:{chat.chat_id}",
                                               limits.per_chat.per),
                "messages": limits.per_chat.messages, "per_seconds": limits.per_chat.per}
        if chat.user_id is not None:
            found.update(await self._user_usage(account.name, chat.user_id))
        return found

    async def set_backend(self, account: str, chat_id: int, backend: str | None, *,
                          who: str) -> ChatView:
        """Set (None: clear) the chat's ``/backend`` choice; ValueError names an unknown
        backend."""
        self._known_account(account)
        engine = self.engine
        if backend is not None and backend not in engine.backends:
            raise ValueError(f"no backend {backend!r} (defined: "
                             f"{', '.join(sorted(engine.backends))})")
        await engine.set_override(account, chat_id, backend)
        entry = self._seen(account, chat_id)
        decision = await self._decide(entry.chat)
        if account in engine.served:  # its menu follows, as after /backend (where it runs)
            engine.menus.seen(IncomingMessage(chat=entry.chat), decision, force=True)
        log.info("%s: chat %s (%s): backend %s", who, chat_id, account,
                 backend if backend is not None else "cleared (the config's again)")
        return await self._chat_view(entry)

    async def reset(self, account: str, chat_id: int, *, who: str) -> int:
        """Forget the chat's conversation memory; how many exchanges it had."""
        self._known_account(account)
        engine = self.engine
        entry = self._seen(account, chat_id)
        message = IncomingMessage(chat=entry.chat)
        decision = await self._decide(entry.chat)
        backend = engine.backends.get(decision.backend) if decision else None
        if decision is None or backend is None:
            log.info("%s: chat %s (%s): reset: nothing answers it", who, chat_id, account)
            return 0
        turn = engine.turn_for(message, decision, backend)
        had = len(await turn.history.read()) if turn.history is not None else 0
        await backend.reset(turn)  # as /reset: the backend's own state too
        log.info("%s: chat %s (%s): conversation with %s reset (%d exchange(s))", who,
                 chat_id, account, backend.name, had)
        return had

    # -- users ----------------------------------------------------------------------------------

    async def users(self, query: str = "", *, limit: int = 200) -> list[UserView]:
        engine = self.engine
        names: dict[int, str | None] = {}
        for entry in reversed(engine.metrics.activity.chats.values()):
            if entry.chat.user_id is not None and entry.chat.user_id not in names:
                names[entry.chat.user_id] = entry.chat.username
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                rows = await engine.store.usage_rows(since=periods(time.time()).month)
                stored_blocks = await engine.store.kv_items(BLOCKED)
        except Exception as exc:
            log.debug("usage rows not read: %s", exc)
            rows, stored_blocks = [], []
        for row in rows:
            if row.user_id is not None:
                names.setdefault(row.user_id, None)
        blocked = set(engine.gate.blocked) | {int(k) for k, _ in stored_blocks
                                              if k.lstrip("-").isdigit()}
        for user_id in sorted(blocked):
            names.setdefault(user_id, None)
        for account in engine.config.accounts.values():
            for user_id in [*account.admins, *(account.access.allow_users or ()),
                            *account.access.deny_users]:
                names.setdefault(user_id, None)
        by_user: dict[tuple[str, int], list[Any]] = {}
        for row in rows:
            if row.user_id is not None:
                by_user.setdefault((row.account, row.user_id), []).append(row)
        wanted = query.strip().lower().lstrip("@")
        views = []
        for user_id, username in names.items():
            if wanted and wanted not in str(user_id) and wanted not in (username or "").lower():
                continue
            views.append(await self._user_view(user_id, username, blocked, by_user))
            if len(views) >= limit:
                break
        return views

    async def _user_view(self, user_id: int, username: str | None, blocked: set[int],
                         rows: dict[tuple[str, int], list[Any]] | None = None) -> UserView:
        """``rows``: this month's usage rows by (account, user id), when read already."""
        usage: dict[str, Any] = {}
        now = periods(time.time())
        for name in self.engine.config.accounts:
            mine = rows.get((name, user_id), []) if rows is not None else None
            usage[name] = await self._user_usage(name, user_id, mine, now)
        return UserView(user_id, username, self._verdict(user_id, blocked),
                        user_id in blocked, usage)

    def _verdict(self, user_id: int, blocked: set[int]) -> str:
        if user_id in blocked:
            return "blocked"
        verdicts = set()
        for account in self.engine.config.accounts.values():
            if is_admin(account, user_id):
                verdicts.add("admin")
                continue
            rules = account.access
            refused = (user_id in rules.deny_users or (rules.allow_users is not None
                                                       and user_id not in rules.allow_users))
            verdicts.add("denied" if refused else "allowed")
        for verdict in ("admin", "allowed", "denied"):  # the most it may do somewhere
            if verdict in verdicts:
                return verdict
        return "allowed"

    async def _user_usage(self, account_name: str, user_id: int, rows: list[Any] | None = None,
                          now: Any = None) -> dict[str, Any]:
        account = self.engine.config.accounts[account_name]
        limits, store = account.limits, self.engine.store
        now = now or periods(time.time())
        if rows is None:
            rows = await store.usage_rows(since=now.month, account=account_name,
                                          user_id=user_id)
        today, month = Totals.of(r for r in rows if r.day == now.today), Totals.of(rows)
        found: dict[str, Any] = {
            "today": _totals(today), "month": _totals(month), "currency": account.currency,
            "daily_cost_limit": limits.daily_cost_per_user,
            "monthly_cost_limit": limits.monthly_cost_per_user,
            "exempt": is_admin(account, user_id)}
        if limits.per_user is not None:
            found["per_user"] = {
                "used": await store.rate_count(f"limit:{account_name}:user:{user_id}",
                                               limits.per_user.per),
                "messages": limits.per_user.messages, "per_seconds": limits.per_user.per}
        if limits.daily_per_user is not None:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            found["daily"] = {
                "used": await store.rate_count(f"quota:{account_name}:user:{user_id}:{day}",
                                               DAY),
                "messages": limits.daily_per_user}
        return found

    async def block(self, user_id: int, *, who: str) -> UserView:
        await self.engine.gate.block(user_id, True, by=who)
        log.info("%s: user %s blocked", who, user_id)
        return await self._user_view(user_id, self._username(user_id), self.engine.gate.blocked)

    async def unblock(self, user_id: int, *, who: str) -> UserView:
        await self.engine.gate.block(user_id, False, by=who)
        log.info("%s: user %s unblocked", who, user_id)
        return await self._user_view(user_id, self._username(user_id), self.engine.gate.blocked)

    def _username(self, user_id: int) -> str | None:
        for entry in self.engine.metrics.activity.chats.values():
            if entry.chat.user_id == user_id and entry.chat.username:
                return entry.chat.username
        return None

    # -- config ---------------------------------------------------------------------------------

    async def config(self) -> ConfigView:
        config = self.engine.config
        data = config.data.model_dump(mode="python", exclude_unset=False)
        for name, section in config.plugin_settings.items():
            data[name] = section.model_dump(mode="python")
        shown = _masked(data)
        lines = {_dotted(path): f"{config.source}:{line}" for path, line in config.lines.items()
                 if path}
        return ConfigView(config.source, shown, lines)

    async def reload(self, *, who: str) -> ReloadReport:
        """Apply the config file on disk as SIGHUP does."""
        log.info("%s: reload of %s asked", who, self.engine.config.source)
        try:
            done = await reloader_for(self.engine).apply()
        except Exception as exc:  # a bug: said, the old config keeps running
            log.exception("config reload failed")
            return ReloadReport(False, errors=[redact(f"{type(exc).__name__}: {exc}")])
        return ReloadReport(done.applied, list(done.changes), list(done.needs_restart),
                            [redact(e) for e in done.errors])


def _ours(holder: AccountHolder) -> bool:
    """The holder is this process."""
    return bool(holder.pid == os.getpid() and holder.hostname == socket.gethostname())


def _chat_type(chat_id: int) -> str:
    return "private" if chat_id > 0 else "supergroup" if str(chat_id).startswith("-100") \
        else "group"


def _totals(totals: Totals) -> dict[str, Any]:
    return {"messages": totals.messages, "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens, "cost": round(totals.cost, 6),
            "unpriced_messages": totals.unpriced}


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _masked(value: Any, secret: bool = False) -> Any:
    """``value`` as JSON data with every secret replaced by ``***``: values under keys that
    look secret, SecretStr values, and (:func:`tgmux.redact.redact`) URL passwords and every
    known secret value wherever it appears."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    if isinstance(value, dict):
        return {str(k): _masked(v, secret or (isinstance(k, str) and k not in NOT_SECRET_KEYS
                                                and SECRET_KEY.search(k) is not None))
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v, secret) for v in value]
    if isinstance(value, SecretStr):
        return MASK
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    if secret and text:
        return MASK
    return redact(text)

