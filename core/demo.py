"""``tgmux demo``: the console chat on embedded defaults, offline, with no credentials.

The echo backend plus every backend a plugin offers through ``tgmux_demo_backends``, each
answering from its simulator on 127.0.0.1.
"""

from __future__ import annotations

import sys

import yaml

from tgmux.bootstrap import load_text
from tgmux.console import run_console
from tgmux.errors import ConfigError
from tgmux.hooks import build_plugin_manager, call_all, flatten
from tgmux.types import DemoBackend, StopFn

__all__ = ["DEMO_CONFIG", "DemoBackend", "StopFn", "run_demo"]

#: Who types in the demo: its operator, so an admin (``/backend NAME`` switches).
CONSOLE_USER = 1

DEMO_CONFIG = f"""
store: "memory://"
admins: [{CONSOLE_USER}]
backends:
  echo: {{type: echo, prefix: "echo: "}}
default: echo
"""


async def run_demo(start_with: str | None) -> int:
    """Start the offered simulators, chat on stdin/stdout, stop them all."""
    pm = build_plugin_manager()
    offers: list[DemoBackend] = flatten(await call_all(pm.hook.tgmux_demo_backends))
    data = yaml.safe_load(DEMO_CONFIG)
    stops: list[StopFn] = []
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
        config, pm = load_text(yaml.safe_dump(data), source="<demo config>", env={},
                               plugin_manager=pm)
        lines.append("Switch with /backend NAME, /help lists commands, Ctrl-D quits.")
        return await run_console(config, pm, chat_id=CONSOLE_USER, user_id=CONSOLE_USER,
                                 chat_type="private", stdin=sys.stdin, stdout=sys.stdout,
                                 banner="\n".join(lines))
    finally:
        for stop in stops:
            await stop()
