"""A pure async client for the OpenAI Chat Completions API, as OpenAI and every compatible
server speak it (OpenRouter, Ollama, vLLM, LM Studio, llama.cpp's server, Groq, DeepSeek, a
LiteLLM proxy, …). Usable without the engine: it needs only :mod:`tgmux.http` and
:mod:`tgmux.errors`::

    async with OpenAIClient("http://localhost:11434/v1") as api:
        body = chat_body("llama3.2", [{"role": "user", "content": "Hello!"}])
        print((await api.complete(body)).text)
        async for chunk in api.stream({**body, "stream": True}):
            print(chunk.content, end="")

``POST {base_url}/chat/completions`` with ``Authorization: Bearer KEY`` (when there is a key).
``stream: false`` answers ``{"choices": [{"message": {"content": …}, "finish_reason": …}],
"usage": {…}}``; ``stream: true`` answers server-sent events, each ``data:`` a chunk
``{"choices": [{"delta": {"content": …}, "finish_reason": …}]}``, then ``data: [DONE]``; with
``stream_options: {include_usage: true}`` the last chunk before it has no choices and the
``usage``.

What is not the answer's text is never passed on as text: reasoning (``reasoning_content``,
``reasoning``), tool calls, refusals' metadata, role-only deltas. Errors are read from the
OpenAI error body ``{"error": {"message", "type", "code"}}`` (and the shapes compatible servers
use), mapped onto :mod:`tgmux.errors` with what the adapter needs in ``details``: ``code``,
``model_missing`` (404 ``model_not_found``, a LiteLLM proxy's 400 "Invalid model name", Ollama's
"model … not found"), ``context_exceeded``. A 429's wait comes from ``Retry-After``,
``retry-after-ms`` or the ``x-ratelimit-reset-*`` headers (``1s``, ``6m0s``, ``20ms``).

A completion is a POST: the HTTP layer never repeats it once it may have reached the provider
(it would be charged twice).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource

from tgmux.errors import (
    USER_MESSAGES,
    BackendError,
    BackendTimeoutError,
    ErrorKind,
    ProtocolError,
    QuotaExceededError,
    UnavailableError,
    error_for_status,
    retry_later_message,
)
from tgmux.http import HttpClient, parse_retry_after, request_id_from
from tgmux.text import str_or_none

log = logging.getLogger("tgmux.backends.openai")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PATH = "chat/completions"

#: Sampling settings passed through as given (left out when not set).
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens",
                 "frequency_penalty", "presence_penalty", "seed", "stop")


# -- requests ----------------------------------------------------------------------------------


def chat_body(model: str, messages: list[dict[str, Any]], *, stream: bool = False,
              stream_usage: bool = False, **sampling: Any) -> dict[str, Any]:
    """The request body: ``model``, ``messages``, ``stream`` and the sampling settings that
    are not None. ``stream_usage``: a stream ends with a chunk carrying the usage
    (``stream_options: {include_usage: true}``; some compatible servers refuse the key)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream and stream_usage:
        body["stream_options"] = {"include_usage": True}
    for key, value in sampling.items():
        if key not in SAMPLING_KEYS:
            raise ValueError(f"unknown sampling setting {key!r}")
        if value is not None:
            body[key] = value
    return body


# -- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """A whole (non-streamed) answer."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None


@dataclass(frozen=True)
class ChatChunk:
    """What one streamed event carried that matters: answer text (possibly empty), the
    finish reason when this choice ended, usage when the server reports it (with the model
    the chunk names)."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None


def _text_of(value: Any) -> str:
    """A message's ``content``: a string, or (some servers) a list of ``{"type": "text"}``
    parts; anything else has no text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p["text"] for p in value if isinstance(p, dict)
                       and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def _usage(body: Mapping[str, Any]) -> dict[str, Any] | None:
    usage = body.get("usage")
    return usage if isinstance(usage, dict) and usage else None


