"""A pure async client for the BambiSleep.Chat API (``https://api.bambisleep.chat/v1``).

Usable without the engine: it only needs :mod:`tgmux.http`, :mod:`tgmux.errors`
and :mod:`tgmux.ratelimit`::

    async with BambiSleepClient(api_key="...") as bambi:
        reply = await bambi.generate("Hello Bambi", include_audio=True)
        print(reply.response, reply.audio_url, reply.triggers)

Authentication is one of two modes:

* ``api_key``: every request carries ``Authorization: Bearer <key>``;
* ``username`` + ``password``: ``POST /auth/login`` once (lazily, before the first call); the
  session cookie it sets is kept by the HTTP client and sent with every later request. When a
  call answers 401 (the session expired), the client logs in again **once** and repeats that
  call; a second 401 is an :class:`~tgmux.errors.AuthError`.

Errors are :mod:`tgmux.errors` kinds, from the provider's body
``{"error": true, "code": ..., "message": ..., "details": {...}}`` (``code``/``details`` are
kept in ``BackendError.details`` for logs). Rate limits (60 requests/min authenticated, 10/min
unauthenticated) are kept by the :class:`~tgmux.ratelimit.SlidingWindowLimiter` passed in
(``limiter`` for every call, ``login_limiter`` additionally for ``/auth/login``); a 429 that
still comes is retried after ``Retry-After`` by :class:`~tgmux.http.HttpClient`.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpx

from tgmux.audio import DEFAULT_MAX_BYTES
from tgmux.errors import (
    AuthError,
    BackendError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    error_for_status,
)
from tgmux.http import HttpClient, default_error_parser, never_reached
from tgmux.ratelimit import Limiter, SlidingWindowLimiter

DEFAULT_BASE_URL = "https://api.bambisleep.chat/v1"
#: An audio file fetched at most (what tgmux.audio transcodes at most, 20 MiB).
MAX_AUDIO_BYTES = DEFAULT_MAX_BYTES
AUDIO_CONNECTIONS = 4  # audio fetches at once per client (a reply's audio is one file)
WEBHOOK_EVENTS = ("message.new", "profile.update", "trigger.shared")

#: Provider error codes that mean a used-up account rather than a bad request.
_QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "INSUFFICIENT_CREDITS", "PAYMENT_REQUIRED"})


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateResult:
    """``POST /ai/generate``: the text, an absolute audio URL (or None) and trigger names."""

    response: str
    audio_url: str | None = None
    triggers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Profile:
    username: str
    id: str | None = None
    display_name: str | None = None
    avatar_url: str | None = None
    is_public: bool | None = None
    xp: int | None = None
    level: int | None = None
    created_at: str | None = None
    triggers: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Profile:
        return cls(
            username=str(body.get("username", "")),
            id=_opt_str(body.get("id")),
            display_name=_opt_str(body.get("displayName")),
            avatar_url=_opt_str(body.get("avatarUrl")),
            is_public=body.get("isPublic"),
            xp=body.get("xp"),
            level=body.get("level"),
            created_at=_opt_str(body.get("createdAt")),
            triggers=[str(t) for t in body.get("triggers") or []],
        )


@dataclass(frozen=True)
class Trigger:
    name: str
    id: str | None = None
    description: str | None = None
    is_public: bool | None = None
    creator: str | None = None
    content: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Trigger:
        return cls(
            name=str(body.get("name", "")),
            id=_opt_str(body.get("id")),
            description=_opt_str(body.get("description")),
            is_public=body.get("isPublic"),
            creator=_opt_str(body.get("creator")),
            content=_opt_str(body.get("content")),
        )


@dataclass(frozen=True)
class SessionSummary:
    id: str
    created_at: str | None = None
    message_count: int | None = None


@dataclass(frozen=True)
class SessionMessage:
    role: str
    content: str
    timestamp: str | None = None


@dataclass(frozen=True)
class SessionDetail:
    id: str
    created_at: str | None = None
    messages: list[SessionMessage] = field(default_factory=list)


@dataclass(frozen=True)
class Webhook:
    url: str
    events: list[str]
    id: str | None = None


def _opt_str(value: Any) -> str | None:
    """``str(value)``, None for None. Not :func:`tgmux.text.str_or_none`: BambiSleep ids and
    dates are kept whatever their JSON type (an id ``7`` reads ``"7"``)."""
    return None if value is None else str(value)


# -- errors -----------------------------------------------------------------------------------


def parse_error(response: httpx.Response) -> BackendError:
    """Map an error answer to a :class:`BackendError` kind, keeping ``code`` and ``details``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not ({"code", "message"} & body.keys()):
        return default_error_parser(response)
    status = response.status_code
    code = str(body.get("code") or "")
    message = str(body.get("message") or code or response.reason_phrase)
    cls = error_for_status(status)
    if code.upper() in _QUOTA_CODES:
        cls = QuotaExceededError
    elif code.upper() in {"RATE_LIMITED", "TOO_MANY_REQUESTS"}:
        cls = RateLimitedError
    details: dict[str, Any] = {"code": code} if code else {}
    if isinstance(body.get("details"), dict) and body["details"]:
        details["details"] = body["details"]
    return cls(
        f"HTTP {status} {code}".strip(),
        status=status,
        provider_message=message,
        request_id=response.headers.get("X-Request-Id"),
        details=details,
    )


