"""The operator's HTTP endpoints (``server.listen``): ``/healthz``, ``/readyz``, ``/metrics``.

One small aiohttp server per process, started by ``run``, ``chat`` and ``simulate`` when the
config sets ``server.listen``:

* ``GET /healthz`` — 200 while the process is alive (and its event loop answers);
* ``GET /readyz`` — 200 when every readiness check passes (each account it runs is connected,
  the store answers), else 503; a JSON body either way: ``{"ready": …, "checks": {name:
  {"ok": …, "detail": …}}}``;
* ``GET /metrics`` — Prometheus' text format (:mod:`tgmux.metrics`);
* ``GET /media/{token}`` — with ``server.public_url`` only: bytes a backend published for its
  provider to fetch (:mod:`tgmux.media_links`), while the link lasts; 404 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tgmux.config.schema import parse_listen
from tgmux.errors import ConfigError
from tgmux.media_links import MediaLinks
from tgmux.metrics import CONTENT_TYPE, Metrics

__all__ = ["OpsServer", "ReadinessCheck"]

log = logging.getLogger("tgmux.server")

#: A readiness check: None when ready, else what is not.
ReadinessCheck = Callable[[], Awaitable[str | None]]

#: Seconds one check may take before it counts as failed (a hung store is not ready).
CHECK_TIMEOUT = 2.0
#: Bytes of a request body at most (the console's forms and JSON are small).
CLIENT_MAX_SIZE = 64 * 1024


class OpsServer:
    def __init__(self, listen: str, metrics: Metrics, *,
                 media_links: MediaLinks | None = None) -> None:
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.media_links = media_links
        self.checks: dict[str, ReadinessCheck] = {}
        #: what adds more routes to the app when it starts (the console: tgmux.admin)
        self.mounts: list[Callable[[web.Application], object]] = []
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def start(self) -> None:
        app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self.media_links is not None:
            app.router.add_get("/media/{token}", self._media)
        for mount in self.mounts:
            mount(app)
        # shutdown_timeout: a stop waits at most a second for a scrape under way
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"server.listen: cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror or exc}") from exc
        self._runner = runner
        if self.port == 0:  # an ephemeral port (tests): say which
            server = runner.addresses[0] if runner.addresses else None
            if server:
                self.port = server[1]
        log.info("health and metrics%s on http://%s:%d/",
                 " and the console" if self.mounts else "", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def readiness(self) -> dict[str, dict[str, object]]:
        async def run(check: ReadinessCheck) -> str | None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    return await check()
            except TimeoutError:
                return f"no answer in {CHECK_TIMEOUT:.0f} s"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

        results = await asyncio.gather(*(run(c) for c in self.checks.values()))
        return {name: {"ok": problem is None, "detail": problem or "ok"}
                for name, problem in zip(self.checks, results, strict=True)}

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self.readiness()
        ready = all(c["ok"] for c in checks.values())
        return web.json_response({"ready": ready, "checks": checks},
                                 status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        try:  # the gauges read from the store: a store that hangs must not hang a scrape
            async with asyncio.timeout(CHECK_TIMEOUT):
                body = await self.metrics.render()
        except TimeoutError:
            body = await self.metrics.render(refresh=False)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _media(self, request: web.Request) -> web.Response:
        # no-store: a proxy or the provider must not keep a copy past the link's life
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        shared = self.media_links.get(request.match_info["token"]) if self.media_links else None
        if shared is None:  # unknown and expired look the same
            return web.Response(status=404, text="not found", headers=headers)
        return web.Response(body=shared.data,
                            headers={**headers, "Content-Type": shared.mime_type})