def parse_completion(response: httpx.Response) -> Completion:
    """The first choice of a JSON answer."""
    try:
        body = response.json()
    except ValueError as exc:
        raise ProtocolError("openai: the completion is not JSON", status=response.status_code,
                            provider_message=response.text[:200],
                            request_id=request_id_from(response.headers)) from exc
    if isinstance(body, dict) and body.get("error"):  # a 200 carrying an error (some proxies)
        raise parse_error_body(response.status_code, body, response.headers)
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProtocolError("openai: the completion has no choices", status=response.status_code,
                            provider_message=response.text[:200],
                            request_id=request_id_from(response.headers))
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    return Completion(_text_of(message.get("content")), str_or_none(choice.get("finish_reason")),
                      _usage(body), str_or_none(body.get("model")))


def parse_chunk(data: str) -> ChatChunk | None:
    """One ``data:`` of a stream: a chunk, or None for one that carries nothing we show
    (role-only, reasoning, tool-call deltas, keep-alives). Raises for an error event."""
    try:
        body = json.loads(data)
    except ValueError:
        log.warning("openai: skipping a stream event that is not JSON: %.80r", data)
        return None
    if not isinstance(body, dict):
        return None
    if body.get("error") or body.get("object") == "error":
        raise parse_error_body(200, body if body.get("error") else {"error": body}, {},
                               in_stream=True)
    content = ""
    finish = None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = _text_of(delta.get("content"))
        finish = str_or_none(choice.get("finish_reason"))
    usage = _usage(body)
    if not content and finish is None and usage is None:
        return None
    return ChatChunk(content, finish, usage, str_or_none(body.get("model")) if usage else None)


# -- errors ------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                 "ns": 1e-9}
_CONTEXT = re.compile(r"context[ _]length|context window|maximum context|"
                      r"too many tokens|prompt is too long", re.IGNORECASE)
_MODEL_MISSING = re.compile(r"invalid model name|model[^.]{0,80}(does not exist|not found|"
                            r"not exist)|no such model|unknown model", re.IGNORECASE)


def parse_duration(value: str | None) -> float | None:
    """Seconds from a rate-limit reset header: ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``, or
    a plain number of seconds; None when unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) and position else None


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks to wait: ``Retry-After``, ``retry-after-ms``, else the reset of the
    ``x-ratelimit-*`` limit that is used up (requests or tokens; the later one when neither
    says it is at 0)."""
    found = parse_retry_after(headers.get("retry-after"))
    if found is not None:
        return found
    millis = parse_duration(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        seconds = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if seconds is not None:
            resets[kind] = seconds
    exhausted = [s for kind, s in resets.items()
                 if (headers.get(f"x-ratelimit-remaining-{kind}") or "").strip() == "0"]
    chosen = exhausted or list(resets.values())
    return max(chosen) if chosen else None


def parse_error_body(status: int, body: Any, headers: Mapping[str, str], *,
                     in_stream: bool = False) -> BackendError:
    """A :class:`BackendError` for an OpenAI-style error body (``{"error": {...}}``, or
    ``{"error": "text"}``, or ``{"detail": …}`` from some servers)."""
    error: Any = body.get("error") if isinstance(body, dict) else None
    message: str | None = None
    code: str | None = None
    kind: str | None = None
    if isinstance(error, dict):
        message = str_or_none(error.get("message"))
        code = str_or_none(error.get("code"))
        kind = str_or_none(error.get("type"))
        if status == 200 and isinstance(error.get("code"), int):  # an in-stream HTTP status
            status = error["code"]
    elif isinstance(error, str):
        message = error
    elif isinstance(body, dict):
        message = str_or_none(body.get("detail")) or str_or_none(body.get("message"))
    code = code if code not in (None, "None") else None
    details: dict[str, Any] = {}
    if code:
        details["code"] = code
    if kind and kind != "None":
        details["type"] = kind
    text = message or ""
    if code == "context_length_exceeded" or (status in (400, 413, 200) and _CONTEXT.search(text)):
        details["context_exceeded"] = True
    elif code == "model_not_found" or (status in (400, 404) and _MODEL_MISSING.search(text)):
        details["model_missing"] = True
    if in_stream and status == 200:
        cls: type[BackendError] = UnavailableError
    elif code == "insufficient_quota":
        cls = QuotaExceededError
    else:
        cls = error_for_status(status)
    if details.get("model_missing"):
        cls = error_for_status(404)
    retry_after = retry_after_from(headers) if status in (429, 503) else None
    user_message = None
    if cls is QuotaExceededError:  # said as such even where the HTTP layer keeps 429 "busy"
        user_message = USER_MESSAGES[ErrorKind.QUOTA]
    elif retry_after is not None:
        user_message = retry_later_message(cls.kind, retry_after)
    where = "in the stream" if in_stream else f"HTTP {status}"
    return cls(f"openai: {where}", status=None if in_stream and status == 200 else status,
               provider_message=message or (json.dumps(body)[:300] if body else None),
               request_id=request_id_from(headers), retry_after=retry_after, details=details,
               user_message=user_message)


def parse_error(response: httpx.Response) -> BackendError:
    """The HTTP layer's error parser: the status decides the kind, the body refines it."""
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:300]}
    return parse_error_body(response.status_code, body, response.headers)


