"""The BambiSleep.Chat webhook receiver: an aiohttp server that checks each request's signature
and hands accepted events to one callback.

The provider documents that a webhook is registered with a ``secret`` but not how requests are
signed. tgmux assumes the common scheme and makes it configurable: the hex HMAC (SHA-256 by
default) of the raw request body with the secret, in the ``X-Signature`` header, optionally
after a prefix such as ``sha256=``; compared in constant time. Unsigned or mismatched requests
get 401 and a log line; nothing reaches the chat.

The body is taken to be JSON ``{"id", "event", "timestamp", "data": {...}}``; ``type`` is
accepted for ``event``. Only the signed body decides what a delivery is: an event type in an
unsigned header (``X-Event``) is never read, so a captured delivery cannot be replayed as
another event type; a body without one is refused (400 ``NO_EVENT``). The secret is never
empty (an HMAC with the empty key is no signature at all).

A delivery seen recently is answered 200 again but not delivered twice (providers retry,
and a webhook registered twice delivers every event twice): deliveries are the same when their
``id`` is, or, without an id, when event type, ``timestamp`` and data are (without a timestamp
either: the same event type and data within :data:`UNSTAMPED_WINDOW` seconds).

Replays: a delivery whose ``timestamp`` is more than ``max_age`` seconds before or after this
host's clock is refused (400 ``STALE_TIMESTAMP``, a warning in the log): a captured delivery
cannot be replayed later. Within the window, the deliveries seen are kept in the backend's
persistent key-value store (``seen:<key>`` → the time until which it is remembered), so a
restart does not forget them; expired entries are pruned (at start and every
:data:`PRUNE_INTERVAL` seconds while writing) and at most :data:`SEEN_MAX` are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tgmux.backend import KeyValue

log = logging.getLogger("tgmux.backends.bambisleep.webhooks")

#: Deliveries with neither id nor timestamp count as repeats only this close together.
UNSTAMPED_WINDOW = 60.0
#: Deliveries remembered at most (the oldest are forgotten first).
SEEN_MAX = 10_000
#: How long a delivery that cannot be placed in time (no timestamp, or no window) is remembered.
SEEN_RETENTION = 24 * 3600.0
#: Seconds between prunes of expired entries (on write).
PRUNE_INTERVAL = 60.0
SEEN_PREFIX = "seen:"

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


def parse_timestamp(value: Any) -> float | None:
    """A delivery's ``timestamp`` as Unix seconds: ISO 8601 (``2025-01-01T00:00:00Z``; without
    a zone, UTC) or a number (seconds, or milliseconds when it is that large); None when it is
    neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            return stamp.timestamp()
    else:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number / 1000.0 if abs(number) > 1e11 else number


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


