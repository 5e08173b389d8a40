"""The BambiSleep.Chat websocket transport (``wss://api.bambisleep.chat/ws/chat``).

The protocol, as documented: connect, send ``{"type": "auth", "token": ...}``, then
``{"type": "message", "content": ...}``; incoming ``{"type": "message", "username", "content",
"timestamp"}`` frames are the replies. The token is the *session token* (the value of the
login's session cookie); with API-key authentication the API key is sent as the token.

Frames carry no id, so a reply cannot be matched to a request except by order. tgmux therefore
opens **one connection per chat** and sends one message at a time on it: the first ``message``
frame after a send is its reply (an echo of our own message, which a chat-room server may
broadcast back, is skipped). Chats never wait for each other's websocket.

Reconnects: a connection is opened on first use and again after it dropped, waiting an
exponentially growing, capped, jittered delay after consecutive failures. A connection lost
after the user's message was sent but before its reply arrived does not lose the message: it is
**sent again on the new connection** (at-least-once: the provider may have seen it twice).
After ``max_attempts`` tries the turn fails with :class:`~tgmux.errors.UnavailableError`.
An auth refusal (error frame or close code 4401/4001/1008) in session mode logs in again once.
Connections idle for ``idle_timeout`` seconds are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tgmux.errors import (
    AuthError,
    BackendTimeoutError,
    BadRequestError,
    RateLimitedError,
    UnavailableError,
)
from tgmux.http import acquire_slot
from tgmux.ratelimit import SlidingWindowLimiter

from .client import BambiSleepClient

log = logging.getLogger("tgmux.backends.bambisleep.ws")

AUTH_CLOSE_CODES = frozenset({1008, 4001, 4003, 4401, 4403})
AUTH_ERROR_CODES = frozenset({"UNAUTHORIZED", "INVALID_TOKEN", "SESSION_EXPIRED",
                              "INVALID_SESSION", "FORBIDDEN", "AUTH_FAILED"})


class _Lost(Exception):
    """The connection is gone (or never came up): reconnect and send again."""


class _AuthRefused(Exception):
    """The server refused our token."""


@dataclass(frozen=True)
class _Closed:
    code: int | None
    reason: str


@dataclass(frozen=True)
class WsReply:
    content: str
    username: str | None = None
    timestamp: str | None = None


class ChatSocket:
    """One websocket connection, one message in flight at a time."""

    def __init__(
        self,
        url: str,
        client: BambiSleepClient,
        *,
        limiter: SlidingWindowLimiter | None = None,
        timeout: float = 30.0,
        idle_timeout: float = 300.0,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        max_attempts: int = 5,
        notify_after: float = 5.0,
        name: str = "bambisleep",
        on_idle: Any = None,
    ) -> None:
        self.url = url
        self.client = client
        self.limiter = limiter
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.max_attempts = max_attempts
        self.notify_after = notify_after
        self.name = name
        self._on_idle = on_idle
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._frames: asyncio.Queue[dict[str, Any] | _Closed] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._busy = False
        self._failures = 0  # consecutive connection failures (drives the backoff)
        self._username: str | None = client.username
        self._closing: set[asyncio.Task[None]] = set()
        self._generation = 0  # the client's login generation this connection authenticated with
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def busy(self) -> bool:
        return self._busy or self._lock.locked()

    # -- the one public call -----------------------------------------------------------------

    async def ask(self, content: str) -> WsReply:
        """Send ``content`` and wait for its reply; reconnect and resend if the line drops."""
        async with self._lock:
            self._busy = True
            try:
                return await self._ask(content)
            except BaseException:
                # Cancelled or failed mid-turn: a late reply must not answer the next turn.
                self._forget()
                raise
            finally:
                self._busy = False

    async def _ask(self, content: str) -> WsReply:
        attempts = 0
        relogged = False
        while True:
            attempts += 1
            try:
                if self._ws is None:
                    await self._connect()
                while not self._frames.empty():  # pushes that arrived while idle
                    stale = self._frames.get_nowait()
                    if isinstance(stale, _Closed):
                        raise _Lost(f"closed while idle ({stale.code})")
                    log.debug("%s: dropping unsolicited frame %s", self.name, stale.get("type"))
                await self._acquire_slot()
                assert self._ws is not None
                try:
                    await self._ws.send(json.dumps({"type": "message", "content": content}))
                except ConnectionClosed as exc:
                    raise _Lost(f"closed before send ({exc})") from exc
                reply = await self._await_reply(content)
                self._failures = 0
                return reply
            except _Lost as exc:
                self._failures += 1
                self._forget()
                if attempts >= self.max_attempts:
                    raise UnavailableError(
                        f"{self.name}: websocket lost {attempts} times",
                        provider_message=str(exc),
                    ) from exc
                log.info("%s: websocket lost (%s); reconnecting and sending again",
                         self.name, exc)
            except _AuthRefused as exc:
                self._forget()
                if self.client.uses_session and not relogged:
                    relogged = True
                    log.info("%s: websocket refused the session; logging in again", self.name)
                    await self.client.relogin_after(self._generation)
                    attempts -= 1  # a fresh login is not a connection failure
                    continue
                raise AuthError(f"{self.name}: websocket authentication refused",
                                status=401, provider_message=str(exc)) from exc

    # -- connection --------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._failures:
            base = min(self.reconnect_max_delay,
                       self.reconnect_delay * 2 ** (self._failures - 1))
            delay = base / 2 + random.uniform(0, base / 2)
            log.info("%s: reconnecting in %.2fs", self.name, delay)
            await asyncio.sleep(delay)
        token = await self.client.ws_token()
        self._generation = self.client.session_generation
        headers = {}
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.client.http.cookies.jar)
        if cookies:
            headers["Cookie"] = cookies
        try:
            ws = await connect(
                self.url,
                open_timeout=self.timeout,
                close_timeout=2.0,
                additional_headers=headers,
                user_agent_header="tgmux (websockets)",
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise _AuthRefused(f"handshake HTTP {exc.response.status_code}") from exc
            raise _Lost(f"handshake HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Lost(f"cannot connect: {exc!r}") from exc
        self._frames = asyncio.Queue()
        self._ws = ws
        self.connects += 1
        self._reader = asyncio.create_task(self._read(ws, self._frames),
                                           name=f"{self.name}-ws-reader")
        try:
            await ws.send(json.dumps({"type": "auth", "token": token}))
        except ConnectionClosed as exc:
            raise _Lost(f"closed during auth ({exc})") from exc

    async def _read(self, ws: ClientConnection,
                    frames: asyncio.Queue[dict[str, Any] | _Closed]) -> None:
        """Background reader: frames into the queue; closes the connection when idle."""
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=self.idle_timeout)
                except TimeoutError:
                    if self.busy:
                        continue
                    log.debug("%s: websocket idle for %.0fs; closing", self.name,
                              self.idle_timeout)
                    if self._ws is ws:
                        self._ws = self._reader = None
                    await ws.close()
                    if self._on_idle is not None:
                        self._on_idle(self)
                    return
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("%s: non-JSON websocket frame ignored", self.name)
                    continue
                if isinstance(frame, dict):
                    frames.put_nowait(frame)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            frames.put_nowait(_Closed(rcvd.code if rcvd else None,
                                      rcvd.reason if rcvd else "no close frame"))

    def _forget(self) -> None:
        """Drop the current connection now (closing it in the background)."""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if reader is not None:
            reader.cancel()
        if ws is not None:
            task = asyncio.create_task(self._close_quietly(ws))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await ws.close()

    async def close(self) -> None:
        self._forget()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- one reply ---------------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        await acquire_slot(self.limiter, self.notify_after)

    async def _await_reply(self, sent: str) -> WsReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BackendTimeoutError(f"{self.name}: no websocket reply in {self.timeout}s")
            try:
                frame = await asyncio.wait_for(self._frames.get(), timeout=remaining)
            except TimeoutError:
                continue
            if isinstance(frame, _Closed):
                if frame.code in AUTH_CLOSE_CODES:
                    raise _AuthRefused(f"closed {frame.code} {frame.reason}")
                raise _Lost(f"closed {frame.code} {frame.reason}".strip())
            kind = frame.get("type")
            if kind == "auth":
                if frame.get("success") is False:
                    raise _AuthRefused(str(frame.get("message") or "auth refused"))
                if isinstance(frame.get("username"), str):
                    self._username = frame["username"]
                continue
            if kind == "error":
                code = str(frame.get("code") or "").upper()
                message = str(frame.get("message") or code or "error")
                if code in AUTH_ERROR_CODES:
                    raise _AuthRefused(f"{code}: {message}")
                if code in {"RATE_LIMITED", "TOO_MANY_REQUESTS"}:
                    details = frame.get("details") if isinstance(frame.get("details"), dict) \
                        else {}
                    retry_after = details.get("retryAfter")
                    retry = float(retry_after) if isinstance(retry_after, int | float) else None
                    if retry and self.limiter is not None:
                        self.limiter.penalize(retry)
                    raise RateLimitedError(f"{self.name}: websocket rate limited",
                                           provider_message=message, retry_after=retry,
                                           details={"code": code})
                raise BadRequestError(f"{self.name}: websocket error {code}",
                                      provider_message=message, details={"code": code})
            if kind == "message":
                content = frame.get("content")
                if not isinstance(content, str):
                    continue
                if self._username and frame.get("username") == self._username \
                        and content == sent:
                    continue  # the room echoing our own message
                return WsReply(content, _str_or_none(frame.get("username")),
                               _str_or_none(frame.get("timestamp")))
            log.debug("%s: ignoring websocket frame of type %r", self.name, kind)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class WsTransport:
    """One :class:`ChatSocket` per key (a chat), made on first use."""

    def __init__(self, url: str, client: BambiSleepClient, **socket_options: Any) -> None:
        self.url = url
        self.client = client
        self.socket_options = socket_options
        self.sockets: dict[Hashable, ChatSocket] = {}

    def socket(self, key: Hashable) -> ChatSocket:
        sock = self.sockets.get(key)
        if sock is None:
            def idle(s: ChatSocket, key: Hashable = key) -> None:
                if self.sockets.get(key) is s and not s.busy:
                    del self.sockets[key]

            sock = self.sockets[key] = ChatSocket(self.url, self.client, on_idle=idle,
                                                  **self.socket_options)
        return sock

    async def ask(self, key: Hashable, content: str) -> WsReply:
        return await self.socket(key).ask(content)

    async def reset(self, key: Hashable) -> bool:
        """Close this key's connection (the next message opens a new one)."""
        sock = self.sockets.pop(key, None)
        if sock is None:
            return False
        await sock.close()
        return True

    async def aclose(self) -> None:
        sockets = list(self.sockets.values())
        self.sockets.clear()
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
