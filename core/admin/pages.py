"""The console's HTML pages under ``/console/``: server-rendered, no script at all.

Every page reads :class:`tgmux.admin.service.AdminService` (the same reads and actions as the
JSON API); signing in and out, the session cookie, the CSRF check and the rate limits are
:mod:`tgmux.admin.auth`'s (the pages only render its sign-in form). A form that changes state
POSTs to a page route with the session's CSRF token, which calls the service and redirects
(POST/redirect/GET); what the action did is shown once on the next page.

Templates are Jinja2 with autoescaping on (every value is HTML-escaped unless a template says
otherwise, which none does). Nothing secret is rendered: the service redacts, and the token
never goes into a page (the sign-in form posts it and gets a cookie back).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from tgmux.admin.auth import CSRF_FIELD, ConsoleAuth, Session, who
from tgmux.admin.service import AdminService
from tgmux.redact import redact
from tgmux.store import StoreUnavailable

__all__ = ["PAGE_HEADERS", "add_console_pages", "chart_bars", "usage_lines"]

TEMPLATES = Path(__file__).parent / "templates"

log = logging.getLogger("tgmux.console")

#: Sent with every page: no script runs, nothing loads from elsewhere, no page frames it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

#: One notice per session waits for the next page; bounded (old ones are dropped).
MAX_NOTICES = 1000


def chart_bars(per_minute: list[int], *, width: int = 600, height: int = 80) -> dict[str, Any]:
    """The messages-per-minute chart as SVG bars (an inline ``<svg>``: no script, no image)."""
    counts = list(per_minute)[-60:] or [0]
    top = max(max(counts), 1)
    step = width / len(counts)
    bars = []
    for index, count in enumerate(counts):
        bar_height = round(count / top * (height - 2), 1) if count else 0
        bars.append({"x": round(index * step, 1), "y": round(height - bar_height, 1),
                     "width": round(max(step - 1, 1), 1), "height": bar_height,
                     "count": count, "minutes_ago": len(counts) - index})
    return {"width": width, "height": height, "bars": bars, "top": top,
            "total": sum(counts)}


def _when(value: float | None) -> str:
    if value is None:
        return "—"
    ago = max(0, int(time.time() - value))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    if ago < 120:
        return f"{stamp} ({ago} s ago)"
    if ago < 7200:
        return f"{stamp} ({ago // 60} min ago)"
    return f"{stamp} ({ago // 3600} h ago)"


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A config as (key path, value) rows, leaves only; paths as the service's ``lines``
    spell them (``routes[0].backend``)."""
    if isinstance(data, dict) and data:
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(data, list) and data:
        rows = []
        for index, value in enumerate(data):
            rows += _flatten(value, f"{prefix}[{index}]")
        return rows
    return [(prefix, data)]


#: The last segment of a key path: ``.name`` or ``[index]``.
_LAST_SEGMENT = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def _where(lines: dict[str, str], path: str) -> str:
    """Where ``path``'s value came from: its ``file:line``; ``in file:line`` when only a parent
    was written (a default inside it, or a value written in short form); ``default``."""
    if found := lines.get(path):
        return found
    while (shorter := _LAST_SEGMENT.sub("", path)) != path and shorter:
        if found := lines.get(shorter):
            return f"in {found}"
        path = shorter
    return "default"


_COUNTER_LABELS = {"per_user": "per user", "per_chat": "in this chat",
                   "daily": "daily messages"}
_COST_LIMITS = {"today": "daily_cost_limit", "month": "monthly_cost_limit"}
_SHOWN_WITH_OTHERS = {"currency", "exempt", *_COST_LIMITS.values()}


def usage_lines(usage: dict[str, Any]) -> list[str]:
    """The service's usage against limits (a user's per account, a chat's) as short lines."""
    currency = usage.get("currency") or ""
    lines = []
    for key, value in usage.items():
        if key in _SHOWN_WITH_OTHERS:
            continue
        if isinstance(value, dict) and {"used", "messages"} <= value.keys():
            per = value.get("per_seconds")
            window = f" per {per:g} s" if isinstance(per, int | float) else " today"
            lines.append(f"{_COUNTER_LABELS.get(key, key)}: {value['used']} of "
                         f"{value['messages']} messages{window}")
        elif isinstance(value, dict) and {"messages", "cost"} <= value.keys():
            text = f"{key}: {value['messages']} message{'s' if value['messages'] != 1 else ''}"
            if value["cost"]:
                text += f", {value['cost']:g} {currency}".rstrip()
            limit = usage.get(_COST_LIMITS.get(key, ""))
            if limit is not None:
                text += f" (limit {limit:g} {currency})".replace(" )", ")")
            lines.append(text)
        elif isinstance(value, dict):
            lines += [f"{key}: {line}" for line in usage_lines(value)]
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    if usage.get("exempt"):
        lines.append("an admin: exempt from the limits")
    return lines


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value escaped: chat titles and usernames come from strangers
        auto_reload=False,  # read once: no file check on a page's way
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.filters["usage"] = usage_lines
    env.filters["seconds"] = lambda value: "—" if value is None else f"{value * 1000:.0f} ms"
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)  # compiled at startup: a page never reads a file
    return env