class _MemoryKV:
    """A :class:`tgmux.backend.KeyValue` in a dict (a receiver made without a store)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.data.get(key)

    async def set(self, key: str, value: str) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def items(self, prefix: str = "") -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))


class WebhookReceiver:
    """Serves ``POST path`` on ``listen``; verified events go to ``on_event(type, data, body)``
    (run in the background so the provider gets its 200 right away).

    ``kv`` keeps the deliveries seen (the backend's persistent namespace; without one, memory);
    ``max_age`` is the replay window in seconds (0: timestamps are not checked);
    ``require_timestamp`` refuses deliveries without one.
    """

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
        kv: KeyValue | None = None,
        max_age: float = 300.0,
        require_timestamp: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        hashlib.new(algorithm)  # fail early on an unknown algorithm
        if not secret.strip():
            raise ValueError("the webhook secret is empty: anyone could sign with it")
        self.host, self.port = parse_listen(listen)
        self.path = path if path.startswith("/") else "/" + path
        self.secret = secret
        self.on_event = on_event
        self.events = frozenset(events)
        self.signature_header = signature_header
        self.algorithm = algorithm
        self.prefix = prefix
        self.name = name
        self.kv: KeyValue = kv if kv is not None else _MemoryKV()
        self.max_age = max_age
        self.require_timestamp = require_timestamp
        self.clock = clock
        self.rejected = 0  # bad or missing signature
        self.refused = 0  # signed, but stale, from the future, or without a usable timestamp
        self.duplicates = 0
        self._seen_lock = asyncio.Lock()
        self._last_prune = float("-inf")
        self._writes = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        try:
            await self.prune()
        except Exception:  # a store problem must not keep the receiver down
            log.exception("%s: pruning the webhook deliveries seen failed", self.name)
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

    def _refuse(self, request: web.Request, event: str, code: str, message: str,
                details: dict[str, Any]) -> web.Response:
        self.refused += 1
        log.warning("%s: webhook event %s from %s refused (%s): %s", self.name, event,
                    request.remote, code, message)
        return web.json_response(
            {"error": True, "code": code, "message": message, "details": details}, status=400
        )

    def _check_time(self, request: web.Request, event: str,
                    payload: dict[str, Any]) -> tuple[float | None, web.Response | None]:
        """(the delivery's time, or None without one; a refusal, or None)."""
        raw = payload.get("timestamp")
        if raw is None or raw == "":
            if self.require_timestamp:
                return None, self._refuse(request, event, "NO_TIMESTAMP",
                                          "the delivery has no timestamp", {})
            return None, None
        when = parse_timestamp(raw)
        if when is None:
            return None, self._refuse(request, event, "INVALID_TIMESTAMP",
                                      f"unreadable timestamp {str(raw)[:40]!r}",
                                      {"timestamp": str(raw)[:40]})
        if self.max_age > 0:
            age = self.clock() - when
            if abs(age) > self.max_age:
                why = (f"timestamp {str(raw)[:40]} is {age:.0f} s old" if age > 0 else
                       f"timestamp {str(raw)[:40]} is {-age:.0f} s in the future")
                return when, self._refuse(
                    request, event, "STALE_TIMESTAMP",
                    f"{why}; at most {self.max_age:g} s either way is accepted (a replayed "
                    "delivery, or a clock that is off)",
                    {"timestamp": str(raw)[:40], "max_age": self.max_age})
        return when, None

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
        event = payload.get("event") or payload.get("type")  # signed; never a header
        if not isinstance(event, str) or not event:
            return web.json_response(
                {"error": True, "code": "NO_EVENT", "message": "no event type"}, status=400
            )
        when, refusal = self._check_time(request, event, payload)
        if refusal is not None:
            return refusal
        if self.events and event not in self.events:
            log.info("%s: webhook event %s not subscribed; ignored", self.name, event)
            return web.json_response({"received": True, "ignored": True})
        data = payload.get("data")
        if not isinstance(data, dict):
            data = {k: v for k, v in payload.items() if k not in ("id", "event", "type")}
        try:
            repeated = await self._repeated(event, payload, data, when)
        except Exception:  # the store failed: let the provider deliver it again later
            log.exception("%s: cannot check webhook event %s against the deliveries seen",
                          self.name, event)
            return web.json_response(
                {"error": True, "code": "INTERNAL", "message": "try again later"}, status=500
            )
        if repeated:
            self.duplicates += 1
            log.info("%s: webhook event %s delivered again; not passed on twice", self.name,
                     event)
            return web.json_response({"received": True, "duplicate": True})
        task = asyncio.create_task(self._deliver(event, data, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"received": True})

    def _key(self, event: str, payload: dict[str, Any], data: dict[str, Any],
             when: float | None, now: float) -> tuple[str, float]:
        """(the store key of a delivery, the time until which it is remembered)."""
        event_id = payload.get("id")
        stamp = payload.get("timestamp")
        # Remembered while a replay would pass the timestamp check.
        until = (max(now, when) + self.max_age if when is not None and self.max_age > 0
                 else now + SEEN_RETENTION)
        if isinstance(event_id, str | int) and not isinstance(event_id, bool):
            key = f"id:{event_id}"
        else:
            digest = hashlib.sha256(
                json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()
            ).hexdigest()
            if isinstance(stamp, str | int | float) and stamp != "":
                key = f"ts:{event}:{stamp}:{digest}"
            else:
                key, until = f"data:{event}:{digest}", now + UNSTAMPED_WINDOW
        if len(key) > 200:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return SEEN_PREFIX + key, until

    async def _repeated(self, event: str, payload: dict[str, Any], data: dict[str, Any],
                        when: float | None = None) -> bool:
        """Seen this delivery recently? (Records it if not.)"""
        async with self._seen_lock:  # one check-and-record at a time: no race between copies
            now = self.clock()
            key, until = self._key(event, payload, data, when, now)
            stored = await self.kv.get(key)
            if stored is not None and _float(stored) >= now:
                return True
            await self.kv.set(key, f"{until:.3f}")
            self._writes += 1
            if now - self._last_prune >= PRUNE_INTERVAL or self._writes >= SEEN_MAX // 10:
                await self.prune(now)
            return False

    async def prune(self, now: float | None = None) -> int:
        """Forget expired deliveries, and the oldest beyond :data:`SEEN_MAX`; how many."""
        now = self.clock() if now is None else now
        self._last_prune, self._writes = now, 0
        entries = [(_float(v), k) for k, v in await self.kv.items(SEEN_PREFIX)]
        old = [k for until, k in entries if until < now]
        live = sorted((until, k) for until, k in entries if until >= now)
        if len(live) > SEEN_MAX:
            old += [k for _, k in live[: len(live) - SEEN_MAX]]
        for key in old:
            await self.kv.delete(key)
        if old:
            log.debug("%s: forgot %d webhook deliveries seen", self.name, len(old))
        return len(old)

    async def _deliver(self, event: str, data: dict[str, Any], payload: dict[str, Any]) -> None:
        try:
            await self.on_event(event, data, payload)
        except Exception:
            log.exception("%s: handling webhook event %s failed", self.name, event)


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("-inf")  # unreadable: expired
