"""The plugin manager: where plugins come from, and how async code calls sync pluggy.

Every hook call goes through pluggy (``pm.trace``, ``add_hookcall_monitoring`` and
``TGMUX_TRACE_HOOKS=1`` see them all). What tgmux adds is "await me maybe": an implementation
may return a value, an awaitable or a zero-argument callable, and tgmux resolves it. Because a
hook's results may be awaitables, hook wrappers (``wrapper=True``, ``hookwrapper=True``) would
see coroutines instead of results; they are refused when a plugin registers.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from tgmux import hookspecs
from tgmux.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from tgmux.backend import Backend

log = logging.getLogger("tgmux.plugins")

hookimpl = pluggy.HookimplMarker("tgmux")

ENTRY_POINT_GROUP = "tgmux"

#: Bundled plugins that are not backends (backends come through the entry-point group).
BUILTIN_PLUGINS = ("tgmux.plugins.event_relay",)


async def await_me_maybe(value: Any) -> Any:
    """Hooks may return a value, a callable or an awaitable: resolve to the value."""
    if callable(value) and not inspect.isclass(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value


def flatten(results: Iterable[Any]) -> list[Any]:
    """Hooks that register things may return one item, a list (or tuple) of them, or None:
    the items of every result, in order."""
    items: list[Any] = []
    for result in results:
        if result is None:
            continue
        items += list(result) if isinstance(result, list | tuple) else [result]
    return items


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # "entry point <dist> <version>", "config", "builtin"
    module: str


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("tgmux")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginInfo] = {}
        #: section name → (settings model, the plugin that registered it)
        self._settings: dict[str, tuple[type[BaseModel], object]] = {}
        if os.environ.get("TGMUX_TRACE_HOOKS"):  # as datasette's DATASETTE_TRACE_PLUGINS
            self.trace.root.setwriter(lambda line: sys.stderr.write(f"tgmux hooks: {line}"))
            self.enable_tracing()

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        wrappers = [impl for caller in self.get_hookcallers(plugin) or []
                    for impl in caller.get_hookimpls()
                    if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper)]
        if wrappers:
            self.unregister(plugin)
            hooks = ", ".join(sorted({w.function.__name__ for w in wrappers}))
            raise ConfigError(f"plugin {name or plugin!r}: {hooks}: hook wrappers are not "
                              "supported (tgmux hooks may be async, so a wrapper would see a "
                              "coroutine, not the result); use tryfirst/trylast instead")
        try:
            self._register_settings(plugin, name)
        except ConfigError:
            self.unregister(plugin)
            raise
        return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        removed = super().unregister(plugin, name)
        self._settings = {section: (model, owner) for section, (model, owner)
                          in self._settings.items() if owner is not removed}
        return removed

    def _register_settings(self, plugin: Any, name: str | None) -> None:
        """The plugin's ``tgmux_plugin_settings`` sections, checked: a Strict model each,
        named like no core key and no other plugin's section."""
        # here, not at the top: `tgmux --version` imports this module, and pydantic is heavy
        from tgmux.backend import Strict
        from tgmux.config.schema import TgmuxConfig

        hook = self.hook.tgmux_plugin_settings
        who = f"plugin {name or getattr(plugin, '__name__', repr(plugin))}"
        for impl in hook.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            sections = self.call_one(hook, impl, {})
            if sections is None:
                continue
            if not isinstance(sections, dict):
                raise ConfigError(f"{who}: tgmux_plugin_settings must return a dict of section "
                                  f"name → settings model, not {type(sections).__name__}")
            for section, model in sections.items():
                if not (isinstance(model, type) and issubclass(model, Strict)):
                    raise ConfigError(f"{who}: settings section {section!r}: the model must be "
                                      "a tgmux.backend.Strict subclass (unknown keys are errors)")
                if section in TgmuxConfig.model_fields:
                    raise ConfigError(f"{who}: cannot register a settings section named "
                                      f"{section!r}: that is a core config key; choose another "
                                      "name")
                if section in self._settings:
                    owner = self.get_name(self._settings[section][1])
                    raise ConfigError(f"{who}: settings section {section!r} is already "
                                      f"registered by plugin {owner}")
            for section, model in sections.items():
                self._settings[section] = (model, plugin)

    def plugin_settings_models(self) -> dict[str, type[BaseModel]]:
        """Section name → settings model, from every plugin's ``tgmux_plugin_settings``."""
        return {section: model for section, (model, _) in self._settings.items()}

    def register_from(self, plugin: Any, name: str, source: str) -> None:
        if self.has_plugin(name) or self.is_registered(plugin):
            return
        self.register(plugin, name=name)
        self.sources[name] = PluginInfo(name, source, getattr(plugin, "__name__", repr(plugin)))

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if self.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                log.error("plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
                continue
            dist = ep.dist
            where = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
            try:
                self.register_from(plugin, ep.name, where)
            except ConfigError as exc:  # e.g. a hook wrapper: refused, the others go on
                log.error("plugin %s (%s) refused: %s", ep.name, ep.value, exc)

    def load_modules(self, modules: Iterable[str], source: str) -> None:
        for dotted in modules:
            try:
                module = importlib.import_module(dotted)
            except ImportError as exc:
                raise ConfigError(f"cannot import {dotted!r}: {exc}") from exc
            self.register_from(module, dotted, source)

    def backend_types(self) -> dict[str, type[Backend]]:
        """``type_name`` → class, from every plugin's ``tgmux_backend_types``."""
        found: dict[str, type[Backend]] = {}
        for cls in flatten(self.hook.tgmux_backend_types()):
            found.setdefault(cls.type_name, cls)
        return found

    def call_one(self, hook: Any, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        """Call one implementation through pluggy's machinery (argument selection, tracing,
        monitoring), as ``hook(**kwargs)`` does for all of them."""
        return self._hookexec(hook.name, [impl], kwargs, True)


def build_plugin_manager(config_plugins: Iterable[str] = ()) -> PluginManager:
    """Entry points (bundled backends included), then bundled plugins, then the config's."""
    pm = PluginManager()
    pm.load_entry_points()
    pm.load_modules(BUILTIN_PLUGINS, "builtin")
    pm.load_modules(config_plugins, "config")
    return pm


# pluggy calls implementations last-registered first (tryfirst/trylast aside); so do these.


async def call_chained(pm: PluginManager, hook_name: str, value_name: str, value: Any,
                       **kwargs: Any) -> Any:
    """Call a chaining hook: each implementation gets the previous result as ``value_name``;
    ``None`` keeps the value as it was."""
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        result = await await_me_maybe(pm.call_one(hook, impl, {value_name: value, **kwargs}))
        if result is not None:
            value = result
    return value


async def call_all(hook: Any, **kwargs: Any) -> list[Any]:
    """Call a hook and await every result that needs it."""
    return [await await_me_maybe(result) for result in hook(**kwargs)]


async def call_first(pm: PluginManager, hook_name: str, **kwargs: Any) -> Any:
    """Call a ``firstresult`` hook whose implementations may be async: the first result that
    is not None once awaited (pluggy alone would stop at the first coroutine)."""
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        result = await await_me_maybe(pm.call_one(hook, impl, kwargs))
        if result is not None:
            return result
    return None
