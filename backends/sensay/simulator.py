"""A Sensay simulator: the replica Telegram completion endpoint as a real HTTP server on
127.0.0.1, following the provider document (quirks included).

``POST /v1/replicas/{replica_uuid}/chat/completions/telegram``:

* auth: ``X-ORGANIZATION-SECRET`` must be the organization's secret and ``X-USER-ID`` present
  (and, when ``users`` is given, one of them): else 401;
* ``Content-Type`` must be ``application/json``: else 415;
* the body is validated as documented: ``content`` a string of 1..10000 characters (UTF-16
  units, as JavaScript counts), ``skip_chat_history`` a boolean, ``telegram_data`` an object
  with ``chat_type`` (private|group|supergroup|channel), ``chat_id`` and ``message_id``
  (numbers), optional ``user_id``/``message_thread_id`` (numbers) and ``username`` (string),
  and no other key (null is not a number or a string either): else 400;
* an unknown replica: 404 (without ``fingerprint``, as documented);
* every error body is the documented one, ``"success": true`` included.

Each (replica, user) has a chat history (:meth:`SensaySimulator.history`). The reply is
deterministic so tests can assert it: ``[NAME] CONTENT (history: N)`` where N is the number
of history messages the replica saw (0 with ``skip_chat_history``). A turn without
``skip_chat_history`` appends the user's message and the reply when the reply completed; a
skipped turn is neither used nor stored.

``Accept: text/event-stream`` streams the reply in the replica's flavor (``data``: v4 data
stream, ``ui``: v5 UI message stream over SSE, ``text``: plain), in parts of ``chunk_size``
characters, ``chunk_delay`` seconds apart; ``write_size`` cuts the bytes on the wire into
pieces of that many bytes (splitting lines and UTF-8 characters), ``crlf`` ends lines with
CRLF, ``headers=False`` leaves out the ``x-vercel-ai-*`` header (so clients must detect the
flavor), ``finish=False`` leaves out the finish part. ``split_characters`` cuts the parts inside
characters, as a JavaScript server may: in the data and UI streams in UTF-16 code units, so an
emoji's two halves can go in two parts (``0:"\ud83d"`` then ``0:"\ude00"``), in the text
stream in UTF-8 bytes (``chunk_size`` bytes a part). ``answer_as`` makes a replica ignore
``Accept``; ``ruby_hash`` writes JSON replies in the Ruby-hash spelling of the documented
example. :meth:`SensaySimulator.fail_stream`
injects an error part (or a dropped connection) mid-stream; :meth:`SensaySimulator.fail`
answers the next request with a documented error body. Anything else asks for JSON.

Users, as Sensay's own Telegram bot meets them:

* ``POST /v1/users`` (secret only) creates a user with ``linkedAccounts`` (``accountID``,
  ``accountType`` discord|telegram|embed; optional ``id``, ``name``, ``email``): 409 when one of
  its linked accounts (or its id) exists already;
* ``X-USER-ID-TYPE: telegram`` (or discord, embed) says ``X-USER-ID`` is a linked account: it
  must belong to a created user, else 401 (every endpoint); ``GET /v1/users/me`` answers that
  user (401 for an unknown one). Without the header ``X-USER-ID`` is taken as is (as above).

Chat history for Telegram: ``POST /v1/replicas/{uuid}/chat/history/telegram`` (body
``{content, telegram_data}``, the same rules as a completion's) records a message the replica
did not answer; a later completion in that chat sees the chat's recorded messages, then the
user's own history (so N counts both). ``GET`` on the same path lists the user's Telegram
history (``{"success": true, "type": "telegram", "items": [{id, role, content, created_at,
source, is_private, sources}]}``), oldest first.

``X-API-Version`` is recorded with each completion (:attr:`Turn.api_version`); with one,
``telegram_data.chat_name`` (a string) and ``imageURL`` (an http(s) URL, the documented
pattern) are accepted; without, they are additional properties (400), as in the seed contract.
An ``imageURL`` on this machine (127.0.0.1, localhost) is fetched as Sensay would, while the
completion is answered: :attr:`Turn.image_status` and :attr:`Turn.image_bytes` say what it got
(other hosts are not fetched: tests reach only 127.0.0.1).

Run it alone: ``python -m tgmux.backends.sensay.simulator --port 8093``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from tgmux.simulator import Fault, SimulatorServer, json_error, run_cli

DEMO_SECRET = "sensay-demo-secret"
DEMO_REPLICA = "0f6a5b8e-2c1d-4e7f-9a3b-5d6c7e8f9a01"

STREAM_FLAVORS = ("data", "ui", "text")
CHAT_TYPES = ("private", "group", "supergroup", "channel")
TELEGRAM_KEYS = {
    "chat_type": str,
    "chat_id": (int, float),
    "user_id": (int, float),
    "username": str,
    "message_id": (int, float),
    "message_thread_id": (int, float),
}
TELEGRAM_REQUIRED = ("chat_type", "chat_id", "message_id")
ACCOUNT_TYPES = ("discord", "telegram", "embed")
#: imageURL's documented pattern
IMAGE_URL = re.compile(r"https?:\/\/[-a-zA-Z0-9@:%._+~#=]{1,256}\.[a-zA-Z0-9()]+\b"
                       r"([-a-zA-Z0-9()@:%_+.~#?&\/=]*)")

#: ``reply(content, history) -> text``; ``history`` is the list of messages the replica saw.
ReplyFn = Callable[[str, list[dict[str, str]]], str]


@dataclass
class Replica:
    """A simulated replica and how it streams."""

    uuid: str
    name: str = "replica"
    flavor: str = "data"
    reply: ReplyFn | None = None
    headers: bool = True  # send the x-vercel-ai-* header of the flavor
    content_type: str | None = None  # override the stream's Content-Type
    finish: bool = True  # end with a finish part ([DONE] too for ui)
    crlf: bool = False
    #: "json" or "stream": answer that way whatever the Accept header asked for
    answer_as: str | None = None
    #: write JSON replies as the documented Ruby hash: {"content"=>"…", "success"=>true}
    ruby_hash: bool = False

    def __post_init__(self) -> None:
        if self.flavor not in STREAM_FLAVORS:
            raise ValueError(f"flavor must be one of {STREAM_FLAVORS}")

    def answer(self, content: str, history: list[dict[str, str]]) -> str:
        if self.reply is not None:
            return self.reply(content, history)
        return f"[{self.name}] {content} (history: {len(history)})"


@dataclass
class StreamFault:
    """Break the next stream after ``after`` text parts: an error part with ``message`` (or,
    with ``drop``, a closed connection)."""

    after: int = 1
    message: str = "An error occurred."
    drop: bool = False
    replica: str | None = None
    times: int = 1


def usage_tokens(prompt: str, reply: str) -> dict[str, int]:
    """The usage a data stream reports: 4 characters a token, rounded up (deterministic)."""
    return {"promptTokens": math.ceil(len(prompt) / 4),
            "completionTokens": math.ceil(len(reply) / 4)}


@dataclass
class Turn:
    """One completion the simulator answered (for tests)."""

    replica: str
    user: str
    content: str
    skip_chat_history: bool
    history_seen: int
    reply: str
    streamed: bool
    flavor: str | None = None
    stored: bool = False
    telegram_data: dict[str, Any] = field(default_factory=dict)
    #: loop times at which the first and the last text part were written (streams only)
    first_token_at: float | None = None
    last_token_at: float | None = None
    api_version: str | None = None
    user_id_type: str | None = None
    image_url: str | None = None
    #: what fetching a local ``imageURL`` gave: the HTTP status and body (None: not fetched)
    image_status: int | None = None
    image_bytes: bytes | None = None


#: imageURL hosts the simulator fetches (it never leaves this machine)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: bytes of a fetched image kept at most
IMAGE_LIMIT = 16 * 1024 * 1024


async def fetch_local_image(url: str) -> tuple[int | None, bytes | None]:
    """(status, body) of a local URL; (None, None) for another host or when nothing answers."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None, None
    if host not in LOCAL_HOSTS:
        return None, None
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url) as response:
            return response.status, await response.content.read(IMAGE_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        return None, None


@dataclass
class Recorded:
    """One message recorded through ``POST …/chat/history/telegram``."""

    replica: str
    user: str
    content: str
    telegram_data: dict[str, Any]


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class SensaySimulator(SimulatorServer):
    name = "sensay"

    def __init__(
        self,
        *,
        organization_secret: str = DEMO_SECRET,
        replicas: list[Replica] | None = None,
        users: set[str] | None = None,
        chunk_size: int = 4,
        chunk_delay: float = 0.0,
        first_token_delay: float = 0.0,
        write_size: int | None = None,
        split_characters: bool = False,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(latency=latency, host=host, port=port)
        self.organization_secret = organization_secret
        self.replicas: dict[str, Replica] = {}
        for replica in replicas if replicas is not None else [Replica(DEMO_REPLICA, "Demo")]:
            self.add_replica(replica)
        self.users = users
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        self.first_token_delay = first_token_delay
        self.write_size = write_size
        self.split_characters = split_characters
        self._histories: dict[tuple[str, str], list[dict[str, str]]] = {}
        #: every Telegram history message, for GET …/chat/history/telegram
        self._log: list[dict[str, Any]] = []
        #: created users by id, and their linked accounts: (type, account id) -> user id
        self.created_users: dict[str, dict[str, Any]] = {}
        self._linked: dict[tuple[str, str], str] = {}
        self.recorded: list[Recorded] = []
        self.turns: list[Turn] = []
        self.stream_faults: list[StreamFault] = []
        self._ids = itertools.count(1)

    # -- setup and inspection --------------------------------------------------------------------

    def add_replica(self, replica: Replica | str, **kwargs: Any) -> Replica:
        if isinstance(replica, str):
            replica = Replica(replica, **kwargs)
        self.replicas[replica.uuid] = replica
        return replica

    def history(self, replica_uuid: str, user: str) -> list[dict[str, str]]:
        """The stored chat history of (replica, user): ``{"role", "content"}`` dicts."""
        return list(self._histories.get((replica_uuid, user), []))

    def user_for(self, account_type: str, account_id: str) -> str | None:
        """The id of the created user linked to that account, or None."""
        return self._linked.get((account_type, account_id))

    def add_user(self, user_id: str, linked_accounts: list[dict[str, str]]) -> None:
        """A user that exists before the test (as if created earlier)."""
        self.created_users[user_id] = {"id": user_id, "linkedAccounts": linked_accounts}
        for account in linked_accounts:
            self._linked[(account["accountType"], account["accountID"])] = user_id

    def _context(self, replica: str, chat_id: Any) -> list[dict[str, str]]:
        return [{"role": "user", "content": r.content} for r in self.recorded
                if r.replica == replica and r.telegram_data.get("chat_id") == chat_id]

    def _logged(self, replica: str, user: str, role: str, content: str,
                data: dict[str, Any]) -> None:
        self._log.append({
            "replica": replica, "user": user, "id": len(self._log) + 1, "role": role,
            "content": content, "source": "telegram", "is_private": False, "sources": [],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "chat_id": data.get("chat_id"),
        })

    def fail(self, status: int, error: str = "string", *, inner_exception: bool = False,
             times: int = 1) -> Fault:
        """Answer the next request(s) with ``status`` and the documented error body."""
        body = self.error_body(status, error)
        if inner_exception:
            body["inner_exception"] = {
                "name": "Server overheated",
                "cause": "Request too complicated",
                "stack": "Error: Server overheated due to an unexpected situation\n    at eval",
                "message": "The server overheated due to an unexpected situation",
            }
        return self.inject(status=status, body=body, path="/chat/completions/telegram",
                           times=times)

    def fail_stream(self, after: int = 1, message: str = "An error occurred.", *,
                    drop: bool = False, replica: str | None = None, times: int = 1) -> StreamFault:
        fault = StreamFault(after=after, message=message, drop=drop, replica=replica, times=times)
        self.stream_faults.append(fault)
        return fault

    def error_body(self, status: int, error: str) -> dict[str, Any]:
        # As documented: "success": true even on errors; 404 has no fingerprint.
        body: dict[str, Any] = {"success": True, "error": error}
        if status != 404:
            body["fingerprint"] = secrets.token_hex(16)
        body["request_id"] = f"sim1::loc1:loc1::{next(self._ids):05d}-{secrets.token_hex(6)}"
        return body

    def _error(self, status: int, error: str) -> web.Response:
        return json_error(status, self.error_body(status, error))

    def _take_stream_fault(self, replica: str) -> StreamFault | None:
        for fault in self.stream_faults:
            if fault.replica is None or fault.replica == replica:
                fault.times -= 1
                if fault.times <= 0:
                    self.stream_faults.remove(fault)
                return fault
        return None

    # -- routes ------------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/replicas/{replica}/chat/completions/telegram", self.completion)
        app.router.add_post("/v1/replicas/{replica}/chat/history/telegram", self.record)
        app.router.add_get("/v1/replicas/{replica}/chat/history/telegram", self.list_history)
        app.router.add_get("/v1/users/me", self.users_me)
        app.router.add_post("/v1/users", self.create_user)

    def _secret_ok(self, request: web.Request) -> bool:
        secret = request.headers.get("X-ORGANIZATION-SECRET")
        return bool(secret) and secret == self.organization_secret

    def _user(self, request: web.Request) -> str | web.Response:
        """The user a request acts as (a created user's id for a linked account), or the
        error answer."""
        if not self._secret_ok(request):
            return self._error(401, "Unauthorized: invalid or missing X-ORGANIZATION-SECRET")
        user = request.headers.get("X-USER-ID", "")
        if not user:
            return self._error(401, "Unauthorized: missing X-USER-ID")
        kind = request.headers.get("X-USER-ID-TYPE")
        if kind is not None:
            if kind not in ACCOUNT_TYPES:
                return self._error(400, f"Bad Request: X-USER-ID-TYPE must be one of "
                                        f"{', '.join(ACCOUNT_TYPES)}")
            linked = self._linked.get((kind, user))
            if linked is None:
                return self._error(401, f"Unauthorized: no user with {kind} account {user!r}")
            return linked
        if self.users is not None and user not in self.users:
            return self._error(401, f"Unauthorized: unknown user {user!r}")
        return user

    async def _json_body(self, request: web.Request) -> Any:
        """The JSON body, or the error answer (415, 400)."""
        if request.content_type != "application/json":
            return self._error(415, f"Unsupported Media Type: {request.content_type}")
        try:
            return json.loads(await request.read())
        except ValueError:
            return self._error(400, "Bad Request: the body is not valid JSON")

    async def _user_and_body(self, request: web.Request) -> tuple[str, Any] | web.Response:
        """The user and the JSON body of a request, or the error answer."""
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        return user, body

    async def users_me(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        found = self.created_users.get(user, {"id": user, "linkedAccounts": []})
        return web.json_response({**found, "success": True})

    async def create_user(self, request: web.Request) -> web.Response:
        if not self._secret_ok(request):
            return self._error(401, "Unauthorized: invalid or missing X-ORGANIZATION-SECRET")
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        problem = self.validate_user(body)
        if problem:
            return self._error(400, f"Bad Request: {problem}")
        accounts = body.get("linkedAccounts", [])
        user_id = body.get("id") or f"sim-user-{len(self.created_users) + 1}"
        if user_id in self.created_users or any(
                (a["accountType"], a["accountID"]) in self._linked for a in accounts):
            error = self.error_body(409, "User, email, or linked account already exists")
            error["error_code"] = "USER_ALREADY_EXISTS"
            return json_error(409, error)
        self.add_user(user_id, accounts)
        return web.json_response({**self.created_users[user_id], "success": True})

    @staticmethod
    def validate_user(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "the body must be an object"
        extra = sorted(set(body) - {"id", "email", "name", "linkedAccounts"})
        if extra:
            return f"additional properties are not allowed ({', '.join(extra)})"
        accounts = body.get("linkedAccounts", [])
        if not isinstance(accounts, list):
            return "linkedAccounts must be an array"
        for account in accounts:
            if not isinstance(account, dict) or set(account) != {"accountID", "accountType"}:
                return "a linked account has exactly accountID and accountType"
            if not isinstance(account["accountID"], str) or not account["accountID"]:
                return "accountID must be a non-empty string"
            if account["accountType"] not in ACCOUNT_TYPES:
                return f"accountType must be one of {', '.join(ACCOUNT_TYPES)}"
        if "id" in body and (not isinstance(body["id"], str) or not body["id"]):
            return "id must be a non-empty string"
        return None

    async def record(self, request: web.Request) -> web.Response:
        checked = await self._user_and_body(request)
        if isinstance(checked, web.Response):
            return checked
        user, body = checked
        versioned = request.headers.get("X-API-Version") is not None
        problem = self.validate(body, versioned=versioned, history=True)
        if problem:
            return self._error(400, f"Bad Request: {problem}")
        replica = self.replicas.get(request.match_info["replica"])
        if replica is None:
            return self._error(404, "Replica not found")
        self.recorded.append(Recorded(replica.uuid, user, body["content"],
                                      body["telegram_data"]))
        self._logged(replica.uuid, user, "user", body["content"], body["telegram_data"])
        return web.json_response({"success": True})

    async def list_history(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        replica = self.replicas.get(request.match_info["replica"])
        if replica is None:
            return self._error(404, "Replica not found")
        hidden = ("replica", "user", "chat_id")
        items = [{k: v for k, v in entry.items() if k not in hidden} for entry in self._log
                 if entry["replica"] == replica.uuid and entry["user"] == user]
        return web.json_response({"success": True, "type": "telegram", "items": items})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        checked = await self._user_and_body(request)
        if isinstance(checked, web.Response):
            return checked
        user, body = checked
        version = request.headers.get("X-API-Version")
        problem = self.validate(body, versioned=version is not None)
        if problem:
            return self._error(400, f"Bad Request: {problem}")
        replica = self.replicas.get(request.match_info["replica"])
        if replica is None:
            return self._error(404, "Replica not found")

        skip = bool(body.get("skip_chat_history", False))
        key = (replica.uuid, user)
        data = body["telegram_data"]
        seen = [] if skip else [*self._context(replica.uuid, data["chat_id"]),
                                *self._histories.get(key, [])]
        content = body["content"]
        reply = replica.answer(content, seen)
        streamed = "text/event-stream" in request.headers.get("Accept", "")
        if replica.answer_as is not None:
            streamed = replica.answer_as == "stream"
        image_url = body.get("imageURL")
        image_status, image_bytes = (await fetch_local_image(image_url) if image_url
                                     else (None, None))
        turn = Turn(replica.uuid, user, content, skip, len(seen), reply, streamed,
                    replica.flavor if streamed else None, telegram_data=data,
                    api_version=version, user_id_type=request.headers.get("X-USER-ID-TYPE"),
                    image_url=image_url, image_status=image_status, image_bytes=image_bytes)
        self.turns.append(turn)

        def store() -> None:
            if not skip:
                history = self._histories.setdefault(key, [])
                history.append({"role": "user", "content": content})
                history.append({"role": "assistant", "content": reply})
                self._logged(replica.uuid, user, "user", content, data)
                self._logged(replica.uuid, user, "assistant", reply, data)
                turn.stored = True

        if not streamed:
            store()
            if replica.ruby_hash:
                text = f'{{"content"=>{json.dumps(reply)}, "success"=>true}}'
                return web.Response(text=text, content_type="application/json")
            return web.json_response({"content": reply, "success": True})
        response, completed = await self._stream(request, replica, reply, turn)
        if completed:
            store()
        return response

    @staticmethod
    def validate(body: Any, *, versioned: bool = False, history: bool = False) -> str | None:
        """What is wrong with a completion body (``history``: a history entry's), or None.
        ``versioned``: the request named an X-API-Version (chat_name and imageURL exist)."""
        if not isinstance(body, dict):
            return "the body must be an object"
        allowed = {"content", "telegram_data"} | (set() if history else {"skip_chat_history"})
        if versioned and not history:
            allowed.add("imageURL")
        extra = sorted(set(body) - allowed)
        if extra:
            return f"additional properties are not allowed ({', '.join(extra)})"
        if "imageURL" in body and (not isinstance(body["imageURL"], str)
                                   or not IMAGE_URL.fullmatch(body["imageURL"])):
            return "imageURL must match the URL pattern https?://…"
        content = body.get("content")
        if "content" not in body:
            return "content is required"
        if not isinstance(content, str):
            return "content must be a string"
        if not 1 <= utf16_len(content) <= 10000:
            return "content must be between 1 and 10000 characters"
        if "skip_chat_history" in body and not isinstance(body["skip_chat_history"], bool):
            return "skip_chat_history must be a boolean"
        data = body.get("telegram_data")
        if "telegram_data" not in body:
            return "telegram_data is required"
        if not isinstance(data, dict):
            return "telegram_data must be an object"
        keys = set(TELEGRAM_KEYS) | ({"chat_name"} if versioned else set())
        extra = sorted(set(data) - keys)
        if extra:
            return f"telegram_data: additional properties are not allowed ({', '.join(extra)})"
        for key in TELEGRAM_REQUIRED:
            if key not in data:
                return f"telegram_data.{key} is required"
        for key, kind in TELEGRAM_KEYS.items():
            if key in data:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, kind):
                    want = "a string" if kind is str else "a number"
                    return f"telegram_data.{key} must be {want}"
        if "chat_name" in data and not isinstance(data["chat_name"], str):
            return "telegram_data.chat_name must be a string"
        if data["chat_type"] not in CHAT_TYPES:
            return f"telegram_data.chat_type must be one of {', '.join(CHAT_TYPES)}"
        return None

    # -- streaming ---------------------------------------------------------------------------------

    def _stream_headers(self, replica: Replica) -> dict[str, str]:
        if replica.flavor == "ui":
            headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            if replica.headers:
                headers["x-vercel-ai-ui-message-stream"] = "v1"
        elif replica.flavor == "data":
            headers = {"Content-Type": "text/plain; charset=utf-8"}
            if replica.headers:
                headers["x-vercel-ai-data-stream"] = "v1"
        else:
            headers = {"Content-Type": "text/plain; charset=utf-8"}
        if replica.content_type:
            headers["Content-Type"] = replica.content_type
        return headers

    def _pieces(self, reply: str) -> list[str]:
        """The reply's text parts, ``chunk_size`` characters each (UTF-16 code units with
        ``split_characters``: a part may then end or start with half of a character)."""
        size = max(1, self.chunk_size)
        if not self.split_characters:
            return [reply[i:i + size] for i in range(0, len(reply), size)]
        units = reply.encode("utf-16-le")
        return [units[i:i + 2 * size].decode("utf-16-le", "surrogatepass")
                for i in range(0, len(units), 2 * size)]

    def _frames(self, replica: Replica, reply: str, fault: StreamFault | None,
                prompt: str = "") -> list[tuple[str | bytes, bool]]:
        """(frame, is_text) in order; the wire form of the reply. The data stream's finish
        parts carry the Vercel AI SDK's ``usage`` (:func:`usage_tokens` of the message and the
        reply); the UI stream's carry none (the SDK's v5 sends none)."""
        eol = "\r\n" if replica.crlf else "\n"
        size = max(1, self.chunk_size)
        pieces = self._pieces(reply)
        if fault is not None:
            pieces = pieces[: fault.after]
        frames: list[tuple[str | bytes, bool]] = []
        if replica.flavor == "data":
            frames.append((f'f:{{"messageId":"msg-{next(self._ids)}"}}{eol}', False))
            frames += [(f"0:{json.dumps(p)}{eol}", True) for p in pieces]
            if fault is not None and not fault.drop:
                frames.append((f"3:{json.dumps(fault.message)}{eol}", False))
            elif fault is None and replica.finish:
                usage = '"usage":' + json.dumps(usage_tokens(prompt, reply),
                                                separators=(",", ":"))
                frames.append((f'e:{{"finishReason":"stop",{usage},"isContinued":false}}{eol}',
                               False))
                frames.append((f'd:{{"finishReason":"stop",{usage}}}{eol}', False))
        elif replica.flavor == "ui":
            def event(obj: Any) -> str:
                data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
                return f"data: {data}{eol}{eol}"

            frames.append((event({"type": "start", "messageId": f"msg-{next(self._ids)}"}),
                           False))
            frames.append((event({"type": "start-step"}), False))
            frames.append((event({"type": "text-start", "id": "t1"}), False))
            frames += [(event({"type": "text-delta", "id": "t1", "delta": p}), True)
                       for p in pieces]
            if fault is not None and not fault.drop:
                frames.append((event({"type": "error", "errorText": fault.message}), False))
            elif fault is None and replica.finish:
                frames.append((event({"type": "text-end", "id": "t1"}), False))
                frames.append((event({"type": "finish-step"}), False))
                frames.append((event({"type": "finish"}), False))
                frames.append((event("[DONE]"), False))
        elif self.split_characters:  # UTF-8 bytes, cut anywhere
            data = reply.encode("utf-8")
            parts = [data[i:i + size] for i in range(0, len(data), size)]
            if fault is not None:
                parts = parts[: fault.after]
            frames += [(p, True) for p in parts]
        else:
            frames += [(p, True) for p in pieces]
        return frames

    async def _stream(self, request: web.Request, replica: Replica, reply: str,
                      turn: Turn | None = None) -> tuple[web.StreamResponse, bool]:
        """Write the stream; the response, and whether it completed (no fault broke it)."""
        fault = self._take_stream_fault(replica.uuid)
        response = web.StreamResponse(status=200, headers=self._stream_headers(replica))
        await response.prepare(request)
        first = True
        loop = asyncio.get_running_loop()
        for frame, is_text in self._frames(replica, reply, fault,
                                           turn.content if turn is not None else ""):
            if is_text:
                delay = self.first_token_delay if first else self.chunk_delay
                if delay:
                    await asyncio.sleep(delay)
            data = frame if isinstance(frame, bytes) else frame.encode("utf-8")
            step = self.write_size or len(data) or 1
            for i in range(0, len(data), step):
                if is_text and turn is not None:
                    turn.last_token_at = loop.time()
                    if first:
                        turn.first_token_at = turn.last_token_at
                first = first and not is_text
                await response.write(data[i:i + step])
                if self.write_size and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
        if fault is not None and fault.drop:
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("fault: stream dropped")
        await response.write_eof()
        return response, fault is None


def _factory(args: Any) -> SensaySimulator:
    replicas = [Replica(DEMO_REPLICA, "Demo", flavor=args.flavor)]
    return SensaySimulator(
        organization_secret=args.secret, replicas=replicas, latency=args.latency,
        chunk_size=args.chunk_size, chunk_delay=args.chunk_delay, host=args.host, port=args.port,
    )


def _arguments(parser: Any) -> None:
    parser.add_argument("--secret", default=DEMO_SECRET, help="the organization secret")
    parser.add_argument("--flavor", default="data", choices=STREAM_FLAVORS,
                        help="stream flavor of the demo replica")
    parser.add_argument("--chunk-size", type=int, default=4, help="characters per text part")
    parser.add_argument("--chunk-delay", type=float, default=0.03,
                        help="seconds between text parts")


if __name__ == "__main__":
    run_cli(_factory, f"Sensay simulator (replica {DEMO_REPLICA})", _arguments)
