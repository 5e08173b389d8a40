"""From a config file to a validated :class:`~tgmux.config.Config` and the plugin manager
that goes with it: the one way the CLI, the harness and ``tgmux.testing`` start.

1. build the plugin manager: entry points (the bundled backends too), bundled plugins, and any
   extra plugin objects the caller registers (tests, one-run CLI plugins);
2. parse the YAML (:func:`tgmux.config.parse_config_text`);
3. import the config's ``plugins:`` into that manager (a missing one is an error at its line);
4. validate against the backend types and settings sections the plugins registered (so a
   section such as ``transcribe:`` is known once its plugin is imported).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tgmux.config import Config, ParsedConfig, parse_config_text, read_config_file, validate_config
from tgmux.config.validate import check_schema
from tgmux.errors import ConfigError
from tgmux.hooks import PluginManager, build_plugin_manager

__all__ = ["load", "load_config", "load_config_text", "load_parsed", "load_text"]


def load(path: str | os.PathLike[str], *, env: dict[str, str] | None = None,
         plugins: Iterable[Any] = (),
         plugin_manager: PluginManager | None = None) -> tuple[Config, PluginManager]:
    """Read, parse and validate a config file; the config and its plugin manager."""
    return load_parsed(read_config_file(path, env=env), plugins=plugins,
                       plugin_manager=plugin_manager)


def load_text(text: str, *, source: str = "<config>", env: dict[str, str] | None = None,
              plugins: Iterable[Any] = (),
              plugin_manager: PluginManager | None = None) -> tuple[Config, PluginManager]:
    """As :func:`load`, from the config's text (``source`` names it in errors)."""
    return load_parsed(parse_config_text(text, source=source, env=env), plugins=plugins,
                       plugin_manager=plugin_manager)


def load_parsed(parsed: ParsedConfig, *, plugins: Iterable[Any] = (),
                plugin_manager: PluginManager | None = None) -> tuple[Config, PluginManager]:
    pm = plugin_manager if plugin_manager is not None else build_plugin_manager()
    for i, plugin in enumerate(plugins):
        pm.register_from(plugin, getattr(plugin, "__name__", f"extra-plugin-{i}"), "test")
    broken = []
    for i, dotted in parsed.plugin_modules():
        try:
            pm.load_modules([dotted], "config")
        except ConfigError as exc:
            broken.append(f"{parsed.where(('plugins', i))}: {exc.problems[0]}")
    if broken:  # a missing plugin would make its backend types look unknown: stop here
        raise ConfigError(check_schema(parsed, pm.plugin_settings_models())[1] + broken)
    return validate_config(parsed, pm.backend_types(), pm.plugin_settings_models()), pm


def load_config(path: str | os.PathLike[str], *, env: dict[str, str] | None = None,
                plugin_manager: PluginManager | None = None) -> Config:
    """The validated config alone (``plugin_manager`` gets the config's plugins)."""
    return load(path, env=env, plugin_manager=plugin_manager)[0]


def load_config_text(text: str, *, source: str = "<config>", env: dict[str, str] | None = None,
                     plugin_manager: PluginManager | None = None) -> Config:
    """The validated config alone, from text."""
    return load_text(text, source=source, env=env, plugin_manager=plugin_manager)[0]
