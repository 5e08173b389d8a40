"""Every hook of tgmux, in one place, and where to find the other extension points.

Implement a hook in any module or object marked with :data:`tgmux.hookimpl` and register it
through the ``tgmux`` entry-point group (``[project.entry-points.tgmux]``) or the config's
``plugins:`` list. The bundled backends use the same entry-point group.

pluggy is synchronous; tgmux is not. Any hook may return its value directly, or an awaitable
(or an ``async def`` implementation) that tgmux awaits ("await me maybe", as datasette does).
Hook wrappers (``wrapper=True``/``hookwrapper=True``) are refused at registration: they would
see coroutines, not results. Use ``tryfirst``/``trylast`` to order implementations.
``TGMUX_TRACE_HOOKS=1`` prints every hook call to stderr.

Arguments are passed by name; an implementation may accept any subset of them.

The extension points that are classes rather than hooks:

* :class:`tgmux.backend.Backend` and its ``Settings`` model (a
  :class:`tgmux.backend.BackendSettings`): a provider; :class:`tgmux.backend.HttpBackend` for
  one with an HTTP client; register it with :func:`tgmux_backend_types`;
* :mod:`tgmux.types`: the plain data a plugin sees and returns (``IncomingMessage``,
  reply parts, ``PluginCommand``, ``DemoBackend``, ``DROP``) and the ``Frontend`` protocol;
* :class:`tgmux.store.Store`: the store interface (``KeyValue`` is a backend's namespace in it);
* :class:`tgmux.simulator.SimulatorServer`: the base of a provider simulator on 127.0.0.1,
  for tests and ``tgmux demo`` (:func:`tgmux_demo_backends`);
* :mod:`tgmux.http`, :mod:`tgmux.errors`, :mod:`tgmux.ratelimit`: the one HTTP layer, error
  model and rate limiter a backend should use;
* :mod:`tgmux.harness` and :mod:`tgmux.testing`: test kits for plugins and backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from pydantic import BaseModel

    from tgmux.backend import Backend, Turn
    from tgmux.engine import Engine
    from tgmux.types import DemoBackend, IncomingMessage, PluginCommand, ProviderEvent, ReplyPart

hookspec = pluggy.HookspecMarker("tgmux")


@hookspec
def tgmux_backend_types() -> list[type[Backend]] | type[Backend]:
    """Register backend types.

    Called once when the plugin manager is built, before the config's ``backends:`` are
    validated. Return a :class:`tgmux.backend.Backend` subclass or a list of them; each class
    names its ``type_name`` (the ``type:`` in the config) and its ``Settings`` model.

    Example::

        @hookimpl
        def tgmux_backend_types():
            return [MyBackend]
    """


@hookspec
def tgmux_plugin_settings() -> dict[str, type[BaseModel]] | None:
    """Register a plugin's settings: a section at the top level of the config, by name.

    Called once, when the plugin registers (before the config is validated). Return
    ``{name: Model}``, where ``Model`` is a :class:`tgmux.backend.Strict` subclass (a pydantic
    model in which unknown keys are errors), or None. The section ``name:`` of the config is
    validated by ``Model`` with every other key, problems reported as ``file:line: key.path:
    what``; a config that leaves the section out is validated as ``{}`` (so a plugin installed
    through an entry point, loaded for every config, should give each field a default). A
    name that is a core config key (``store``, ``backends``, …) or another plugin's section is
    refused when the plugin registers. Return the dict directly: this hook is not awaited.

    The validated section is ``engine.config.plugin_settings[name]``, or typed,
    ``engine.config.plugin_section(name, Model)`` (from :func:`tgmux_startup` on). A changed
    section takes effect at the next restart, as ``plugins:`` does.

    Example::

        class ParrotSettings(Strict):
            greeting: str = "hello"

        @hookimpl
        def tgmux_plugin_settings():
            return {"parrot": ParrotSettings}
    """


@hookspec
def tgmux_incoming(message: IncomingMessage, engine: Engine) -> IncomingMessage | None:
    """Rewrite an incoming message before it is answered (its final routing, commands, the
    backend): e.g. turn a voice message into its text.

    Called for every message that will be answered, in arrival order per chat: after
    :func:`tgmux_pre_route` (which sees the message as it came) and after ``access`` and
    ``limits``, so a refused message is never rewritten and a rewrite that calls a provider
    (a transcription service) costs nothing for it. The rewritten message is routed again.
    Return a new message
    (``dataclasses.replace(message, text=..., media=None)``) or ``None`` to keep it.
    Implementations run in plugin order, each seeing the previous one's message. Raise a
    :class:`tgmux.errors.BackendError` to answer the user with its ``user_message`` (through
    :func:`tgmux_error`) instead: nothing else happens with the message. The message kept in
    the store is the original, so a message answered again after a restart is rewritten again.
    """


@hookspec
def tgmux_commands() -> list[PluginCommand] | None:
    """Register chat commands that do not belong to a backend.

    Called once at engine start. Return a list of :class:`tgmux.engine.PluginCommand`
    (a :class:`tgmux.backend.CommandSpec` and an async handler). They show in ``/help`` and in
    Telegram's command menu. Built-in commands (``/start``, ``/help``, ``/reset``,
    ``/backend``) cannot be replaced.
    """


@hookspec(firstresult=True)
def tgmux_pre_route(message: IncomingMessage, engine: Engine, triggered: bool) -> Any:
    """Look at every message before a backend or command sees it: allowlists, moderation,
    logging, canned answers.

    Called for every incoming message, commands included, in arrival order per chat, also for
    group messages that do not trigger the bot (not addressed to it under the route's
    ``group_trigger``): then ``triggered`` is False, and unless the hook answers, nothing
    else happens with the message. Return:

    * ``None``: go on as usual;
    * :data:`tgmux.types.DROP`: ignore the message silently (it is still marked processed);
    * a string or a list of reply parts: answer with that instead of calling a backend. Check
      ``triggered`` first unless the bot should speak up in groups unasked (a moderator).

    The first implementation that returns something other than ``None`` wins.
    """


@hookspec(firstresult=True)
def tgmux_route(message: IncomingMessage, engine: Engine) -> str | None:
    """Choose the backend for a message, ahead of the chat's override, its persona and the
    config's routes.

    Return a backend name from the config, or ``None`` to let the normal routing decide
    (override set with ``/backend``, then the chat's persona (``/persona``), then the first
    matching route, then ``default``).
    """


@hookspec
def tgmux_before_backend(turn: Turn, backend: Backend) -> Turn | None:
    """Change the request before a backend gets it.

    Called with the :class:`tgmux.backend.Turn` about to be sent. Return a new turn
    (``dataclasses.replace(turn, text=...)``) or ``None`` to keep it. Implementations run in
    plugin order, each seeing the previous one's turn.
    """


@hookspec
def tgmux_after_backend(turn: Turn, part: ReplyPart,
                        engine: Engine) -> ReplyPart | list[ReplyPart] | None:
    """Change the reply: called for each complete part a backend yields (final text, image,
    audio, notice), not for streaming deltas. ``engine`` gives the config
    (``engine.config.plugin_settings``).

    Return a replacement part, a list of parts (empty to drop it), or ``None`` to keep it.
    When the final text of a streamed reply changes, frontends correct what they showed.
    Implementations run in plugin order, each seeing the previous one's result.
    """


@hookspec
def tgmux_reply_sent(turn: Turn, parts: list[ReplyPart]) -> None:
    """Called after a reply was delivered to the chat, with the parts that were sent
    (for logging, metrics, billing). The return value is ignored."""


@hookspec(firstresult=True)
def tgmux_error(turn: Turn | None, error: BaseException, message: IncomingMessage) -> str | None:
    """Called when answering a message failed (a :class:`tgmux.errors.BackendError` or any
    other exception). Return the text to send the user instead of the default message for
    the error's kind; ``None`` keeps the default. The user is always told something."""


