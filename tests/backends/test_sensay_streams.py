"""The Vercel AI SDK stream parser on crafted bytes: every flavor, cut at every byte."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from tgmux.backends.sensay.streams import (
    Flavor,
    StreamParser,
    StreamPartError,
    flavor_from_headers,
    sniff,
)

DATA_STREAM = (
    'f:{"messageId":"msg-1"}\n'
    '0:"Hel"\n'
    '0:"lo, \\"wörld\\" 😀"\n'
    '8:[{"note":"skip me"}]\n'
    'g:"thinking..."\n'
    'z:{"unknown":"part"}\n'
    '0:"!\\n"\n'
    'e:{"finishReason":"stop","usage":{"promptTokens":1,"completionTokens":2},'
    '"isContinued":false}\n'
    'd:{"finishReason":"stop","usage":{"promptTokens":1,"completionTokens":2}}\n'
)
UI_STREAM = (
    'data: {"type":"start","messageId":"msg-1"}\n\n'
    'data: {"type":"start-step"}\n\n'
    'data: {"type":"text-start","id":"t1"}\n\n'
    'data: {"type":"text-delta","id":"t1","delta":"Hel"}\n\n'
    ": keep-alive comment\n\n"
    'data: {"type":"reasoning-delta","id":"r1","delta":"not text"}\n\n'
    'data: {"type":"text-delta","id":"t1","delta":"lo, \\"wörld\\" 😀"}\n\n'
    'data: {"type":"data-weather","data":{"temp":3}}\n\n'
    'data: {"type":"some-future-part"}\n\n'
    'data: {"type":"text-delta","id":"t1","delta":"!\\n"}\n\n'
    'data: {"type":"text-end","id":"t1"}\n\n'
    'data: {"type":"finish-step"}\n\n'
    'data: {"type":"finish"}\n\n'
    "data: [DONE]\n\n"
)
TEXT_STREAM = 'Hello, "wörld" 😀!\n'
EXPECTED = 'Hello, "wörld" 😀!\n'


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def parse(data: bytes | list[bytes], flavor: Flavor | None = None
                ) -> tuple[list[str], StreamParser]:
    parser = StreamParser(flavor)
    pieces = data if isinstance(data, list) else [data]
    return [d async for d in parser.parse(chunks(*pieces))], parser


@pytest.mark.parametrize(
    ("body", "flavor"),
    [(DATA_STREAM, Flavor.DATA), (UI_STREAM, Flavor.UI), (TEXT_STREAM, Flavor.TEXT)],
)
@pytest.mark.parametrize("forced", [True, False], ids=["headers", "sniffed"])
async def test_each_flavor_whole(body: str, flavor: Flavor, forced: bool) -> None:
    deltas, parser = await parse(body.encode(), flavor if forced else None)
    assert "".join(deltas) == EXPECTED
    assert parser.flavor is flavor
    assert parser.finished
    if flavor is Flavor.DATA:
        assert deltas == ["Hel", 'lo, "wörld" 😀', "!\n"]
        assert parser.finish_reason == "stop"
        assert parser.usage == {"promptTokens": 1, "completionTokens": 2}
    else:
        assert parser.usage is None  # the v5 UI stream and plain text carry no usage
    if flavor is Flavor.UI:
        assert deltas == ["Hel", 'lo, "wörld" 😀', "!\n"]


@pytest.mark.parametrize(
    ("body", "flavor"),
    [(DATA_STREAM, Flavor.DATA), (UI_STREAM, Flavor.UI), (TEXT_STREAM, Flavor.TEXT)],
)
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_cut_at_every_byte(body: str, flavor: Flavor, crlf: bool) -> None:
    """Lines (and UTF-8 characters, and CRLF pairs) split across network chunks anywhere."""
    if crlf and flavor is not Flavor.TEXT:
        body = body.replace("\n", "\r\n")  # real line ends only, not the escaped ones
    raw = body.encode()
    for cut in range(1, len(raw)):
        deltas, parser = await parse([raw[:cut], raw[cut:]])
        assert "".join(deltas) == EXPECTED, cut
        assert parser.flavor is flavor, cut
    # and one byte at a time
    deltas, parser = await parse([raw[i:i + 1] for i in range(len(raw))])
    assert "".join(deltas) == EXPECTED
    assert parser.flavor is flavor


async def test_crlf_data_stream_exact_deltas() -> None:
    body = b'0:"a"\r\n0:"b\\r\\nc"\r\nd:{"finishReason":"stop"}\r\n'
    deltas, _ = await parse([body[:4], body[4:9], body[9:]])
    assert deltas == ["a", "b\r\nc"]


async def test_plain_text_flows_before_any_newline() -> None:
    """A one-line plain-text reply is not held back waiting for a line end."""
    parser = StreamParser()
    gate_passed = []

    async def source() -> AsyncIterator[bytes]:
        yield b"Hel"
        gate_passed.append(True)
        yield b"lo"

    gen = parser.parse(source())
    assert await anext(gen) == "Hel"
    assert gate_passed == []  # the first delta came before the second chunk was read
    assert [d async for d in gen] == ["lo"]
    assert parser.flavor is Flavor.TEXT


@pytest.mark.parametrize(
    ("prefix", "eof", "expected"),
    [
        ('0:"', False, Flavor.DATA),
        ('f:{"messageId":"x"}', False, Flavor.DATA),
        ("0", False, None),
        ("0:", False, None),
        ("0", True, Flavor.TEXT),
        ("1:1 meeting tomorrow", False, Flavor.TEXT),  # looks like CODE: but not its JSON
        ("2:30 pm", False, Flavor.TEXT),
        ("d", False, None),  # "d:{" or "data:" or text
        ("dat", False, None),
        ("data", False, None),
        ("data ", False, Flavor.TEXT),
        ("data: {", False, Flavor.UI),
        ("data: [DONE]", False, Flavor.UI),
        ('data: 0:"x"', False, Flavor.UI),  # v4 lines wrapped in SSE
        ("data: the plan is", False, Flavor.TEXT),
        ("data:", False, None),
        ("event: message", False, Flavor.UI),
        (": ping", False, Flavor.UI),
        ("\ufeff\r\n\r\ndata: {", False, Flavor.UI),
        ("Hello", False, Flavor.TEXT),
        ("", False, None),
        ("", True, Flavor.TEXT),
        ("\n\n", False, None),
    ],
)
def test_sniff(prefix: str, eof: bool, expected: Flavor | None) -> None:
    assert sniff(prefix, eof=eof) is expected


def test_flavor_from_headers() -> None:
    assert flavor_from_headers({"X-Vercel-AI-Data-Stream": "v1"}) is Flavor.DATA
    assert flavor_from_headers({"x-vercel-ai-ui-message-stream": "v1",
                                "content-type": "text/event-stream"}) is Flavor.UI
    # Content-Type alone does not decide: the body does.
    assert flavor_from_headers({"content-type": "text/event-stream"}) is None


async def test_event_stream_content_type_carrying_data_stream_lines() -> None:
    deltas, parser = await parse(b'0:"Hi"\n0:" there"\nd:{"finishReason":"stop"}\n')
    assert deltas == ["Hi", " there"] and parser.flavor is Flavor.DATA


async def test_ui_stream_with_v4_lines_inside_sse() -> None:
    body = b'data: 0:"Hi"\n\ndata: 0:" you"\n\ndata: d:{"finishReason":"stop"}\n\n'
    deltas, parser = await parse(body)
    assert deltas == ["Hi", " you"] and parser.finished


async def test_ui_stream_multiline_data_and_event_ids() -> None:
    body = (b'id: 1\nevent: message\ndata: {"type":"text-delta",\ndata: "id":"t","delta":"A"}\n\n'
            b'data: {"type":"finish","finishReason":"length"}\n\n')
    deltas, parser = await parse(body)
    assert deltas == ["A"]
    assert parser.finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "flavor"),
    [
        ('0:"Hel"\n0:"lo"\n3:"model overloaded"\n0:"never"\n', Flavor.DATA),
        ('data: {"type":"text-delta","id":"t","delta":"Hel"}\n\n'
         'data: {"type":"text-delta","id":"t","delta":"lo"}\n\n'
         'data: {"type":"error","errorText":"model overloaded"}\n\n'
         'data: {"type":"text-delta","id":"t","delta":"never"}\n\n', Flavor.UI),
    ],
)
async def test_error_part_mid_stream(body: str, flavor: Flavor) -> None:
    parser = StreamParser()
    got: list[str] = []
    with pytest.raises(StreamPartError) as info:
        async for delta in parser.parse(chunks(body.encode())):
            got.append(delta)
    assert got == ["Hel", "lo"]  # what came before the error was yielded
    assert info.value.partial == "Hello"
    assert info.value.provider_message == "model overloaded"
    assert info.value.details["flavor"] == flavor.value
    assert "overloaded" not in info.value.user_message


@pytest.mark.parametrize(
    "body",
    ['0:"Hel"\n0:"lo"', 'data: {"type":"text-delta","id":"t","delta":"Hello"}\n\n'],
    ids=["data", "ui"],
)
async def test_stream_ending_without_finish_is_complete_and_logged(
    body: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tgmux.backends.sensay.streams")
    deltas, parser = await parse(body.encode())
    assert "".join(deltas) == "Hello"
    assert not parser.finished
    assert "without a finish part" in caplog.text


async def test_parts_after_finish_are_not_read() -> None:
    deltas, _ = await parse(b'0:"A"\nd:{"finishReason":"stop"}\n0:"late"\n')
    assert deltas == ["A"]
    deltas, _ = await parse(b'data: {"type":"text-delta","id":"t","delta":"A"}\n\n'
                            b"data: [DONE]\n\n"
                            b'data: {"type":"text-delta","id":"t","delta":"late"}\n\n')
    assert deltas == ["A"]


async def test_garbage_lines_in_a_data_stream_are_skipped() -> None:
    deltas, parser = await parse(b'0:"A"\nnot a part\n0:{broken\n0:"B"\n', Flavor.DATA)
    assert deltas == ["A", "B"]
    assert parser.skipped == 2


async def test_empty_body() -> None:
    deltas, parser = await parse([])
    assert deltas == [] and parser.flavor is Flavor.TEXT


@pytest.mark.parametrize(("finish", "usage"), [
    ('{"finishReason":"stop","usage":{"promptTokens":null,"completionTokens":null}}', None),
    ('{"finishReason":"stop","usage":{"promptTokens":5,"completionTokens":"x"}}',
     {"promptTokens": 5}),
    ('{"finishReason":"stop"}', None),
])
async def test_data_stream_usage_only_as_counts(finish: str, usage: object) -> None:
    """The SDK writes null (its NaN) for counts the model did not report."""
    _, parser = await parse(f'0:"hi"\nd:{finish}\n'.encode())
    assert parser.usage == usage
