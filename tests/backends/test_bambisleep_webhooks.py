"""BambiSleep webhooks through the engine: registration at start (once: remembered across
restarts, retried only after refusals that prove nothing was registered), signed events
delivered to the configured chat (through the ``tgmux_provider_event`` hook) once each, forged
and unsigned ones refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import time
from datetime import UTC, datetime

import httpx
import pytest

import tgmux.backends.bambisleep as bambisleep_plugin
from tgmux.backend import Text
from tgmux.backends.bambisleep.simulator import BambiSleepSimulator
from tgmux.backends.bambisleep.webhooks import WebhookReceiver, event_text, parse_listen, sign
from tgmux.bootstrap import load_config_text, load_text
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.hooks import build_plugin_manager, hookimpl

KEY = "key-one"
USER = "bambi"
SECRET = "s3cret"
CHAT = -1001


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EventRecorder:
    """A plugin that sees every provider event."""

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def tgmux_provider_event(self, event, engine):
        self.events.append(event)


def config(sim: BambiSleepSimulator, port: int, webhook_extra: str = "") -> str:
    return f"""
backends:
  bambi:
    type: bambisleep
    base_url: {sim.base_url}
    api_key: {KEY}
    timeout: 3
    webhook:
      listen: 127.0.0.1:{port}
      public_url: http://127.0.0.1:{port}/hooks/bambi
      secret: {SECRET}
      chat_id: {CHAT}
      events: [message.new, trigger.shared]
{webhook_extra}
default: bambi
"""


async def wait_for(predicate, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def sim():
    async with BambiSleepSimulator(api_keys={KEY: USER}) as server:
        yield server


async def test_registered_at_start_and_signed_event_delivered(sim):
    port = free_port()
    recorder = EventRecorder()
    h = EngineHarness.from_yaml(config(sim, port), plugins=[bambisleep_plugin, recorder])
    async with h:
        [register] = sim.requests_to("/webhooks")
        assert (register.method, register.path) == ("POST", "/v1/webhooks")
        assert register.header("Authorization") == f"Bearer {KEY}"
        assert register.json == {"url": f"http://127.0.0.1:{port}/hooks/bambi",
                                 "events": ["message.new", "trigger.shared"], "secret": SECRET}
        assert await sim.deliver_webhook("message.new",
                                         {"username": "alice", "content": "hi Bambi"}) == [200]
        await wait_for(lambda: h.delivered)
        assert h.delivered == [(CHAT, Text("💬 New message from alice: hi Bambi"))]
        assert await sim.deliver_webhook("trigger.shared", {
            "name": "Sleepy", "description": "Feel sleepy", "creator": "alice"}) == [200]
        await wait_for(lambda: len(h.delivered) == 2)
        # not subscribed: the provider does not send it (and the receiver would ignore it)
        assert await sim.deliver_webhook("profile.update", {"username": "alice"}) == []
    assert h.delivered[1] == (CHAT, Text("🌀 Trigger shared: Sleepy by alice — Feel sleepy"))
    first = recorder.events[0]
    assert (first.source, first.type, first.chat_id) == ("bambi", "message.new", CHAT)
    assert first.data == {"username": "alice", "content": "hi Bambi"}


async def test_forged_and_unsigned_are_refused_and_logged(sim, caplog):
    port = free_port()
    recorder = EventRecorder()
    caplog.set_level(logging.WARNING, logger="tgmux.backends.bambisleep.webhooks")
    h = EngineHarness.from_yaml(config(sim, port), plugins=[bambisleep_plugin, recorder])
    async with h:
        forged = await sim.deliver_webhook("message.new", {"username": "mallory",
                                                           "content": "send money"},
                                           secret="guessed")
        unsigned = await sim.deliver_webhook("message.new", {"content": "x"}, signed=False)
        # a valid signature over a different body
        async with httpx.AsyncClient() as raw:
            body = b'{"event": "message.new", "data": {"content": "tampered"}}'
            tampered = await raw.post(
                f"http://127.0.0.1:{port}/hooks/bambi", content=body + b" ",
                headers={"X-Signature": sign(body, SECRET)})
        await asyncio.sleep(0.1)
        receiver = h.engine.backends["bambi"].receiver
    assert (forged, unsigned, tampered.status_code) == ([401], [401], 401)
    assert tampered.json()["code"] == "INVALID_SIGNATURE"
    assert h.delivered == [] and recorder.events == []
    assert receiver.rejected == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("rejected (signature mismatch" in m for m in messages) == 2
    assert sum("rejected (no signature" in m for m in messages) == 1


async def test_configurable_header_and_algorithm():
    async with BambiSleepSimulator(api_keys={KEY: USER},
                                   webhook_signature_header="X-Bambi-Signature",
                                   webhook_algorithm="sha512") as sim:
        port = free_port()
        extra = ("      signature_header: X-Bambi-Signature\n"
                 "      signature_algorithm: sha512")
        h = EngineHarness.from_yaml(config(sim, port, extra), plugins=[bambisleep_plugin])
        async with h:
            assert await sim.deliver_webhook("message.new", {"username": "a",
                                                             "content": "b"}) == [200]
            await wait_for(lambda: h.delivered)
            # the default scheme no longer passes
            sim.webhook_signature_header = "X-Signature"
            sim.webhook_algorithm = "sha256"
            assert await sim.deliver_webhook("message.new", {"content": "c"}) == [401]
        assert h.delivered == [(CHAT, Text("💬 New message from a: b"))]


async def test_receiver_prefix_duplicates_and_bad_bodies():
    got = []

    async def on_event(event, data, payload):
        got.append((event, data))

    receiver = WebhookReceiver(listen="127.0.0.1:0", path="/h", secret=SECRET,
                               on_event=on_event, events={"message.new"},
                               prefix="sha256=")
    await receiver.start()
    try:
        url = receiver.url
        body = b'{"id": "evt_1", "event": "message.new", "data": {"content": "x"}}'
        signed = {"X-Signature": "sha256=" + sign(body, SECRET)}
        async with httpx.AsyncClient() as raw:
            assert (await raw.post(url, content=body, headers=signed)).status_code == 200
            again = await raw.post(url, content=body, headers=signed)
            assert again.json() == {"received": True, "duplicate": True}
            bare = {"X-Signature": sign(body, SECRET)}  # prefix missing
            assert (await raw.post(url, content=body, headers=bare)).status_code == 401
            other = b'{"event": "profile.update", "data": {}}'
            ignored = await raw.post(url, content=other,
                                     headers={"X-Signature": "sha256=" + sign(other, SECRET)})
            assert ignored.json() == {"received": True, "ignored": True}
            junk = b"not json"
            bad = await raw.post(url, content=junk,
                                 headers={"X-Signature": "sha256=" + sign(junk, SECRET)})
            assert bad.status_code == 400
        await asyncio.sleep(0.05)
    finally:
        await receiver.stop()
    assert got == [("message.new", {"content": "x"})]


async def test_registration_retried_when_provider_is_down(sim):
    """A 503 proves nothing was registered: registered again after retry_delay, remembered,
    and no further POST follows the success."""
    port = free_port()
    sim.inject(status=503, path="/webhooks", body={"error": True, "code": "DOWN",
                                                   "message": "maintenance"})
    h = EngineHarness.from_yaml(config(sim, port, "      retry_delay: 0.05"),
                                plugins=[bambisleep_plugin])
    async with h:
        backend = h.engine.backends["bambi"]
        assert backend.webhook_id is None and backend.registration.task is not None
        # the chat keeps working meanwhile
        assert (await h.say("hi", user_id=1))[0].text.startswith("Bambi hears you: hi")
        await wait_for(lambda: backend.webhook_id is not None)
        assert backend.webhook_id == "wh_1"
        stored = json.loads(await backend.kv.get(backend.registration.key()))
        assert (stored["id"], stored["how"]) == ("wh_1", "registered")
        await wait_for(lambda: backend.registration.task.done(), 10)  # no more retries
    posts = sim.requests_to("/webhooks", "POST")
    assert len(posts) == 2 and posts[0].json == posts[1].json
    # in either order: the retry may come before or after the chat's turn on a loaded machine
    assert sorted(sim.statuses) == [("POST", "/v1/ai/generate", 200),
                                    ("POST", "/v1/webhooks", 201)]
    assert [w.id for w in sim.webhooks] == ["wh_1"]


async def test_registration_retried_while_the_provider_refuses_connections(caplog):
    """Connection refused: nothing reached the provider, so registering again is safe."""
    port, api_port = free_port(), free_port()
    sim = BambiSleepSimulator(api_keys={KEY: USER}, port=api_port)
    text = config(sim, port, "      retry_delay: 0.05")
    h = EngineHarness.from_yaml(text, plugins=[bambisleep_plugin])
    async with h:
        backend = h.engine.backends["bambi"]
        assert backend.registration.task is not None and not backend.webhook_registered
        async with sim:
            await wait_for(lambda: backend.webhook_id is not None)
            await asyncio.sleep(0.2)
            assert len(sim.requests_to("/webhooks", "POST")) == 1
            assert [w.url for w in sim.webhooks] == [f"http://127.0.0.1:{port}/hooks/bambi"]


async def test_registration_remembered_across_restarts(sim, tmp_path):
    port = free_port()
    store = f"sqlite:///{tmp_path / 'tgmux.db'}"

    async def run(text: str) -> EngineHarness:
        h = EngineHarness.from_yaml(text, plugins=[bambisleep_plugin], store=store)
        async with h:
            assert await sim.deliver_webhook("message.new", {"username": "a",
                                                             "content": "x"}) == [200]
            await wait_for(lambda: h.delivered)
            webhook_id = h.engine.backends["bambi"].webhook_id
        return webhook_id

    assert await run(config(sim, port)) == "wh_1"
    assert await run(config(sim, port)) == "wh_1"  # remembered: not registered again
    assert len(sim.requests_to("/webhooks", "POST")) == 1
    # another secret is another registration (the old one now fails the signature check)
    sim.webhooks.clear()
    assert await run(config(sim, port).replace(SECRET, "rotated")) == "wh_2"
    assert len(sim.requests_to("/webhooks", "POST")) == 2


@pytest.mark.parametrize("failure", ["timeout", "500"])
async def test_registration_that_may_have_succeeded_is_not_repeated(sim, tmp_path, caplog,
                                                                    failure):
    """A timeout (or a 500) may come after the provider registered the webhook: not sent again
    (operators are told); a signed delivery then confirms and records the registration."""
    port = free_port()
    store = f"sqlite:///{tmp_path / 'tgmux.db'}"
    text = config(sim, port, "      retry_delay: 0.05").replace("timeout: 3", "timeout: 0.3")
    if failure == "timeout":  # the provider registers it, but answers too late
        sim.inject(path="/webhooks", status=0, delay=0.5)
    else:
        sim.inject(path="/webhooks", status=500, body={"error": True, "code": "INTERNAL",
                                                       "message": "oops"})
    caplog.set_level(logging.INFO, logger="tgmux.backends.bambisleep")
    h = EngineHarness.from_yaml(text, plugins=[bambisleep_plugin], store=store)
    async with h:
        backend = h.engine.backends["bambi"]
        assert backend.registration.task is None and not backend.webhook_registered
        await asyncio.sleep(0.5)  # ten retry periods
        assert len(sim.requests_to("/webhooks", "POST")) == 1
        if failure == "timeout":
            assert [w.id for w in sim.webhooks] == ["wh_1"]  # it did register
            assert await sim.deliver_webhook("message.new", {"username": "a",
                                                             "content": "x"}) == [200]
            await wait_for(lambda: backend.webhook_registered)
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "may have reached BambiSleep" in error.getMessage()
    assert "restart tgmux to register again" in error.getMessage()
    if failure == "timeout":
        h = EngineHarness.from_yaml(text, plugins=[bambisleep_plugin], store=store)
        async with h:  # confirmed by the delivery: not registered again after a restart
            assert h.engine.backends["bambi"].webhook_registered
        assert len(sim.requests_to("/webhooks", "POST")) == 1


async def test_deliveries_of_a_webhook_registered_twice_are_passed_on_once(sim):
    port = free_port()
    recorder = EventRecorder()
    h = EngineHarness.from_yaml(config(sim, port), plugins=[bambisleep_plugin, recorder])
    async with h:
        # a registration left over from elsewhere: every event now comes twice
        sim.webhooks.append(dataclasses.replace(sim.webhooks[0], id="wh_old"))
        for n, kwargs in enumerate([{}, {"with_id": False},
                                    {"with_id": False, "with_timestamp": False}]):
            statuses = await sim.deliver_webhook("message.new", {"username": "a",
                                                                 "content": f"m{n}"}, **kwargs)
            assert statuses == [200, 200]
        await wait_for(lambda: len(h.delivered) >= 3, 10)
        receiver = h.engine.backends["bambi"].receiver
    assert [p.text for _, p in h.delivered] == [
        "💬 New message from a: m0", "💬 New message from a: m1", "💬 New message from a: m2"]
    assert len(recorder.events) == 3 and receiver.duplicates == 3


async def test_same_data_at_another_time_is_a_new_event():
    got = []

    async def on_event(event, data, payload):
        got.append(payload.get("timestamp"))

    receiver = WebhookReceiver(listen="127.0.0.1:0", path="/h", secret=SECRET,
                               on_event=on_event)
    await receiver.start()
    # recent stamps: older ones are refused as replays (see test_stale_and_future_...)
    first, second = (iso(time.time() - 10), iso(time.time() - 5))
    try:
        async with httpx.AsyncClient() as raw:
            for stamp in (first, second, second):
                body = json.dumps({"event": "message.new", "timestamp": stamp,
                                   "data": {"content": "same"}}).encode()
                answer = await raw.post(receiver.url, content=body,
                                        headers={"X-Signature": sign(body, SECRET)})
                assert answer.status_code == 200
        await asyncio.sleep(0.05)
    finally:
        await receiver.stop()
    assert got == [first, second]


def test_helpers():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    with pytest.raises(ValueError):
        parse_listen("8080")
    assert event_text("profile.update", {"username": "a", "displayName": "A"}) == \
        "👤 a updated their profile (A)"
    assert event_text("custom.thing", {"x": 1}) == 'custom.thing: {"x": 1}'


# -- replays -------------------------------------------------------------------------------


def signed_delivery(event_id: str, stamp: str, content: str = "hi") -> tuple[bytes, dict]:
    body = json.dumps({"id": event_id, "event": "message.new", "timestamp": stamp,
                       "data": {"username": "alice", "content": content}}).encode()
    return body, {"X-Signature": sign(body, SECRET)}


@pytest.mark.parametrize("store_kind", ["sqlite", "memory"])
async def test_a_delivery_replayed_after_a_restart_is_passed_on_once(sim, tmp_path, store_kind):
    """The deliveries seen live in the backend's store: a restart does not forget them."""
    from tgmux.store import MemoryStore, SQLiteStore

    port = free_port()
    store = SQLiteStore(tmp_path / "tgmux.db") if store_kind == "sqlite" else MemoryStore()
    body, headers = signed_delivery("evt_42", iso(time.time()))
    statuses, delivered = [], []
    for _ in range(2):  # the same backend config on the same store, started twice
        config_data, pm = load_text(config(sim, port), source="<test>",
                                    plugins=[bambisleep_plugin])
        await store.open()
        h = EngineHarness(config_data, store=store, plugin_manager=pm)
        async with h:
            async with httpx.AsyncClient() as raw:
                answer = await raw.post(f"http://127.0.0.1:{port}/hooks/bambi", content=body,
                                        headers=headers)
            statuses.append((answer.status_code, answer.json()))
            if not delivered:  # the first delivery reaches the chat (the replay must not)
                await wait_for(lambda h=h: h.delivered, 10)
            else:
                await asyncio.sleep(0.1)
            delivered += h.delivered
        await store.close()
    assert statuses == [(200, {"received": True}), (200, {"received": True, "duplicate": True})]
    assert delivered == [(CHAT, Text("💬 New message from alice: hi"))]