@hookspec
def tgmux_provider_event(event: ProviderEvent, engine: Engine) -> None:
    """A backend received something on its own (a webhook, a websocket push).

    ``event.chat_id`` is where the backend's config says such events should go, if anywhere.
    The bundled ``tgmux.plugins.event_relay`` plugin delivers ``event.text`` there; other
    plugins may store, filter or reformat events. Frontends never see providers: they only
    see what :meth:`tgmux.engine.Engine.deliver` sends.
    """


@hookspec
def tgmux_startup(engine: Engine) -> None:
    """Called once after the backends started and before the first message is handled."""


@hookspec
def tgmux_shutdown(engine: Engine) -> None:
    """Called once at shutdown, after in-flight replies finished and before the store closes."""


@hookspec
def tgmux_cli_commands(cli: click.Group) -> None:
    """Add commands to the ``tgmux`` command line (``cli.add_command(...)``), as datasette's
    ``register_commands`` does."""


@hookspec
def tgmux_demo_backends() -> list[DemoBackend] | DemoBackend | None:
    """Offer a backend to ``tgmux demo``, which runs offline with no credentials.

    Return :class:`tgmux.types.DemoBackend` objects: a name, a one-line description and an
    async ``start()`` that starts the backend's simulator on 127.0.0.1 and returns the backend's
    config (a dict as under ``backends:``) and an async ``stop()``. The demo lists them and
    ``/backend NAME`` switches to one.
    """
