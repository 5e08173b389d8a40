"""What every provider simulator shares: a real aiohttp server on 127.0.0.1, a log of the exact
requests it received, injectable latency and faults, and a ``python -m`` entry point.

A simulator subclasses :class:`SimulatorServer` and adds its routes in :meth:`routes`. Tests
assert on :attr:`SimulatorServer.requests`; the demo starts simulators in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("tgmux.simulator")


@dataclass
class RecordedRequest:
    """One request as the simulator received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def form(self) -> dict[str, FormField]:
        """A ``multipart/form-data`` body's fields by name (empty for any other body)."""
        content_type = self.header("Content-Type") or ""
        if not content_type.startswith("multipart/form-data"):
            return {}
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + self.body)
        fields: dict[str, FormField] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                fields[name] = FormField(
                    value=part.get_payload(decode=True) or b"", filename=part.get_filename(),
                    content_type=part.get_content_type() if part.get_filename() else None)
        return fields


@dataclass(frozen=True)
class FormField:
    """One field of a multipart form: its bytes, and for a file its name and type."""

    value: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.value.decode("utf-8")


@dataclass
class Fault:
    """An injected failure for the next matching request.

    ``status`` and ``body`` answer instead of the real handler; ``delay`` waits first;
    ``drop`` closes the connection without an answer; ``headers`` are added to the answer.
    """

    path: str | None = None  # substring of the path to match; None matches any
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    times: int = 1


class SimulatorServer:
    """Base class: start with ``await sim.start()`` (or ``async with sim``); ``sim.base_url``."""

    #: A short name for logs and the CLI.
    name = "simulator"

    def __init__(self, *, latency: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.latency = latency
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.faults: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None

    # -- for subclasses ----------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        """Add the provider's routes to ``app``."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """The URL a client should use as its ``base_url``; subclasses add their prefix."""
        return self.root_url

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> SimulatorServer:
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # A large backlog: benchmarks open a thousand connections at once.
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("%s listening on %s", self.name, self.root_url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimulatorServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults ------------------------------------------------------------------------------

    def inject(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Queue a fault (``sim.inject(status=500, body={...}, path="send-message")``)."""
        fault = fault or Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.path is None or fault.path in path:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def requests_to(self, path_part: str, method: str | None = None) -> list[RecordedRequest]:
        return [
            r for r in self.requests
            if path_part in r.path and (method is None or r.method == method)
        ]

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                json=parsed,
            )
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError("fault: dropped")
            if fault.status:
                return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        return await handler(request)


def json_error(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def run_cli(factory: Callable[[argparse.Namespace], SimulatorServer], description: str,
            add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """``python -m tgmux.backends.X.simulator --port N``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def serve() -> None:
        sim = factory(args)
        await sim.start()
        print(f"{sim.name} simulator: base_url {sim.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
