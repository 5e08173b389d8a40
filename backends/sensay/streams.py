"""Reading a streamed completion: the Vercel AI SDK stream protocols, detected, not assumed.

Sensay documents only that its streamed replies "honour the Stream Protocol" of the Vercel AI
SDK. That SDK has had three wire formats, and which one a server speaks is not documented, so
:class:`StreamParser` detects it:

``data`` — the v4 *data stream*
    One part per line, ``CODE:JSON``: ``0:"Hel"`` (text), ``3:"message"`` (error),
    ``d:{"finishReason":"stop"}`` (finish), and other codes for tools, reasoning, sources,
    annotations (skipped). Header ``x-vercel-ai-data-stream: v1``.
``ui`` — the v5+ *UI message stream*
    Server-sent events whose data is a JSON part: ``{"type":"text-delta","id":"t1","delta":"Hi"}``,
    ``{"type":"error","errorText":"…"}``, ``{"type":"finish"}``, then ``data: [DONE]``. Header
    ``x-vercel-ai-ui-message-stream: v1``. The SSE framing is read with ``httpx-sse``.
``text`` — the plain *text stream*
    The body is the reply text itself.

Detection: the ``x-vercel-ai-*`` headers decide; without them the first bytes do (a
``CODE:`` prefix followed by the JSON that code takes, an SSE field such as ``data: {``, or
anything else: plain text). ``Content-Type`` is not trusted on its own: a server asked for
``text/event-stream`` may label any of the three that way. Detection looks at as few bytes as
it can, so a plain-text reply starts flowing with its first token.

The parser yields text deltas as they arrive. An error part raises :class:`StreamPartError`
after the text before it was yielded (the caller keeps it). A stream that ends without a finish
part is taken as complete and logged. Lines may be split across network chunks anywhere (even
inside a UTF-8 character) and may end in CRLF.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from enum import StrEnum
from typing import Any

import httpx
from httpx_sse import EventSource

from tgmux.errors import UnavailableError
from tgmux.text import str_or_none

log = logging.getLogger("tgmux.backends.sensay.streams")


class Flavor(StrEnum):
    DATA = "data"  # v4 data stream: CODE:JSON lines
    UI = "ui"  # v5+ UI message stream: SSE with JSON parts
    TEXT = "text"  # plain text


class StreamPartError(UnavailableError):
    """The provider reported an error inside the stream (after a 200). ``partial`` holds the
    text that streamed before it."""

    def __init__(self, message: str, *, partial: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.partial = partial


def flavor_from_headers(headers: Mapping[str, str]) -> Flavor | None:
    """The flavor the response headers announce, or None (then the body decides)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get("x-vercel-ai-ui-message-stream"):
        return Flavor.UI
    if lowered.get("x-vercel-ai-data-stream"):
        return Flavor.DATA
    return None


# -- detection ---------------------------------------------------------------------------------

#: v4 data stream part codes and the first character of the JSON each carries.
_DATA_CODES: dict[str, str] = {
    "0": '"',  # text
    "1": "{",  # function call (legacy)
    "2": "[",  # data
    "3": '"',  # error
    "4": "{",  # assistant message
    "5": "{",  # assistant control data
    "6": "{",  # data message
    "7": "{",  # tool calls (legacy)
    "8": "[",  # message annotations
    "9": "{",  # tool call
    "a": "{",  # tool result
    "b": "{",  # tool call streaming start
    "c": "{",  # tool call delta
    "d": "{",  # finish message
    "e": "{",  # finish step
    "f": "{",  # start step
    "g": '"',  # reasoning
    "h": "{",  # source
    "i": "{",  # redacted reasoning
    "j": "{",  # reasoning signature
    "k": "{",  # file
}
_SSE_FIELDS = ("data:", "event:", "id:", "retry:")
_DATA_LINE = re.compile(r"^([0-9a-z]):(.*)$", re.DOTALL)


