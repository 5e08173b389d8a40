"""The built-in chat commands every chat has: ``/start``, ``/help``, ``/reset``, ``/backend``,
``/persona`` (where personas are offered: :mod:`tgmux.personas`), ``/usage``, ``/status``
(admins), and the texts the engine answers commands with."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from tgmux.errors import BackendError
from tgmux.personas import offers_personas, persona_command, persona_status
from tgmux.store.guard import StoreUnavailable
from tgmux.text import shorten
from tgmux.types import CommandSpec, IncomingMessage, Notice, ReplyPart, Text

if TYPE_CHECKING:
    from tgmux.engine import Engine
    from tgmux.router import RouteDecision

BUILTIN_COMMANDS = (
    CommandSpec("start", "Start talking"),
    CommandSpec("help", "What this bot can do"),
    CommandSpec("reset", "Forget this conversation"),
    CommandSpec("backend", "Show or switch the AI behind this chat", usage="[name]"),
    CommandSpec("persona", "Show or choose who you talk to", usage="[name]"),
    CommandSpec("usage", "Your messages, tokens and cost, and their limits"),
    CommandSpec("status", "Each AI's health in this process", admin_only=True),
)
#: What a command that needs the store answers while it does not answer (tgmux.store.guard).
STORE_UNAVAILABLE = ("I cannot do that right now: my storage is not answering. Messages are "
                     "still answered; please try this again in a few minutes.")
#: Their names (never counted nor limited).
BUILTIN_NAMES = frozenset(c.name for c in BUILTIN_COMMANDS)


def builtin_answers(engine: Engine, command: str | None,
                    decision: RouteDecision | None) -> bool:
    """Whether a built-in command answers ``command`` (one of :data:`BUILTIN_NAMES`).
    ``/start`` is the route's backend's when it declares a ``start`` command: a deep link's
    payload (``t.me/bot?start=PAYLOAD``) reaches it as ``turn.args``; otherwise the built-in
    greeting answers (the payload reaches plugins only, ``IncomingMessage.start_payload``)."""
    if command not in BUILTIN_NAMES:
        return False
    if command != "start" or decision is None:
        return True
    backend = engine.backends.get(decision.backend)
    return backend is None or all(spec.name != "start" for spec in backend.commands())


async def run_builtin(engine: Engine, command: str, message: IncomingMessage,
                      decision: RouteDecision | None) -> list[ReplyPart]:
    """Answer one of :data:`BUILTIN_COMMANDS`."""
    if command == "start":
        return [Text("Hi! Send me a message and I will answer. /help lists what I can do.")]
    if command == "help":
        return [Text(help_text(engine, decision, message.chat.account))]
    if command == "usage":
        try:
            return await _usage_command(engine, message)
        except StoreUnavailable:
            return [Notice(STORE_UNAVAILABLE)]
    if command == "status":
        if not engine.is_admin(message.chat.user_id, message.chat.account):
            return [Notice(admin_only_notice(command))]
        persona = persona_status(engine, message, decision)
        return [Text(status_text(engine) + (f"\n\n{persona}" if persona else ""))]
    if command == "reset":
        backend = engine.backends.get(decision.backend) if decision is not None else None
        if decision is None or backend is None:
            return [Text("Nothing to reset.")]
        try:
            said = await backend.reset(engine.turn_for(message, decision, backend))
        except BackendError as exc:
            return [Notice(exc.user_message)]
        return [Text(said or "This AI keeps no conversation I can reset.")]
    try:
        if command == "persona":
            return await persona_command(engine, message, decision)
        return await _backend_command(engine, message, decision)
    except StoreUnavailable:  # only the switch writes: the listing answers during an outage
        return [Notice(STORE_UNAVAILABLE)]


async def _usage_command(engine: Engine, message: IncomingMessage) -> list[ReplyPart]:
    """``/usage``: the sender's; ``/usage @user`` or ``/usage USER_ID``: an admin's look at
    another user's (a username is known once this process or another saw the user write)."""
    account = engine.router_for(message.chat.account).account
    wanted = message.args.strip()
    if not wanted:
        return [Text(await engine.gate.usage(account, message))]
    if not engine.is_admin(message.chat.user_id, message.chat.account):
        return [Notice("Only the bot's admins can see another user's usage.")]
    if wanted.lstrip("-").isdigit():
        return [Text(await engine.gate.usage(account, message, int(wanted), f"user {wanted}"))]
    if wanted.startswith("@") and len(wanted) > 1 and " " not in wanted:
        user_id = await engine.gate.user_by_name(wanted)
        if user_id is None:
            return [Notice(f"I have not seen {shorten(wanted, 40)} write here yet; try "
                           "/usage USER_ID.")]
        return [Text(await engine.gate.usage(account, message, user_id,
                                             f"{shorten(wanted, 40)} ({user_id})"))]
    return [Notice("Use /usage, /usage @username or /usage USER_ID.")]


