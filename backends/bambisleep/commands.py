"""The ``bambisleep`` backend's six chat commands: the account's profile, triggers and
session history.

Every Telegram user shares the one BambiSleep account: its session history holds everyone's
prompts, and its profile and triggers are everyone's. Reading the history and changing the
account are for the bot's admins (``admin_only``: only users ``admins:`` lists; nobody when it
is empty).

Each command answers with one part: a :class:`~tgmux.backend.Text`, or a
:class:`~tgmux.backend.Notice` for a usage hint or a refusal the user can act on.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tgmux.backend import CommandSpec, Notice, ReplyPart, Text
from tgmux.errors import AuthError, BadRequestError, NotFoundError

from .client import BambiSleepClient

__all__ = ["COMMANDS", "AccountCommands"]

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("profile", "Show the BambiSleep profile", usage="[username]"),
    CommandSpec("profile_set", "Change the account's display name",
                usage="<display name>", admin_only=True),
    CommandSpec("triggers", "List the triggers you can use"),
    CommandSpec("trigger_add", "Create a private trigger on the account",
                usage="name | description | content", admin_only=True),
    CommandSpec("sessions", "List the account's past sessions (all users)",
                admin_only=True),
    CommandSpec("session", "Show the messages of a session", usage="<id>",
                admin_only=True),
)


class AccountCommands:
    """The commands of :data:`COMMANDS` on one client. ``username`` is the account's name from
    the settings (None: the name the login answered, if any)."""

    def __init__(self, client: BambiSleepClient, username: str | None) -> None:
        self.client = client
        self.username = username

    async def run(self, command: str | None, args: str) -> ReplyPart:
        """Answer ``/command args`` (``args`` stripped)."""
        handler = {
            "profile": self.profile,
            "profile_set": self.profile_set,
            "triggers": self.triggers,
            "trigger_add": self.trigger_add,
            "sessions": self.sessions,
            "session": self.session,
        }.get(command or "")
        if handler is None:
            raise NotImplementedError(f"bambisleep has no command {command}")
        return await handler(args)

    def own_username(self) -> str | None:
        if self.username:
            return self.username
        user = self.client.user
        name = user.get("username") if isinstance(user, dict) else None
        return name if isinstance(name, str) and name else None

    async def profile(self, args: str) -> ReplyPart:
        username = args.lstrip("@") or self.own_username()
        if not username:
            return Notice("Whose profile? Use /profile <username> (or set `username` in the "
                          "bambisleep backend's config).")
        try:
            profile = await self.client.get_profile(username)
        except NotFoundError:
            return Notice(f"There is no BambiSleep user {username}.")
        except AuthError as exc:
            if exc.status == 403:
                return Notice(f"The profile of {username} is private.")
            raise
        lines = [f"👤 {profile.display_name or profile.username} (@{profile.username})"]
        if profile.level is not None or profile.xp is not None:
            lines.append(f"Level {_num(profile.level)} · {_num(profile.xp)} XP")
        if profile.is_public is not None:
            lines.append("Public profile" if profile.is_public else "Private profile")
        if profile.created_at:
            lines.append(f"Member since {_date(profile.created_at)}")
        if profile.triggers:
            lines.append("Triggers: " + ", ".join(profile.triggers))
        if profile.avatar_url:
            lines.append(f"Avatar: {profile.avatar_url}")
        return Text("\n".join(lines))

    async def profile_set(self, args: str) -> ReplyPart:
        if not args:
            return Notice("Usage: /profile_set <display name>")
        username = self.own_username()
        if not username:
            return Notice("I don't know the account's username: set `username` in the "
                          "bambisleep backend's config.")
        try:
            profile = await self.client.update_profile(username, display_name=args)
        except BadRequestError as exc:
            return Notice(f"The display name was not accepted: {exc.provider_message}")
        except AuthError as exc:
            if exc.status == 403:
                return Notice(f"This account may not change the profile of {username}.")
            raise
        shown = profile.display_name if profile and profile.display_name else args
        return Text(f"Display name of @{username} is now: {shown}")

    async def triggers(self, args: str) -> ReplyPart:
        triggers = await self.client.list_triggers()
        if not triggers:
            return Text("No triggers yet. Create one with /trigger_add name | description | "
                        "content")
        lines = [f"Triggers ({len(triggers)}):"]
        for t in triggers:
            line = f"• {t.name}"
            if t.description:
                line += f" — {t.description}"
            tags = []
            if t.is_public is not None:
                tags.append("public" if t.is_public else "private")
            if t.creator:
                tags.append(f"by {t.creator}")
            if tags:
                line += f" ({', '.join(tags)})"
            lines.append(line)
        return Text("\n".join(lines))

    async def trigger_add(self, args: str) -> ReplyPart:
        parts = [p.strip() for p in args.split("|", 2)]
        if len(parts) != 3 or not parts[0] or not parts[2]:
            return Notice("Usage: /trigger_add name | description | content")
        name, description, content = parts
        try:
            trigger = await self.client.create_trigger(name, description, content,
                                                       is_public=False)
        except BadRequestError as exc:
            return Notice(f"The trigger was not created: {exc.provider_message}")
        return Text(f"Created the private trigger “{trigger.name}”.")

    async def sessions(self, args: str) -> ReplyPart:
        sessions = await self.client.list_sessions()
        if not sessions:
            return Text("No sessions yet.")
        lines = [f"Sessions ({len(sessions)}):"]
        for s in sessions:
            bits = []
            if s.created_at:
                bits.append(_date(s.created_at, with_time=True))
            if s.message_count is not None:
                bits.append(f"{s.message_count} message{'' if s.message_count == 1 else 's'}")
            lines.append(f"• {s.id}" + (f" — {', '.join(bits)}" if bits else ""))
        lines.append("Show one with /session <id>")
        return Text("\n".join(lines))

    async def session(self, args: str) -> ReplyPart:
        if not args:
            return Notice("Usage: /session <id> (/sessions lists them)")
        session_id = args.split()[0]
        try:
            session = await self.client.get_session(session_id)
        except NotFoundError:
            return Notice(f"There is no session {session_id}. /sessions lists them.")
        head = f"Session {session.id}"
        if session.created_at:
            head += f" ({_date(session.created_at, with_time=True)})"
        if not session.messages:
            return Text(f"{head}: no messages.")
        lines = [head + ":"]
        for m in session.messages:
            who = {"user": "You", "assistant": "Bambi"}.get(m.role, m.role or "?")
            stamp = f"[{_time(m.timestamp)}] " if m.timestamp else ""
            lines.append(f"{stamp}{who}: {m.content}")
        return Text("\n".join(lines))


def _num(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _parse_iso(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when


def _date(value: str, *, with_time: bool = False) -> str:
    when = _parse_iso(value)
    if when is None:
        return value
    return when.strftime("%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d")


def _time(value: str) -> str:
    when = _parse_iso(value)
    return value if when is None else when.strftime("%Y-%m-%d %H:%M:%S")
