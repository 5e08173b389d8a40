"""The ``tgmux`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import click

from tgmux import __version__
from tgmux.config import Config, load_config, load_config_text
from tgmux.errors import ConfigError
from tgmux.hooks import PluginManager, build_plugin_manager, hookimpl

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", envvar="TGMUX_CONFIG", default="config.yaml",
    show_default=True, type=click.Path(dir_okay=False),
    help="The YAML config file (or $TGMUX_CONFIG).",
)


def _fail(error: ConfigError) -> NoReturn:
    for problem in error.problems:
        click.echo(f"error: {problem}", err=True)
    sys.exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs full URLs at INFO; websockets logs handshake headers (cookies) and frames
    # (auth tokens) at DEBUG. Keep both quiet whatever log_level says.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)


def _load(config_path: str, pm: PluginManager | None = None) -> tuple[Config, PluginManager]:
    pm = pm or build_plugin_manager()
    try:
        return load_config(config_path, plugin_manager=pm), pm
    except ConfigError as exc:
        _fail(exc)


def _run(coro: Awaitable[Any]) -> Any:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ConfigError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        return 130


class _ForceBackend:
    """``tgmux chat --backend NAME``: a one-run plugin that routes everything to NAME."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl(tryfirst=True)
    def tgmux_route(self) -> str:
        return self.name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tgmux")
def cli() -> None:
    """tgmux: one Telegram account in front of many AI chat providers."""


# -- chat and demo ------------------------------------------------------------------------------


async def _console(config: Config, pm: PluginManager, *, chat_id: int, user_id: int,
                   chat_type: str, banner: str | None = None,
                   before_stop: Callable[[], Awaitable[None]] | None = None) -> int:
    from tgmux.console import ConsoleFrontend, chat_loop
    from tgmux.engine import Engine
    from tgmux.store import open_store

    interactive = sys.stdin.isatty()
    frontend = ConsoleFrontend(sys.stdout, interactive=interactive)
    engine = Engine(config, pm, open_store(config.data.store), frontend)
    await engine.start()
    try:
        if banner and interactive:
            click.echo(banner)
        await chat_loop(engine, stdin=sys.stdin, out=sys.stdout, interactive=interactive,
                        chat_id=chat_id, user_id=user_id, chat_type=chat_type)  # type: ignore[arg-type]
    finally:
        await engine.stop()
        if before_stop is not None:
            await before_stop()
    return 0


CHAT_TYPES = click.Choice(["private", "group", "supergroup"])


@cli.command()
@CONFIG_OPTION
@click.option("--backend", help="Talk to this backend whatever the routes say.")
@click.option("--chat-id", type=int, default=None, help="Chat id to act as (default: user id).")
@click.option("--user-id", type=int, default=1, show_default=True, help="User id to act as.")
@click.option("--chat-type", type=CHAT_TYPES, default="private", show_default=True)
def chat(config_path: str, backend: str | None, chat_id: int | None, user_id: int,
         chat_type: str) -> None:
    """Chat with your config in the terminal (same engine, routes, hooks and store).

    In a terminal it is interactive; with piped input it answers one message per line and
    exits after the last reply.
    """
    pm = build_plugin_manager()
    config, pm = _load(config_path, pm)
    _setup_logging("WARNING")
    if backend is not None:
        if backend not in config.backend_settings:
            _fail(ConfigError(f"--backend: unknown backend {backend!r} (defined: "
                              f"{', '.join(sorted(config.backend_settings))})"))
        pm.register(_ForceBackend(backend), name="cli-force-backend")
    sys.exit(_run(_console(config, pm, chat_id=user_id if chat_id is None else chat_id,
                           user_id=user_id, chat_type=chat_type)))