def sniff(prefix: str, *, eof: bool = False) -> Flavor | None:
    """The flavor of a body that starts with ``prefix``; None when more bytes are needed.

    At ``eof`` the answer is never None.
    """
    s = prefix.lstrip("\ufeff \t\r\n")
    if not s:
        return Flavor.TEXT if eof else None
    # SSE: a field name, or a comment line.
    if s.startswith(":"):
        return Flavor.UI
    for name in _SSE_FIELDS:
        if s.startswith(name):
            if name != "data:":
                return Flavor.UI
            value = s[len("data:"):].lstrip(" ")
            if not value:
                return Flavor.TEXT if eof else None
            if value[0] in '{["' or _looks_like_data(value):
                return Flavor.UI
            if _could_be_data(value) and not eof:
                return None
            return Flavor.TEXT
        if name.startswith(s) and not eof:
            return None  # "da", "data", "event"...: wait for the rest
    # v4 data stream: CODE:JSON.
    if _looks_like_data(s):
        return Flavor.DATA
    if _could_be_data(s) and not eof:
        return None
    return Flavor.TEXT


def _looks_like_data(s: str) -> bool:
    return len(s) >= 3 and s[1] == ":" and _DATA_CODES.get(s[0]) == s[2]


def _could_be_data(s: str) -> bool:
    return len(s) < 3 and s[0] in _DATA_CODES and (len(s) == 1 or s[1] == ":")


# -- parsing -----------------------------------------------------------------------------------


class _Replay(httpx.AsyncByteStream):
    """Bytes already read, then the rest of the source: lets httpx-sse read the whole body."""

    def __init__(self, head: list[bytes], rest: AsyncIterator[bytes]) -> None:
        self._head = head
        self._rest = rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._head:
            yield chunk
        self._head = []
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        close = getattr(self._rest, "aclose", None)
        if close is not None:
            await close()


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    counts = {key: value[key] for key in ("promptTokens", "completionTokens")
              if isinstance(value.get(key), int) and not isinstance(value[key], bool)
              and value[key] >= 0}
    return counts or None


