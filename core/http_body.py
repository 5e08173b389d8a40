"""Response bodies read within bounds, for :mod:`tgmux.http`'s httpx path (streams, and
requests with a raw body or cookies).

Every limit counts decompressed bytes: the ``Content-Encoding`` (gzip, deflate, or several
layers of them) is decoded here, in pieces of at most :data:`PIECE` bytes, and both the decoded
bytes and the bytes on the wire are counted against the cap; httpx is then told that the body
is plain. (httpx would decode each network chunk whole, after the cap was checked on the
compressed bytes: a 260 kB gzipped event stream inflated to 256 MiB.) The direct path needs
none of this: aiohttp decodes in bounded pieces itself, and the cap counts what it hands over.

Only gzip and deflate are asked for (:data:`ACCEPT_ENCODING`); an answer compressed otherwise
(br, zstd), or corrupt, is a :class:`~tgmux.errors.ProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import httpx

from tgmux.errors import BackendError

__all__ = ["ACCEPT_ENCODING", "PIECE", "BoundedDecoder", "guard_body", "join_bounded",
           "read_body"]

#: What the httpx path asks for: what :class:`BoundedDecoder` reads.
ACCEPT_ENCODING = "gzip, deflate"
#: The most one decoding step inflates at once.
PIECE = 64 * 1024
#: Compressions a provider may answer in that are not read here (anything else unknown is
#: taken as plain, as httpx takes it).
UNREAD_ENCODINGS = frozenset({"br", "zstd", "compress", "x-compress"})


class UnreadableEncoding(ValueError):
    """A body compressed in a way :class:`BoundedDecoder` does not read, or corrupt."""


class _Inflater:
    """One gzip or deflate layer, inflated at most :data:`PIECE` bytes at a time."""

    def __init__(self, encoding: str) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self.raw_fallback = not self.gzip  # deflate may come without its zlib header
        self.inflate = self._new()

    def _new(self) -> zlib._Decompress:
        return zlib.decompressobj(16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> Iterator[bytes]:
        while data:
            try:
                piece = self.inflate.decompress(data, PIECE)
            except zlib.error as exc:
                if not self.raw_fallback:
                    raise UnreadableEncoding(f"corrupt {'gzip' if self.gzip else 'deflate'} "
                                             f"body: {exc}") from exc
                self.raw_fallback = False
                self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self.raw_fallback = False
            rest = self.inflate.unconsumed_tail
            if self.inflate.eof:
                rest = self.inflate.unused_data
                if self.gzip and rest:  # the next member of a multi-member gzip
                    self.inflate = self._new()
                elif rest:
                    rest = b""  # bytes after a deflate stream's end: ignored, as httpx does
            if piece:
                yield piece
            elif rest == data:  # no progress: cannot happen with zlib; never loop on it
                return
            data = rest

    def flush(self) -> Iterator[bytes]:
        # Nothing is held back as output (decode drains every input), so this is small.
        tail = self.inflate.flush()
        for start in range(0, len(tail), PIECE):
            yield tail[start:start + PIECE]


class BoundedDecoder:
    """A body's ``Content-Encoding`` layers (in the order they were applied), decoded in
    pieces of at most :data:`PIECE` bytes."""

    def __init__(self, encodings: Sequence[str]) -> None:
        layers = []
        for encoding in (e.strip().lower() for e in encodings):
            if encoding in UNREAD_ENCODINGS:
                raise UnreadableEncoding(f"answered in Content-Encoding {encoding}, which is "
                                         f"not read (asked for: {ACCEPT_ENCODING})")
            if encoding in ("gzip", "x-gzip", "deflate"):
                layers.append(_Inflater(encoding))
        self.layers = layers[::-1]  # the last applied is undone first

    def decode(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, iter((data,)))

    def flush(self) -> Iterator[bytes]:
        for index, layer in enumerate(self.layers):
            yield from self._through(index + 1, layer.flush())

    def _through(self, index: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        if index == len(self.layers):
            yield from (piece for piece in pieces if piece)
            return
        for piece in pieces:
            yield from self._through(index + 1, self.layers[index].decode(piece))


class GuardedStream(httpx.AsyncByteStream):
    """A response body with bounds: at most ``limit`` bytes, on the wire and decoded; at most
    ``idle`` seconds between chunks. What goes wrong is raised as the callbacks' errors:
    ``too_big()``, ``stalled()``, ``unreadable(why)``, and with ``lost``, a transport error
    ``lost(exc)`` (for the consumers of a streamed body, who should see nothing else).
    ``lenient`` (an error answer's body, an excerpt for the logs): a body that cannot be
    decoded ends there instead, so that the answer's status decides its error."""

    def __init__(
        self, inner: httpx.AsyncByteStream, *, decoder: BoundedDecoder | None,
        limit: int | None, idle: float | None, too_big: Callable[[], BackendError],
        stalled: Callable[[], BackendError], unreadable: Callable[[str], BackendError],
        lost: Callable[[httpx.TransportError], BackendError] | None, lenient: bool = False,
    ) -> None:
        self._inner = inner
        self.lenient = lenient
        self.discard = False
        self.decoder = decoder
        self.limit = limit
        self.idle = idle
        self._too_big = too_big
        self._stalled = stalled
        self._unreadable = unreadable
        self._lost = lost

    async def __aiter__(self) -> AsyncIterator[bytes]:
        wire = decoded = 0
        chunks = self._inner.__aiter__()
        try:
            while True:
                chunk = await self._next(chunks)
                wire += len(chunk or b"")
                if self.limit is not None and wire > self.limit:
                    raise self._too_big()
                for piece in self._decoded(chunk):
                    decoded += len(piece)
                    if self.limit is not None and decoded > self.limit:
                        raise self._too_big()
                    yield piece
                if chunk is None:
                    return
        finally:  # a consumer that stops early must not leave the inner iterator open
            if (close := getattr(chunks, "aclose", None)) is not None:
                with contextlib.suppress(Exception):
                    await close()

    def _decoded(self, chunk: bytes | None) -> Iterator[bytes]:
        """A chunk's plain pieces (None: the end of the body)."""
        if self.discard:
            return
        if self.decoder is None:
            if chunk:
                yield chunk
            return
        try:
            yield from (self.decoder.flush() if chunk is None else self.decoder.decode(chunk))
        except UnreadableEncoding as exc:
            if self.lenient:
                self.discard = True  # nothing more is decoded, nor passed on
                return
            raise self._unreadable(str(exc)) from exc

    async def _next(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        """The next chunk (None at the end), within ``idle`` seconds."""
        try:
            if self.idle is None:
                return await anext(chunks)
            async with asyncio.timeout(self.idle):
                return await anext(chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError as exc:
            if self.idle is None:
                raise
            raise self._stalled() from exc
        except httpx.TransportError as exc:
            if self._lost is None:
                raise
            raise self._lost(exc) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def guard_body(response: httpx.Response, *, limit: int | None, idle: float | None,
               too_big: Callable[[], BackendError], stalled: Callable[[], BackendError],
               unreadable: Callable[[str], BackendError],
               lost: Callable[[httpx.TransportError], BackendError] | None,
               lenient: bool = False) -> None:
    """Put ``response``'s body under a :class:`GuardedStream`, which decodes it; httpx then
    reads it as plain (its ``Content-Encoding`` header is removed)."""
    encodings = response.headers.get_list("content-encoding", split_commas=True)
    decoder, discard = None, False
    if encodings:
        try:
            decoder = BoundedDecoder(encodings)
        except UnreadableEncoding as exc:
            if not lenient:
                raise unreadable(str(exc)) from None
            discard = True  # an error answer: no excerpt of it, its status decides
        del response.headers["content-encoding"]
    response.stream = guarded = GuardedStream(
        response.stream, decoder=decoder, limit=limit, idle=idle, too_big=too_big,
        stalled=stalled, unreadable=unreadable, lost=lost, lenient=lenient)
    guarded.discard = discard


async def join_bounded(chunks: AsyncIterator[bytes], limit: int,
                       too_big: Callable[[], BackendError] | None) -> bytes:
    """The chunks joined, at most ``limit`` bytes; the rest is left unread, and is a
    ``too_big()`` error if given (else dropped)."""
    parts: list[bytes] = []
    total = 0
    async for part in chunks:
        if total + len(part) > limit:
            if too_big is not None:
                raise too_big()
            parts.append(part[: limit - total])
            break
        parts.append(part)
        total += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_body(response: httpx.Response, limit: int,
                    too_big: Callable[[], BackendError] | None = None) -> None:
    """Read the (decoded) body into ``response.content`` (see :func:`join_bounded`)."""
    async with contextlib.aclosing(response.aiter_bytes()) as body:
        # httpx keeps a read body here (``Response.aread`` does the same).
        response._content = await join_bounded(body, limit, too_big)