# -- the client --------------------------------------------------------------------------------


class OpenAIClient:
    """Chat completions at one base URL, with one key (or none: local servers)."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None,
                 extra_headers: Mapping[str, str] | None = None, http: HttpClient | None = None,
                 name: str = "openai", http_options: dict[str, Any] | None = None) -> None:
        self.name = name
        headers = dict(extra_headers or {})
        # An Authorization of the extra headers wins (a proxy with its own scheme).
        if api_key and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = http or HttpClient(base_url, headers=headers, error_parser=parse_error,
                                       name=name, **(http_options or {}))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(self, body: dict[str, Any]) -> Completion:
        """Ask for a whole answer (``stream`` is sent as false)."""
        response = await self.http.request("POST", PATH, json={**body, "stream": False},
                                           headers={"Accept": "application/json"})
        return parse_completion(response)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[ChatChunk]:
        """Ask for a streamed answer (``stream`` is sent as true); yield its chunks as they
        arrive. A server that answers JSON anyway gives one chunk. Errors: the kinds of
        :mod:`tgmux.errors`; a stall is a :class:`BackendTimeoutError`, a connection lost or an
        error event mid-stream an :class:`UnavailableError` (after the chunks before it)."""
        async with self.http.stream("POST", PATH, json={**body, "stream": True},
                                    headers={"Accept": "text/event-stream"}) as response:
            request_id = request_id_from(response.headers)
            try:
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype == "application/json" or ctype.endswith("+json"):
                    await response.aread()
                    whole = parse_completion(response)
                    yield ChatChunk(whole.text, whole.finish_reason, whole.usage, whole.model)
                    return
                if ctype != "text/event-stream":
                    raise ProtocolError(f"{self.name}: the stream came as {ctype or 'nothing'}"
                                        ", not text/event-stream", request_id=request_id)
                done = False
                async for event in EventSource(response).aiter_sse():
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    if event.event == "error":
                        raise parse_error_body(200, {"error": {"message": event.data}}, {},
                                               in_stream=True)
                    if event.data and (chunk := parse_chunk(event.data)) is not None:
                        yield chunk
                if not done:
                    log.info("%s: the stream ended without [DONE]", self.name)
            except BackendError as exc:
                exc.request_id = exc.request_id or request_id
                raise
            except httpx.TimeoutException as exc:
                raise BackendTimeoutError(f"{self.name}: the stream stalled",
                                          provider_message=str(exc) or None,
                                          request_id=request_id) from exc
            except httpx.HTTPError as exc:
                raise UnavailableError(f"{self.name}: the stream broke off",
                                       provider_message=str(exc) or None,
                                       request_id=request_id) from exc