DEMO_CONFIG = """
store: "memory://"
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""


@cli.command()
@click.option("--backend", help="Start talking to this demo backend (default: echo).")
def demo(backend: str | None) -> None:
    """Try tgmux offline: the console chat on embedded defaults, no credentials.

    Each bundled provider runs as a local simulator; switch with /backend NAME.
    """
    _setup_logging("WARNING")
    sys.exit(_run(_demo(backend)))


async def _demo(start_with: str | None) -> int:
    import yaml

    from tgmux.hooks import call_all

    pm = build_plugin_manager()
    offers = []
    for result in await call_all(pm.hook.tgmux_demo_backends):
        offers += result if isinstance(result, list) else [result] if result else []
    data = yaml.safe_load(DEMO_CONFIG)
    stops = []
    lines = ["tgmux demo — offline, every provider is a local simulator.",
             "  echo: replies with what you write"]
    try:
        for offer in offers:
            settings, stop = await offer.start()
            stops.append(stop)
            data["backends"][offer.name] = settings
            lines.append(f"  {offer.name}: {offer.description}")
        if start_with is not None:
            if start_with not in data["backends"]:
                raise ConfigError(f"--backend: no demo backend {start_with!r} (have: "
                                  f"{', '.join(sorted(data['backends']))})")
            data["default"] = start_with
        config = load_config_text(yaml.safe_dump(data), source="<demo config>", env={},
                                  plugin_manager=pm)
        lines.append("Switch with /backend NAME, /help lists commands, Ctrl-D quits.")

        async def stop_all() -> None:
            for stop in stops:
                await stop()
            stops.clear()

        return await _console(config, pm, chat_id=1, user_id=1, chat_type="private",
                              banner="\n".join(lines), before_stop=stop_all)
    finally:
        for stop in stops:
            await stop()


# -- config tools -------------------------------------------------------------------------------


@cli.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@CONFIG_OPTION
def check(config_file: str | None, config_path: str) -> None:
    """Validate a config and print its routing table."""
    config, _ = _load(config_file or config_path)
    click.echo(f"{config.source}: OK")
    click.echo("\nbackends:")
    for name, settings in config.backend_settings.items():
        click.echo(f"  {name}: {settings.type}")
    click.echo("\nroutes (first match wins):")
    from tgmux.router import Router

    for i, (match, backend, options) in enumerate(Router(config).table()):
        extra = f"  options: {options}" if options else ""
        click.echo(f"  {i + 1}. {match} -> {backend}{extra}")
    tg = config.data.telegram
    mode = "bot" if tg.bot_token else "user account" if tg.session_string else "not configured"
    click.echo(f"\ntelegram: {mode}; store: {config.data.store}")


@cli.command("backends")
def list_backends() -> None:
    """List installed backend types and plugins, with where each came from."""
    pm = build_plugin_manager()
    click.echo("backend types:")
    rows = []
    for impl in pm.hook.tgmux_backend_types.get_hookimpls():
        result = impl.function()
        info = pm.sources.get(impl.plugin_name)
        for cls in result if isinstance(result, list | tuple) else [result]:
            rows.append((cls, info.source if info else "?"))
    for cls, source in sorted(rows, key=lambda row: row[0].type_name):
        click.echo(f"  {cls.type_name:<12} {cls.__module__}.{cls.__qualname__}  [{source}]")
        if cls.description:
            click.echo(f"  {'':<12} {cls.description}")
    click.echo("\nplugins:")
    for name, info in sorted(pm.sources.items()):
        click.echo(f"  {name:<28} {info.module}  [{info.source}]")


# -- Telegram -----------------------------------------------------------------------------------


@cli.command()
@CONFIG_OPTION
def run(config_path: str) -> None:
    """Run the Telegram bot or user account described by the config."""
    config, pm = _load(config_path)
    _setup_logging(config.data.log_level)
    from tgmux.telegram import run_telegram

    sys.exit(_run(run_telegram(config, pm)))


@cli.command()
@CONFIG_OPTION
@click.option("--bot-username", default="tgmux_bot", show_default=True,
              help="The simulated bot's username (for mentions and /cmd@bot).")
def simulate(config_path: str, bot_username: str) -> None:
    """Offline Telegram: JSON lines in (messages), JSON lines out (what tgmux sends).

    Drives the real Pyrogram client with only its network layer replaced.
    """
    config, pm = _load(config_path)
    _setup_logging("WARNING")
    from tgmux.telegram import simulate as simulate_telegram

    sys.exit(_run(simulate_telegram(config, pm, stdin=sys.stdin, stdout=sys.stdout,
                                    bot_username=bot_username)))


@cli.command()
@click.option("--api-id", type=int, envvar="TG_API_ID", prompt=True, help="From my.telegram.org.")
@click.option("--api-hash", envvar="TG_API_HASH", prompt=True, hide_input=True,
              help="From my.telegram.org.")
@click.option("--phone", default=None, help="The account's phone number (asked if omitted).")
def login(api_id: int, api_hash: str, phone: str | None) -> None:
    """Log in a user account and print its session string once (for session_string:)."""
    _setup_logging("WARNING")
    from tgmux.telegram import login as telegram_login

    session = _run(telegram_login(api_id, api_hash, phone=phone))
    if isinstance(session, str):
        click.echo("\nYour session string (keep it secret; put it in TG_SESSION):\n")
        click.echo(session)


def main() -> None:
    pm = build_plugin_manager()
    pm.hook.tgmux_cli_commands(cli=cli)
    cli(prog_name="tgmux")
