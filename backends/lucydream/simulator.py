"""A faithful LucyDream simulator: a real HTTP server on 127.0.0.1 implementing the five
``/wp-json/telegram/v1/`` endpoints of the provider document, quirks included.

* ``X-API-Key`` on every request; a missing or unknown key answers 403
  ``{"code": "rest_forbidden", "message": "Invalid API key", "data": {"status": 403}}``.
* Each API key is one account owning its sub-users. Usernames are unique across the whole site
  (WordPress usernames are), so a taken username answers 400 ``username_exists`` even when
  another account owns it.
* History is kept per sub-user and per model, entries ``role``/``message``/``clean_message``/
  ``timestamp`` (``message`` carries HTML markup, ``clean_message`` is the plain text).
* POST bodies are read as JSON only when sent as ``application/json`` (as WordPress does);
  a JSON text sent as ``text/plain`` counts as no parameters (400).
* ``get-history`` reads ``chatbot_model``/``user_id`` from the query string (and, as WordPress
  does, from a JSON body too).
* A free-message allowance per account (``free_messages``), then paid ``credits``; when both
  are used up, send-message and request-image answer ``credits_status`` (default 402) with
  ``{"code": "insufficient_credits", "message": "Insufficient credits..."}`` — a tgmux
  assumption: the document only says insufficient credits is an error to handle.
* Images are served by the simulator itself (a small PNG) under ``/wp-content/uploads/``.
* :meth:`LucyDreamSimulator.answer_huge` makes the next send-message(s) answer a ``reply`` of
  that many bytes (a fault: a runaway model, a broken proxy), streamed in pieces with its
  ``Content-Length``, so a client can stop reading early.

Run it alone: ``python -m tgmux.backends.lucydream.simulator --port 8080 --api-key demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import itertools
import json
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tgmux.simulator import SimulatorServer, json_error, run_cli

PREFIX = "/wp-json/telegram/v1"
DEFAULT_MODELS = {"2195981": "Lucy Dream"}
IMAGE_REPLY = "I've created this image just for you!"
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@ -]{1,60}$")

ReplyFn = Callable[[str, str, int], str]


def default_reply(chatbot_name: str, message: str, turn: int) -> str:
    """The simulated chatbot's answer: deterministic, so tests can assert it."""
    return f"You said: {message}"


@dataclass
class SimSubUser:
    user_id: str
    username: str
    email: str
    owner: str  # the API key of the owning account


@dataclass
class Account:
    api_key: str
    used: int = 0  # messages and images charged so far
    credits: int = 0


@dataclass
class SimHistoryEntry:
    role: str
    message: str
    clean_message: str
    timestamp: str

    def as_json(self) -> dict[str, str]:
        return {
            "role": self.role,
            "message": self.message,
            "timestamp": self.timestamp,
            "clean_message": self.clean_message,
        }


def _png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (219, 112, 147)) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


PNG = _png()


@dataclass
class _State:
    sub_users: dict[str, SimSubUser] = field(default_factory=dict)
    histories: dict[tuple[str, str], list[SimHistoryEntry]] = field(default_factory=dict)


