"""Putting the console on the process's own HTTP server (:class:`tgmux.server.OpsServer`), when
``server.console`` is set: the sign-in, the admin API, the pages."""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from tgmux.admin.api import add_api_routes
from tgmux.admin.auth import ConsoleAuth
from tgmux.admin.pages import add_console_pages
from tgmux.admin.service import AdminService, Readiness
from tgmux.config import Config
from tgmux.config.schema import parse_listen
from tgmux.engine import Engine

__all__ = ["CONSOLE", "mount_console", "reachable_beyond_this_machine"]

log = logging.getLogger("tgmux.console")

#: The app's console: its service and auth (for the pages' routes).
CONSOLE = web.AppKey("tgmux_console", tuple[AdminService, ConsoleAuth])


def reachable_beyond_this_machine(listen: str) -> bool:
    host = parse_listen(listen)[0]
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return True


def mount_console(app: web.Application, config: Config, engine: Engine,
                  readiness: Readiness | None = None) -> tuple[AdminService, ConsoleAuth]:
    """Add the console's routes to ``app`` (``server.console`` must be set)."""
    console = config.data.server.console
    assert console is not None
    server = config.data.server
    https = (server.public_url or "").lower().startswith("https://")
    if server.listen is not None and reachable_beyond_this_machine(server.listen) and not https:
        log.warning("%s: the console listens on %s, beyond this machine, and "
                    "server.public_url is not https: its token and session cookie would cross "
                    "the network in clear; put it behind a TLS proxy and set "
                    "server.public_url: https://…", config.where(("server", "console")),
                    server.listen)
    if logging.getLogger().level == logging.WARNING:  # the quiet commands' default
        log.setLevel(logging.INFO)  # the audit log is kept all the same
    service = AdminService(engine, show_messages=console.show_messages, readiness=readiness)
    auth = ConsoleAuth(console.token.get_secret_value(), secure_cookie=https)
    auth.add_routes(app)
    add_api_routes(app, service, auth)
    add_console_pages(app, service, auth)
    app[CONSOLE] = (service, auth)
    return service, auth
