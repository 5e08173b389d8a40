"""Starting the operator's endpoints for an engine (``server.listen``), with the checks every
frontend shares (the store answers); frontends add their own (an account is connected). With
``server.console``, the console and its admin API too (:mod:`tgmux.admin`)."""

from __future__ import annotations

from tgmux.admin.mount import mount_console
from tgmux.config import Config
from tgmux.engine import Engine
from tgmux.server import OpsServer

__all__ = ["start_ops_server"]


async def start_ops_server(config: Config, engine: Engine) -> OpsServer | None:
    """The started server, or None when ``server.listen`` is not set."""
    listen = config.data.server.listen
    if listen is None:
        return None
    # the engine's media links exactly when server.public_url is set
    server = OpsServer(listen, engine.metrics, media_links=engine.media_links)

    async def store_answers() -> str | None:
        if engine.store.degraded is not None:  # answering all the same: say how
            return engine.store.degraded
        await engine.store.inbox_backlog(account=engine.served[0] if engine.served else "main")
        return None

    server.add_check("store", store_answers)
    if config.data.server.console is not None:  # no token: no console, no /api routes
        server.mounts.append(lambda app: mount_console(app, config, engine, server.readiness))
    await server.start()
    return server
