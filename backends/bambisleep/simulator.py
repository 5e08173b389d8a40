"""A faithful BambiSleep.Chat simulator: real HTTP and WebSocket on 127.0.0.1.

What it does, as the provider document describes (and where the document is silent, as
documented in ``docs/backends/bambisleep.md``):

* ``POST /v1/auth/login`` sets a session cookie (``connect.sid``); ``Authorization: Bearer KEY``
  works too. :meth:`BambiSleepSimulator.expire_sessions` (or ``session_ttl``) expires sessions:
  later requests with them answer 401 ``SESSION_EXPIRED``.
* ``/v1/ai/generate``, ``/v1/profile/{username}`` (GET/PUT), ``/v1/triggers`` (GET/POST),
  ``/v1/sessions``, ``/v1/sessions/{id}``, ``/v1/webhooks`` with the documented bodies and
  error bodies ``{"error": true, "code", "message", "details"}``.
* Rate limits: ``rate_limit`` (60) requests per ``rate_period`` (60 s) per account,
  ``unauth_rate_limit`` (10) per client address for unauthenticated requests; beyond that
  429 with ``Retry-After`` (whole seconds). :attr:`rate_limited` counts the 429s.
* ``audioUrl`` points at ``/audio/response-N.mp3``, which it serves (``audio/mpeg``): a real
  MP3, a one-second tone made with PyAV (:func:`sample_mp3`); :attr:`audio_data` replaces it
  (e.g. a broken MP3).
* ``/ws/chat``: ``{"type":"auth","token":…}`` (a session token or an API key) is answered
  ``{"type":"auth","success":true,"username":…}``; each ``{"type":"message","content":…}``
  gets one ``message`` frame back from ``bambi-ai`` (``ws_reply_username``). It is a chat room
  as the document's ``other_user`` example suggests: ``ws_room_chatter=True`` makes
  ``other_user`` talk right after each auth, before each reply and after it;
  :meth:`ws_room_message` / :meth:`ws_push` send any frame to every connection now;
  :meth:`queue_ws_reply` sets the text of the next replies (e.g. an empty one).
  :meth:`drop_next_ws_message` closes the connection after the next message arrives, before
  answering (a drop mid-reply); :meth:`close_websockets` closes every open connection.
* Webhooks: :meth:`deliver_webhook` POSTs an event to every registered URL that subscribed
  (the same body, id and timestamp to each: one event), signed with HMAC-SHA256 (hex,
  ``X-Signature``) of the raw body and the webhook's secret. Every ``POST /webhooks`` is a new
  registration, as the document has no way to list or delete them.

One module on purpose (it is longer than the others): the REST routes, the websocket room and
the webhook deliveries are three doors into one provider account -- the same users, sessions,
rate-limit windows, triggers and chat history -- and each answers from that shared state (a
websocket message is rate-limited in the REST window; a profile change is a webhook event).
Split apart, each piece would reach into the others' attributes; read top to bottom, it is set-up
and controls, then the REST handlers, then the websocket.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import json
import logging
import math
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiohttp import WSMsgType, web

from tgmux.audio import pyav_available, tone_mp3
from tgmux.simulator import SimulatorServer, json_error, run_cli

log = logging.getLogger("tgmux.simulator.bambisleep")

SESSION_COOKIE = "connect.sid"
EVENTS = ("message.new", "profile.update", "trigger.shared")
MODELS = ("MODEL_1", "MODEL_2")
DEMO_API_KEY = "demo-bambisleep-key"
DEMO_USER = "bambi"
DEMO_PASSWORD = "good-girl"
AI_USERNAME = "bambi-ai"
OTHER_USER = "other_user"

#: An MPEG frame header and zeros: what ``/audio/`` serves without PyAV; no decoder makes audio
#: of it (a broken MP3, for the tests of what is sent when transcoding fails).
AUDIO_BYTES = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(413)


@functools.cache
def sample_mp3() -> bytes:
    """What ``/audio/`` serves: a real MP3 of a one-second tone (made with PyAV, once, rather
    than kept as a binary file), or :data:`AUDIO_BYTES` when PyAV is not installed."""
    if not pyav_available():
        return AUDIO_BYTES
    return tone_mp3(1.0)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(status: int, code: str, message: str, details: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": True, "code": code, "message": message}
    if details is not None:
        body["details"] = details
    return json_error(status, body, headers)


@dataclass
class SimUser:
    username: str
    password: str
    id: str
    display_name: str
    avatar_url: str = "https://bambisleep.chat/avatars/image.png"
    is_public: bool = True
    xp: int = 1250
    level: int = 5
    created_at: str = "2025-01-01T00:00:00Z"
    triggers: list[str] = field(default_factory=lambda: ["Good Girl", "Bambi Sleep"])

    def profile(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "displayName": self.display_name,
            "avatarUrl": self.avatar_url,
            "isPublic": self.is_public,
            "xp": self.xp,
            "level": self.level,
            "createdAt": self.created_at,
            "triggers": list(self.triggers),
        }


@dataclass
class RegisteredWebhook:
    id: str
    owner: str
    url: str
    events: list[str]
    secret: str


class _Window:
    """Server-side sliding log: how the provider counts requests per period."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.stamps: dict[str, deque[float]] = defaultdict(deque)

    def admit(self, who: str) -> float | None:
        """None when admitted; else seconds until a slot frees."""
        now = time.monotonic()
        stamps = self.stamps[who]
        while stamps and stamps[0] <= now - self.period:
            stamps.popleft()
        if len(stamps) >= self.limit:
            return stamps[0] + self.period - now
        stamps.append(now)
        return None


