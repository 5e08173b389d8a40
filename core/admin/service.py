"""What the operator's console reads and does, for the JSON API and the pages alike.

Everything here answers from what the process and the store already keep: nothing is added to
a message's path (the console idle costs a message nothing). Nothing secret leaves it: the
config is shown with every secret replaced (as logs mask them, :mod:`tgmux.redact`), and no
view carries a key, token, session string or DSN password. A view's ``to_json()`` is its API
form (docs/console.md documents each field).

Interface first (issue 24's groundwork): each method says what it returns; the bodies are
written with the API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tgmux.engine import Engine

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

    def __init__(self, engine: Engine, *, show_messages: bool = False) -> None:
        self.engine = engine
        self.show_messages = show_messages

    async def accounts(self) -> list[AccountView]:
        raise NotImplementedError

    async def backends(self) -> list[BackendView]:
        raise NotImplementedError

    async def messages_per_minute(self) -> list[int]:
        """Messages received in each of the last 60 minutes, oldest first."""
        raise NotImplementedError

    async def chats(self, query: str = "", *, limit: int = 200) -> list[ChatView]:
        """Chats seen recently, the latest first; ``query`` filters by id, title, username,
        account, backend."""
        raise NotImplementedError

    async def chat(self, account: str, chat_id: int) -> ChatDetail | None:
        raise NotImplementedError

    async def set_backend(self, account: str, chat_id: int, backend: str | None, *,
                          who: str) -> ChatView:
        """Set (None: clear) the chat's ``/backend`` choice; ValueError names an unknown
        backend."""
        raise NotImplementedError

    async def reset(self, account: str, chat_id: int, *, who: str) -> int:
        """Forget the chat's conversation memory; how many exchanges it had."""
        raise NotImplementedError

    async def users(self, query: str = "", *, limit: int = 200) -> list[UserView]:
        raise NotImplementedError

    async def block(self, user_id: int, *, who: str) -> UserView:
        raise NotImplementedError

    async def unblock(self, user_id: int, *, who: str) -> UserView:
        raise NotImplementedError

    async def config(self) -> ConfigView:
        raise NotImplementedError

    async def reload(self, *, who: str) -> ReloadReport:
        """Apply the config file on disk as SIGHUP does."""
        raise NotImplementedError