async def test_stale_and_future_stamped_deliveries_are_refused(sim, caplog):
    port = free_port()
    caplog.set_level(logging.WARNING, logger="tgmux.backends.bambisleep.webhooks")
    h = EngineHarness.from_yaml(config(sim, port), plugins=[bambisleep_plugin])
    url = f"http://127.0.0.1:{port}/hooks/bambi"
    async with h:
        answers = []
        async with httpx.AsyncClient() as raw:
            for n, stamp in enumerate(["2025-01-01T00:00:00Z", iso(time.time() - 400),
                                       iso(time.time() + 400), time.time() - 400,
                                       int((time.time() - 400) * 1000), "yesterday"]):
                body, headers = signed_delivery(f"evt_old_{n}", stamp)
                answers.append(await raw.post(url, content=body, headers=headers))
            body, headers = signed_delivery("evt_now", iso(time.time() - 30))
            fresh = await raw.post(url, content=body, headers=headers)
        await wait_for(lambda: h.delivered)
        receiver = h.engine.backends["bambi"].receiver
    assert [a.status_code for a in answers] == [400] * 6
    assert [a.json()["code"] for a in answers] == ["STALE_TIMESTAMP"] * 5 + ["INVALID_TIMESTAMP"]
    assert answers[0].json()["details"] == {"timestamp": "2025-01-01T00:00:00Z", "max_age": 300}
    assert fresh.status_code == 200
    assert h.delivered == [(CHAT, Text("💬 New message from alice: hi"))]
    assert receiver.refused == 6 and receiver.rejected == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refused (STALE_TIMESTAMP)" in m for m in messages) == 5
    assert any("2025-01-01T00:00:00Z is" in m and "s old" in m for m in messages)
    assert any("in the future" in m for m in messages)


