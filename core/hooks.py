"""The plugin manager: where plugins come from, and how async code calls sync pluggy."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from tgmux.errors import ConfigError

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


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # "entry point <dist> <version>", "config", "builtin"
    module: str


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("tgmux")
        from tgmux import hookspecs

        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginInfo] = {}

    def register_from(self, plugin: Any, name: str, source: str) -> None:
        if self.has_plugin(name) or self.is_registered(plugin):
            return
        self.register(plugin, name=name)
        self.sources[name] = PluginInfo(name, source, getattr(plugin, "__name__", repr(plugin)))

    def load_entry_points(self) -> None:
        from importlib.metadata import entry_points

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
            self.register_from(plugin, ep.name, where)

    def load_modules(self, modules: Iterable[str], source: str) -> None:
        for dotted in modules:
            try:
                module = importlib.import_module(dotted)
            except ImportError as exc:
                raise ConfigError(f"cannot import {dotted!r}: {exc}") from exc
            self.register_from(module, dotted, source)


def build_plugin_manager(config_plugins: Iterable[str] = ()) -> PluginManager:
    """Entry points (bundled backends included), then bundled plugins, then the config's."""
    pm = PluginManager()
    pm.load_entry_points()
    pm.load_modules(BUILTIN_PLUGINS, "builtin")
    pm.load_modules(config_plugins, "config")
    return pm


async def call_chained(pm: PluginManager, hook_name: str, value_name: str, value: Any,
                       **kwargs: Any) -> Any:
    """Call a chaining hook: each implementation gets the previous result as ``value_name``;
    ``None`` keeps the value as it was."""
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        args = {value_name: value, **kwargs}
        wanted = {k: v for k, v in args.items() if k in impl.argnames}
        result = await await_me_maybe(impl.function(**wanted))
        if result is not None:
            value = result
    return value


async def call_all(hook: Any, **kwargs: Any) -> list[Any]:
    """Call a hook and await every result that needs it."""
    return [await await_me_maybe(result) for result in hook(**kwargs)]


async def call_first(hook: Any, **kwargs: Any) -> Any:
    """Call a ``firstresult`` hook whose implementations may be async: the first non-None."""
    for impl in reversed(hook.get_hookimpls()):
        wanted = {k: v for k, v in kwargs.items() if k in impl.argnames}
        result = await await_me_maybe(impl.function(**wanted))
        if result is not None:
            return result
    return None
