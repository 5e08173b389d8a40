"""Who may use the console and its admin API (``server.console.token``), and the audit log.

- Signing in: ``POST /console/sign-in`` with the token (a form field ``token`` or JSON
  ``{"token": …}``) opens a session: a random id in an HttpOnly, SameSite=Strict cookie on
  ``/`` (``Secure`` when ``server.public_url`` is https), kept server-side in a bounded table
  (:data:`MAX_SESSIONS`; idle :data:`SESSION_IDLE` seconds, at most :data:`SESSION_LIFE`).
  ``POST /console/sign-out`` ends it.
- Scripts send ``Authorization: Bearer TOKEN`` with each request instead.
- Tokens are compared in constant time (:func:`hmac.compare_digest`). Wrong tokens (a sign-in
  or a Bearer) are counted by the core rate limiter (:mod:`tgmux.ratelimit`), per client
  address and overall: past the limit every attempt (a right token too: else the limit would
  tell a guess right) is answered 429 with ``Retry-After``. Sessions already open go on.
- A state-changing request (not GET/HEAD/OPTIONS) of a cookie session must carry the session's
  CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``; ``GET /api/v1/session``
  gives it), else 403. A Bearer request needs none (no browser sends it by itself).
- Every sign-in, sign-out, refusal and action is logged (INFO, logger ``tgmux.console``) with
  who: ``session 1a2b3c4d`` (a hash prefix of the session, never the cookie) or ``bearer``, and
  the client's address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tgmux.ratelimit import KeyedLimiter, SlidingWindowLimiter

__all__ = ["COOKIE", "ConsoleAuth", "Session", "json_error", "who"]

log = logging.getLogger("tgmux.console")

COOKIE = "tgmux_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
#: Sessions kept at most (the least recently used is ended first).
MAX_SESSIONS = 1000
#: Seconds a session lasts unused, and at most.
SESSION_IDLE = 2 * 3600.0
SESSION_LIFE = 12 * 3600.0
#: Wrong tokens let through per client address, and overall, in :data:`FAILURE_WINDOW` s.
FAILURES_PER_ADDRESS = 5
FAILURES_OVERALL = 30
FAILURE_WINDOW = 60.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Headers of every console and API answer: never cached, never framed.
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
#: request keys: who is asking (``session 1a2b3c4d (ADDRESS)`` or ``bearer (ADDRESS)``), and
#: the cookie session (absent for a Bearer)
if hasattr(web, "RequestKey"):  # aiohttp 3.12+ (typed keys; plain strings warn there)
    WHO: Any = web.RequestKey("tgmux_console_who", str)
    SESSION: Any = web.RequestKey("tgmux_console_session", object)
else:  # pragma: no cover
    WHO, SESSION = "tgmux_console_who", "tgmux_console_session"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, headers: dict[str, str] | None = None
               ) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={**SECURITY_HEADERS, **(headers or {})})


@dataclass
class Session:
    key: str  # sha256 of the cookie's id: the table's key (the id itself is not kept)
    csrf: str
    created: float
    used: float

    @property
    def who(self) -> str:
        return f"session {self.key[:8]}"


class ConsoleAuth:
    def __init__(self, token: str, *, secure_cookie: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._token = token.encode()
        self.secure_cookie = secure_cookie
        self._clock = clock
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self._per_address = KeyedLimiter(FAILURES_PER_ADDRESS, FAILURE_WINDOW)
        self._overall = SlidingWindowLimiter(FAILURES_OVERALL, FAILURE_WINDOW)
        #: renders the sign-in page (the pages replace it): (request, error) -> response
        self.sign_in_page: Callable[[web.Request, str | None, int], web.Response] = \
            _plain_sign_in_page

    # -- tokens and their rate limit --------------------------------------------------------------

    def _matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def _locked_for(self, address: str) -> float:
        """Seconds until a token may be tried again from ``address`` (0: now)."""
        return max(self._per_address.get(address).delay(), self._overall.delay())

    def _failed(self, address: str, what: str) -> None:
        # only called when both had room (_locked_for was 0): each stays bounded by its limit
        self._per_address.get(address).take()
        self._overall.take()
        log.warning("console: wrong token from %s (%s)", address, what)

    def check_token(self, given: str, address: str, what: str) -> web.Response | None:
        """None when ``given`` is the token; else the 401 or 429 to answer."""
        wait = self._locked_for(address)
        if wait > 0:
            log.warning("console: %s from %s refused: too many wrong tokens", what, address)
            return json_error(429, f"too many wrong tokens: try again in {math.ceil(wait)} s",
                              {"Retry-After": str(math.ceil(wait))})
        if self._matches(given):
            return None
        self._failed(address, what)
        return json_error(401, "wrong token")

    # -- sessions ----------------------------------------------------------------------------------

    def open_session(self) -> tuple[str, Session]:
        """A new session: the cookie's value (random, 256 bits) and the session."""
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(_digest(sid), secrets.token_urlsafe(32), now, now)
        while len(self.sessions) >= MAX_SESSIONS:
            ended = self.sessions.popitem(last=False)[1]
            log.info("console: %s ended: too many sessions", ended.who)
        self.sessions[session.key] = session
        return sid, session

    def session_of(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        key = _digest(sid)
        session = self.sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.used > SESSION_IDLE or now - session.created > SESSION_LIFE:
            del self.sessions[key]
            log.info("console: %s expired", session.who)
            return None
        session.used = now
        self.sessions.move_to_end(key)
        return session

    def set_cookie(self, response: web.StreamResponse, sid: str) -> None:
        response.set_cookie(COOKIE, sid, path="/", httponly=True, samesite="Strict",
                            secure=self.secure_cookie, max_age=int(SESSION_LIFE))

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")

    # -- guarding handlers -------------------------------------------------------------------------

    async def identify(self, request: web.Request) -> web.Response | None:
        """Sets ``request[WHO]`` (and ``request[SESSION]`` for a cookie session); else the
        error to answer (401, 403 without the CSRF token, 429)."""
        address = request.remote or "?"
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return json_error(401, "Authorization: Bearer TOKEN expected")
            refused = self.check_token(given.strip(), address, "bearer")
            if refused is not None:
                return refused
            request[WHO] = f"bearer ({address})"
            return None
        session = self.session_of(request)
        if session is None:
            return json_error(401, "sign in first (POST /console/sign-in) or send "
                                   "Authorization: Bearer TOKEN")
        if request.method not in SAFE_METHODS and not await self._csrf_ok(request, session):
            log.warning("console: %s (%s): %s %s refused: no valid CSRF token", session.who,
                        address, request.method, request.path)
            return json_error(403, f"CSRF token missing or wrong: send the session's token "
                                   f"(GET /api/v1/session) as {CSRF_HEADER} or {CSRF_FIELD}")
        request[WHO] = f"{session.who} ({address})"
        request[SESSION] = session
        return None

    @staticmethod
    async def _csrf_ok(request: web.Request, session: Session) -> bool:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in ("application/x-www-form-urlencoded",
                                                      "multipart/form-data"):
            field = (await request.post()).get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())

    def guard(self, handler: Handler) -> Handler:
        """``handler`` for the signed-in only (see :meth:`identify`); its answers carry
        :data:`SECURITY_HEADERS`."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = await self.identify(request)
            if refused is not None:
                return refused
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return guarded

    # -- sign-in and sign-out ----------------------------------------------------------------------

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        """``POST /console/sign-in``: a JSON body answers JSON (``{"csrf_token": …}``), a form
        is sent on to ``next`` (a /console path; default /console/) or shown the page again
        with what went wrong."""
        address = request.remote or "?"
        as_json = request.content_type == "application/json"
        next_page = "/console/"
        try:
            if as_json:
                body = json.loads(await request.read() or b"null")
                given = body.get("token") if isinstance(body, dict) else None
            else:
                form = await request.post()
                given = form.get("token")
                wanted = form.get("next")
                if isinstance(wanted, str) and _console_path(wanted):
                    next_page = wanted
        except ValueError:
            return json_error(400, "a JSON object {\"token\": …} or a form field token expected")
        if not isinstance(given, str) or not given:
            return (json_error(400, "no token given") if as_json
                    else self.sign_in_page(request, "Enter the console's token.", 400))
        refused = self.check_token(given, address, "sign-in")
        if refused is not None:
            if as_json:
                return refused
            text = ("Wrong token." if refused.status == 401 else
                    "Too many wrong tokens: try again in a minute.")
            page = self.sign_in_page(request, text, refused.status)
            if "Retry-After" in refused.headers:
                page.headers["Retry-After"] = refused.headers["Retry-After"]
            return page
        sid, session = self.open_session()
        log.info("console: %s (%s): signed in", session.who, address)
        response: web.StreamResponse
        if as_json:
            response = web.json_response({"csrf_token": session.csrf,
                                          "expires_in": int(SESSION_IDLE)})
        else:
            response = web.Response(status=303, headers={"Location": next_page})
        response.headers.update(SECURITY_HEADERS)
        self.set_cookie(response, sid)
        return response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        """``POST /console/sign-out`` (guarded: a cookie session sends its CSRF token)."""
        session = request.get(SESSION)
        if session is not None:
            self.sessions.pop(session.key, None)
        log.info("console: %s: signed out", request[WHO])
        response: web.StreamResponse
        if request.content_type == "application/json" or CSRF_HEADER in request.headers:
            response = web.json_response({"signed_out": True})
        else:
            response = web.Response(status=303, headers={"Location": "/console/sign-in"})
        self.clear_cookie(response)
        return response

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/console/sign-in", self.sign_in)
        app.router.add_post("/console/sign-out", self.guard(self.sign_out))


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _console_path(path: str) -> bool:
    """A path on this site under /console (not ``//host``, not a URL): where a sign-in may
    send the browser on to."""
    parts = urlsplit(path)
    return (not parts.scheme and not parts.netloc and path.startswith("/console")
            and not path.startswith("//") and "\\" not in path)


def _plain_sign_in_page(request: web.Request, error: str | None, status: int) -> web.Response:
    """A bare sign-in form (the console's pages bring their own)."""
    said = f"<p role=alert>{error}</p>" if error else ""
    return web.Response(
        status=status, content_type="text/html", headers=SECURITY_HEADERS,
        text="<!doctype html><title>tgmux console: sign in</title>"
             f"<h1>tgmux console</h1>{said}<form method=post action=/console/sign-in>"
             "<label>Token <input type=password name=token autofocus></label> "
             "<button>Sign in</button></form>")


def who(request: web.Request) -> str:
    """Who made ``request`` (set by :meth:`ConsoleAuth.guard`)."""
    return str(request.get(WHO, "?"))

