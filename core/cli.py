"""The ``tgmux`` command line.

Only click is imported up front: ``tgmux --version`` and ``tgmux --help`` load no plugin,
backend, pyrogram or aiohttp. Each command imports what it needs when it runs, and plugins'
own commands (``tgmux_cli_commands``) are loaded only when a name is not a built-in command.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from tgmux import __version__, hookimpl
from tgmux.errors import ConfigError, TgmuxError
from tgmux.hangup import hold_sighup
from tgmux.redact import redact

if TYPE_CHECKING:
    from tgmux.config import Config
    from tgmux.hooks import PluginManager

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", envvar="TGMUX_CONFIG", default="config.yaml",
    show_default=True, type=click.Path(dir_okay=False),
    help="The YAML config file (or $TGMUX_CONFIG).",
)


def _fail(error: ConfigError) -> NoReturn:
    for problem in error.problems:
        click.echo(f"error: {redact(problem)}", err=True)
    sys.exit(2)


def _setup_logging(level: str, fmt: str = "text") -> None:
    from tgmux.logs import setup_logging

    setup_logging(level, fmt)


def _config_logging(config: Config, quiet: bool = False) -> None:
    """The config's log_level and log_format; ``quiet`` commands (the console, simulate, whose
    stdout is the conversation) log warnings only unless the config names a level."""
    data = config.data
    level = data.log_level if not quiet or "log_level" in data.model_fields_set else "WARNING"
    _setup_logging(level, data.log_format)


def _load(config_path: str) -> tuple[Config, PluginManager]:
    from tgmux.bootstrap import load

    try:
        return load(config_path)
    except ConfigError as exc:
        _fail(exc)


def _run(coro: Awaitable[Any]) -> Any:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ConfigError as exc:
        _fail(exc)
    except TgmuxError as exc:  # not the config's fault (no network...): say it, exit 1
        click.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        return 130


class _ForceBackend:
    """``tgmux chat --backend NAME``: a one-run plugin that routes everything to NAME."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl(tryfirst=True)
    def tgmux_route(self) -> str:
        return self.name


class TgmuxGroup(click.Group):
    """Built-in commands at once; plugins' commands only when asked for by name."""

    plugins_loaded = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and not self.plugins_loaded:
            self.load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def load_plugin_commands(self) -> None:
        from tgmux.hooks import build_plugin_manager

        self.plugins_loaded = True
        build_plugin_manager().hook.tgmux_cli_commands(cli=self)


