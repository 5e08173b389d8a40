"""LucyDream client against the real simulator on 127.0.0.1: exact requests and error mapping."""

from __future__ import annotations

import httpx
import pytest

from tgmux.backends.lucydream.client import (
    QUOTA_USER_MESSAGE,
    LucyDreamClient,
    SubUser,
    normalize_base_url,
)
from tgmux.backends.lucydream.simulator import IMAGE_REPLY, PNG, LucyDreamSimulator
from tgmux.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    ProtocolError,
    QuotaExceededError,
    UnavailableError,
)

KEY = "key-one"
OTHER_KEY = "key-two"
PREFIX = "/wp-json/telegram/v1"


@pytest.fixture
async def sim():
    async with LucyDreamSimulator(api_keys={KEY, OTHER_KEY}, free_messages=None) as server:
        yield server


@pytest.fixture
async def client(sim):
    async with LucyDreamClient(KEY, base_url=sim.base_url, timeout=5) as c:
        yield c


def _header_names(request) -> set[str]:
    return {k.lower() for k in request.headers}


async def test_create_sub_user_exact_request(sim, client):
    sub = await client.create_sub_user("tg_42")
    assert sub.user_id.startswith("user_") and sub.username == "tg_42"
    assert sub.email and sub.email.endswith("@telegram.proxy")
    [req] = sim.requests
    assert (req.method, req.path, req.query) == ("POST", f"{PREFIX}/create-sub-user", {})
    assert req.header("X-API-Key") == KEY
    assert req.header("Content-Type") == "application/json"
    assert req.json == {"username": "tg_42"}  # no email key when none is given

    await client.create_sub_user("tg_43", email="a@example.org")
    assert sim.requests[-1].json == {"username": "tg_43", "email": "a@example.org"}


async def test_send_message_exact_request(sim, client):
    sub = await client.create_sub_user("tg_1")
    reply = await client.send_message("Hello!", chatbot_model="2195981", user_id=sub.user_id)
    assert reply == "You said: Hello!"
    req = sim.requests[-1]
    assert (req.method, req.path, req.query) == ("POST", f"{PREFIX}/send-message", {})
    assert req.header("X-API-Key") == KEY
    assert req.header("Content-Type") == "application/json"
    assert req.json == {"message": "Hello!", "chatbot_model": "2195981", "user_id": sub.user_id}


async def test_request_image_exact_request_and_image_served(sim, client):
    sub = await client.create_sub_user("tg_1")
    image = await client.request_image(chatbot_model="2195981", user_id=sub.user_id)
    req = sim.requests[-1]
    assert (req.method, req.path) == ("POST", f"{PREFIX}/request-image")
    assert req.header("X-API-Key") == KEY
    assert req.json == {"chatbot_model": "2195981", "user_id": sub.user_id}
    assert image.reply == IMAGE_REPLY
    assert image.image_url.startswith(sim.root_url + "/wp-content/uploads/")
    async with httpx.AsyncClient() as plain:
        got = await plain.get(image.image_url)
    assert got.status_code == 200 and got.content == PNG


async def test_get_history_uses_query_parameters_and_no_body(sim, client):
    sub = await client.create_sub_user("tg_1")
    await client.send_message("one", chatbot_model="2195981", user_id=sub.user_id)
    history = await client.get_history(chatbot_model="2195981", user_id=sub.user_id)
    req = sim.requests[-1]
    assert (req.method, req.path) == ("GET", f"{PREFIX}/get-history")
    assert req.query == {"chatbot_model": "2195981", "user_id": sub.user_id}
    assert req.body == b""
    assert "content-type" not in _header_names(req)
    assert req.header("X-API-Key") == KEY
    assert history.chatbot_name == "Lucy Dream" and history.count == 2
    assert [(e.role, e.clean_message) for e in history.entries] == [
        ("user", "one"), ("assistant", "You said: one")
    ]
    # the raw message carries markup; clean_message is the text
    assert history.entries[1].message == "<p>You said: one</p>"


async def test_list_sub_users_only_own_account(sim, client):
    mine = await client.create_sub_user("tg_1")
    sim.add_sub_user("tg_other", api_key=OTHER_KEY)
    users = await client.list_sub_users()
    req = sim.requests[-1]
    assert (req.method, req.path, req.query, req.body) == ("GET", f"{PREFIX}/sub-users", {}, b"")
    assert req.header("X-API-Key") == KEY
    assert users == [SubUser(mine.user_id, "tg_1", mine.email)]
    assert await client.find_sub_user("TG_1") == users[0]
    assert await client.find_sub_user("tg_other") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.send_message("hi", chatbot_model="2195981", user_id="user_1"),
        lambda c: c.request_image(chatbot_model="2195981", user_id="user_1"),
        lambda c: c.get_history(chatbot_model="2195981", user_id="user_1"),
        lambda c: c.create_sub_user("tg_1"),
        lambda c: c.list_sub_users(),
    ],
    ids=["send-message", "request-image", "get-history", "create-sub-user", "sub-users"],
)
async def test_invalid_key_is_auth_error_with_provider_message(sim, call):
    async with LucyDreamClient("wrong", base_url=sim.base_url, timeout=5) as bad:
        with pytest.raises(AuthError) as info:
            await call(bad)
    err = info.value
    assert err.status == 403
    assert err.provider_message == "Invalid API key"
    assert err.details == {"code": "rest_forbidden"}
    assert len(sim.requests) == 1  # a refusal is not retried