class LucyDreamSimulator(SimulatorServer):
    """``async with LucyDreamSimulator(api_keys={"k"}) as sim: ... sim.base_url``.

    State for tests: :attr:`sub_users` (user_id → :class:`SimSubUser`), :meth:`history`,
    :attr:`accounts` (usage per API key), :meth:`delete_sub_user`, :meth:`add_sub_user`.
    """

    name = "lucydream"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = ("test-key",),
        free_messages: int | None = 20,
        credits: int = 0,
        credits_status: int = 402,
        models: dict[str, str] | None = None,
        image_base_url: str | None = None,
        reply: ReplyFn = default_reply,
        first_user_id: int = 101,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(latency=latency, host=host, port=port)
        self.accounts: dict[str, Account] = {
            key: Account(api_key=key, credits=credits) for key in api_keys
        }
        self.free_messages = free_messages
        self.credits_status = credits_status
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self._image_base_url = image_base_url
        self.reply_fn = reply
        self._ids = itertools.count(first_user_id)
        self._state = _State()
        self._huge: list[int] = []  # sizes of the next huge replies
        #: bytes of huge replies written so far (how much a client read before it stopped)
        self.huge_bytes_sent = 0

    # -- state for tests ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self.root_url}{PREFIX}/"

    @property
    def image_base_url(self) -> str:
        return self._image_base_url or f"{self.root_url}/wp-content/uploads/lucydream/"

    @property
    def sub_users(self) -> dict[str, SimSubUser]:
        return self._state.sub_users

    def sub_user_by_name(self, username: str) -> SimSubUser | None:
        for user in self._state.sub_users.values():
            if user.username.casefold() == username.casefold():
                return user
        return None

    def history(self, user_id: str, model: str = "2195981") -> list[SimHistoryEntry]:
        return self._state.histories.get((user_id, model), [])

    def add_sub_user(self, username: str, api_key: str | None = None) -> SimSubUser:
        """Create a sub-user directly (as if another client had made it)."""
        owner = api_key if api_key is not None else next(iter(self.accounts))
        user_id = f"user_{next(self._ids)}"
        user = SimSubUser(user_id, username, f"sub_{uuid.uuid4().hex[:12]}@telegram.proxy",
                          owner)
        self._state.sub_users[user_id] = user
        return user

    def delete_sub_user(self, user_id: str) -> None:
        """Remove a sub-user and its history (later calls with its id answer 404)."""
        self._state.sub_users.pop(user_id, None)
        for key in [k for k in self._state.histories if k[0] == user_id]:
            del self._state.histories[key]

    def add_history(self, user_id: str, model: str, role: str, text: str) -> None:
        self._append(user_id, model, role, text)

    def answer_huge(self, size: int, *, times: int = 1) -> None:
        """The next ``times`` send-messages answer ``{"reply": "…"}`` with a reply of ``size``
        bytes of text (words of ASCII), not kept in the history."""
        self._huge += [size] * times

    # -- routes ------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{PREFIX}/send-message", self._send_message)
        app.router.add_post(f"{PREFIX}/request-image", self._request_image)
        app.router.add_get(f"{PREFIX}/get-history", self._get_history)
        app.router.add_post(f"{PREFIX}/create-sub-user", self._create_sub_user)
        app.router.add_get(f"{PREFIX}/sub-users", self._list_sub_users)
        app.router.add_get("/wp-content/uploads/lucydream/{name}", self._image)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return json_error(status, {"code": code, "message": message, "data": {"status": status}})

    def _account(self, request: web.Request) -> Account | None:
        return self.accounts.get(request.headers.get("X-API-Key", ""))

    @staticmethod
    def _forbidden() -> web.Response:
        return LucyDreamSimulator._error(403, "rest_forbidden", "Invalid API key")

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any] | None:
        """The parameters of a body. As in WordPress, a body is only read as JSON when it is
        sent as ``application/json``; otherwise form fields count, and a JSON text is ignored."""
        raw = await request.read()
        if not raw:
            return {}
        if request.content_type != "application/json":
            if request.content_type == "application/x-www-form-urlencoded":
                return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _params(
        self, data: dict[str, Any], names: tuple[str, ...]
    ) -> tuple[dict[str, str], web.Response | None]:
        missing = [n for n in names if not isinstance(data.get(n), str | int) or data.get(n) == ""]
        if missing:
            return {}, self._error(
                400, "rest_missing_callback_param", f"Missing parameter(s): {', '.join(missing)}"
            )
        return {n: str(data[n]) for n in names}, None

    def _owned(self, account: Account, user_id: str) -> SimSubUser | None:
        user = self._state.sub_users.get(user_id)
        return user if user is not None and user.owner == account.api_key else None

    def _check_target(
        self, account: Account, params: dict[str, str]
    ) -> tuple[SimSubUser | None, web.Response | None]:
        user = self._owned(account, params["user_id"])
        if user is None:
            return None, self._error(404, "user_not_found", "User not found")
        if params["chatbot_model"] not in self.models:
            return None, self._error(404, "model_not_found", "Chatbot model not found")
        return user, None

    def _charge(self, account: Account) -> web.Response | None:
        """Count one message or image; refuse when free messages and credits are used up."""
        if self.free_messages is None or account.used < self.free_messages:
            account.used += 1
            return None
        if account.credits > 0:
            account.credits -= 1
            account.used += 1
            return None
        return self._error(
            self.credits_status,
            "insufficient_credits",
            "Insufficient credits. Please top up your LucyDream account.",
        )

    def _append(self, user_id: str, model: str, role: str, text: str) -> None:
        message = text if role == "user" else f"<p>{html.escape(text)}</p>"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        self._state.histories.setdefault((user_id, model), []).append(
            SimHistoryEntry(role=role, message=message, clean_message=text.strip(),
                            timestamp=stamp)
        )

    # -- handlers ----------------------------------------------------------------------------

    async def _charged_post(self, request: web.Request,
                            fields: tuple[str, ...]) -> tuple[dict[str, str], web.Response | None]:
        """What send-message and request-image check first, in WordPress's order: the key, the
        JSON body, the parameters, the sub-user and model, then the credits."""
        account = self._account(request)
        if account is None:
            return {}, self._forbidden()
        data = await self._json_body(request)
        if data is None:
            return {}, self._error(400, "rest_invalid_json", "Invalid JSON body")
        params, problem = self._params(data, fields)
        if problem is None:
            _, problem = self._check_target(account, params)
        if problem is None:
            problem = self._charge(account)
        return params, problem

    async def _huge_reply(self, request: web.Request, size: int) -> web.StreamResponse:
        head, tail = b'{"reply": "', b'"}'
        piece = b"lorem ipsum dolor sit amet " * 2400  # ~64 KiB
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(head) + size + len(tail)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client stopped reading: fine
            await response.write(head)
            left = size
            while left > 0:
                chunk = piece[:left]
                await response.write(chunk)
                self.huge_bytes_sent += len(chunk)
                left -= len(chunk)
                await asyncio.sleep(0)
            await response.write(tail)
            await response.write_eof()
        return response

    async def _send_message(self, request: web.Request) -> web.StreamResponse:
        params, problem = await self._charged_post(request, ("message", "chatbot_model",
                                                              "user_id"))
        if problem is not None:
            return problem
        if self._huge:
            return await self._huge_reply(request, self._huge.pop(0))
        user_id, model = params["user_id"], params["chatbot_model"]
        turn = sum(1 for e in self.history(user_id, model) if e.role == "user") + 1
        answer = self.reply_fn(self.models[model], params["message"], turn)
        self._append(user_id, model, "user", params["message"])
        self._append(user_id, model, "assistant", answer)
        return web.json_response({"reply": answer})

    async def _request_image(self, request: web.Request) -> web.Response:
        params, problem = await self._charged_post(request, ("chatbot_model", "user_id"))
        if problem is not None:
            return problem
        url = f"{self.image_base_url.rstrip('/')}/{uuid.uuid4().hex}.png"
        self._append(params["user_id"], params["chatbot_model"], "assistant", IMAGE_REPLY)
        return web.json_response({"image_url": url, "reply": IMAGE_REPLY})

    async def _get_history(self, request: web.Request) -> web.Response:
        account = self._account(request)
        if account is None:
            return self._forbidden()
        # WordPress merges query and JSON body parameters; the document's example uses the query.
        data: dict[str, Any] = dict(await self._json_body(request) or {})
        data.update(request.query)
        params, problem = self._params(data, ("chatbot_model", "user_id"))
        if problem is not None:
            return problem
        _, problem = self._check_target(account, params)
        if problem is not None:
            return problem
        entries = self.history(params["user_id"], params["chatbot_model"])
        return web.json_response({
            "success": True,
            "chatbot_name": self.models[params["chatbot_model"]],
            "count": len(entries),
            "history": [e.as_json() for e in entries],
        })

    async def _create_sub_user(self, request: web.Request) -> web.Response:
        account = self._account(request)
        if account is None:
            return self._forbidden()
        data = await self._json_body(request)
        if data is None:
            return self._error(400, "rest_invalid_json", "Invalid JSON body")
        username = data.get("username")
        if not isinstance(username, str) or not username.strip():
            return self._error(400, "rest_missing_callback_param", "Missing parameter(s): username")
        if not USERNAME_RE.match(username):
            return self._error(400, "invalid_username", "Invalid username")
        if self.sub_user_by_name(username) is not None:
            return self._error(400, "username_exists", "Username already exists")
        email = data.get("email")
        if email is not None:
            if not isinstance(email, str) or "@" not in email:
                return self._error(400, "invalid_email", "Invalid email address")
            if any(u.email.casefold() == email.casefold() for u in self.sub_users.values()):
                return self._error(400, "email_exists", "Email already exists")
        user = self.add_sub_user(username, account.api_key)
        if email is not None:
            user.email = email
        return web.json_response({
            "success": True, "user_id": user.user_id, "username": user.username,
            "email": user.email,
        })

    async def _list_sub_users(self, request: web.Request) -> web.Response:
        account = self._account(request)
        if account is None:
            return self._forbidden()
        return web.json_response([
            {"user_id": u.user_id, "username": u.username, "email": u.email}
            for u in self.sub_users.values()
            if u.owner == account.api_key
        ])

    async def _image(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")


def _factory(args: argparse.Namespace) -> LucyDreamSimulator:
    return LucyDreamSimulator(
        api_keys=args.api_key or ["demo-key"],
        free_messages=None if args.free_messages < 0 else args.free_messages,
        credits=args.credits,
        latency=args.latency,
        host=args.host,
        port=args.port,
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", action="append",
                        help="an accepted API key (repeatable; default demo-key)")
    parser.add_argument("--free-messages", type=int, default=20,
                        help="free messages per account (-1: unlimited; default 20)")
    parser.add_argument("--credits", type=int, default=0,
                        help="paid messages per account after the free ones (default 0)")


if __name__ == "__main__":
    run_cli(_factory, "LucyDream API simulator", _arguments)