class ConsolePages:
    def __init__(self, service: AdminService, auth: ConsoleAuth) -> None:
        self.service = service
        self.auth = auth
        self.templates = _environment()
        self._notices: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._css = (TEMPLATES / "console.css").read_text()  # at startup, not on the loop's way

    # -- plumbing

    def _page(self, name: str, *, status: int = 200, **context: Any) -> web.Response:
        body = self.templates.get_template(name).render(csrf_field=CSRF_FIELD, **context)
        return web.Response(text=body, status=status, content_type="text/html",
                            charset="utf-8", headers=PAGE_HEADERS)

    def _session(self, request: web.Request) -> Session:
        session = self.auth.session_of(request)
        if session is None:
            target = request.path_qs if request.method == "GET" else "/console"
            raise web.HTTPSeeOther(f"/console/sign-in?next={quote(target)}",
                                   headers=PAGE_HEADERS)
        return session

    async def _form(self, request: web.Request) -> tuple[Session, str, Any]:
        """A state-changing POST: signed in, and the form carries the session's CSRF token
        (the auth checks both); the session, who acts (for the audit log) and the form."""
        session = self._session(request)
        refused = await self.auth.identify(request)
        if refused is not None:
            raise _Refused(self._page(
                "refused.html", status=refused.status, session=session, notice=None,
                path=request.path, what=(
                    "The form's CSRF token is missing or wrong: reload the page and try again."
                    if refused.status == 403 else "Refused: sign in again.")))
        return session, who(request), await request.post()

    def _notice(self, session: Session, kind: str, payload: Any) -> None:
        self._notices[session.key] = (kind, payload)
        self._notices.move_to_end(session.key)
        while len(self._notices) > MAX_NOTICES:
            self._notices.popitem(last=False)

    async def _render(self, request: web.Request, session: Session, name: str,
                      **context: Any) -> web.Response:
        return self._page(name, session=session, notice=self._notices.pop(session.key, None),
                          path=request.path, **context)

    def problem(self, request: web.Request, status: int, what: str) -> web.Response:
        session = self.auth.session_of(request)
        return self._page("refused.html", status=status, session=session, notice=None,
                          path=request.path, what=what)

    # -- signing in (auth.py's POST /console/sign-in and /console/sign-out)

    async def css(self, request: web.Request) -> web.Response:
        return web.Response(text=self._css, content_type="text/css",
                            headers={**PAGE_HEADERS, "Cache-Control": "max-age=300"})

    def sign_in_form(self, request: web.Request, error: str | None = None,
                     status: int = 200) -> web.Response:
        """The sign-in page; also what the auth answers a refused sign-in with. ``next``
        rides in the form's URL, so that a refused attempt keeps it."""
        return self._page("sign-in.html", status=status, error=error,
                          next=_local(request.query.get("next")), session=None, notice=None,
                          path="/console/sign-in")

    async def sign_in_page(self, request: web.Request) -> web.Response:
        if self.auth.session_of(request) is not None:
            raise web.HTTPSeeOther(_local(request.query.get("next")), headers=PAGE_HEADERS)
        return self.sign_in_form(request)

    # -- pages

    async def overview(self, request: web.Request) -> web.Response:
        session = self._session(request)
        return await self._render(
            request, session, "overview.html", accounts=await self.service.accounts(),
            backends=await self.service.backends(),
            chart=chart_bars(await self.service.messages_per_minute()))

    async def chats(self, request: web.Request) -> web.Response:
        session = self._session(request)
        query = request.query.get("q", "")[:200]
        return await self._render(request, session, "chats.html", query=query,
                                  chats=await self.service.chats(query))

    async def chat(self, request: web.Request) -> web.Response:
        session = self._session(request)
        account, chat_id = _chat_key(request)
        detail = await self.service.chat(account, chat_id)
        if detail is None:
            return self._page("missing.html", status=404, session=session, notice=None,
                              path=request.path, what=f"no chat {chat_id} on account {account}")
        backends = [backend.name for backend in await self.service.backends()]
        return await self._render(request, session, "chat.html", detail=detail, chat=detail.chat,
                                  backends=backends, show_messages=self.service.show_messages)

    async def set_backend(self, request: web.Request) -> web.StreamResponse:
        session, acting, form = await self._form(request)
        account, chat_id = _chat_key(request)
        backend = form.get("backend") or None
        try:
            view = await self.service.set_backend(account, chat_id, backend, who=acting)
        except LookupError as exc:
            raise web.HTTPNotFound(text=str(exc), headers=PAGE_HEADERS) from None
        except ValueError as exc:
            self._notice(session, "error", str(exc))
        else:
            done = f"backend set to {backend}" if backend else "backend choice cleared"
            self._notice(session, "done", f"chat {chat_id}: {done}; it is now answered by "
                         f"{view.backend or 'nothing'}")
        raise web.HTTPSeeOther(_chat_path(account, chat_id), headers=PAGE_HEADERS)

    async def reset(self, request: web.Request) -> web.StreamResponse:
        session, acting, _ = await self._form(request)
        account, chat_id = _chat_key(request)
        try:
            forgotten = await self.service.reset(account, chat_id, who=acting)
        except LookupError as exc:
            raise web.HTTPNotFound(text=str(exc), headers=PAGE_HEADERS) from None
        self._notice(session, "done", f"chat {chat_id}: conversation reset "
                     f"({forgotten} exchange{'s' if forgotten != 1 else ''} forgotten)")
        raise web.HTTPSeeOther(_chat_path(account, chat_id), headers=PAGE_HEADERS)

    async def users(self, request: web.Request) -> web.Response:
        session = self._session(request)
        query = request.query.get("q", "")[:200]
        return await self._render(request, session, "users.html", query=query,
                                  users=await self.service.users(query))

    async def block(self, request: web.Request) -> web.StreamResponse:
        return await self._block(request, block=True)

    async def unblock(self, request: web.Request) -> web.StreamResponse:
        return await self._block(request, block=False)

    async def _block(self, request: web.Request, *, block: bool) -> web.StreamResponse:
        session, acting, _ = await self._form(request)
        user_id = _int(request.match_info["user_id"], "user id")
        action = self.service.block if block else self.service.unblock
        try:
            view = await action(user_id, who=acting)
        except ValueError as exc:
            self._notice(session, "error", str(exc))
        else:
            self._notice(session, "done", f"user {user_id} "
                         f"{'blocked' if block else 'unblocked'}: now {view.verdict}")
        raise web.HTTPSeeOther("/console/users", headers=PAGE_HEADERS)

    async def config(self, request: web.Request) -> web.Response:
        session = self._session(request)
        view = await self.service.config()
        rows = [(path, value, _where(view.lines, path)) for path, value in _flatten(view.data)]
        return await self._render(request, session, "config.html", config=view, rows=rows)

    async def reload(self, request: web.Request) -> web.StreamResponse:
        session, acting, _ = await self._form(request)
        report = await self.service.reload(who=acting)
        self._notice(session, "reload", report)
        raise web.HTTPSeeOther("/console/config", headers=PAGE_HEADERS)