def nothing_was_done(exc: BackendError) -> bool:
    """Does ``exc`` prove the request had no effect at the provider, so that sending it again
    cannot do anything twice? True for refusals: any 4xx (the request was checked and refused;
    429 included), a 503 (the service refused to handle it), and a request that never left
    (the connection could not be opened). False for a timeout, a connection lost mid-request,
    a 500/502/504 or an unreadable answer: the provider may have acted on it."""
    if exc.status is not None:
        return 400 <= exc.status < 500 or exc.status == 503
    if isinstance(exc, RateLimitedError):
        return True
    cause = exc.__cause__
    return isinstance(cause, httpx.TransportError) and never_reached(cause)


# -- the client -------------------------------------------------------------------------------


def credential_identity(api_key: str | None, username: str | None) -> str:
    """A non-secret name for a set of credentials (rate-limit keys, logs)."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return f"user:{username}"


def default_ws_url(base_url: str) -> str:
    """``wss://HOST/ws/chat`` for a base URL ``https://HOST/v1`` (``ws://`` for ``http://``)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, "/ws/chat", "", ""))


class BambiSleepClient:
    """One client per set of credentials. Close it with :meth:`aclose` (or ``async with``)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        limiter: Limiter | None = None,
        login_limiter: SlidingWindowLimiter | None = None,
        max_retry_after: float = 60.0,
        notify_after: float = 5.0,
        name: str = "bambisleep",
        http_options: dict[str, Any] | None = None,
    ) -> None:
        if bool(api_key) == bool(password):
            raise ValueError("give api_key, or username and password (exactly one of the two)")
        if password and not username:
            raise ValueError("password needs a username")
        self.api_key = api_key
        self.username = username
        self._password = password
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.login_limiter = login_limiter
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = HttpClient(
            self.base_url,
            **{"timeout": timeout, **(http_options or {})},
            headers=headers,
            limiter=limiter,
            error_parser=parse_error,
            name=name,
            max_retry_after=max_retry_after,
            notify_after=notify_after,
        )
        #: audio files, fetched without the account's credentials (see :meth:`fetch_audio`)
        self.audio_http = HttpClient(
            self.base_url, timeout=self.http.timeout, name=f"{name} audio",
            max_connections=AUDIO_CONNECTIONS, max_response_bytes=MAX_AUDIO_BYTES,
            proxy=self.http.proxy,  # the backend's proxy, as for its API
        )
        self.session_token: str | None = None  # session mode: the cookie's value (ws auth)
        self._session_generation = 0  # bumped by every successful login
        self._login_lock = asyncio.Lock()
        self.user: dict[str, Any] = {}

    @property
    def uses_session(self) -> bool:
        return self.api_key is None

    @property
    def identity(self) -> str:
        return credential_identity(self.api_key, self.username)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.audio_http.aclose()

    async def __aenter__(self) -> BambiSleepClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- auth --------------------------------------------------------------------------------

    async def login(self) -> dict[str, Any]:
        """``POST /auth/login``; keeps the session cookie. Returns the ``user`` object."""
        if not self.uses_session:
            raise ValueError("login() is for username/password authentication")
        if self.login_limiter is not None:
            await self.login_limiter.acquire()
        self.http.cookies.clear()  # never send the expired session along with the login
        self.session_token = None
        response = await self.http.request(
            "POST", "/auth/login", json={"username": self.username, "password": self._password}
        )
        try:
            body = response.json()
        except ValueError as exc:
            raise ProtocolError(f"{self.name}: login answered non-JSON",
                                status=response.status_code) from exc
        if not isinstance(body, dict) or body.get("success") is False:
            raise AuthError(f"{self.name}: login refused",
                            provider_message=str(body)[:200] if body else None)
        self.session_token = _session_token(response, body)
        if not self.session_token and not self.http.cookies:
            raise ProtocolError(f"{self.name}: login set no session cookie",
                                status=response.status_code)
        self.user = body.get("user") if isinstance(body.get("user"), dict) else {}
        self._session_generation += 1
        return self.user

    async def ensure_session(self) -> None:
        """Log in unless a session exists (session mode); a no-op with an API key."""
        if self.uses_session and self._session_generation == 0:
            await self._relogin(0)

    async def _relogin(self, seen_generation: int) -> None:
        # Many chats may see the same expired session at once: only the first logs in again.
        async with self._login_lock:
            if self._session_generation == seen_generation:
                await self.login()

    async def ws_token(self) -> str:
        """The token for the websocket's ``auth`` frame: the session token, or the API key."""
        if self.api_key:
            return self.api_key
        await self.ensure_session()
        if not self.session_token:
            raise ProtocolError(f"{self.name}: no session token for the websocket")
        return self.session_token

    async def relogin_after(self, seen_generation: int) -> None:
        """Log in again because the session seen at ``seen_generation`` was refused."""
        await self._relogin(seen_generation)

    @property
    def session_generation(self) -> int:
        return self._session_generation

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, Any] | None = None) -> Any:
        """One API call, as JSON; in session mode logs in first and once more after a 401."""
        await self.ensure_session()
        generation = self._session_generation
        try:
            return await self.http.request_json(method, path, json=json, params=params)
        except AuthError as exc:
            if not self.uses_session or exc.status != 401:
                raise
        # The session expired: one fresh login, one repeat (nothing was done on a 401).
        await self._relogin(generation)
        return await self.http.request_json(method, path, json=json, params=params)

    # -- endpoints ---------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        include_audio: bool = True,
        include_triggers: bool = True,
    ) -> GenerateResult:
        """``POST /ai/generate``."""
        settings: dict[str, Any] = {"includeAudio": include_audio,
                                    "includeTriggers": include_triggers}
        if model:
            settings = {"model": model, **settings}
        body = await self.call("POST", "/ai/generate",
                               json={"prompt": prompt, "settings": settings})
        if not isinstance(body, dict) or not isinstance(body.get("response"), str):
            raise ProtocolError(f"{self.name}: /ai/generate answered without a response text",
                                provider_message=str(body)[:200])
        audio = body.get("audioUrl")
        triggers = body.get("triggers") or []
        return GenerateResult(
            response=body["response"],
            audio_url=self.absolute_url(audio) if isinstance(audio, str) and audio else None,
            triggers=[str(t) for t in triggers] if isinstance(triggers, list) else [],
        )

    async def fetch_audio(self, url: str) -> bytes:
        """The bytes of an ``audioUrl`` (at most :data:`MAX_AUDIO_BYTES`; more is a
        :class:`~tgmux.errors.BackendError`). Asked without the account's key or session: the
        document shows the audio as a plain link on another host than the API
        (``bambisleep.chat/audio/…`` beside ``api.bambisleep.chat``), and a key is sent only
        where it is asked for. Not counted against the API's rate limit, for the same reason."""
        response = await self.audio_http.request("GET", self.absolute_url(url))
        return response.content

    async def get_profile(self, username: str) -> Profile:
        """``GET /profile/{username}``."""
        body = await self.call("GET", f"/profile/{quote(username, safe='')}")
        return Profile.from_json(_object(body, "profile", self.name))

    async def update_profile(
        self,
        username: str,
        *,
        display_name: str | None = None,
        avatar_url: str | None = None,
        is_public: bool | None = None,
    ) -> Profile | None:
        """``PUT /profile/{username}`` with only the fields given. Returns the profile when the
        provider answers with one."""
        payload: dict[str, Any] = {}
        if display_name is not None:
            payload["displayName"] = display_name
        if avatar_url is not None:
            payload["avatarUrl"] = avatar_url
        if is_public is not None:
            payload["isPublic"] = is_public
        body = await self.call("PUT", f"/profile/{quote(username, safe='')}", json=payload)
        if isinstance(body, dict) and isinstance(body.get("profile"), dict):
            body = body["profile"]
        if isinstance(body, dict) and "username" in body:
            return Profile.from_json(body)
        return None

    async def list_triggers(self) -> list[Trigger]:
        """``GET /triggers``."""
        body = await self.call("GET", "/triggers")
        items = _object(body, "triggers", self.name).get("triggers")
        if not isinstance(items, list):
            raise ProtocolError(f"{self.name}: /triggers answered without a list")
        return [Trigger.from_json(t) for t in items if isinstance(t, dict)]

    async def create_trigger(
        self, name: str, description: str, content: str, *, is_public: bool = False
    ) -> Trigger:
        """``POST /triggers``. Returns the trigger (as the provider echoes it, or as sent)."""
        payload = {"name": name, "description": description, "isPublic": is_public,
                   "content": content}
        body = await self.call("POST", "/triggers", json=payload)
        if isinstance(body, dict) and isinstance(body.get("trigger"), dict):
            body = body["trigger"]
        if isinstance(body, dict) and body.get("name"):
            return Trigger.from_json(body)
        return Trigger(name=name, description=description, is_public=is_public, content=content)

    async def list_sessions(self) -> list[SessionSummary]:
        """``GET /sessions``."""
        body = await self.call("GET", "/sessions")
        items = _object(body, "sessions", self.name).get("sessions")
        if not isinstance(items, list):
            raise ProtocolError(f"{self.name}: /sessions answered without a list")
        return [
            SessionSummary(id=str(s.get("id", "")), created_at=_opt_str(s.get("createdAt")),
                           message_count=s.get("messageCount"))
            for s in items if isinstance(s, dict)
        ]

    async def get_session(self, session_id: str) -> SessionDetail:
        """``GET /sessions/{sessionId}``."""
        body = _object(await self.call("GET", f"/sessions/{quote(session_id, safe='')}"),
                       "session", self.name)
        messages = [
            SessionMessage(role=str(m.get("role", "")), content=str(m.get("content", "")),
                           timestamp=_opt_str(m.get("timestamp")))
            for m in body.get("messages") or [] if isinstance(m, dict)
        ]
        return SessionDetail(id=str(body.get("id", session_id)),
                             created_at=_opt_str(body.get("createdAt")), messages=messages)

    async def register_webhook(self, url: str, events: list[str], secret: str) -> Webhook:
        """``POST /webhooks``."""
        body = await self.call("POST", "/webhooks",
                               json={"url": url, "events": list(events), "secret": secret})
        body = body if isinstance(body, dict) else {}
        return Webhook(url=str(body.get("url", url)), events=list(body.get("events", events)),
                       id=_opt_str(body.get("id")))

    def absolute_url(self, url: str) -> str:
        """Resolve a URL the provider gave relative to the API's host."""
        return urljoin(self.base_url + "/", url)


def _object(body: Any, what: str, name: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolError(f"{name}: expected a JSON object for {what}",
                            provider_message=str(body)[:200])
    return body


def _session_token(response: httpx.Response, body: dict[str, Any]) -> str | None:
    """The session token for the websocket: a ``token`` in the login body if the provider
    gives one, else the value of the cookie the login set (preferring a session-like name)."""
    for key in ("token", "sessionToken"):
        if isinstance(body.get(key), str) and body[key]:
            return body[key]
    cookies = list(response.cookies.jar)
    if not cookies:
        return None
    for cookie in cookies:
        if any(word in cookie.name.lower() for word in ("session", "sid", "token")):
            return cookie.value
    return cookies[0].value