class StreamParser:
    """Turns the bytes of a streamed reply into text deltas.

    ``flavor`` forces a flavor (from the headers); None detects it from the body. After
    :meth:`parse` finished: :attr:`flavor` is what was read, :attr:`finished` says a finish
    part (or ``[DONE]``) arrived, :attr:`finish_reason` is the provider's, :attr:`usage` the
    tokens the data stream's finish part reported, :attr:`skipped` counts parts that carried
    no text.
    """

    def __init__(self, flavor: Flavor | None = None, *, name: str = "stream") -> None:
        self.flavor = flavor
        self.name = name
        self.finished = False
        self.finish_reason: str | None = None
        #: the data stream's finish ``usage`` (``promptTokens``, ``completionTokens``), when
        #: it carries counts (the SDK writes null for counts it does not know)
        self.usage: dict[str, int] | None = None
        self.skipped = 0
        self.text = ""  # everything yielded so far

    async def parse(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
        """Yield text deltas; raise :class:`StreamPartError` on an error part."""
        source = aiter(chunks)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        head: list[bytes] = []
        buffered = ""
        eof = False
        while self.flavor is None:
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                eof = True
                buffered += decoder.decode(b"", final=True)
                self.flavor = sniff(buffered, eof=True)
                break
            head.append(chunk)
            buffered += decoder.decode(chunk)
            self.flavor = sniff(buffered)
        log.debug("%s: reading a %s stream", self.name, self.flavor)

        if self.flavor is Flavor.UI:
            events = self._parse_ui(_Replay(head, source))
        elif self.flavor is Flavor.DATA:
            events = self._parse_data(buffered, decoder, source, eof)
        else:
            events = self._parse_text(buffered, decoder, source, eof)
        async for delta in events:
            if delta:
                self.text += delta
                yield delta
        if self.flavor is Flavor.TEXT:
            self.finished = True
        elif not self.finished:
            log.info("%s: %s stream ended without a finish part; taking it as complete "
                     "(%d characters)", self.name, self.flavor, len(self.text))

    # -- plain text ------------------------------------------------------------------------------

    async def _parse_text(self, buffered: str, decoder: codecs.IncrementalDecoder,
                          source: AsyncIterator[bytes], eof: bool) -> AsyncIterator[str]:
        yield buffered
        if eof:
            return
        async for chunk in source:
            yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)

    # -- v4 data stream ----------------------------------------------------------------------------

    async def _parse_data(self, buffered: str, decoder: codecs.IncrementalDecoder,
                          source: AsyncIterator[bytes], eof: bool) -> AsyncIterator[str]:
        pending = buffered + "\n" if eof else buffered
        while True:
            *lines, pending = pending.split("\n")
            for line in lines:
                text = self._data_line(line)
                if text:
                    yield text
                if self.finished:
                    return
            if eof:
                break
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                eof = True
                pending += decoder.decode(b"", final=True) + "\n"
                continue
            pending += decoder.decode(chunk)

    def _data_line(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line.strip():
            return None
        match = _DATA_LINE.match(line)
        if match is None:
            log.warning("%s: skipping a line that is not CODE:JSON: %.80r", self.name, line)
            self.skipped += 1
            return None
        code, raw = match.groups()
        try:
            value = json.loads(raw)
        except ValueError:
            log.warning("%s: skipping part %s with invalid JSON: %.80r", self.name, code, raw)
            self.skipped += 1
            return None
        if code == "0":
            if isinstance(value, str):
                return value
            log.warning("%s: text part is not a string: %.80r", self.name, raw)
        elif code == "3":
            self._fail(value if isinstance(value, str) else json.dumps(value))
        elif code == "d":
            self.finished = True
            if isinstance(value, dict):
                self.finish_reason = str_or_none(value.get("finishReason"))
                self.usage = _usage(value.get("usage"))
        else:
            log.debug("%s: skipping part %s", self.name, code)
        self.skipped += 1
        return None

    # -- v5 UI message stream ----------------------------------------------------------------------

    async def _parse_ui(self, stream: _Replay) -> AsyncIterator[str]:
        response = httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, stream=stream
        )
        events = EventSource(response).aiter_sse()
        try:
            async for event in events:
                text = self._ui_event(event.event, event.data)
                if text:
                    yield text
                if self.finished:
                    return
        finally:
            await events.aclose()
            await response.aclose()

    def _ui_event(self, event: str, data: str) -> str | None:
        if event == "error":  # an SSE-level error event, whatever its data
            self._fail(data or "error event")
        if not data:
            return None
        if data.strip() == "[DONE]":
            self.finished = True
            return None
        try:
            part = json.loads(data)
        except ValueError:
            if _DATA_LINE.match(data):  # a v4 data-stream line wrapped in SSE
                return self._data_line(data)
            log.warning("%s: skipping an event that is not JSON: %.80r", self.name, data)
            self.skipped += 1
            return None
        if not isinstance(part, dict):
            log.warning("%s: skipping an event that is not an object: %.80r", self.name, data)
            self.skipped += 1
            return None
        kind = part.get("type")
        if kind == "text-delta":
            for key in ("delta", "textDelta", "text"):  # v5 final, then older betas
                value = part.get(key)
                if isinstance(value, str):
                    return value
            log.warning("%s: text-delta without text: %.80r", self.name, data)
        elif kind == "error":
            self._fail(str_or_none(part.get("errorText")) or json.dumps(part))
        elif kind in ("finish", "abort"):
            self.finished = True
            self.finish_reason = str_or_none(part.get("finishReason")) or (
                "abort" if kind == "abort" else None
            )
            if kind == "abort":
                log.info("%s: the provider aborted the stream", self.name)
        else:
            log.debug("%s: skipping part %r", self.name, kind)
        self.skipped += 1
        return None

    def _fail(self, message: str) -> None:
        raise StreamPartError(
            f"{self.name}: error part in the stream",
            provider_message=message,
            partial=self.text,
            details={"flavor": str(self.flavor), "streamed_chars": len(self.text)},
        )
