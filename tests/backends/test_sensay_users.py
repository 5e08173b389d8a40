"""Sensay's per-Telegram-user mode (no ``user_id``), group context and photos, through the
engine against the simulator; the seed-contract config (``user_id``) sends what it always did."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import tgmux.backends.sensay as sensay_plugin
from tgmux.backend import Media, MediaRef, MediaUnavailable, Notice, Text
from tgmux.backends.sensay.adapter import EMPTY_CAPTION, NO_HISTORY, NO_IMAGE_URL
from tgmux.backends.sensay.simulator import Replica, SensaySimulator
from tgmux.harness import EngineHarness
from tgmux.ops import start_ops_server
from tgmux.types import MEDIA_UNAVAILABLE, IncomingMessage, RepliedTo

SECRET = "org-secret-7"
REPLICA = "55555555-5555-4555-8555-555555555555"
COMPLETION = f"/v1/replicas/{REPLICA}/chat/completions/telegram"
HISTORY = f"/v1/replicas/{REPLICA}/chat/history/telegram"

PER_USER = """
backends:
  abe:
    type: sensay
    base_url: ${URL}
    organization_secret: ${SECRET}
    replica_uuid: %(replica)s
    stream: false
routes:
  - match: {chat_id: -100}
    backend: abe
    options: {record_group_context: true}
default: abe
"""

SEED = """
backends:
  abe:
    type: sensay
    base_url: ${URL}
    organization_secret: ${SECRET}
    user_id: "tg_{user_id}"
    replica_uuid: %(replica)s
    stream: false
    record_group_context: true
