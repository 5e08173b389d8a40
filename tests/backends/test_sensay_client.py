"""The pure Sensay client and the simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tgmux.backends.sensay.client import (
    MAX_CONTENT,
    SensayClient,
    content_length,
    parse_error,
    split_content,
    telegram_data,
    truncate_content,
)
from tgmux.backends.sensay.simulator import Replica, SensaySimulator
from tgmux.backends.sensay.streams import StreamPartError
from tgmux.errors import (
    AuthError,
    BackendTimeoutError,
    BadRequestError,
    NotFoundError,
    ProtocolError,
    UnavailableError,
)

SECRET = "org-secret-1"
R_DATA = "11111111-1111-4111-8111-111111111111"
R_UI = "22222222-2222-4222-8222-222222222222"
R_TEXT = "33333333-3333-4333-8333-333333333333"
R_BARE = "44444444-4444-4444-8444-444444444444"  # ui, no flavor header, CRLF, no finish
TD = {"chat_type": "private", "chat_id": 42, "user_id": 42, "username": "alice",
      "message_id": 7}


@pytest.fixture
async def sim() -> AsyncIterator[SensaySimulator]:
    replicas = [
        Replica(R_DATA, "D", flavor="data"),
        Replica(R_UI, "U", flavor="ui"),
        Replica(R_TEXT, "T", flavor="text"),
        Replica(R_BARE, "B", flavor="ui", headers=False, crlf=True, finish=False),
    ]
    async with SensaySimulator(organization_secret=SECRET, replicas=replicas,
                               chunk_size=3, write_size=5) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
async def client(sim: SensaySimulator) -> AsyncIterator[SensayClient]:
    async with SensayClient(SECRET, user_id="tg_42", base_url=sim.base_url, timeout=5) as c:
        yield c


# -- requests ----------------------------------------------------------------------------------


async def test_json_completion_exact_request(sim: SensaySimulator, client: SensayClient) -> None:
    reply = await client.complete(R_DATA, "How are you?", TD)
    assert reply == "[D] How are you? (history: 0)"
    [req] = sim.requests
    assert req.method == "POST"
    assert req.path == f"/v1/replicas/{R_DATA}/chat/completions/telegram"
    assert req.header("X-ORGANIZATION-SECRET") == SECRET
    assert req.header("X-USER-ID") == "tg_42"
    assert req.header("Accept") == "application/json"
    assert req.header("Content-Type") == "application/json"
    assert req.json == {"content": "How are you?", "skip_chat_history": False,
                        "telegram_data": TD}


async def test_stream_request_asks_for_event_stream(sim: SensaySimulator,
                                                    client: SensayClient) -> None:
    deltas = [d async for d in client.stream(R_DATA, "Hi", TD, True, user_id="other")]
    assert "".join(deltas) == "[D] Hi (history: 0)"
    [req] = sim.requests
    assert req.header("Accept") == "text/event-stream"
    assert req.header("X-USER-ID") == "other"
    assert req.json["skip_chat_history"] is True


def test_telegram_data_keys() -> None:
    assert telegram_data(chat_type="channel", chat_id=-1001, message_id=5) == {
        "chat_type": "channel", "chat_id": -1001, "message_id": 5}
    assert telegram_data(chat_type="supergroup", chat_id=-1002, message_id=9, user_id=3,
                         username="bob", message_thread_id=4) == {
        "chat_type": "supergroup", "chat_id": -1002, "user_id": 3, "username": "bob",
        "message_id": 9, "message_thread_id": 4}
    with pytest.raises(ValueError):
        telegram_data(chat_type="secret", chat_id=1, message_id=1)


# -- streams over the wire ---------------------------------------------------------------------


@pytest.mark.parametrize("replica", [R_DATA, R_UI, R_TEXT, R_BARE])
async def test_stream_flavors_exact_text(sim: SensaySimulator, client: SensayClient,
                                         replica: str) -> None:
    content = "Grüße, 😀 and \"quotes\"\nline two"
    deltas = [d async for d in client.stream(replica, content, TD)]
    name = sim.replicas[replica].name
    assert "".join(deltas) == f"[{name}] {content} (history: 0)"
    if sim.replicas[replica].flavor != "text":  # plain text may arrive coalesced
        assert len(deltas) > 3  # one delta per text part: it did stream
    assert sim.turns[-1].flavor == sim.replicas[replica].flavor


async def test_stream_error_part_keeps_streamed_text(sim: SensaySimulator,
                                                     client: SensayClient) -> None:
    for replica in (R_DATA, R_UI):
        sim.fail_stream(after=2, message="upstream model failed", replica=replica)
        got: list[str] = []
        with pytest.raises(StreamPartError) as info:
            async for d in client.stream(replica, "abcdefghij", TD):
                got.append(d)
        name = sim.replicas[replica].name
        assert "".join(got) == f"[{name}] abc"[:6]
        assert info.value.provider_message == "upstream model failed"
        assert sim.history(replica, "tg_42") == []  # a broken turn is not stored


async def test_dropped_connection_mid_stream(sim: SensaySimulator, client: SensayClient) -> None:
    sim.fail_stream(after=2, drop=True)
    got: list[str] = []
    with pytest.raises(UnavailableError) as info:
        async for d in client.stream(R_DATA, "abcdefghij", TD):
            got.append(d)
    assert "".join(got) == "[D] abc"[:6]
    assert info.value.kind.value == "unavailable"
    assert len(sim.requests) == 1  # a chat turn is never repeated


async def test_stalled_stream_times_out(sim: SensaySimulator) -> None:
    sim.first_token_delay = 1.0
    async with SensayClient(SECRET, user_id="u", base_url=sim.base_url, timeout=0.2) as c:
        with pytest.raises(BackendTimeoutError):
            _ = [d async for d in c.stream(R_DATA, "slow", TD)]


async def test_server_ignoring_accept(sim: SensaySimulator, client: SensayClient) -> None:
    """JSON where a stream was asked for, and a stream where JSON was asked for."""
    sim.add_replica("json-only", name="J", answer_as="json")
    assert [d async for d in client.stream("json-only", "x", TD)] == ["[J] x (history: 0)"]
    sim.add_replica("stream-only", name="S", flavor="ui", answer_as="stream")
    assert await client.complete("stream-only", "y", TD) == "[S] y (history: 0)"


# -- content length ----------------------------------------------------------------------------


async def test_content_out_of_range_is_never_sent(sim: SensaySimulator,
                                                  client: SensayClient) -> None:
    with pytest.raises(BadRequestError):
        await client.complete(R_DATA, "", TD)
    with pytest.raises(BadRequestError) as info:
        await client.complete(R_DATA, "x" * (MAX_CONTENT + 1), TD)
    assert "10,000" in info.value.user_message
    with pytest.raises(BadRequestError):
        _ = [d async for d in client.stream(R_DATA, "😀" * 5001, TD)]  # 10002 UTF-16 units
    assert sim.requests == []
    assert await client.complete(R_DATA, "😀" * 5000, TD)  # exactly 10000 units


def test_content_length_counts_utf16_units() -> None:
    assert content_length("abc") == 3
    assert content_length("😀") == 2
    assert truncate_content("ab😀c", 3) == "ab"  # never half a surrogate pair
    assert truncate_content("ab😀c", 4) == "ab😀"


def test_split_content() -> None:
    text = "para one.\n\npara two is here. " + "word " * 10
    pieces = split_content(text, 20)
    assert all(content_length(p) <= 20 for p in pieces)
    assert " ".join(pieces).split() == text.split()  # only whitespace at the cuts is dropped
    assert pieces[0] == "para one."
    hard = split_content("x" * 45, 20)
    assert hard == ["x" * 20, "x" * 20, "x" * 5]
    emoji = split_content("😀" * 15, 10)
    assert emoji == ["😀" * 5] * 3


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, BadRequestError), (401, AuthError), (404, NotFoundError), (415, BadRequestError),
     (500, UnavailableError)],
)
async def test_error_statuses(sim: SensaySimulator, client: SensayClient, status: int,
                              kind: type) -> None:
    sim.fail(status, "documented failure", inner_exception=status == 500)
    with pytest.raises(kind) as info:
        await client.complete(R_DATA, "hi", TD)
    err = info.value
    assert type(err) is kind
    assert err.status == status
    assert err.provider_message == "documented failure"
    assert err.request_id and err.request_id.startswith("sim1::")
    if status == 404:
        assert "fingerprint" not in err.details
    else:
        assert len(err.details["fingerprint"]) == 32
    if status == 500:
        assert err.details["inner_exception"] == (
            "Server overheated: The server overheated due to an unexpected situation")
        assert "overheated" not in err.user_message
        assert "stack" not in err.log_text()
    assert len(sim.requests) == 1  # POSTs are not retried


async def test_stream_error_status_before_body(sim: SensaySimulator,
                                               client: SensayClient) -> None:
    sim.fail(401, "bad secret")
    with pytest.raises(AuthError) as info:
        _ = [d async for d in client.stream(R_DATA, "hi", TD)]
    assert info.value.provider_message == "bad secret"


def test_parse_error_trusts_status_not_success() -> None:
    body = {"success": True, "error": "nope", "fingerprint": "f" * 32, "request_id": "r1"}
    err = parse_error(httpx.Response(400, json=body))
    assert isinstance(err, BadRequestError) and err.request_id == "r1"
    html = parse_error(httpx.Response(502, text="<html>Bad gateway</html>"))
    assert isinstance(html, UnavailableError) and "Bad gateway" in (html.provider_message or "")


async def test_ruby_hash_body_is_read(sim: SensaySimulator, client: SensayClient) -> None:
    """One documented 200 example is `{"content"=>"…", "success"=>true}`."""
    sim.add_replica("ruby", name="R => nil", ruby_hash=True)
    assert await client.complete("ruby", 'say "=>"', TD) == '[R => nil] say "=>" (history: 0)'


async def test_non_json_completion_is_protocol_error(sim: SensaySimulator,
                                                     client: SensayClient) -> None:
    sim.inject(status=200, body=["not", "an", "object"])
    with pytest.raises(ProtocolError):
        await client.complete(R_DATA, "hi", TD)


# -- the simulator's own contract --------------------------------------------------------------


async def post(sim: SensaySimulator, body: object, *, replica: str = R_DATA,
               headers: dict[str, str] | None = None, raw: bytes | None = None
               ) -> httpx.Response:
    base = {"X-ORGANIZATION-SECRET": SECRET, "X-USER-ID": "u1",
            "Content-Type": "application/json"}
    base.update(headers or {})
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        return await http.post(f"/v1/replicas/{replica}/chat/completions/telegram",
                               content=raw if raw is not None else json.dumps(body).encode(),
                               headers={k: v for k, v in base.items() if v})


GOOD = {"content": "hi", "telegram_data": {"chat_type": "group", "chat_id": -5,
                                           "message_id": 1}}


@pytest.mark.parametrize(
    ("headers", "body", "replica", "status", "says"),
    [
        ({"X-ORGANIZATION-SECRET": ""}, GOOD, R_DATA, 401, "X-ORGANIZATION-SECRET"),
        ({"X-ORGANIZATION-SECRET": "wrong"}, GOOD, R_DATA, 401, "X-ORGANIZATION-SECRET"),
        ({"X-USER-ID": ""}, GOOD, R_DATA, 401, "X-USER-ID"),
        ({"Content-Type": "text/plain"}, GOOD, R_DATA, 415, "Unsupported"),
        ({}, {**GOOD, "content": ""}, R_DATA, 400, "between 1 and 10000"),
        ({}, {**GOOD, "content": "x" * 10001}, R_DATA, 400, "between 1 and 10000"),
        ({}, {**GOOD, "content": 5}, R_DATA, 400, "content must be a string"),
        ({}, {"telegram_data": GOOD["telegram_data"]}, R_DATA, 400, "content is required"),
        ({}, {"content": "hi"}, R_DATA, 400, "telegram_data is required"),
        ({}, {**GOOD, "telegram_data": {**GOOD["telegram_data"], "first_name": "A"}}, R_DATA,
         400, "additional properties are not allowed (first_name)"),
        ({}, {**GOOD, "telegram_data": {"chat_type": "group", "chat_id": -5}}, R_DATA, 400,
         "telegram_data.message_id is required"),
        ({}, {**GOOD, "telegram_data": {**GOOD["telegram_data"], "username": None}}, R_DATA,
         400, "telegram_data.username must be a string"),
        ({}, {**GOOD, "telegram_data": {**GOOD["telegram_data"], "chat_type": "dm"}}, R_DATA,
         400, "chat_type must be one of"),
        ({}, {**GOOD, "skip_chat_history": "yes"}, R_DATA, 400, "must be a boolean"),
        ({}, GOOD, "00000000-dead-4bad-8bad-000000000000", 404, "Replica not found"),
    ],
)
async def test_simulator_rejects(sim: SensaySimulator, headers: dict[str, str], body: object,
                                 replica: str, status: int, says: str) -> None:
    response = await post(sim, body, replica=replica, headers=headers)
    assert response.status_code == status
    got = response.json()
    assert got["success"] is True  # as documented, even on errors
    assert says in got["error"]
    assert got["request_id"]
    assert ("fingerprint" in got) is (status != 404)
    assert sim.turns == []


async def test_simulator_rejects_invalid_json(sim: SensaySimulator) -> None:
    response = await post(sim, None, raw=b"{not json")
    assert response.status_code == 400


async def test_simulator_history_per_replica_and_user(sim: SensaySimulator) -> None:
    assert (await post(sim, GOOD)).json()["content"] == "[D] hi (history: 0)"
    assert (await post(sim, GOOD)).json()["content"] == "[D] hi (history: 2)"
    skipped = {**GOOD, "content": "secret", "skip_chat_history": True}
    assert (await post(sim, skipped)).json()["content"] == "[D] secret (history: 0)"
    assert (await post(sim, GOOD, headers={"X-USER-ID": "u2"})).json()["content"] == (
        "[D] hi (history: 0)")
    assert (await post(sim, GOOD, replica=R_UI)).json()["content"] == "[U] hi (history: 0)"
    assert [m["content"] for m in sim.history(R_DATA, "u1")] == [
        "hi", "[D] hi (history: 0)", "hi", "[D] hi (history: 2)"]
    assert [t.stored for t in sim.turns] == [True, True, False, True, True]
