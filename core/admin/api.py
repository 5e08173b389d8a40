"""The admin API: JSON under ``/api/v1/`` (docs/console.md documents each route and field).

Every route is guarded (:class:`tgmux.admin.auth.ConsoleAuth`: a session cookie with its CSRF
token for what changes something, or ``Authorization: Bearer TOKEN``); errors are JSON
``{"error": "..."}`` with their status. What it answers comes from
:class:`tgmux.admin.service.AdminService`: nothing secret is in it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from tgmux.admin.auth import SECURITY_HEADERS, SESSION, ConsoleAuth, json_error, who
from tgmux.admin.service import AdminService
from tgmux.redact import redact
from tgmux.store import StoreUnavailable

__all__ = ["API", "add_api_routes", "api_errors"]

log = logging.getLogger("tgmux.console")

API = "/api/v1"
#: Rows a list answers at most (``?limit=`` may ask for fewer).
MAX_ROWS = 1000


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=SECURITY_HEADERS)


def _chat_key(request: web.Request) -> tuple[str, int]:
    raw = request.match_info["chat_id"]
    try:
        return request.match_info["account"], int(raw)
    except ValueError:
        raise _Refused(400, "a numeric chat id expected") from None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "200")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ROWS:
        raise _Refused(400, f"limit: a whole number from 1 to {MAX_ROWS} expected")
    return int(raw)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # bounded: the server's client_max_size
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, "a JSON object expected")
    return body


class _Routes:
    def __init__(self, service: AdminService) -> None:
        self.service = service

    async def session(self, request: web.Request) -> web.Response:
        session = request.get(SESSION)
        return _ok({"who": who(request), "csrf_token": session.csrf if session else None,
                    "show_messages": self.service.show_messages})

    async def accounts(self, request: web.Request) -> web.Response:
        return _ok({"accounts": [a.to_json() for a in await self.service.accounts()]})

    async def backends(self, request: web.Request) -> web.Response:
        return _ok({"backends": [b.to_json() for b in await self.service.backends()],
                    "messages_per_minute": await self.service.messages_per_minute()})

    async def chats(self, request: web.Request) -> web.Response:
        found = await self.service.chats(request.query.get("q", ""), limit=_limit(request))
        return _ok({"chats": [c.to_json() for c in found]})

    async def chat(self, request: web.Request) -> web.Response:
        account, chat_id = _chat_key(request)
        detail = await self.service.chat(account, chat_id)
        if detail is None:
            raise _Refused(404, f"no account {account!r}")
        return _ok(detail.to_json())

    async def set_backend(self, request: web.Request) -> web.Response:
        account, chat_id = _chat_key(request)
        body = await _json_body(request)
        if "backend" not in body or not (body["backend"] is None
                                         or isinstance(body["backend"], str)):
            raise _Refused(400, '{"backend": NAME} or {"backend": null} expected')
        try:
            view = await self.service.set_backend(account, chat_id, body["backend"],
                                                  who=who(request))
        except LookupError as exc:
            raise _Refused(404, str(exc)) from None
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        return _ok({"chat": view.to_json()})

    async def reset(self, request: web.Request) -> web.Response:
        account, chat_id = _chat_key(request)
        try:
            forgotten = await self.service.reset(account, chat_id, who=who(request))
        except LookupError as exc:
            raise _Refused(404, str(exc)) from None
        return _ok({"forgotten": forgotten})

    async def users(self, request: web.Request) -> web.Response:
        found = await self.service.users(request.query.get("q", ""), limit=_limit(request))
        return _ok({"users": [u.to_json() for u in found]})

    async def block(self, request: web.Request) -> web.Response:
        user_id = _user_id(request)
        return _ok({"user": (await self.service.block(user_id, who=who(request))).to_json()})

    async def unblock(self, request: web.Request) -> web.Response:
        user_id = _user_id(request)
        return _ok({"user": (await self.service.unblock(user_id, who=who(request))).to_json()})

    async def config(self, request: web.Request) -> web.Response:
        return _ok((await self.service.config()).to_json())

    async def reload(self, request: web.Request) -> web.Response:
        report = await self.service.reload(who=who(request))
        if report.applied:
            return _ok(report.to_json())
        return _ok({"error": f"config not reloaded ({len(report.errors)} problem(s)); the old "
                             "config keeps running", **report.to_json()}, status=422)


def _user_id(request: web.Request) -> int:
    raw = request.match_info["user_id"]
    if not raw.lstrip("-").isdigit() or len(raw) > 20:
        raise _Refused(400, "a numeric Telegram user id expected")
    return int(raw)


@web.middleware
async def api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Under /api/ (and the sign-in and sign-out): every error as JSON ``{"error": ...}`` (not
    aiohttp's text), and never a traceback."""
    if not request.path.startswith(("/api/", "/console/sign-")):
        return await handler(request)
    try:
        return await handler(request)
    except _Refused as exc:
        return json_error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason or "refused")
    except StoreUnavailable:
        return json_error(503, "the store is not answering: nothing was read or changed; try "
                               "again in a moment", {"Retry-After": "5"})
    except Exception as exc:
        log.exception("console: %s %s failed", request.method, request.path)
        return json_error(500, redact(f"internal error: {type(exc).__name__}"))


def add_api_routes(app: web.Application, service: AdminService, auth: ConsoleAuth) -> None:
    routes = _Routes(service)
    guard = auth.guard
    for path, handler in ((f"{API}/session", routes.session),
                          (f"{API}/accounts", routes.accounts),
                          (f"{API}/backends", routes.backends),
                          (f"{API}/chats", routes.chats),
                          (f"{API}/chats/{{account}}/{{chat_id}}", routes.chat),
                          (f"{API}/users", routes.users),
                          (f"{API}/config", routes.config)):
        app.router.add_get(path, guard(handler))
    for path, handler in ((f"{API}/chats/{{account}}/{{chat_id}}/backend", routes.set_backend),
                          (f"{API}/chats/{{account}}/{{chat_id}}/reset", routes.reset),
                          (f"{API}/users/{{user_id}}/block", routes.block),
                          (f"{API}/users/{{user_id}}/unblock", routes.unblock),
                          (f"{API}/reload", routes.reload)):
        app.router.add_post(path, guard(handler))
    app.middlewares.append(api_errors)
