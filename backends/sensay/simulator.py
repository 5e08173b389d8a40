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

Run it alone: ``python -m tgmux.backends.sensay.simulator --port 8093``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

    async def completion(self, request: web.Request) -> web.StreamResponse:
        secret = request.headers.get("X-ORGANIZATION-SECRET")
        if not secret or secret != self.organization_secret:
            return self._error(401, "Unauthorized: invalid or missing X-ORGANIZATION-SECRET")
        user = request.headers.get("X-USER-ID", "")
        if not user:
            return self._error(401, "Unauthorized: missing X-USER-ID")
        if self.users is not None and user not in self.users:
            return self._error(401, f"Unauthorized: unknown user {user!r}")
        if request.content_type != "application/json":
            return self._error(415, f"Unsupported Media Type: {request.content_type}")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(400, "Bad Request: the body is not valid JSON")
        problem = self.validate(body)
        if problem:
            return self._error(400, f"Bad Request: {problem}")
        replica = self.replicas.get(request.match_info["replica"])
        if replica is None:
            return self._error(404, "Replica not found")

        skip = bool(body.get("skip_chat_history", False))
        key = (replica.uuid, user)
        seen = [] if skip else list(self._histories.get(key, []))
        content = body["content"]
        reply = replica.answer(content, seen)
        streamed = "text/event-stream" in request.headers.get("Accept", "")
        if replica.answer_as is not None:
            streamed = replica.answer_as == "stream"
        turn = Turn(replica.uuid, user, content, skip, len(seen), reply, streamed,
                    replica.flavor if streamed else None, telegram_data=body["telegram_data"])
        self.turns.append(turn)

        def store() -> None:
            if not skip:
                history = self._histories.setdefault(key, [])
                history.append({"role": "user", "content": content})
                history.append({"role": "assistant", "content": reply})
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
    def validate(body: Any) -> str | None:
        """What is wrong with a request body, or None."""
        if not isinstance(body, dict):
            return "the body must be an object"
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
        extra = sorted(set(data) - set(TELEGRAM_KEYS))
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

    def _frames(self, replica: Replica, reply: str,
                fault: StreamFault | None) -> list[tuple[str | bytes, bool]]:
        """(frame, is_text) in order; the wire form of the reply."""
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
                usage = '"usage":{"promptTokens":1,"completionTokens":1}'
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
        for frame, is_text in self._frames(replica, reply, fault):
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
