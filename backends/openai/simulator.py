"""An OpenAI-compatible Chat Completions server on 127.0.0.1, faithful to the contract tgmux
relies on (and to what OpenAI itself does where compatible servers agree).

``POST /v1/chat/completions``:

* auth: with ``api_keys`` given, ``Authorization: Bearer KEY`` must be one of them: else 401
  ``invalid_api_key``; without, any request is taken (a local server);
* the body must be a JSON object with ``model`` (one of :attr:`OpenAISimulator.models`: else
  404 ``model_not_found``), ``messages`` (a non-empty list of ``{"role", "content"}``; content
  a string, or for ``user`` a list of ``text`` and ``image_url`` parts, the latter only for a
  model with ``vision``), and only known parameters with the right types: else 400
  ``invalid_request_error`` naming the ``param``;
* a context limit per model, enforced: the prompt's tokens plus ``max_tokens`` over
  ``context_tokens`` is 400 ``context_length_exceeded`` (a token is counted as 4 characters,
  rounded up, plus 4 per message: deterministic, so tests can aim at the limit);
* a rate limit (``rate_limit`` requests per ``rate_window`` seconds; off by default): 429
  ``rate_limit_exceeded`` with ``Retry-After`` and ``x-ratelimit-*`` headers;
* every error has the OpenAI body ``{"error": {"message", "type", "param", "code"}}`` and an
  ``x-request-id`` header, as every answer does.

The reply is deterministic (:func:`default_reply`: it quotes what the conversation sent, so a
remembered conversation shows); ``max_tokens`` cuts it (``finish_reason: "length"``). JSON
answers carry ``usage``; ``stream: true`` answers server-sent events: a role delta, the text in
pieces of ``chunk_size`` characters ``chunk_delay`` seconds apart, a finish chunk, a usage chunk
(``choices: []``) when ``stream_options.include_usage`` (none without), then ``data: [DONE]``.
``reasoning`` adds ``reasoning_content`` deltas first and a tool-call delta (clients must not
show either). Usage is OpenAI's: ``prompt_tokens`` (:func:`prompt_tokens`),
``completion_tokens`` (the reply's, plus the reasoning's), ``total_tokens``,
``prompt_tokens_details.cached_tokens`` (see :meth:`OpenAISimulator.cached_tokens`) and
``completion_tokens_details.reasoning_tokens`` (:data:`REASONING_TOKENS` with ``reasoning``).
:meth:`OpenAISimulator.fail` answers the next request(s) with an error,
:meth:`OpenAISimulator.fail_stream` breaks the next stream, :meth:`OpenAISimulator.hold_stream`
pauses the next one mid-reply (a slow model) until the test releases it.

Run it alone: ``python -m tgmux.backends.openai.simulator --port 8094``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tgmux.simulator import Fault, SimulatorServer, run_cli

DEMO_KEY = "sk-demo-openai"
DEMO_MODEL = "sim-gpt"
#: The reasoning a ``reasoning`` simulator streams (and counts as reasoning tokens).
REASONING = ("Let me think", " about that.")
#: Prompt prefixes remembered for the cache (OpenAI keeps its cache minutes to an hour).
CACHE_KEPT = 10_000

#: The parameters the simulator takes, with the JSON types each may have.
PARAMETERS: dict[str, tuple[type, ...]] = {
    "model": (str,), "messages": (list,), "stream": (bool,), "stream_options": (dict,),
    "temperature": (int, float), "top_p": (int, float), "n": (int,), "max_tokens": (int,),
    "max_completion_tokens": (int,), "frequency_penalty": (int, float),
    "presence_penalty": (int, float), "seed": (int,), "stop": (str, list), "user": (str,),
    "logit_bias": (dict,), "logprobs": (bool,), "top_logprobs": (int,),
    "response_format": (dict,), "tools": (list,), "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,), "reasoning_effort": (str,), "metadata": (dict,),
    "store": (bool,), "service_tier": (str,),
}
ROLES = ("system", "developer", "user", "assistant", "tool")

#: ``reply(messages) -> text``: the answer to the request's messages.
ReplyFn = Callable[[list[dict[str, Any]]], str]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def default_reply(messages: list[dict[str, Any]]) -> str:
    """``You said: LAST`` — and, when the request carried earlier user messages, how many and
    the first one: a remembered conversation shows in the answer."""
    said = [text_of(m["content"]) for m in messages if m["role"] == "user"]
    images = sum(1 for m in messages if isinstance(m.get("content"), list)
                 for p in m["content"] if p.get("type") == "image_url")
    reply = f"You said: {said[-1]}" if said and said[-1] else "You sent no text"
    if images:
        reply += f" [I see {images} image{'s' if images > 1 else ''}]"
    if len(said) > 1:
        earlier = len(said) - 1
        reply += (f" (I remember {earlier} earlier message{'s' if earlier > 1 else ''}; "
                  f"the first was: {said[0]})")
    return reply


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


REASONING_TOKENS = count_tokens("".join(REASONING))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """4 characters a token, rounded up, plus 4 per message; 85 per image (OpenAI's low
    detail)."""
    total = 0
    for message in messages:
        total += 4 + count_tokens(text_of(message["content"]))
        if isinstance(message["content"], list):
            total += 85 * sum(1 for p in message["content"] if p.get("type") == "image_url")
    return total


@dataclass
class Model:
    name: str
    context_tokens: int = 8192
    vision: bool = False
    reply: ReplyFn | None = None


@dataclass
class StreamFault:
    """Break the next stream after ``after`` text pieces: an error event (or, with ``drop``,
    a closed connection)."""

    after: int = 1
    message: str = "The server had an error while processing your request."
    drop: bool = False
    times: int = 1


@dataclass
class StreamHold:
    """Pause the next stream before its text piece number ``after`` (a slow model, still
    generating): ``held`` is set once it waits there, :meth:`release` lets it go on (so does
    the simulator's stop). What it sends is unchanged, only when."""

    after: int
    held: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    taken: bool = False  # by a stream

    def release(self) -> None:
        self.released.set()


@dataclass
class Completion:
    """One request the simulator answered with a completion (for tests)."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    reply: str
    finish_reason: str
    request_id: str
    body: dict[str, Any] = field(default_factory=dict)
    #: loop time at which the request was taken (its body read)
    received_at: float | None = None
    #: loop times at which the first and the last text piece were written (streams only)
    first_token_at: float | None = None
    last_token_at: float | None = None


class OpenAISimulator(SimulatorServer):
    name = "openai"

    def __init__(self, *, api_keys: set[str] | None = None, models: list[Model] | None = None,
                 chunk_size: int = 4, chunk_delay: float = 0.0, first_token_delay: float = 0.0,
                 reasoning: bool = False, rate_limit: int | None = None,
                 rate_window: float = 60.0, cache_min_tokens: int = 1024,
                 cache_block_tokens: int = 128, latency: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(latency=latency, host=host, port=port)
        self.api_keys = api_keys
        self.models = {m.name: m for m in models or [Model(DEMO_MODEL, vision=True)]}
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        self.first_token_delay = first_token_delay
        self.reasoning = reasoning
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.completions: list[Completion] = []
        self.stream_faults: list[StreamFault] = []
        self.stream_holds: list[StreamHold] = []
        self._taken: deque[float] = deque()
        self._ids = itertools.count(1)
        self.cache_min_tokens = cache_min_tokens
        self.cache_block_tokens = max(1, cache_block_tokens)
        self._prefixes: OrderedDict[str, None] = OrderedDict()  # prompt prefixes seen
        #: answer 400 to a request with stream_options (a compatible server without them)
        self.refuse_stream_options = False

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    # -- setup and inspection ------------------------------------------------------------------

    def error_body(self, message: str, type: str = "invalid_request_error",
                   code: str | None = None, param: str | None = None) -> dict[str, Any]:
        return {"error": {"message": message, "type": type, "param": param, "code": code}}

    def fail(self, status: int, message: str = "The server had an error.", *,
             type: str = "server_error", code: str | None = None,
             headers: dict[str, str] | None = None, times: int = 1) -> Fault:
        """Answer the next request(s) with ``status`` and an OpenAI error body."""
        return self.inject(status=status, body=self.error_body(message, type, code),
                           headers={"x-request-id": self._request_id(), **(headers or {})},
                           path="/chat/completions", times=times)

    def fail_stream(self, after: int = 1, message: str = StreamFault.message, *,
                    drop: bool = False, times: int = 1) -> StreamFault:
        fault = StreamFault(after, message, drop, times)
        self.stream_faults.append(fault)
        return fault

    def hold_stream(self, after: int) -> StreamHold:
        """Hold the next stream before its ``after``-th text piece (see :class:`StreamHold`)."""
        hold = StreamHold(after)
        self.stream_holds.append(hold)
        return hold

    async def stop(self) -> None:
        for hold in self.stream_holds:  # a held handler would hold up the server's cleanup
            hold.release()
        await super().stop()

    def cached_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        """The prompt tokens served from the cache, as OpenAI counts them: the longest run
        of leading messages an earlier request to ``model`` began with too, when the prompt
        has ``cache_min_tokens`` at least (OpenAI: 1024), rounded down to whole
        ``cache_block_tokens`` (OpenAI: 128). Remembers this request's prefixes."""
        cached, running = 0, 0
        keys, key = [], hashlib.sha256(model.encode()).hexdigest()
        for i, message in enumerate(messages, 1):
            key = hashlib.sha256((key + json.dumps(message, sort_keys=True)).encode()
                                 ).hexdigest()  # the prefix up to this message
            keys.append(key)
            running += prompt_tokens([message])
            if i < len(messages) and key in self._prefixes:
                cached = running
        for key in keys:
            self._prefixes[key] = None
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > CACHE_KEPT:
            self._prefixes.popitem(last=False)
        if prompt_tokens(messages) < self.cache_min_tokens:
            return 0
        return cached - cached % self.cache_block_tokens

    def _request_id(self) -> str:
        return f"req_{next(self._ids):06d}{secrets.token_hex(4)}"

    def _error(self, status: int, message: str, type: str = "invalid_request_error",
               code: str | None = None, param: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(self.error_body(message, type, code, param), status=status,
                                 headers={"x-request-id": self._request_id(), **(headers or {})})

    # -- routes --------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "tgmux-simulator"}
            for name in self.models]})

    def _rate_limited(self) -> web.Response | None:
        if self.rate_limit is None:
            return None
        now = time.monotonic()
        while self._taken and self._taken[0] <= now - self.rate_window:
            self._taken.popleft()
        if len(self._taken) < self.rate_limit:
            self._taken.append(now)
            return None
        wait = max(1, math.ceil(self._taken[0] + self.rate_window - now))
        return self._error(
            429, f"Rate limit reached for requests: limit {self.rate_limit} per "
            f"{self.rate_window:g}s. Please try again in {wait}s.", "requests",
            "rate_limit_exceeded", headers={
                "Retry-After": str(wait), "x-ratelimit-limit-requests": str(self.rate_limit),
                "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": f"{wait}s"})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        received = asyncio.get_running_loop().time()
        if self.api_keys is not None:
            auth = request.headers.get("Authorization", "")
            key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
            if key not in self.api_keys:
                shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
                return self._error(401, f"Incorrect API key provided: {shown}.",
                                   code="invalid_api_key") if key else self._error(
                    401, "You didn't provide an API key.", code="missing_api_key")
        if (limited := self._rate_limited()) is not None:
            return limited
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(400, "We could not parse the JSON body of your request.")
        if self.refuse_stream_options and isinstance(body, dict) and "stream_options" in body:
            # an older compatible server: it knows no stream_options
            return self._error(400, "Unrecognized request argument supplied: stream_options",
                               param="stream_options")
        problem = self.validate(body)
        if problem is not None:
            return self._error(400, problem[1], param=problem[0])
        model = self.models.get(body["model"])
        if model is None:
            return self._error(404, f"The model `{body['model']}` does not exist or you do "
                               "not have access to it.", code="model_not_found")
        messages = body["messages"]
        if not model.vision and any(isinstance(m["content"], list) and any(
                p.get("type") == "image_url" for p in m["content"]) for m in messages):
            return self._error(400, "Invalid content type. image_url is only supported by "
                               "certain models.", param="messages")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        prompt = prompt_tokens(messages)
        if prompt + (limit or 0) > model.context_tokens:
            return self._error(
                400, f"This model's maximum context length is {model.context_tokens} tokens. "
                f"However, you requested {prompt + (limit or 0)} tokens ({prompt} in the "
                f"messages, {limit or 0} in the completion). Please reduce the length of the "
                "messages or completion.", param="messages", code="context_length_exceeded")
        reply = (model.reply or default_reply)(messages)
        finish = "stop"
        if limit is not None and count_tokens(reply) > limit:
            reply, finish = reply[: 4 * limit], "length"
        completion = Completion(model.name, messages, bool(body.get("stream")), reply, finish,
                                self._request_id(), body, received)
        self.completions.append(completion)
        reasoning = REASONING_TOKENS if self.reasoning else 0
        completion_tokens = count_tokens(reply) + reasoning
        usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                 "total_tokens": prompt + completion_tokens,
                 "prompt_tokens_details": {"cached_tokens": self.cached_tokens(model.name,
                                                                               messages),
                                           "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": reasoning,
                                               "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0,
                                               "rejected_prediction_tokens": 0}}
        if not completion.stream:
            return web.json_response({
                "id": f"chatcmpl-{completion.request_id}", "object": "chat.completion",
                "created": int(time.time()), "model": model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply,
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage, "system_fingerprint": "fp_tgmux_sim"},
                headers={"x-request-id": completion.request_id})
        options = body.get("stream_options") or {}
        return await self._stream(request, completion, usage if options.get("include_usage")
                                  else None)

    @staticmethod
    def validate(body: Any) -> tuple[str | None, str] | None:
        """(param, what is wrong) for an invalid body, or None."""
        if not isinstance(body, dict):
            return None, "The body must be a JSON object."
        for key, value in body.items():
            kinds = PARAMETERS.get(key)
            if kinds is None:
                return key, f"Unrecognized request argument supplied: {key}"
            if value is not None and ((isinstance(value, bool) and bool not in kinds)
                                      or not isinstance(value, kinds)):
                return key, f"Invalid type for '{key}'."
        for key in ("model", "messages"):
            if body.get(key) is None:
                return key, f"Missing required parameter: '{key}'."
        messages = body["messages"]
        if not messages:
            return "messages", "'messages' must contain at least one message."
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"{where}.role", f"Invalid value for '{where}.role'."
            content = message.get("content")
            if isinstance(content, list) and message["role"] == "user":
                for j, part in enumerate(content):
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind == "text" and isinstance(part.get("text"), str):
                        continue
                    url = (part.get("image_url") or {}).get("url") if kind == "image_url" \
                        else None
                    if isinstance(url, str) and url.startswith(("data:image/", "https://")):
                        continue
                    return f"{where}.content[{j}]", f"Invalid content part in '{where}'."
            elif not isinstance(content, str):
                return f"{where}.content", f"Invalid type for '{where}.content'."
        for key, low, high in (("temperature", 0, 2), ("top_p", 0, 1),
                               ("frequency_penalty", -2, 2), ("presence_penalty", -2, 2)):
            if key in body and body[key] is not None and not low <= body[key] <= high:
                return key, f"Invalid '{key}': must be between {low} and {high}."
        return None

    # -- streaming -----------------------------------------------------------------------------

    def _take_stream_fault(self) -> StreamFault | None:
        if not self.stream_faults:
            return None
        fault = self.stream_faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self.stream_faults.pop(0)
        return fault

    async def _stream(self, request: web.Request, completion: Completion,
                      usage: dict[str, Any] | None) -> web.StreamResponse:
        fault = self._take_stream_fault()
        hold = next((h for h in self.stream_holds if not h.taken), None)
        if hold is not None:
            hold.taken = True
        response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "x-request-id": completion.request_id})
        await response.prepare(request)
        base = {"id": f"chatcmpl-{completion.request_id}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": completion.model,
                "system_fingerprint": "fp_tgmux_sim"}

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            data = json.dumps({**base, "choices": choices, **extra}, separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())

        def delta(**fields: Any) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": fields, "logprobs": None, "finish_reason": None}]

        await send(delta(role="assistant", content=""))
        if self.reasoning:
            for thought in REASONING:
                await send(delta(reasoning_content=thought))
            await send(delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                          "function": {"name": "noop", "arguments": ""}}]))
        size = max(1, self.chunk_size)
        pieces = [completion.reply[i:i + size] for i in range(0, len(completion.reply), size)]
        loop = asyncio.get_running_loop()
        for n, piece in enumerate(pieces):
            if fault is not None and n == fault.after:
                break
            if hold is not None and n == hold.after:
                hold.held.set()
                await hold.released.wait()
                if request.transport is None or request.transport.is_closing():
                    return response  # the client went away meanwhile
            delay = self.first_token_delay if n == 0 else self.chunk_delay
            if delay:
                await asyncio.sleep(delay)
            completion.last_token_at = loop.time()
            if n == 0:
                completion.first_token_at = completion.last_token_at
            await send(delta(content=piece))
        if fault is not None:
            if fault.drop:
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError("fault: stream dropped")
            error = self.error_body(fault.message, "server_error")
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
            await response.write_eof()
            return response
        await send([{"index": 0, "delta": {}, "logprobs": None,
                     "finish_reason": completion.finish_reason}])
        if usage is not None:
            await send([], usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _factory(args: Any) -> OpenAISimulator:
    keys = {args.api_key} if args.api_key else None
    return OpenAISimulator(
        api_keys=keys, models=[Model(args.model, context_tokens=args.context_tokens,
                                     vision=True)],
        chunk_size=args.chunk_size, chunk_delay=args.chunk_delay, latency=args.latency,
        rate_limit=args.rate_limit, host=args.host, port=args.port)


def _arguments(parser: Any) -> None:
    parser.add_argument("--api-key", default=None, help="the one key accepted (default: none "
                        "needed)")
    parser.add_argument("--model", default=DEMO_MODEL, help="the model id served")
    parser.add_argument("--context-tokens", type=int, default=8192,
                        help="the model's context length (4 characters a token)")
    parser.add_argument("--rate-limit", type=int, default=None,
                        help="requests per minute before 429 (default: no limit)")
    parser.add_argument("--chunk-size", type=int, default=4, help="characters per delta")
    parser.add_argument("--chunk-delay", type=float, default=0.03,
                        help="seconds between deltas")


if __name__ == "__main__":
    run_cli(_factory, "OpenAI-compatible Chat Completions simulator", _arguments)