default: abe
"""


@pytest.fixture
async def sim() -> AsyncIterator[SensaySimulator]:
    async with SensaySimulator(organization_secret=SECRET,
                               replicas=[Replica(REPLICA, "Abe")]) as server:
        yield server  # type: ignore[misc]


def harness(sim: SensaySimulator, config: str = PER_USER,
            store: str = "memory://") -> EngineHarness:
    return EngineHarness.from_yaml(config % {"replica": REPLICA}, store=store,
                                   env={"URL": sim.base_url, "SECRET": SECRET},
                                   plugins=[sensay_plugin])


def calls(sim: SensaySimulator) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in sim.requests]


def user_headers(telegram_id: str) -> dict[str, str]:
    return {"X-ORGANIZATION-SECRET": SECRET, "X-USER-ID": telegram_id,
            "X-USER-ID-TYPE": "telegram", "X-API-Version": "2025-04-01"}


def sent_headers(request, names=("X-ORGANIZATION-SECRET", "X-USER-ID", "X-USER-ID-TYPE",
                                 "X-API-Version")) -> dict[str, str]:
    return {n: v for n in names if (v := request.header(n)) is not None}


# -- one Sensay user per Telegram user ---------------------------------------------------------


async def test_two_telegram_users_get_two_sensay_users_created_once_each(sim) -> None:
    async with harness(sim) as h:
        assert await h.say("hi", user_id=42, username="alice", message_id=1) == [
            Text("[Abe] hi (history: 0)")]
        assert await h.say("again", user_id=42, message_id=2) == [
            Text("[Abe] again (history: 2)")]
        assert await h.say("me too", user_id=43, message_id=1) == [
            Text("[Abe] me too (history: 0)")]
    assert calls(sim) == [
        ("GET", "/v1/users/me"), ("POST", "/v1/users"), ("POST", COMPLETION),
        ("POST", COMPLETION),
        ("GET", "/v1/users/me"), ("POST", "/v1/users"), ("POST", COMPLETION)]
    me, create, first = sim.requests[:3]
    assert sent_headers(me) == user_headers("42")
    # creating a user is the organization's call: no X-USER-ID
    assert sent_headers(create) == {"X-ORGANIZATION-SECRET": SECRET,
                                    "X-API-Version": "2025-04-01"}
    assert create.json == {"linkedAccounts": [{"accountID": "42", "accountType": "telegram"}]}
    assert sim.requests[5].json == {
        "linkedAccounts": [{"accountID": "43", "accountType": "telegram"}]}
    assert sent_headers(first) == user_headers("42")
    assert first.json == {"content": "hi", "skip_chat_history": False, "telegram_data": {
        "chat_type": "private", "chat_id": 42, "user_id": 42, "username": "alice",
        "message_id": 1}}
    assert sent_headers(sim.requests[6]) == user_headers("43")
    assert sim.user_for("telegram", "42") != sim.user_for("telegram", "43")
    assert len(sim.created_users) == 2


async def test_creating_a_new_user_logs_no_warning(
        sim, caplog: pytest.LogCaptureFixture) -> None:
    """Sensay answers 401 to GET /v1/users/me for a user it does not know yet: the normal
    path of every new user, not a warning."""
    caplog.set_level(logging.DEBUG)
    async with harness(sim) as h:
        assert await h.say("hi", user_id=42) == [Text("[Abe] hi (history: 0)")]
    assert calls(sim)[:2] == [("GET", "/v1/users/me"), ("POST", "/v1/users")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("GET /v1/users/me failed: kind=auth status=401" in r.getMessage()
               for r in caplog.records)  # still there at DEBUG


async def test_an_existing_sensay_user_is_not_created_again(sim) -> None:
    sim.add_user("abe-fan", [{"accountID": "42", "accountType": "telegram"}])
    async with harness(sim) as h:
        await h.say("hi", user_id=42)
        await h.say("hi again", user_id=42)
    assert calls(sim) == [("GET", "/v1/users/me"), ("POST", COMPLETION), ("POST", COMPLETION)]
    assert [t.user for t in sim.turns] == ["abe-fan", "abe-fan"]


async def test_known_users_survive_a_restart_on_sqlite(sim, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/tgmux.db"
    async with harness(sim, store=store) as h:
        await h.say("before", user_id=42, message_id=1)
    async with harness(sim, store=store) as h:
        assert await h.say("after", user_id=42, message_id=2) == [
            Text("[Abe] after (history: 2)")]
    assert calls(sim) == [("GET", "/v1/users/me"), ("POST", "/v1/users"), ("POST", COMPLETION),
                          ("POST", COMPLETION)]


async def test_two_engines_racing_on_one_store_create_the_user_once(sim, tmp_path) -> None:
    # both ask users/me before either has created the user: 0.5 s, as the engines (SQLite
    # writes contending for one file) may be tens of milliseconds apart on a loaded machine
    sim.latency = 0.5
    store = f"sqlite:///{tmp_path}/tgmux.db"
    async with harness(sim, store=store) as one, harness(sim, store=store) as two:
        answers = await asyncio.gather(one.say("from one", user_id=42, message_id=1),
                                       two.say("from two", user_id=42, message_id=2))
    assert [a[-1].text.split(" (")[0] for a in answers] == ["[Abe] from one", "[Abe] from two"]
    creates = sim.requests_to("/v1/users", "POST")
    assert len(creates) == 2 and len(sim.created_users) == 1  # the second one met a 409
    assert {t.user for t in sim.turns} == {sim.user_for("telegram", "42")}


async def test_concurrent_first_messages_of_one_user_share_one_creation(sim) -> None:
    sim.latency = 0.02
    async with harness(sim) as h:
        await asyncio.gather(*(h.say(f"chat {n}", user_id=42, chat_id=-200 - n,
                                     chat_type="group") for n in range(3)))
        assert len(h.engine.backends["abe"]._creating) == 0  # nothing left behind
    assert len(sim.requests_to("/v1/users/me")) == 1
    assert len(sim.requests_to("/v1/users", "POST")) == 1


# -- group context -----------------------------------------------------------------------------


async def test_unaddressed_group_messages_are_recorded_before_the_next_mention(sim) -> None:
    async with harness(sim) as h:
        await h.submit("the meeting moved to 5", user_id=7, username="carol", chat_id=-100,
                       chat_type="group", message_id=30, addressed=False,
                       chat_title="Book club")
        answer = await h.say("when is the meeting?", user_id=42, chat_id=-100,
                             chat_type="group", message_id=31, chat_title="Book club")
    assert answer == [Text("[Abe] when is the meeting? (history: 1)")]
    assert calls(sim) == [("GET", "/v1/users/me"), ("POST", "/v1/users"), ("POST", HISTORY),
                          ("GET", "/v1/users/me"), ("POST", "/v1/users"), ("POST", COMPLETION)]
    recorded, completion = sim.requests[2], sim.requests[5]
    assert sent_headers(recorded) == user_headers("7")
    assert recorded.json == {"content": "the meeting moved to 5", "telegram_data": {
        "chat_type": "group", "chat_id": -100, "chat_name": "Book club", "user_id": 7,
        "username": "carol", "message_id": 30}}
    assert sent_headers(completion) == user_headers("42")
    assert completion.json["telegram_data"] == {
        "chat_type": "group", "chat_id": -100, "chat_name": "Book club", "user_id": 42,
        "message_id": 31}
    assert h.delivered == [(-100, Text("[Abe] when is the meeting? (history: 1)"))]


async def test_group_context_is_opt_in(sim) -> None:
    async with harness(sim) as h:  # chat -200 has no record_group_context
        await h.say("chatter", user_id=7, chat_id=-200, chat_type="group", addressed=False)
    assert sim.requests == []


async def test_a_failed_recording_is_not_shown_and_the_mention_is_answered(sim) -> None:
    sim.inject(status=500, body={"success": True, "error": "down"}, path="/chat/history")
    async with harness(sim) as h:
        await h.say("chatter", user_id=7, chat_id=-100, chat_type="group", addressed=False)
        answer = await h.say("hello?", user_id=7, chat_id=-100, chat_type="group")
    assert answer == [Text("[Abe] hello? (history: 0)")]
    assert h.delivered == [(-100, Text("[Abe] hello? (history: 0)"))]


# -- the seed contract -------------------------------------------------------------------------


async def test_a_user_id_config_sends_exactly_the_seed_contract(sim) -> None:
    async with harness(sim, SEED) as h:
        await h.say("hi", user_id=42, username="alice", chat_id=-1001, chat_type="supergroup",
                    message_id=5, thread_id=3, chat_title="Book club")
        await h.say("chatter", user_id=7, chat_id=-1001, chat_type="supergroup",
                    message_id=6, addressed=False, chat_title="Book club")
        assert [c.name for c in h.engine.backends["abe"].commands()] == ["fresh"]
    (completion, recorded) = sim.requests
    assert completion.path == COMPLETION
    assert sent_headers(completion) == {"X-ORGANIZATION-SECRET": SECRET, "X-USER-ID": "tg_42"}
    assert completion.json == {"content": "hi", "skip_chat_history": False, "telegram_data": {
        "chat_type": "supergroup", "chat_id": -1001, "user_id": 42, "username": "alice",
        "message_id": 5, "message_thread_id": 3}}
    # group context works with a fixed user too, and with the same six keys at most
    assert recorded.path == HISTORY
    assert sent_headers(recorded) == {"X-ORGANIZATION-SECRET": SECRET, "X-USER-ID": "tg_7"}
    assert recorded.json == {"content": "chatter", "telegram_data": {
        "chat_type": "supergroup", "chat_id": -1001, "user_id": 7, "message_id": 6}}


async def test_an_api_version_with_a_user_id_is_sent_and_allows_chat_name(sim) -> None:
    config = SEED.replace("stream: false", "stream: false\n    api_version: 2025-03-25")
    async with harness(sim, config) as h:
        await h.say("hi", user_id=42, chat_id=-100, chat_type="group", chat_title="Club")
    (completion,) = sim.requests
    assert sent_headers(completion) == {"X-ORGANIZATION-SECRET": SECRET, "X-USER-ID": "tg_42",
                                        "X-API-Version": "2025-03-25"}
    assert completion.json["telegram_data"]["chat_name"] == "Club"


def test_the_simulator_refuses_chat_name_without_an_api_version() -> None:
    body = {"content": "x", "telegram_data": {"chat_type": "group", "chat_id": -1,
                                              "message_id": 1, "chat_name": "Club"}}
    assert SensaySimulator.validate(body) == (
        "telegram_data: additional properties are not allowed (chat_name)")
    assert SensaySimulator.validate(body, versioned=True) is None


# -- /history ----------------------------------------------------------------------------------


async def test_history_reads_the_telegram_history_endpoint(sim) -> None:
    async with harness(sim) as h:
        assert await h.say("/history", user_id=42) == [Text(NO_HISTORY)]
        assert sim.created_users == {}  # never created just to show nothing
        await h.say("hi", user_id=42)
        sim.requests.clear()
        assert await h.say("/history", user_id=42) == [
            Text("user: hi\nassistant: [Abe] hi (history: 0)")]
    (listed,) = sim.requests
    assert (listed.method, listed.path) == ("GET", HISTORY)
    assert sent_headers(listed) == user_headers("42")


async def test_history_is_no_command_of_the_seed_contract(sim) -> None:
    async with harness(sim, SEED) as h:
        answer = await h.say("/history", user_id=42)
    assert len(answer) == 1 and answer[0].text.startswith(
        "Unknown command /history. Commands here:\n/start")
    assert sim.requests == []


# -- photos ------------------------------------------------------------------------------------


async def test_photos_caption_and_image_url(sim) -> None:
    photo = Media("photo", data=b"\xff\xd8jpeg", mime_type="image/jpeg")
    hosted = Media("photo", url="https://files.example.com/p/abc.jpg", mime_type="image/jpeg")
    async with harness(sim) as h:
        assert await h.say("", user_id=42, media=photo) == [Notice(EMPTY_CAPTION)]
        assert sim.requests == []
        assert await h.say("what is this?", user_id=42, media=photo) == [
            Notice(NO_IMAGE_URL), Text("[Abe] what is this? (history: 0)")]
        assert "imageURL" not in sim.requests[-1].json
        await h.say("and this?", user_id=42, media=hosted)
    assert sim.requests[-1].json["imageURL"] == "https://files.example.com/p/abc.jpg"
    assert sim.turns[-1].image_url == "https://files.example.com/p/abc.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(config: str) -> str:
    """``config`` with the ops server on a free port and its public address."""
    port = free_port()
    return config + (f"server:\n  listen: 127.0.0.1:{port}\n"
                     f"  public_url: http://127.0.0.1:{port}\n")


async def test_with_public_url_a_captioned_photo_goes_as_a_fetchable_image_url(sim) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    photo = Media("photo", data=jpeg)  # as from Telegram: no URL, no mime type
    async with harness(sim, served(PER_USER)) as h:
        server = await start_ops_server(h.config, h.engine)
        try:
            assert await h.say("what is this?", user_id=42, media=photo) == [
                Text("[Abe] what is this? (history: 0)")]
            url = sim.requests[-1].json["imageURL"]
            assert url.startswith(f"http://127.0.0.1:{server.port}/media/")
            turn = sim.turns[-1]
            assert (turn.image_url, turn.image_status, turn.image_bytes) == (url, 200, jpeg)
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.headers["Content-Type"] == "image/jpeg"
            # past its ttl the link is dead
            links = h.engine.media_links
            links.clock = lambda: time.monotonic() + links.ttl
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 404
            # a photo alone is still answered as Sensay's bot does, nothing shared
            assert await h.say("", user_id=42, media=photo) == [Notice(EMPTY_CAPTION)]
            assert len(links) == 0
        finally:
            await server.stop()


async def test_a_photo_that_cannot_be_fetched_sends_nothing(sim) -> None:
    async def expired(ref: MediaRef) -> bytes:
        raise MediaUnavailable("file reference expired")

    photo = Media("photo", ref=MediaRef("file-1"), fetch=expired)
    async with harness(sim, served(PER_USER)) as h:
        assert await h.say("what is this?", user_id=42, media=photo) == [
            Notice(MEDIA_UNAVAILABLE)]
    assert sim.requests == []


async def test_the_seed_contract_sends_no_image_url_even_with_public_url(sim) -> None:
    photo = Media("photo", data=b"\xff\xd8jpeg")
    hosted = Media("photo", url="https://files.example.com/p/abc.jpg")
    async with harness(sim, served(SEED)) as h:
        assert await h.say("what is this?", user_id=42, media=photo) == [
            Notice(NO_IMAGE_URL), Text("[Abe] what is this? (history: 0)")]
        await h.say("and this?", user_id=42, media=hosted)
        assert h.engine.media_links is not None and len(h.engine.media_links) == 0
    assert all("imageURL" not in r.json for r in sim.requests)


# -- the documented example ----------------------------------------------------------------------


async def test_the_documented_default_config_works_as_printed() -> None:
    page = (Path(__file__).parents[2] / "docs/backends/sensay.md").read_text()
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))
    abe = example["backends"]["abe"]
    assert "user_id" not in abe and "api_version" not in abe  # the default mode, as printed
    route = example["routes"][0]  # a group whose route keeps 20 lines of context
    group_id, replica = route["match"]["chat_id"][0], route["options"]["replica_uuid"]
    async with SensaySimulator(organization_secret=SECRET,
                               replicas=[Replica(abe["replica_uuid"], "Abe"),
                                         Replica(replica, "Club Abe")],
                               chunk_size=50) as server:
        abe["base_url"] = server.base_url
        text = yaml.safe_dump(example).replace("${SENSAY_ORGANIZATION_SECRET}", SECRET)
        h = EngineHarness.from_yaml(text, plugins=[sensay_plugin])
        async with h:
            await h.say("chatter", user_id=7, chat_id=group_id, chat_type="supergroup",
                        addressed=False, chat_title="Club")
            parts = await h.say("hi", user_id=42, chat_id=group_id, chat_type="supergroup")
            assert [p for p in parts if isinstance(p, Text)][-1] == \
                Text("[Club Abe] hi (history: 1)")
            parts = await h.say("hi", user_id=42)
            assert [p for p in parts if isinstance(p, Text)][-1] == Text("[Abe] hi (history: 0)")
        assert [r.path for r in server.requests][2] == (
            f"/v1/replicas/{replica}/chat/history/telegram")
        assert {r.header("X-USER-ID-TYPE") for r in server.requests if r.header("X-USER-ID")} \
            == {"telegram"}


# -- group_context and reply context -----------------------------------------------------------

GROUP_CONTEXT = PER_USER.replace("""    options: {record_group_context: true}
""", """    group_context: 3
""")


async def test_a_failed_recording_of_group_context_still_answers(
        sim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim.inject(status=500, body={"success": True, "error": "down"}, path="/chat/history")
    async with harness(sim, GROUP_CONTEXT) as h:
        for text in ("one", "two"):
            await h.say(text, user_id=7, chat_id=-100, chat_type="group", addressed=False)
        assert sim.requests == []  # kept by tgmux, not sent yet
        answer = await h.say("hello?", user_id=7, chat_id=-100, chat_type="group")
    assert answer == [Text("[Abe] hello? (history: 0)")]
    # the first recording failed: the second is not tried, the question is asked
    assert calls(sim) == [("GET", "/v1/users/me"), ("POST", "/v1/users"), ("POST", HISTORY),
                          ("POST", COMPLETION)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"sensay:abe: POST {HISTORY} failed: kind=unavailable status=500 message='down'"]
    assert "chat -100: abe: the group's messages were not all recorded: kind=unavailable " \
        "status=500 message='down'" in [r.getMessage() for r in caplog.records]


def replying(h: EngineHarness, text: str, reply_to: RepliedTo, **kwargs: Any) -> IncomingMessage:
    return dataclasses.replace(h.message(text, **kwargs), reply_to=reply_to)


async def test_the_replied_to_message_is_said_before_the_text(sim) -> None:
    anna = RepliedTo("the meeting moved to 5", "Anna", message_id=30)
    mine = RepliedTo("It is at 5 in the library.", "tgmux_bot", from_bot=True,
                     quote="in the library")
    async with harness(sim) as h:
        for message in (replying(h, "when?", anna, user_id=42),
                        replying(h, "which one?", mine, user_id=42)):
            await (await h.engine.submit(message))
        skipped = replying(h, "/fresh really?", anna, user_id=42)
        await (await h.engine.submit(skipped))
    assert [r.json["content"] for r in sim.requests_to(COMPLETION)] == [
        '[In reply to Anna: "the meeting moved to 5"]\n\nwhen?',
        '[In reply to your message: "in the library"]\n\nwhich one?',
        '[In reply to Anna: "the meeting moved to 5"]\n\nreally?']


async def test_a_reply_context_that_does_not_fit_is_left_out(sim) -> None:
    text = "🦊" * 4990  # 9,980 UTF-16 units: no room for the 40 of the preamble
    async with harness(sim) as h:
        message = replying(h, text, RepliedTo("the meeting moved to 5", "Anna"), user_id=42)
        await (await h.engine.submit(message))
    (completion,) = sim.requests_to(COMPLETION)
    assert completion.json["content"] == text