async def _backend_command(engine: Engine, message: IncomingMessage,
                           decision: RouteDecision | None) -> list[ReplyPart]:
    chat_id = message.chat.chat_id
    listing = ", ".join(sorted(engine.backends))
    wanted = message.args.strip()
    if not wanted:
        current = decision.backend if decision else "(none)"
        return [Text(f"This chat talks to: {current}\nAvailable: {listing}\n"
                     "Switch with /backend NAME; /backend default goes back to the config.")]
    if not engine.is_admin(message.chat.user_id, message.chat.account):
        return [Notice("Only the bot's admins can switch the AI for a chat.")]
    if wanted == "default":
        await engine.set_override(message.chat.account, chat_id, None)
        after = await engine.decide(message)
        engine.menus.seen(message, after, force=True)  # the chat's menu follows
        return [Text(f"This chat follows the config again: {after.backend if after else '-'}")]
    if wanted not in engine.backends:
        return [Notice(f"There is no backend {shorten(wanted, 40)!r}. Available: {listing}")]
    await engine.set_override(message.chat.account, chat_id, wanted)
    engine.menus.seen(message, await engine.decide(message), force=True)
    return [Text(f"This chat now talks to: {wanted}")]


def help_text(engine: Engine, decision: RouteDecision | None, account: str = "main") -> str:
    lines = ["Send me a message and I will answer.", ""]
    specs = [c for c in BUILTIN_COMMANDS
             if c.name != "persona" or offers_personas(engine, decision, account)]
    specs += [c.spec for c in engine.plugin_commands.values()]
    if decision is not None:
        specs += engine.backends[decision.backend].commands()
    for spec in specs:
        usage = f" {spec.usage}" if spec.usage else ""
        admins = " (admins only)" if spec.admin_only else ""
        lines.append(f"/{spec.name}{usage} — {spec.description}{admins}")
    return "\n".join(lines)


def status_text(engine: Engine) -> str:
    """``/status``: each backend's circuit, last error and the median time of its last
    replies, as this process saw them."""
    lines = ["AI backends (this process):"]
    for name, backend in engine.backends.items():
        circuit = engine.circuits.get(name)
        parts = [f"{name} ({backend.type_name})"]
        if circuit is not None:
            state = circuit.state.replace("_", " ")
            if circuit.state == "open":
                state += f", retried in {circuit.retry_in():.0f} s"
            parts.append(f"circuit {state}")
            if (ago := circuit.since_last_error()) is not None:
                parts.append(f"last error {circuit.last_error} {_ago(ago)}")
        recent = engine.recent_latency.get(name)
        if recent:
            parts.append(f"p50 {statistics.median(recent):.2f} s over {len(recent)} "
                         "replies")
        else:
            parts.append("no replies yet")
        lines.append(" · ".join(parts))
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, round(seconds))} s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    return f"{round(seconds / 3600)} h ago"


def admin_only_notice(command: str) -> str:
    return f"Only the bot's admins can use /{command}."


def interrupted_notice(text: str) -> str:
    shown = shorten(text, 60)
    return (f"I was restarted while answering your message “{shown}” and may not have "
            "finished. Please send it again if you still need an answer.")