def _local(target: object) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if isinstance(target, str) and target.startswith("/console") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return "/console"


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _pages_errors(pages: ConsolePages) -> Any:
    """A page that cannot be made is one clear page (never a traceback): a refused form, a
    store that does not answer (503: nothing was read or changed), a bug (500, logged)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/console"):
            return await handler(request)
        try:
            return await handler(request)
        except _Refused as refused:
            return refused.response
        except StoreUnavailable:
            page = pages.problem(request, 503, "The store is not answering: nothing was read "
                                 "or changed. Try again in a moment.")
            page.headers["Retry-After"] = "5"
            return page
        except web.HTTPException:
            raise
        except Exception as exc:
            log.exception("console: %s %s failed", request.method, request.path)
            return pages.problem(request, 500, redact(f"internal error: {type(exc).__name__}"))

    return middleware


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise web.HTTPNotFound(text=f"not a {what}: {value[:40]!r}",
                               headers=PAGE_HEADERS) from None


def _chat_key(request: web.Request) -> tuple[str, int]:
    return request.match_info["account"], _int(request.match_info["chat_id"], "chat id")


def _chat_path(account: str, chat_id: int) -> str:
    return f"/console/chats/{quote(account, safe='')}/{chat_id}"


def add_console_pages(app: web.Application, service: AdminService, auth: ConsoleAuth) -> None:
    """Mount the pages under ``/console/`` on ``app`` (the ops server's, where ``auth`` has
    mounted POST /console/sign-in and /console/sign-out); the auth's sign-in form is theirs."""
    pages = ConsolePages(service, auth)
    auth.sign_in_page = pages.sign_in_form
    app.middlewares.append(_pages_errors(pages))
    for path, handler in (("/console", pages.overview), ("/console/", pages.overview),
                          ("/console/console.css", pages.css),
                          ("/console/sign-in", pages.sign_in_page),
                          ("/console/chats", pages.chats),
                          ("/console/chats/{account}/{chat_id}", pages.chat),
                          ("/console/users", pages.users),
                          ("/console/config", pages.config)):
        app.router.add_get(path, handler)
    for path, handler in (("/console/chats/{account}/{chat_id}/backend", pages.set_backend),
                          ("/console/chats/{account}/{chat_id}/reset", pages.reset),
                          ("/console/users/{user_id}/block", pages.block),
                          ("/console/users/{user_id}/unblock", pages.unblock),
                          ("/console/config/reload", pages.reload)):
        app.router.add_post(path, handler)