@click.group(cls=TgmuxGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Installed plugins may add commands; `tgmux backends` lists the plugins.")
@click.version_option(__version__, prog_name="tgmux")
def cli() -> None:
    """tgmux: one Telegram account in front of many AI chat providers."""


# -- chat and demo ------------------------------------------------------------------------------

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
    exits after the last reply. With --chat-type group or supergroup, start a line with @bot to
    address the bot (other lines are answered only where group_trigger is always).
    """
    hold_sighup()  # first: SIGHUP must not end the process while it starts
    from tgmux.console import run_console

    config, pm = _load(config_path)
    _config_logging(config, quiet=True)
    if backend is not None:
        if backend not in config.backend_settings:
            _fail(ConfigError(f"--backend: unknown backend {backend!r} (defined: "
                              f"{', '.join(sorted(config.backend_settings))})"))
        pm.register(_ForceBackend(backend), name="cli-force-backend")
    sys.exit(_run(run_console(config, pm, chat_id=user_id if chat_id is None else chat_id,
                              user_id=user_id, chat_type=chat_type,  # type: ignore[arg-type]
                              stdin=sys.stdin, stdout=sys.stdout)))


@cli.command()
@click.option("--backend", help="Start talking to this demo backend (default: echo).")
def demo(backend: str | None) -> None:
    """Try tgmux offline: the console chat on embedded defaults, no credentials.

    Each bundled provider runs as a local simulator; switch with /backend NAME.
    """
    from tgmux.demo import run_demo

    _setup_logging("WARNING")
    sys.exit(_run(run_demo(backend)))


# -- config tools -------------------------------------------------------------------------------


@cli.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@CONFIG_OPTION
def check(config_file: str | None, config_path: str) -> None:
    """Validate a config, print its routing table, and check that the store opens."""
    from tgmux.access import access_warnings
    from tgmux.prices import price_warnings
    from tgmux.proxy import proxy_note
    from tgmux.redact import redact_urls
    from tgmux.router import Router
    from tgmux.store import check_store
    from tgmux.text import shorten

    config, _ = _load(config_file or config_path)
    for warning in [*access_warnings(config), *price_warnings(config)]:
        click.echo(f"warning: {warning}", err=True)
    click.echo("backends:")
    for name, settings in config.backend_settings.items():
        click.echo(f"  {name}: {settings.type}{proxy_note(settings)}")
    if config.data.personas:
        click.echo("personas:")
    for name, persona in config.data.personas.items():
        click.echo(f"  {name} -> {persona.backend}"
                   + "".join(f", {k}={shorten(repr(v), 60)}" for k, v in persona.options.items()))
    for name, account in config.accounts.items():
        tg = account.telegram
        mode = ("bot" if tg.bot_token else "user account"
                if tg.session_string or tg.user_account else "not configured")
        click.echo(f"\naccount {name} (telegram: {mode}{proxy_note(tg)}), routes (first match "
                   "wins):")
        router = Router(config, name)
        for i, (match, backend, options, trigger) in enumerate(router.table()):
            extra = (f"  options: {options}" if options else "") + router.personas_shown(i)
            click.echo(f"  {i + 1}. {match} -> {backend}  (groups: {trigger}){extra}")
    click.echo(f"\nstore: {redact_urls(config.data.store.url)}")
    problem = _run(check_store(config.data.store.url))
    if problem:
        click.echo(f"error: {config.where(('store',))}: {problem}", err=True)
        sys.exit(2)
    click.echo(f"\n{config.source}: OK")  # last: only when everything above passed


@cli.group()
def store() -> None:
    """The store: its schema."""


@store.command("migrate")
@CONFIG_OPTION
def store_migrate(config_path: str) -> None:
    """Bring the store's schema up to date (also done at every start) and print its version."""
    from tgmux.redact import redact_urls
    from tgmux.store import open_store

    config, _ = _load(config_path)
    _setup_logging("WARNING")
    url = config.data.store.url

    async def migrate() -> tuple[int | None, tuple[int, int] | None]:
        opened = open_store(url)
        try:
            await opened.open()
        except Exception as exc:
            raise ConfigError(redact_urls(f"{config.where(('store',))}: cannot open {url}: "
                                          f"{exc}")) from exc
        await opened.close()
        return opened.schema_version, opened.migrated

    version, migrated = _run(migrate())
    where = redact_urls(url)
    if version is None:
        click.echo(f"store: {where}: nothing to migrate (kept in memory)")
    elif migrated is not None and migrated[0] == 0:
        click.echo(f"store: {where}: schema version {version} (created)")
    elif migrated is not None:
        click.echo(f"store: {where}: schema version {version} (migrated from {migrated[0]})")
    else:
        click.echo(f"store: {where}: schema version {version}")


@cli.command("backends")
def list_backends() -> None:
    """List installed backend types and plugins, with where each came from."""
    from tgmux.hooks import build_plugin_manager, flatten

    pm = build_plugin_manager()
    click.echo("backend types:")
    rows = []
    hook = pm.hook.tgmux_backend_types
    for impl in hook.get_hookimpls():
        info = pm.sources.get(impl.plugin_name)
        for cls in flatten([pm.call_one(hook, impl, {})]):
            rows.append((cls, info.source if info else "?"))
    for cls, source in sorted(rows, key=lambda row: row[0].type_name):
        click.echo(f"  {cls.type_name:<12} {cls.__module__}.{cls.__qualname__}  [{source}]")
        if description := _describe(cls):
            click.echo(f"  {'':<12} {description}")
    click.echo("\nplugins:")
    for name, info in sorted(pm.sources.items()):
        click.echo(f"  {name:<28} {info.module}  [{info.source}]")


def _describe(cls: type) -> str:
    """A backend's ``description``, else the first line of its own docstring."""
    if getattr(cls, "description", ""):
        return cls.description
    doc = cls.__dict__.get("__doc__") or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@cli.command()
@CONFIG_OPTION
def healthcheck(config_path: str) -> None:
    """Exit 0 when this config's /healthz answers (or no server.listen is set), else 1.

    For a container's HEALTHCHECK: no curl needed.
    """
    import urllib.request

    from tgmux.config import read_config_file
    from tgmux.config.schema import parse_listen

    try:
        listen = read_config_file(config_path).data.get("server", {}).get("listen")
    except (ConfigError, AttributeError) as exc:
        click.echo(f"healthcheck: {exc}", err=True)
        sys.exit(1)
    # Only server.listen is read: no plugin is loaded, nothing else is validated.
    if not listen:
        return
    host, port = parse_listen(str(listen))
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
    try:
        # its own server, on this machine: never through HTTP_PROXY
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(url, timeout=4) as response:
            sys.exit(0 if response.status == 200 else 1)
    except OSError as exc:
        click.echo(f"healthcheck: {url}: {exc}", err=True)
        sys.exit(1)


# -- Telegram -----------------------------------------------------------------------------------


@cli.command()
@CONFIG_OPTION
@click.option("--account", "accounts", multiple=True, metavar="NAME",
              help="Run this account only (repeat for several; default: all of them).")
def run(config_path: str, accounts: tuple[str, ...]) -> None:
    """Run the Telegram bots or user accounts described by the config.

    With a PostgreSQL store an account runs in one process at a time: a second process for
    the same account stands by and takes over when the first is gone.
    """
    hold_sighup()  # first: SIGHUP must not end the process while it starts
    config, pm = _load(config_path)
    _config_logging(config)
    from tgmux.telegram import run_telegram

    sys.exit(_run(run_telegram(config, pm, list(accounts) or None)))


@cli.command()
@CONFIG_OPTION
@click.option("--since", metavar="DATE", help="YYYY-MM-DD, UTC [default: the first of this "
              "month]")
@click.option("--by", "by", type=click.Choice(["user", "chat", "backend", "model", "day"]),
              default="user", show_default=True, help="Sum the rows of each.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
def usage(config_path: str, since: str | None, by: str, fmt: str) -> None:
    """Messages, tokens and cost from the store, summed by user, chat, backend, model or day."""
    import datetime as dt

    if since is None:
        since = dt.datetime.now(dt.UTC).date().replace(day=1).isoformat()
    else:
        try:
            since = dt.date.fromisoformat(since.strip()).isoformat()
        except ValueError:
            click.echo(f"error: --since: expected a date as YYYY-MM-DD, got {since!r}",
                       err=True)
            sys.exit(2)
    config, _ = _load(config_path)
    _setup_logging("WARNING")
    sys.exit(_run(_usage(config, since, by, fmt)))


async def _usage(config: Config, since: str, by: str, fmt: str) -> int:
    from tgmux.redact import redact_urls
    from tgmux.store import open_store
    from tgmux.usage_report import group_rows, render

    store = open_store(config.data.store.url)
    try:
        await store.open()
    except Exception as exc:
        raise ConfigError(f"{config.where(('store',))}: cannot open "
                          f"{redact_urls(config.data.store.url)}: {exc}") from exc
    try:
        rows = await store.usage_rows(since=since)
    except Exception as exc:
        raise ConfigError(f"{config.where(('store',))}: cannot read the usage from "
                          f"{redact_urls(config.data.store.url)}: {exc}") from exc
    finally:
        await store.close()
    groups, total = group_rows(rows, by)  # type: ignore[arg-type]
    click.echo(render(groups, total, by=by, fmt=fmt, since=since,  # type: ignore[arg-type]
                      currency=config.data.currency), nl=False)
    return 0


@cli.command()
@CONFIG_OPTION
def status(config_path: str) -> None:
    """Each account: who runs it (host, pid, since) and how many messages wait."""
    config, _ = _load(config_path)
    sys.exit(_run(_status(config)))


async def _status(config: Config) -> int:
    import time

    from tgmux.redact import redact_urls
    from tgmux.store import open_store

    store = open_store(config.data.store.url)
    try:
        await store.open()
    except Exception as exc:
        raise ConfigError(f"{config.where(('store',))}: cannot open "
                          f"{redact_urls(config.data.store.url)}: {exc}") from exc
    try:
        click.echo(f"store: {redact_urls(config.data.store.url)}")
        for name in config.accounts:
            holder = await (await store.hold_account(name)).holder()
            backlog = await store.inbox_backlog(account=name)
            who = (f"run by {holder.hostname} pid {holder.pid} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.since))}"
                   if holder else "not running")
            click.echo(f"  {name}: {who}; {backlog} message(s) waiting")
    finally:
        await store.close()
    return 0


@cli.command()
@CONFIG_OPTION
@click.option("--bot-username", default="tgmux_bot", show_default=True,
              help="The simulated bot's username (for mentions and /cmd@bot).")
@click.option("--strict-flood", is_flag=True,
              help="Telegram's flood limits enforced: over them, FLOOD_WAIT_X.")
@click.option("--telegram-state", type=click.Path(dir_okay=False), default=None,
              help="Keep the offline Telegram's state in this file across runs.")
@click.option("--latency", type=click.FloatRange(0, 60_000), default=0.0,
              help="Delay each push and answer by a random 0..MS milliseconds.")
@click.option("--seed", type=int, default=None, help="Seed of the latency's randomness.")
@click.option("--fault", "faults", multiple=True, metavar="METHOD=ERROR[:TIMES]",
              help="Answer METHOD (e.g. updates.GetDifference) with ERROR (e.g. "
                   "FLOOD_WAIT_5), TIMES times (default 1). Repeatable.")
def simulate(config_path: str, bot_username: str, strict_flood: bool,
             telegram_state: str | None, latency: float, seed: int | None,
             faults: tuple[str, ...]) -> None:
    """Offline Telegram: JSON lines in (messages), JSON lines out (what tgmux sends).

    Drives the real Pyrogram client with only its network layer replaced.
    """
    hold_sighup()  # first: SIGHUP must not end the process while it starts
    from tgmux.telegram.simulate import parse_fault

    parsed: list[tuple[str, str, int | None]] = []
    for fault in faults:
        method, _, rest = fault.partition("=")
        error, _, times = rest.partition(":")
        try:
            if not method or not error or (times and not times.isdigit()):
                raise ValueError("expected METHOD=ERROR[:TIMES], e.g. "
                                 "updates.GetDifference=FLOOD_WAIT_5:1")
            parse_fault(method, error, int(times or 1))
        except ValueError as exc:
            raise click.BadParameter(f"{fault}: {exc}", param_hint="--fault") from None
        parsed.append((method, error, int(times or 1)))
    config, pm = _load(config_path)
    _config_logging(config, quiet=True)
    from tgmux.telegram.simulate import simulate as simulate_telegram

    sys.exit(_run(simulate_telegram(config, pm, stdin=sys.stdin, stdout=sys.stdout,
                                    bot_username=bot_username, strict_flood=strict_flood,
                                    telegram_state=telegram_state, latency_ms=latency,
                                    seed=seed, faults=parsed)))


def _api_hash(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from tgmux.config.schema import API_HASH

    if not API_HASH.fullmatch(value):
        raise click.BadParameter("expected the 32 hexadecimal digits my.telegram.org shows")
    return value


@cli.command()
@click.option("--api-id", type=click.IntRange(1, 2**31 - 1), envvar="TG_API_ID", prompt=True,
              help="From my.telegram.org.")
@click.option("--api-hash", envvar="TG_API_HASH", prompt=True, hide_input=True,
              callback=_api_hash, help="From my.telegram.org.")
@click.option("--phone", default=None, help="The account's phone number (asked if omitted).")
@click.option("--proxy", envvar="TG_PROXY", default=None, metavar="URL",
              help="Reach Telegram through this proxy, as telegram.proxy: "
                   "socks5|socks4|http://[USER:PASSWORD@]HOST:PORT.")
@click.option("-c", "--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Write the session into this config's store (for --account) instead of "
                   "printing it: `tgmux run` with this config then needs no session_string.")
@click.option("--account", default=None, metavar="NAME",
              help="With --config: the account whose session it is (default: the first).")
def login(api_id: int, api_hash: str, phone: str | None, proxy: str | None,
          config_path: str | None, account: str | None) -> None:
    """Log in a user account and print its session string once (for session_string:), or
    with --config write it into that config's store."""
    from tgmux.proxy import TELEGRAM_SCHEMES, parse_proxy

    config = None
    if config_path is not None:
        config, _ = _load(config_path)
        if account is not None and account not in config.accounts:
            raise click.BadParameter(f"no account {account!r} (the config has: "
                                     f"{', '.join(config.accounts)})", param_hint="--account")
        if proxy is None:
            proxy = config.account(account).telegram.proxy
    elif account is not None:
        raise click.BadParameter("only with --config", param_hint="--account")
    if proxy is not None:
        try:
            parse_proxy(proxy, TELEGRAM_SCHEMES)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--proxy") from None
    _setup_logging("WARNING")
    from tgmux.telegram import login as telegram_login

    session = _run(telegram_login(api_id, api_hash, phone=phone, proxy=proxy))
    if not isinstance(session, str):
        return
    if config is None:
        click.echo("\nYour session string (keep it secret; put it in TG_SESSION):\n")
        click.echo(session)
        return
    from tgmux.redact import redact_urls
    from tgmux.telegram.store_session import write_session

    name = config.account(account).name
    _run(write_session(config, name, session))
    click.echo(f"\nThe session is in the store ({redact_urls(config.data.store.url)}) for "
               f"account {name}: `tgmux run -c {config_path}` uses it (leave session_string "
               "unset: a session_string replaces it).")


def main() -> None:
    cli(prog_name="tgmux")