async def test_bad_request_not_found_and_duplicate_username(sim, client):
    sub = await client.create_sub_user("tg_1")
    with pytest.raises(BadRequestError) as info:
        await client.create_sub_user("tg_1")
    assert (info.value.status, info.value.provider_message) == (400, "Username already exists")
    assert info.value.details == {"code": "username_exists"}

    with pytest.raises(BadRequestError) as info:
        await client.send_message("", chatbot_model="2195981", user_id=sub.user_id)
    assert info.value.provider_message == "Missing parameter(s): message"

    with pytest.raises(NotFoundError) as info:
        await client.send_message("hi", chatbot_model="2195981", user_id="user_999")
    assert (info.value.status, info.value.provider_message) == (404, "User not found")

    with pytest.raises(NotFoundError) as info:
        await client.get_history(chatbot_model="1", user_id=sub.user_id)
    assert info.value.provider_message == "Chatbot model not found"


async def test_usernames_are_unique_across_accounts(sim, client):
    sim.add_sub_user("tg_7", api_key=OTHER_KEY)
    with pytest.raises(BadRequestError, match="Username already exists"):
        await client.create_sub_user("tg_7")


async def test_server_error_on_post_is_not_retried(sim, client):
    sub = await client.create_sub_user("tg_1")
    sim.inject(path="send-message", status=500,
               body={"code": "internal_error", "message": "Database error"})
    with pytest.raises(UnavailableError) as info:
        await client.send_message("hi", chatbot_model="2195981", user_id=sub.user_id)
    assert info.value.status == 500
    assert info.value.provider_message == "Database error"
    assert len(sim.requests_to("send-message")) == 1
    assert sim.history(sub.user_id) == []


async def test_server_error_on_get_history_is_retried(sim, client):
    sub = await client.create_sub_user("tg_1")
    sim.inject(path="get-history", status=500, body={"code": "x", "message": "busy"})
    history = await client.get_history(chatbot_model="2195981", user_id=sub.user_id)
    assert history.entries == []
    assert len(sim.requests_to("get-history")) == 2


async def test_free_messages_then_credits_then_quota_error():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=1, credits=1) as sim:
        async with LucyDreamClient(KEY, base_url=sim.base_url, timeout=5) as client:
            sub = await client.create_sub_user("tg_1")
            await client.send_message("free", chatbot_model="2195981", user_id=sub.user_id)
            await client.request_image(chatbot_model="2195981", user_id=sub.user_id)  # a credit
            with pytest.raises(QuotaExceededError) as info:
                await client.send_message("paid", chatbot_model="2195981", user_id=sub.user_id)
    err = info.value
    assert err.status == 402
    assert err.provider_message == "Insufficient credits. Please top up your LucyDream account."
    assert err.details == {"code": "insufficient_credits"}
    assert err.user_message == QUOTA_USER_MESSAGE
    assert sim.accounts[KEY].used == 2 and sim.accounts[KEY].credits == 0


async def test_credits_error_on_403_is_still_quota():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=0, credits_status=403) as sim:
        async with LucyDreamClient(KEY, base_url=sim.base_url, timeout=5) as client:
            sub = await client.create_sub_user("tg_1")
            with pytest.raises(QuotaExceededError) as info:
                await client.send_message("x", chatbot_model="2195981", user_id=sub.user_id)
    assert info.value.status == 403


async def test_success_false_and_malformed_answers(sim, client):
    sim.inject(path="send-message", status=200,
               body={"success": False, "message": "You have insufficient credits"})
    with pytest.raises(QuotaExceededError):
        await client.send_message("x", chatbot_model="2195981", user_id="user_1")
    sim.inject(path="send-message", status=200, body={"success": False, "message": "Oops"})
    with pytest.raises(UnavailableError, match="send-message failed"):
        await client.send_message("x", chatbot_model="2195981", user_id="user_1")
    sim.inject(path="send-message", status=200, body={"text": "wrong field"})
    with pytest.raises(ProtocolError):
        await client.send_message("x", chatbot_model="2195981", user_id="user_1")
    sim.inject(path="request-image", status=200, body={"reply": "no url"})
    with pytest.raises(ProtocolError):
        await client.request_image(chatbot_model="2195981", user_id="user_1")


async def test_wp_json_root_is_accepted_as_base_url(sim):
    assert normalize_base_url("https://my.lucydream.ai/wp-json/") == (
        "https://my.lucydream.ai/wp-json/telegram/v1/"
    )
    assert normalize_base_url("https://my.lucydream.ai/wp-json/telegram/v1") == (
        "https://my.lucydream.ai/wp-json/telegram/v1/"
    )
    async with LucyDreamClient(KEY, base_url=f"{sim.root_url}/wp-json", timeout=5) as c:
        await c.list_sub_users()
    assert sim.requests[-1].path == f"{PREFIX}/sub-users"


async def test_simulator_reads_json_only_with_json_content_type(sim):
    # Faithful to WordPress: a JSON text without the JSON content type carries no parameters.
    async with httpx.AsyncClient(base_url=sim.base_url) as plain:
        got = await plain.post("create-sub-user", content=b'{"username": "x"}',
                               headers={"X-API-Key": KEY, "Content-Type": "text/plain"})
        assert got.status_code == 400
        assert got.json()["message"] == "Missing parameter(s): username"
        got = await plain.post("create-sub-user", json={"username": "x"},
                               headers={"X-API-Key": KEY})
        assert got.status_code == 200