class BambiSleepSimulator(SimulatorServer):
    name = "bambisleep"

    def __init__(
        self,
        *,
        api_keys: dict[str, str] | None = None,
        users: dict[str, str] | None = None,
        rate_limit: int = 60,
        unauth_rate_limit: int = 10,
        rate_period: float = 60.0,
        session_ttl: float | None = None,
        ws_echo_own: bool = False,
        ws_room_chatter: bool = False,
        ws_reply_username: str = AI_USERNAME,
        webhook_signature_header: str = "X-Signature",
        webhook_algorithm: str = "sha256",
        auto_webhooks: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.users: dict[str, SimUser] = {}
        for i, (username, password) in enumerate(
            (users if users is not None else {DEMO_USER: DEMO_PASSWORD}).items(), start=1
        ):
            self.add_user(username, password, id=f"user_{i}")
        self.api_keys: dict[str, str] = dict(
            api_keys if api_keys is not None else {DEMO_API_KEY: DEMO_USER}
        )
        for owner in self.api_keys.values():
            if owner not in self.users:
                self.add_user(owner, secrets.token_hex(8))
        self.auth_window = _Window(rate_limit, rate_period)
        self.unauth_window = _Window(unauth_rate_limit, rate_period)
        self.session_ttl = session_ttl
        self.sessions: dict[str, tuple[str, float]] = {}  # token -> (username, created)
        self.expired_tokens: set[str] = set()
        self.logins = 0
        self.rate_limited = 0
        self.statuses: list[tuple[str, str, int]] = []  # (method, path, status)
        self.triggers: list[dict[str, Any]] = [
            {"id": "trg_1", "name": "Good Girl", "description": "Feel proud and happy",
             "isPublic": True, "creator": "bambisleep", "content": "Good girl."},
            {"id": "trg_2", "name": "Bambi Sleep", "description": "Drop deep",
             "isPublic": True, "creator": "bambisleep", "content": "Bambi sleep."},
        ]
        self._trigger_ids = itertools.count(len(self.triggers) + 1)
        self.chat_sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._session_ids = itertools.count(1)
        for user in self.users.values():
            self._seed_session(user.username)
        self.webhooks: list[RegisteredWebhook] = []
        self._webhook_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._audio_ids = itertools.count(123)
        self.audio: dict[str, bytes] = {}
        #: the bytes of every new ``audioUrl`` (None: :func:`sample_mp3`)
        self.audio_data: bytes | None = None
        self.ws_echo_own = ws_echo_own
        self.ws_room_chatter = ws_room_chatter
        self.ws_reply_username = ws_reply_username
        self._ws_replies: deque[str] = deque()
        self._chatter = itertools.count(1)
        self.ws_connections: list[web.WebSocketResponse] = []
        self.ws_messages: list[tuple[str, str]] = []  # (username, content) received
        self.ws_auths = 0
        self._drop_ws = 0
        self.webhook_signature_header = webhook_signature_header
        self.webhook_algorithm = webhook_algorithm
        self.auto_webhooks = auto_webhooks
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- set-up and controls -----------------------------------------------------------------

    def add_user(self, username: str, password: str, *, id: str | None = None) -> SimUser:
        user = SimUser(username=username, password=password,
                       id=id or f"user_{len(self.users) + 1}",
                       display_name=username.capitalize())
        self.users[username] = user
        return user

    def _seed_session(self, username: str) -> None:
        sid = f"sess_{next(self._session_ids):03d}"
        self.chat_sessions[username].append({
            "id": sid,
            "createdAt": "2025-01-01T00:00:00Z",
            "messages": [
                {"role": "user", "content": "Hello Bambi", "timestamp": "2025-01-01T00:00:00Z"},
                {"role": "assistant", "content": "Hello! Relax and listen.",
                 "timestamp": "2025-01-01T00:00:01Z"},
            ],
        })

    def new_session(self, username: str) -> str:
        """Start a new chat session for ``username``; later generations go into it."""
        sid = f"sess_{next(self._session_ids):03d}"
        self.chat_sessions[username].append({"id": sid, "createdAt": _now_iso(), "messages": []})
        return sid

    def expire_sessions(self) -> None:
        """Every session token now answers 401 ``SESSION_EXPIRED``."""
        self.expired_tokens.update(self.sessions)
        self.sessions.clear()

    def drop_next_ws_message(self, times: int = 1) -> None:
        """Close the connection right after the next ``times`` message frames arrive, before
        answering them (a connection lost mid-reply)."""
        self._drop_ws += times

    def queue_ws_reply(self, *contents: str) -> None:
        """The next websocket replies say ``contents`` (in order) instead of the echo."""
        self._ws_replies.extend(contents)

    async def ws_push(self, frame: dict[str, Any]) -> int:
        """Send ``frame`` to every open websocket now; returns how many got it."""
        sent = 0
        for ws in list(self.ws_connections):
            if not ws.closed:
                await ws.send_json(frame)
                sent += 1
        return sent

    async def ws_room_message(self, content: str, username: str = OTHER_USER) -> int:
        """Someone in the room says ``content``: a ``message`` frame to every connection."""
        return await self.ws_push({"type": "message", "username": username,
                                   "content": content, "timestamp": _now_iso()})

    async def _chat(self, ws: web.WebSocketResponse) -> None:
        if self.ws_room_chatter:
            await ws.send_json({"type": "message", "username": OTHER_USER,
                                "content": f"Hi there! ({next(self._chatter)})",
                                "timestamp": _now_iso()})

    async def close_websockets(self) -> None:
        """Close every open websocket connection (as a server restart would)."""
        for ws in list(self.ws_connections):
            await ws.close(code=1012, message=b"service restart")

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/chat"

    def sign(self, body: bytes, secret: str) -> str:
        return hmac.new(secret.encode(), body, self.webhook_algorithm).hexdigest()

    async def deliver_webhook(
        self,
        event: str,
        data: dict[str, Any],
        *,
        owner: str | None = None,
        secret: str | None = None,
        signed: bool = True,
        with_id: bool = True,
        with_timestamp: bool = True,
    ) -> list[int]:
        """POST ``event`` to every webhook that subscribed to it (of ``owner``, if given):
        one event, so every webhook gets the same body (id, timestamp, data).

        ``secret`` signs with another secret (a forgery); ``signed=False`` sends no signature;
        ``with_id``/``with_timestamp`` False leave those fields out. Returns each receiver's
        HTTP status.
        """
        statuses = []
        payload: dict[str, Any] = {"id": f"evt_{next(self._event_ids)}", "event": event,
                                   "timestamp": _now_iso(), "data": data}
        if not with_id:
            del payload["id"]
        if not with_timestamp:
            del payload["timestamp"]
        body = json.dumps(payload).encode()
        async with httpx.AsyncClient(timeout=10.0) as http:
            for hook in self.webhooks:
                if event not in hook.events or (owner is not None and hook.owner != owner):
                    continue
                headers = {"Content-Type": "application/json",
                           "User-Agent": "BambiSleep-Webhooks/1.0"}
                if signed:
                    headers[self.webhook_signature_header] = self.sign(
                        body, hook.secret if secret is None else secret)
                response = await http.post(hook.url, content=body, headers=headers)
                statuses.append(response.status_code)
        return statuses

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self.ws_connections):
            await ws.close()
        await super().stop()

    # -- routing -----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self._api_middleware)
        app.router.add_post("/v1/auth/login", self._login)
        app.router.add_post("/v1/ai/generate", self._generate)
        app.router.add_get("/v1/profile/{username}", self._get_profile)
        app.router.add_put("/v1/profile/{username}", self._put_profile)
        app.router.add_get("/v1/triggers", self._list_triggers)
        app.router.add_post("/v1/triggers", self._create_trigger)
        app.router.add_get("/v1/sessions", self._list_sessions)
        app.router.add_get("/v1/sessions/{session_id}", self._get_session)
        app.router.add_post("/v1/webhooks", self._register_webhook)
        app.router.add_get("/audio/{name}", self._audio)
        app.router.add_get("/ws/chat", self._ws)

    def _user_for(self, request: web.Request) -> tuple[SimUser | None, str | None]:
        """(the authenticated user, or None with the reason code)."""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            owner = self.api_keys.get(auth[7:].strip())
            return (self.users[owner], None) if owner else (None, "INVALID_API_KEY")
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            return self._session_user(token)
        return None, "UNAUTHORIZED"

    def _session_user(self, token: str) -> tuple[SimUser | None, str | None]:
        found = self.sessions.get(token)
        if found is not None and self.session_ttl is not None:
            if time.monotonic() - found[1] > self.session_ttl:
                self.expired_tokens.add(token)
                del self.sessions[token]
                found = None
        if found is None:
            return None, "SESSION_EXPIRED" if token in self.expired_tokens else "INVALID_SESSION"
        return self.users[found[0]], None

    def _me(self, request: web.Request) -> SimUser:
        user, _ = self._user_for(request)
        assert user is not None  # the middleware answered 401 otherwise
        return user

    @web.middleware
    async def _api_middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        user, why = self._user_for(request)
        if user is not None:
            wait = self.auth_window.admit(user.username)
        else:
            wait = self.unauth_window.admit(f"ip:{request.remote}")
        if wait is not None:
            self.rate_limited += 1
            seconds = max(1, math.ceil(wait))
            log.info("rate limited: %s %s (retry after %d s)", request.method, request.path,
                     seconds)
            response: web.StreamResponse = error(
                429, "RATE_LIMITED", "Too many requests, please slow down",
                {"retryAfter": seconds}, headers={"Retry-After": str(seconds)},
            )
        elif user is None and request.path != "/v1/auth/login":
            messages = {
                "SESSION_EXPIRED": "Your session has expired, please log in again",
                "INVALID_SESSION": "Invalid session",
                "INVALID_API_KEY": "Invalid API key",
                "UNAUTHORIZED": "Authentication required",
            }
            response = error(401, why or "UNAUTHORIZED", messages.get(why or "", "Unauthorized"))
        else:
            response = await handler(request)
        self.statuses.append((request.method, request.path, response.status))
        return response

    async def _json(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "INVALID_JSON", "Request body must be JSON")
        if not isinstance(body, dict):
            return error(400, "INVALID_REQUEST", "Request body must be a JSON object")
        return body

    # -- handlers ----------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) \
                or not username or not password:
            return error(400, "INVALID_REQUEST", "username and password are required",
                         {"fields": ["username", "password"]})
        user = self.users.get(username)
        if user is None or not hmac.compare_digest(user.password, password):
            return error(401, "INVALID_CREDENTIALS", "Invalid username or password")
        token = secrets.token_urlsafe(24)
        self.sessions[token] = (username, time.monotonic())
        self.logins += 1
        response = web.json_response({
            "success": True,
            "message": "Authentication successful",
            "user": {"id": user.id, "username": user.username},
        })
        response.set_cookie(SESSION_COOKIE, token, httponly=True, path="/", samesite="Lax")
        return response

    async def _generate(self, request: web.Request) -> web.Response:
        user = self._me(request)
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return error(400, "INVALID_PROMPT", "prompt is required", {"field": "prompt"})
        if len(prompt) > 4000:
            return error(400, "PROMPT_TOO_LONG", "prompt must be at most 4000 characters",
                         {"field": "prompt", "max": 4000})
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            return error(400, "INVALID_SETTINGS", "settings must be an object")
        model = settings.get("model", MODELS[0])
        if model not in MODELS:
            return error(400, "INVALID_MODEL", f"Unknown model {model}",
                         {"field": "settings.model", "allowed": list(MODELS)})
        text = f"Bambi hears you: {prompt}"
        result: dict[str, Any] = {"response": text}
        if settings.get("includeAudio", True):
            name = f"response-{next(self._audio_ids)}.mp3"
            self.audio[name] = self.audio_data if self.audio_data is not None \
                else await asyncio.to_thread(sample_mp3)  # made once, off the loop
            result["audioUrl"] = f"{self.root_url}/audio/{name}"
        else:
            result["audioUrl"] = None
        if settings.get("includeTriggers", True):
            mentioned = [t["name"] for t in self.triggers
                         if t["name"].lower() in prompt.lower() and self._visible(t, user)]
            result["triggers"] = mentioned or ["Good Girl", "Bambi Sleep"]
        else:
            result["triggers"] = []
        sessions = self.chat_sessions[user.username]
        if not sessions:
            self.new_session(user.username)
        now = _now_iso()
        sessions[-1]["messages"] += [
            {"role": "user", "content": prompt, "timestamp": now},
            {"role": "assistant", "content": text, "timestamp": now},
        ]
        return web.json_response(result)

    def _visible(self, trigger: dict[str, Any], user: SimUser) -> bool:
        return bool(trigger["isPublic"]) or trigger["creator"] == user.username

    async def _get_profile(self, request: web.Request) -> web.Response:
        user = self._me(request)
        target = self.users.get(request.match_info["username"])
        if target is None:
            return error(404, "USER_NOT_FOUND", "User not found")
        if not target.is_public and target.username != user.username:
            return error(403, "PROFILE_PRIVATE", "This profile is private")
        return web.json_response(target.profile())

    async def _put_profile(self, request: web.Request) -> web.Response:
        user = self._me(request)
        target = self.users.get(request.match_info["username"])
        if target is None:
            return error(404, "USER_NOT_FOUND", "User not found")
        if target.username != user.username:
            return error(403, "FORBIDDEN", "You can only update your own profile")
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        allowed = {"displayName", "avatarUrl", "isPublic"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return error(400, "VALIDATION_ERROR", f"Unknown field {unknown[0]}",
                         {"field": unknown[0]})
        if "displayName" in body:
            name = body["displayName"]
            if not isinstance(name, str) or not 1 <= len(name.strip()) <= 50:
                return error(400, "VALIDATION_ERROR",
                             "displayName must be 1 to 50 characters", {"field": "displayName"})
            target.display_name = name.strip()
        if "avatarUrl" in body:
            if not isinstance(body["avatarUrl"], str):
                return error(400, "VALIDATION_ERROR", "avatarUrl must be a URL",
                             {"field": "avatarUrl"})
            target.avatar_url = body["avatarUrl"]
        if "isPublic" in body:
            if not isinstance(body["isPublic"], bool):
                return error(400, "VALIDATION_ERROR", "isPublic must be a boolean",
                             {"field": "isPublic"})
            target.is_public = body["isPublic"]
        if self.auto_webhooks:
            self._spawn(self.deliver_webhook("profile.update", target.profile(),
                                             owner=target.username))
        return web.json_response(target.profile())

    async def _list_triggers(self, request: web.Request) -> web.Response:
        user = self._me(request)
        visible = [
            {k: v for k, v in t.items() if k != "content"}
            for t in self.triggers if self._visible(t, user)
        ]
        return web.json_response({"triggers": visible})

    async def _create_trigger(self, request: web.Request) -> web.Response:
        user = self._me(request)
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        for key in ("name", "content"):
            value = body.get(key)
            if not isinstance(value, str) or not value.strip():
                return error(400, "VALIDATION_ERROR", f"{key} is required", {"field": key})
        if len(body["name"]) > 50:
            return error(400, "VALIDATION_ERROR", "name must be at most 50 characters",
                         {"field": "name"})
        description = body.get("description", "")
        if not isinstance(description, str):
            return error(400, "VALIDATION_ERROR", "description must be a string",
                         {"field": "description"})
        is_public = body.get("isPublic", False)
        if not isinstance(is_public, bool):
            return error(400, "VALIDATION_ERROR", "isPublic must be a boolean",
                         {"field": "isPublic"})
        if any(t["name"].lower() == body["name"].strip().lower() and self._visible(t, user)
               for t in self.triggers):
            return error(409, "TRIGGER_EXISTS", "A trigger with this name already exists",
                         {"field": "name"})
        trigger = {
            "id": f"trg_{next(self._trigger_ids)}",
            "name": body["name"].strip(),
            "description": description,
            "isPublic": is_public,
            "creator": user.username,
            "content": body["content"],
        }
        self.triggers.append(trigger)
        if self.auto_webhooks and is_public:
            self._spawn(self.deliver_webhook("trigger.shared", {
                k: v for k, v in trigger.items() if k != "content"}))
        return web.json_response(trigger, status=201)

    async def _list_sessions(self, request: web.Request) -> web.Response:
        user = self._me(request)
        return web.json_response({"sessions": [
            {"id": s["id"], "createdAt": s["createdAt"], "messageCount": len(s["messages"])}
            for s in self.chat_sessions[user.username]
        ]})

    async def _get_session(self, request: web.Request) -> web.Response:
        user = self._me(request)
        wanted = request.match_info["session_id"]
        for session in self.chat_sessions[user.username]:
            if session["id"] == wanted:
                return web.json_response(session)
        return error(404, "SESSION_NOT_FOUND", "Session not found")

    async def _register_webhook(self, request: web.Request) -> web.Response:
        user = self._me(request)
        body = await self._json(request)
        if isinstance(body, web.Response):
            return body
        url, events, secret = body.get("url"), body.get("events"), body.get("secret")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return error(400, "VALIDATION_ERROR", "url must be an http(s) URL", {"field": "url"})
        if not isinstance(events, list) or not events \
                or any(e not in EVENTS for e in events):
            return error(400, "VALIDATION_ERROR", "events must be a list of known events",
                         {"field": "events", "allowed": list(EVENTS)})
        if not isinstance(secret, str) or not secret:
            return error(400, "VALIDATION_ERROR", "secret is required", {"field": "secret"})
        hook = RegisteredWebhook(f"wh_{next(self._webhook_ids)}", user.username, url,
                                 list(events), secret)
        self.webhooks.append(hook)
        return web.json_response({"id": hook.id, "url": url, "events": hook.events},
                                 status=201)

    async def _audio(self, request: web.Request) -> web.Response:
        data = self.audio.get(request.match_info["name"])
        if data is None:
            return error(404, "NOT_FOUND", "Audio not found")
        return web.Response(body=data, content_type="audio/mpeg")

    # -- websocket ---------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.ws_connections.append(ws)
        user: SimUser | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await ws.send_json({"type": "error", "code": "INVALID_JSON",
                                        "message": "Frames must be JSON"})
                    continue
                kind = frame.get("type") if isinstance(frame, dict) else None
                if kind == "auth":
                    user = self._ws_user(str(frame.get("token", "")))
                    if user is None:
                        await ws.send_json({"type": "error", "code": "UNAUTHORIZED",
                                            "message": "Invalid or expired token"})
                        await ws.close(code=4401, message=b"unauthorized")
                        break
                    self.ws_auths += 1
                    await ws.send_json({"type": "auth", "success": True,
                                        "username": user.username})
                    await self._chat(ws)
                elif kind == "message":
                    if user is None:
                        await ws.send_json({"type": "error", "code": "UNAUTHORIZED",
                                            "message": "Authenticate first"})
                        await ws.close(code=4401, message=b"unauthorized")
                        break
                    content = str(frame.get("content", ""))
                    self.ws_messages.append((user.username, content))
                    if self._drop_ws > 0:
                        self._drop_ws -= 1
                        await ws.close(code=1011, message=b"internal error")
                        break
                    wait = self.auth_window.admit(user.username)
                    if wait is not None:
                        self.rate_limited += 1
                        log.info("rate limited: a websocket message (retry after %d s)",
                                 max(1, math.ceil(wait)))
                        await ws.send_json({"type": "error", "code": "RATE_LIMITED",
                                            "message": "Too many requests",
                                            "details": {"retryAfter": max(1, math.ceil(wait))}})
                        continue
                    if self.ws_echo_own:
                        await ws.send_json({"type": "message", "username": user.username,
                                            "content": content, "timestamp": _now_iso()})
                    await self._chat(ws)
                    if self.latency:
                        await asyncio.sleep(self.latency)
                    reply = self._ws_replies.popleft() if self._ws_replies \
                        else f"Bambi hears you: {content}"
                    await ws.send_json({"type": "message", "username": self.ws_reply_username,
                                        "content": reply, "timestamp": _now_iso()})
                    await self._chat(ws)
                else:
                    await ws.send_json({"type": "error", "code": "UNKNOWN_TYPE",
                                        "message": f"Unknown frame type {kind!r}"})
        finally:
            if ws in self.ws_connections:
                self.ws_connections.remove(ws)
        return ws

    def _ws_user(self, token: str) -> SimUser | None:
        owner = self.api_keys.get(token)
        if owner is not None:
            return self.users[owner]
        user, _ = self._session_user(token)
        return user

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # a dead receiver is the receiver's problem
                log.warning("webhook delivery failed: %s", exc)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _factory(args: Any) -> BambiSleepSimulator:
    return BambiSleepSimulator(
        host=args.host, port=args.port, latency=args.latency,
        api_keys=dict.fromkeys(args.api_key or [DEMO_API_KEY], DEMO_USER),
        users={DEMO_USER: args.password},
        rate_limit=args.rate_limit, unauth_rate_limit=args.unauth_rate_limit,
        rate_period=args.rate_period, session_ttl=args.session_ttl, auto_webhooks=True,
    )


def _arguments(parser: Any) -> None:
    parser.add_argument("--api-key", action="append",
                        help=f"an API key of user {DEMO_USER} (repeatable; default "
                        f"{DEMO_API_KEY})")
    parser.add_argument("--password", default=DEMO_PASSWORD,
                        help=f"password of user {DEMO_USER} (default {DEMO_PASSWORD})")
    parser.add_argument("--rate-limit", type=int, default=60,
                        help="authenticated requests per period (default 60)")
    parser.add_argument("--unauth-rate-limit", type=int, default=10,
                        help="unauthenticated requests per period (default 10)")
    parser.add_argument("--rate-period", type=float, default=60.0,
                        help="rate-limit window in seconds (default 60)")
    parser.add_argument("--session-ttl", type=float, default=None,
                        help="seconds a login session lasts (default: until restart)")


if __name__ == "__main__":
    run_cli(_factory, "BambiSleep.Chat API simulator (websocket at /ws/chat, audio at /audio/)",
            _arguments)