async def test_replay_window_is_configurable_and_timestamps_can_be_required(sim):
    port = free_port()
    extra = "      max_age: 0\n      require_timestamp: true"
    h = EngineHarness.from_yaml(config(sim, port, extra), plugins=[bambisleep_plugin])
    async with h:
        url = f"http://127.0.0.1:{port}/hooks/bambi"
        async with httpx.AsyncClient() as raw:
            body, headers = signed_delivery("evt_1", "2025-01-01T00:00:00Z")
            old = await raw.post(url, content=body, headers=headers)  # no window: accepted
            unstamped = json.dumps({"id": "evt_2", "event": "message.new",
                                    "data": {"content": "x"}}).encode()
            refused = await raw.post(url, content=unstamped,
                                     headers={"X-Signature": sign(unstamped, SECRET)})
        await wait_for(lambda: h.delivered)
    assert old.status_code == 200
    assert (refused.status_code, refused.json()["code"]) == (400, "NO_TIMESTAMP")


async def test_deliveries_seen_are_pruned_and_bounded(monkeypatch):
    from tgmux.backends.bambisleep import webhooks

    monkeypatch.setattr(webhooks, "SEEN_MAX", 20)
    clock = [1_000_000.0]
    got = []

    async def on_event(event, data, payload):
        got.append(payload["id"])

    kv = webhooks._MemoryKV()
    receiver = WebhookReceiver(listen="127.0.0.1:0", path="/h", secret=SECRET,
                               on_event=on_event, kv=kv, max_age=300,
                               clock=lambda: clock[0])
    for n in range(50):
        payload = {"id": f"e{n}", "timestamp": clock[0]}
        assert not await receiver._repeated("message.new", payload, {}, clock[0])
        clock[0] += 1
    assert len(kv.data) <= 20 + 20 // 10  # bounded between prunes
    assert await receiver._repeated("message.new", {"id": "e49"}, {}, clock[0] - 1)
    clock[0] += 400  # past every entry's window
    assert await receiver.prune() > 0 and kv.data == {}


