"""Small proxies for tests, on 127.0.0.1 only: an HTTP proxy (``CONNECT`` tunnels and
absolute-form forwarding, optional Basic auth) and a SOCKS5 proxy (RFC 1928, with RFC 1929
user/password). Each records what it was asked for; neither connects anywhere but loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    await asyncio.gather(_pipe(client[0], upstream[1]), _pipe(upstream[0], client[1]))


class _Server:
    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._track, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # closing: asyncio logs a handler that ends cancelled
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class ProxiedRequest:
    """The first request of one connection to the HTTP proxy."""

    line: str  # "CONNECT 127.0.0.1:8080 HTTP/1.1" or "POST http://127.0.0.1:8080/x HTTP/1.1"
    proxy_authorization: str | None


class HttpProxy(_Server):
    """An HTTP proxy: ``CONNECT host:port`` opens a tunnel, an absolute-form request is
    forwarded (with the rest of the connection) to its host. With ``credentials``, a request
    without the matching ``Proxy-Authorization`` gets 407."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.credentials = credentials
        self.requests: list[ProxiedRequest] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return [r.line for r in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        auth = headers.get("proxy-authorization")
        self.requests.append(ProxiedRequest(lines[0], auth))
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if auth != expected:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
        method, target, _ = lines[0].split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
        else:
            authority = target.split("://", 1)[1].split("/", 1)[0]
            host, _, port = authority.rpartition(":")
        if not _loopback(host.strip("[]")):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        upstream = await asyncio.open_connection(host.strip("[]"), int(port))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:  # forward the request as it came (an aiohttp server takes the absolute form)
            upstream[1].write(head)
        await _splice((reader, writer), upstream)


@dataclass
class SocksRequest:
    username: str | None
    password: str | None
    host: str
    port: int


class Socks5Proxy(_Server):
    """A SOCKS5 proxy. With ``credentials`` only user/password auth is offered and checked.
    CONNECT to a loopback address is spliced through; any other destination is answered
    "connection refused" (reply 5) and recorded, never reached."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.credentials = credentials
        self.requests: list[SocksRequest] = []

    @property
    def url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        assert version == 5
        username = password = None
        if self.credentials is not None:
            if 2 not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(b"\x05\x02")
            await writer.drain()
            _, ulen = await reader.readexactly(2)
            username = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            ok = (username, password) == self.credentials
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            await writer.drain()
            if not ok:
                self.requests.append(SocksRequest(username, password, "", 0))
                return
        else:
            writer.write(b"\x05\x00")
            await writer.drain()
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        else:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
        (port,) = struct.unpack(">H", await reader.readexactly(2))
        self.requests.append(SocksRequest(username, password, host, port))
        if command != 1 or not _loopback(host):
            writer.write(b"\x05\x05\x00\x01" + bytes(4) + bytes(2))  # connection refused
            await writer.drain()
            return
        upstream = await asyncio.open_connection(host, port)
        writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + bytes(2))
        await writer.drain()
        await _splice((reader, writer), upstream)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
