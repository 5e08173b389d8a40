"""The BambiSleep.Chat websocket transport (``wss://api.bambisleep.chat/ws/chat``).

The protocol, as documented: connect, send ``{"type": "auth", "token": ...}``, then
``{"type": "message", "content": ...}``; incoming ``{"type": "message", "username", "content",
"timestamp"}`` frames are the replies. The token is the *session token* (the value of the
login's session cookie); with API-key authentication the API key is sent as the token.

**Correlation.** The endpoint is a chat *room*: the document's example reply comes from
``other_user``, and frames carry no request id. tgmux opens **one connection per chat** and sends
one message at a time on it. Frames that arrived while nobody waited are looked at **right
before** the next send (after the rate-limit wait), never earlier, so a stray frame cannot pass
for the next reply. After the send, the reply is the first ``message`` frame from
``reply_from`` (the AI's username) when that is set; frames from other usernames are room
chatter and are ignored. Unset (the default, since the document does not name the AI's
account), the first ``message`` frame not from our own account is taken. Anything that breaks
the pairing -- an unknown frame type, an error or an AI message arriving while nobody waited, a
reply that cannot be attributed (no username while ``reply_from`` is set) -- closes the
connection: before the send, a fresh connection is opened and the message goes out there;
after it, the turn fails (:class:`~tgmux.errors.ProtocolError`) and the next message opens a
fresh connection. Nothing unexpected is ever returned as an answer.

**Never sent twice.** A message is sent again on a new connection only when its send did not
complete (the connection failed to open, or was found closed before sending). Once ``send``
completed the provider may have the message: if the connection is then lost before the reply,
the turn fails with :class:`~tgmux.errors.UnavailableError` (the user is told to resend if
needed) -- a duplicated chat turn is worse than a lost reply, the rule of
:mod:`tgmux.http`. The one exception is an auth refusal (error frame or close code
4401/4001/1008) in session mode: the server did not take the message, so tgmux logs in again
once and sends it on the new connection, as the REST client repeats a request after a 401.

Reconnects wait an exponentially growing, capped, jittered delay after consecutive failures;
after ``max_attempts`` connections the turn fails with :class:`~tgmux.errors.UnavailableError`.
Connections idle for ``idle_timeout`` seconds are closed.

The ``websockets`` library logs handshake headers (the session cookie) and every frame (the
auth token) at DEBUG; its connections here log to :data:`PROTOCOL_LOG`, kept at WARNING.
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
from websockets.protocol import State

from tgmux.errors import (
    AuthError,
    BackendTimeoutError,
    BadRequestError,
    ProtocolError,
    RateLimitedError,
    UnavailableError,
)
from tgmux.proxy import websocket_failure, websocket_proxy
from tgmux.ratelimit import Limiter, acquire_slot, slot_sent
from tgmux.text import str_or_none

from .client import BambiSleepClient

log = logging.getLogger("tgmux.backends.bambisleep.ws")

#: The logger handed to ``websockets``: at DEBUG it would log the handshake's Cookie header
#: and the auth frame's token, so it is held at WARNING (see :func:`_protocol_logger`).
PROTOCOL_LOG = "tgmux.backends.bambisleep.ws.protocol"

#: Frames kept unread (those that come between asks are stale: the next ask drops them); past
#: it the oldest unread frame is dropped, so a provider that talks unasked cannot fill memory.
MAX_UNREAD_FRAMES = 256

AUTH_CLOSE_CODES = frozenset({1008, 4001, 4003, 4401, 4403})
AUTH_ERROR_CODES = frozenset({"UNAUTHORIZED", "INVALID_TOKEN", "SESSION_EXPIRED",
                              "INVALID_SESSION", "FORBIDDEN", "AUTH_FAILED"})

#: What the user reads when the line dropped after their message was sent.
LOST_AFTER_SEND = ("The connection to the AI provider dropped before its reply arrived. "
                   "Your message may have reached it; please send it again if you still need "
                   "an answer.")

_hinted: set[tuple[str, str]] = set()  # (backend, username) already suggested as reply_from


def _protocol_logger() -> logging.Logger:
    logger = logging.getLogger(PROTOCOL_LOG)
    if logger.level < logging.WARNING:  # NOTSET (0) included: never inherit DEBUG
        logger.setLevel(logging.WARNING)
    return logger


class _Lost(Exception):
    """The connection is gone (or never came up) and our message was not sent on it."""


class _LostAfterSend(Exception):
    """The connection is gone after our message was sent: it must not be sent again."""


class _AuthRefused(Exception):
    """The server refused our token (so it did not take our message)."""


class _Unexpected(Exception):
    """A frame that breaks the pairing of messages and replies."""


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
        limiter: Limiter | None = None,
        timeout: float = 30.0,
        idle_timeout: float = 300.0,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        max_attempts: int = 5,
        notify_after: float = 5.0,
        reply_from: str | None = None,
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
        self.reply_from = reply_from
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
        """Send ``content`` and wait for its reply. Reconnects (and sends on the new
        connection) only while the message has not been sent."""
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
                await self._acquire_slot()
                try:
                    reply = await self._send(content)
                finally:  # not sent (lost before the write): its slot counts from now
                    slot_sent(self.limiter)
                self._failures = 0
                return reply
            except (_Lost, _Unexpected) as exc:
                # Not sent on this connection: a new one may carry it.
                self._failures += 1
                self._forget()
                if attempts >= self.max_attempts:
                    raise UnavailableError(
                        f"{self.name}: websocket failed {attempts} times before sending",
                        provider_message=str(exc),
                    ) from exc
                log.info("%s: websocket %s (%s); reconnecting before sending", self.name,
                         "out of step" if isinstance(exc, _Unexpected) else "lost", exc)
            except _LostAfterSend as exc:
                self._failures += 1
                self._forget()
                log.warning("%s: websocket lost after the message was sent (%s); not sending "
                            "it again", self.name, exc)
                raise UnavailableError(
                    f"{self.name}: websocket lost after sending",
                    provider_message=str(exc), user_message=LOST_AFTER_SEND,
                ) from exc
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

    async def _send(self, content: str) -> WsReply:
        """Send ``content`` in the slot just granted and wait for its reply."""
        ws = self._ws
        if ws is None:
            raise _Lost("closed while waiting for a rate-limit slot")
        # Right before the send: whatever arrived while nobody waited is not a reply.
        self._drain()
        if ws.state is not State.OPEN:
            raise _Lost(f"closed before send ({ws.state.name})")
        try:
            # From the state check to the write nothing awaits: a ConnectionClosed here may
            # come after the frame was written, so it counts as sent.
            await ws.send(json.dumps({"type": "message", "content": content}))
        except ConnectionClosed as exc:
            raise _LostAfterSend(f"closed while sending ({exc})") from exc
        slot_sent(self.limiter)  # written: its rate-limit slot counts from now (tgmux.ratelimit)
        return await self._await_reply(content)

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
                max_size=2**20,  # bytes of one message once inflated (permessage-deflate)
                additional_headers=headers,
                user_agent_header="tgmux (websockets)",
                logger=_protocol_logger(),
                proxy=websocket_proxy(self.client.http.proxy),  # the backend's proxy
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise _AuthRefused(f"handshake HTTP {exc.response.status_code}") from exc
            raise _Lost(f"handshake HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            problem = websocket_failure(self.client.http.proxy, exc)
            raise _Lost(problem or f"cannot connect: {exc!r}") from exc
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
                    frame = {"type": None, "invalid": "not JSON"}
                self._unread(frames, frame if isinstance(frame, dict)
                             else {"type": None, "invalid": "not an object"})
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self._unread(frames, _Closed(rcvd.code if rcvd else None,
                                         rcvd.reason if rcvd else "no close frame"))

    def _unread(self, frames: asyncio.Queue[dict[str, Any] | _Closed],
                frame: dict[str, Any] | _Closed) -> None:
        if frames.qsize() >= MAX_UNREAD_FRAMES:
            frames.get_nowait()
            log.debug("%s: %d websocket frames unread; the oldest is dropped", self.name,
                      MAX_UNREAD_FRAMES)
        frames.put_nowait(frame)

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

    # -- frames ------------------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        await acquire_slot(self.limiter, self.notify_after)

    def _is_own(self, frame: dict[str, Any]) -> bool:
        return self._username is not None and frame.get("username") == self._username

    def _drain(self) -> None:
        """Look at the frames that arrived while nobody waited, right before a send.

        Room chatter and our own echoes are dropped. A closed connection, an auth refusal,
        an AI message nobody asked for (out of step), an error or an unknown frame raise:
        the message is then sent on a fresh connection instead.
        """
        while not self._frames.empty():
            frame = self._frames.get_nowait()
            if isinstance(frame, _Closed):
                if frame.code in AUTH_CLOSE_CODES:
                    raise _AuthRefused(f"closed {frame.code} {frame.reason}")
                raise _Lost(f"closed while idle ({frame.code} {frame.reason})".strip())
            kind = frame.get("type")
            if kind == "auth":
                self._auth_frame(frame)
            elif kind == "message":
                if self._is_own(frame):
                    continue
                if self.reply_from is None:
                    # Cannot tell the AI from other room members: drop it (never a reply).
                    log.debug("%s: dropping a message frame that arrived while idle",
                              self.name)
                    continue
                username = frame.get("username")
                if username == self.reply_from:
                    raise _Unexpected(f"a message from {username} nobody asked for")
                if not isinstance(username, str):
                    raise _Unexpected("a message frame without username")
                log.debug("%s: ignoring room message from %s", self.name, username)
            elif kind == "error":
                code = str(frame.get("code") or "").upper()
                if code in AUTH_ERROR_CODES:
                    raise _AuthRefused(f"{code}: {frame.get('message')}")
                raise _Unexpected(f"error frame {code or '?'} while idle")
            else:
                raise _Unexpected(f"unknown frame type {kind!r}")

    def _auth_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("success") is False:
            raise _AuthRefused(str(frame.get("message") or "auth refused"))
        if isinstance(frame.get("username"), str):
            self._username = frame["username"]

    async def _await_reply(self, sent: str) -> WsReply:
        """Frames after our send, until the reply. Everything raised here is after the send:
        :class:`_LostAfterSend` for a lost line, :class:`ProtocolError` for anything that
        cannot be paired with our message (and the connection is dropped by :meth:`ask`)."""
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
                raise _LostAfterSend(f"closed {frame.code} {frame.reason}".strip())
            kind = frame.get("type")
            if kind == "auth":
                self._auth_frame(frame)
                continue
            if kind == "error":
                raise self._error(frame)
            if kind != "message":
                raise self._unexpected(f"unknown frame type {kind!r}")
            username = str_or_none(frame.get("username"))
            if self._is_own(frame):
                continue  # the room echoing our message (or another of our chats')
            if self.reply_from is not None:
                if username is None:
                    raise self._unexpected("a message frame without username")
                if username != self.reply_from:
                    log.debug("%s: ignoring room message from %s", self.name, username)
                    continue
            content = frame.get("content")
            if not isinstance(content, str):
                raise self._unexpected(f"a message from {username} without text content")
            if self.reply_from is None and username and (self.name, username) not in _hinted:
                _hinted.add((self.name, username))
                log.info("%s: websocket replies come from %r; set ws_reply_from: %s so that "
                         "other room members are never taken for the AI", self.name,
                         username, username)
            return WsReply(content, username, str_or_none(frame.get("timestamp")))

    def _unexpected(self, what: str) -> ProtocolError:
        log.warning("%s: unexpected websocket frame after sending (%s); closing the "
                    "connection", self.name, what)
        return ProtocolError(f"{self.name}: websocket: {what}", provider_message=what)

    def _error(self, frame: dict[str, Any]) -> Exception:
        code = str(frame.get("code") or "").upper()
        message = str(frame.get("message") or code or "error")
        if code in AUTH_ERROR_CODES:
            return _AuthRefused(f"{code}: {message}")
        if code in {"RATE_LIMITED", "TOO_MANY_REQUESTS"}:
            details = frame.get("details") if isinstance(frame.get("details"), dict) else {}
            retry_after = details.get("retryAfter")
            retry = float(retry_after) if isinstance(retry_after, int | float) else None
            if retry and self.limiter is not None:
                self.limiter.penalize(retry)
            return RateLimitedError(f"{self.name}: websocket rate limited",
                                    provider_message=message, retry_after=retry,
                                    details={"code": code})
        return BadRequestError(f"{self.name}: websocket error {code}",
                               provider_message=message, details={"code": code})


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