# -- only signed fields decide; no empty secret --------------------------------------------------


async def test_the_event_type_comes_only_from_the_signed_body():
    """An unsigned header cannot name (or rename) the event: a captured delivery cannot be
    replayed as another event type."""
    got = []

    async def on_event(event, data, payload):
        got.append(event)

    receiver = WebhookReceiver(listen="127.0.0.1:0", path="/h", secret=SECRET,
                               on_event=on_event)
    await receiver.start()
    try:
        untyped = b'{"id": "evt_1", "data": {"content": "x"}}'
        typed = b'{"id": "evt_2", "event": "trigger.shared", "data": {"name": "x"}}'
        async with httpx.AsyncClient() as raw:
            for name in ("X-Event", "X-Webhook-Event"):
                answer = await raw.post(receiver.url, content=untyped, headers={
                    "X-Signature": sign(untyped, SECRET), name: "message.new"})
                assert (answer.status_code, answer.json()["code"]) == (400, "NO_EVENT")
            answer = await raw.post(receiver.url, content=typed, headers={
                "X-Signature": sign(typed, SECRET), "X-Event": "message.new"})
            assert answer.status_code == 200
        await wait_for(lambda: got)
    finally:
        await receiver.stop()
    assert got == ["trigger.shared"]


def test_an_empty_secret_is_a_config_error_at_its_line():
    pm = build_plugin_manager()
    pm.register_from(bambisleep_plugin, "bambisleep", "test")
    text = config(BambiSleepSimulator(), 8080).replace(f"secret: {SECRET}",
                                                       "secret: ${HOOK_SECRET}")
    for value in ("", "   "):
        with pytest.raises(ConfigError) as info:
            load_config_text(text, source="c.yaml", env={"HOOK_SECRET": value},
                             plugin_manager=pm)
        line = text.splitlines().index("      secret: ${HOOK_SECRET}") + 1
        assert f"c.yaml:{line}: backends.bambi.webhook.secret: " in str(info.value)
        assert "empty" in str(info.value)


async def test_a_receiver_never_accepts_the_empty_key():
    async def on_event(event, data, payload):
        raise AssertionError("delivered")

    with pytest.raises(ValueError, match="empty"):
        WebhookReceiver(listen="127.0.0.1:0", path="/h", secret="", on_event=on_event)
