"""The BambiSleep.Chat webhook receiver: an aiohttp server that checks each request's signature
and hands accepted events to one callback.

The provider documents that a webhook is registered with a ``secret`` but not how requests are
signed. tgmux assumes the common scheme and makes it configurable: the hex HMAC (SHA-256 by
default) of the raw request body with the secret, in the ``X-Signature`` header, optionally
after a prefix such as ``sha256=``; compared in constant time. Unsigned or mismatched requests
get 401 and a log line; nothing reaches the chat.

The body is taken to be JSON ``{"id", "event", "timestamp", "data": {...}}``; ``type`` is
accepted for ``event``, and an ``X-Event``/``X-Webhook-Event`` header when neither is in the
body. A delivery seen recently is answered 200 again but not delivered twice (providers retry,
and a webhook registered twice delivers every event twice): deliveries are the same when their
``id`` is, or, without an id, when event type, ``timestamp`` and data are (without a timestamp
either: the same event type and data within :data:`UNSTAMPED_WINDOW` seconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("tgmux.backends.bambisleep.webhooks")

#: Deliveries with neither id nor timestamp count as repeats only this close together.
UNSTAMPED_WINDOW = 60.0
SEEN_MAX = 2000

EventCallback = Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[None]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``":8080"`` (all interfaces) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def sign(body: bytes, secret: str, algorithm: str = "sha256") -> str:
    """The signature tgmux expects: hex HMAC of the raw body."""
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def event_text(event: str, data: dict[str, Any]) -> str:
    """A short chat message for an event."""

    def get(*keys: str) -> str:
        for key in keys:
            value = data.get(key)
            if value not in (None, ""):
                return str(value)
        return ""

    if event == "message.new":
        who = get("username", "from", "sender") or "someone"
        return f"💬 New message from {who}: {get('content', 'message', 'text')}".rstrip(": ")
    if event == "profile.update":
        who = get("username") or "a user"
        name = get("displayName")
        return f"👤 {who} updated their profile" + (f" ({name})" if name else "")
    if event == "trigger.shared":
        name = get("name") or "a trigger"
        who = get("creator", "username")
        desc = get("description")
        text = f"🌀 Trigger shared: {name}" + (f" by {who}" if who else "")
        return text + (f" — {desc}" if desc else "")
    return f"{event}: {json.dumps(data, ensure_ascii=False)[:500]}"


class WebhookReceiver:
    """Serves ``POST path`` on ``listen``; verified events go to ``on_event(type, data, body)``
    (run in the background so the provider gets its 200 right away)."""

    def __init__(
        self,
        *,
        listen: str,
        path: str,
        secret: str,
        on_event: EventCallback,
        events: frozenset[str] | set[str] = frozenset(),
        signature_header: str = "X-Signature",
        algorithm: str = "sha256",
        prefix: str = "",
        name: str = "bambisleep",
    ) -> None:
        hashlib.new(algorithm)  # fail early on an unknown algorithm
        self.host, self.port = parse_listen(listen)
        self.path = path if path.startswith("/") else "/" + path
        self.secret = secret
        self.on_event = on_event
        self.events = frozenset(events)
        self.signature_header = signature_header
        self.algorithm = algorithm
        self.prefix = prefix
        self.name = name
        self.rejected = 0
        self._seen: OrderedDict[str, float] = OrderedDict()  # delivery key -> when seen
        self.duplicates = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("%s: webhook receiver on %s", self.name, self.url)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def verify(self, body: bytes, signature: str | None) -> bool:
        if not signature:
            return False
        signature = signature.strip()
        if self.prefix:
            if not signature.startswith(self.prefix):
                return False
            signature = signature[len(self.prefix):]
        expected = sign(body, self.secret, self.algorithm)
        return hmac.compare_digest(expected.encode(), signature.lower().encode())

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(self.signature_header)
        if not self.verify(body, signature):
            self.rejected += 1
            why = "no signature" if not signature else "signature mismatch"
            log.warning("%s: webhook from %s rejected (%s, %d bytes)", self.name,
                        request.remote, why, len(body))
            return web.json_response(
                {"error": True, "code": "INVALID_SIGNATURE", "message": why}, status=401
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return web.json_response(
                {"error": True, "code": "INVALID_JSON", "message": "body is not JSON"},
                status=400,
            )
        if not isinstance(payload, dict):
            payload = {"data": payload}
        event = payload.get("event") or payload.get("type") \
            or request.headers.get("X-Event") or request.headers.get("X-Webhook-Event")
        if not isinstance(event, str) or not event:
            return web.json_response(
                {"error": True, "code": "NO_EVENT", "message": "no event type"}, status=400
            )
        if self.events and event not in self.events:
            log.info("%s: webhook event %s not subscribed; ignored", self.name, event)
            return web.json_response({"received": True, "ignored": True})
        data = payload.get("data")
        if not isinstance(data, dict):
            data = {k: v for k, v in payload.items() if k not in ("id", "event", "type")}
        if self._repeated(event, payload, data):
            self.duplicates += 1
            log.info("%s: webhook event %s delivered again; not passed on twice", self.name,
                     event)
            return web.json_response({"received": True, "duplicate": True})
        task = asyncio.create_task(self._deliver(event, data, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"received": True})

    def _repeated(self, event: str, payload: dict[str, Any], data: dict[str, Any]) -> bool:
        """Seen this delivery recently? (Records it if not.)"""
        now = time.monotonic()
        event_id = payload.get("id")
        stamp = payload.get("timestamp")
        window = None
        if isinstance(event_id, str | int) and not isinstance(event_id, bool):
            key = f"id:{event_id}"
        else:
            digest = hashlib.sha256(
                json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()
            ).hexdigest()
            if isinstance(stamp, str | int | float) and stamp != "":
                key = f"ts:{event}:{stamp}:{digest}"
            else:
                key, window = f"data:{event}:{digest}", UNSTAMPED_WINDOW
        seen = self._seen.get(key)
        if seen is not None and (window is None or now - seen <= window):
            return True
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return False

    async def _deliver(self, event: str, data: dict[str, Any], payload: dict[str, Any]) -> None:
        try:
            await self.on_event(event, data, payload)
        except Exception:
            log.exception("%s: handling webhook event %s failed", self.name, event)
