"""Hot reload: on SIGHUP, ``tgmux run``, ``tgmux chat`` and ``tgmux simulate`` read their config
file again and run on it from the next message on.

The new file is validated in full first (against the backend types and plugin settings sections
the running process has): when it is invalid, each problem is logged with its file:line and the
old config keeps running.
Routes, defaults, admins, access, limits, personas, fallback chains, ``engine.turn_timeout``,
``engine.max_reply_chars``, ``engine.merge_window`` and ``log_level`` apply at once; backends
follow :meth:`tgmux.engine.Engine.reload` (unchanged ones keep their instance), and a bot's
command menus are published again where they changed (:mod:`tgmux.menu_publisher`). What a
running process cannot change — the store, the Telegram accounts and their settings,
``plugins`` and the plugins' settings sections, ``server``, ``engine.concurrency``,
``log_format`` — keeps its old value, and the log line says it needs a restart. One line
says what changed::

    config reloaded from config.yaml: routes: 3 → 4; default: lucy → echo; backend bambi: removed
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import weakref
from collections.abc import Iterator
from pathlib import Path

from tgmux.config import Config, read_config_file, validate_config
from tgmux.engine import Engine
from tgmux.errors import ConfigError
from tgmux.hangup import hand_back, take_pending
from tgmux.hooks import PluginManager

__all__ = ["Reloaded", "Reloader", "applicable", "describe_changes", "reloader_for",
           "reloading"]

log = logging.getLogger("tgmux.reload")


def applicable(old: Config, new: Config, *,
               written: Config | None = None) -> tuple[Config, list[str]]:
    """``new`` with what a running process cannot change kept from ``old``, and the names of
    those parts that differ (they need a restart). ``written``: the file's config as written,
    when ``new`` was validated with the running ``engine.concurrency``."""
    restart: list[str] = []
    before, after = old.data, new.data
    for key in ("store", "plugins", "server", "log_format"):
        if getattr(before, key) != getattr(after, key):
            restart.append(key)
    if before.engine.concurrency != (written or new).data.engine.concurrency:
        restart.append("engine.concurrency")
    # Plugins read their sections from startup on (clients made with them): a restart.
    restart += [name for name in sorted({*old.plugin_settings, *new.plugin_settings})
                if old.plugin_settings.get(name) != new.plugin_settings.get(name)]
    accounts = {}
    for name, account in old.accounts.items():
        changed = new.accounts.get(name)
        if changed is None:
            restart.append(f"account {name} (removed)")
            accounts[name] = account
            continue
        if changed.telegram != account.telegram:
            restart.append(f"telegram ({name})" if len(old.accounts) > 1 else "telegram")
        accounts[name] = dataclasses.replace(changed, telegram=account.telegram)
    restart += [f"account {name} (added)" for name in new.accounts if name not in old.accounts]
    data = after.model_copy(update={
        "store": before.store, "plugins": before.plugins, "server": before.server,
        "log_format": before.log_format, "telegram": before.telegram,
        "accounts": before.accounts,
        "engine": after.engine.model_copy(update={"concurrency": before.engine.concurrency}),
    })
    return dataclasses.replace(new, data=data, accounts=accounts,
                               plugin_settings=old.plugin_settings), restart


def describe_changes(old: Config, new: Config) -> list[str]:
    """What differs in routing and the engine's settings, one short phrase each (the
    backends' changes are :meth:`Engine.reload`'s to say)."""
    changes: list[str] = []
    several = len(new.accounts) > 1
    for name, after in new.accounts.items():
        before = old.accounts.get(name)
        if before is None:
            continue
        prefix = f"{name}: " if several else ""
        if before.routes != after.routes:
            counts = f"{len(before.routes)} → {len(after.routes)}"
            changes.append(f"{prefix}routes: " + (counts if len(before.routes) !=
                                                  len(after.routes) else "changed"))
        if before.default != after.default:
            changes.append(f"{prefix}default: {before.default or '-'} → {after.default or '-'}")
        for key in ("admins", "access", "limits", "personas", "persona_switch"):
            if getattr(before, key) != getattr(after, key):
                changes.append(f"{prefix}{key}: changed")
    if old.data.personas != new.data.personas and not any("personas" in c for c in changes):
        changes.append("personas: changed")
    for key in ("turn_timeout", "max_reply_chars", "merge_window"):
        was, now = getattr(old.data.engine, key), getattr(new.data.engine, key)
        if was != now:
            changes.append(f"engine.{key}: {was:g} → {now:g}")
    if old.data.log_level != new.data.log_level:
        changes.append(f"log_level: {old.data.log_level} → {new.data.log_level}")
    return changes


@dataclasses.dataclass(frozen=True)
class Reloaded:
    """What one reload did (what its log lines say)."""

    applied: bool
    changes: list[str] = dataclasses.field(default_factory=list)
    needs_restart: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)  # file:line: key: what


#: The reloader of each engine: SIGHUP and the console's reload share one (one at a time).
_reloaders: weakref.WeakKeyDictionary[Engine, Reloader] = weakref.WeakKeyDictionary()


def reloader_for(engine: Engine, plugin_manager: PluginManager | None = None) -> Reloader:
    """The engine's reloader, made on first use (on the engine's config file)."""
    reloader = _reloaders.get(engine)
    if reloader is None:
        reloader = _reloaders[engine] = Reloader(engine, plugin_manager or engine.pm)
    return reloader


class Reloader:
    """Reads ``path`` again and applies it to ``engine``, on :meth:`reload` or on SIGHUP while
    :meth:`on_sighup` is entered. Reloads run one at a time; signals that come during one make
    one more reload after it."""

    def __init__(self, engine: Engine, plugin_manager: PluginManager,
                 path: str | os.PathLike[str] | None = None, *,
                 env: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.pm = plugin_manager
        self.path = Path(path if path is not None else engine.config.source)
        self.env = env
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        if logging.getLogger().level == logging.WARNING:  # the quiet commands' default
            log.setLevel(logging.INFO)  # a reload's outcome is what the operator waits for

    def _load(self, concurrency: int) -> tuple[Config, Config]:
        """The file's config as written, and as this process would run it: with the running
        ``engine.concurrency``, which HTTP backends' pools follow when they set no
        ``max_connections`` (a changed concurrency must not rebuild them for nothing)."""
        parsed = read_config_file(self.path, env=self.env)
        types, sections = self.pm.backend_types(), self.pm.plugin_settings_models()
        written = validate_config(parsed, types, sections)
        if written.data.engine.concurrency == concurrency:
            return written, written
        engine = parsed.data.get("engine")
        data = {**parsed.data, "engine": {**(engine if isinstance(engine, dict) else {}),
                                          "concurrency": concurrency}}
        return written, validate_config(dataclasses.replace(parsed, data=data), types,
                                        sections)

    async def reload(self) -> bool:
        """Read the file, validate it, apply it; False (and the problems logged) when it is
        not valid or a backend of it could not start."""
        return (await self.apply()).applied

    async def apply(self) -> Reloaded:
        """:meth:`reload`, saying what it did."""
        async with self._lock:
            old = self.engine.config
            try:
                # off the loop: reading and validating take milliseconds a chat should not wait
                written, running = await asyncio.to_thread(
                    self._load, old.data.engine.concurrency)
                new, restart = applicable(old, running, written=written)
                changes = describe_changes(old, new)
                changes += await self.engine.reload(new)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("%s", problem)
                log.error("config not reloaded (%d problem(s) above); the old config keeps "
                          "running", len(exc.problems))
                return Reloaded(False, errors=list(exc.problems))
            if "log_level" not in restart and old.data.log_level != new.data.log_level:
                logging.getLogger().setLevel(new.data.log_level)
            said = "; ".join(changes) or "nothing changed"
            if restart:
                log.warning("config reloaded from %s: %s; not applied, needs a restart: %s",
                            self.path, said, ", ".join(restart))
            else:
                log.info("config reloaded from %s: %s", self.path, said)
            return Reloaded(True, changes, restart)

    async def _serve(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.reload()
            except Exception:  # a bug must not end reloading, nor the process
                log.exception("config reload failed")

    @contextlib.contextmanager
    def on_sighup(self) -> Iterator[None]:
        """While inside: SIGHUP reloads (where the loop takes signal handlers: the main
        thread, not Windows); one that came before, while the process started
        (:mod:`tgmux.hangup`), reloads at once."""
        loop = asyncio.get_running_loop()
        worker = loop.create_task(self._serve(), name="tgmux-reload")
        installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError,
                                 AttributeError):  # AttributeError: no SIGHUP (Windows)
            loop.add_signal_handler(signal.SIGHUP, self._wanted.set)
            installed = True
            if take_pending():  # a SIGHUP came while the process started
                self._wanted.set()
        try:
            yield
        finally:
            if installed:
                with contextlib.suppress(Exception):  # SIGHUP stays harmless while stopping
                    hand_back(lambda: loop.remove_signal_handler(signal.SIGHUP))
            worker.cancel()


@contextlib.contextmanager
def reloading(engine: Engine, plugin_manager: PluginManager) -> Iterator[Reloader | None]:
    """SIGHUP reloads the engine's config file while inside (nothing, for a config that came
    from no file: the demo's, a test's text)."""
    source = Path(engine.config.source)
    if not source.is_file():
        yield None
        return
    reloader = reloader_for(engine, plugin_manager)
    with reloader.on_sighup():
        yield reloader
