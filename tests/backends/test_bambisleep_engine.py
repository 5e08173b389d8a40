"""BambiSleep through the engine (EngineHarness) against the real simulator on 127.0.0.1:
replies with audio and triggers, both auth modes, re-login, every command, rate limits."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from child import SimulatorProcess

import tgmux.backends.bambisleep as bambisleep_plugin
from tgmux.backend import Audio, Notice, Text
from tgmux.backends.bambisleep.adapter import format_triggers
from tgmux.backends.bambisleep.simulator import SESSION_COOKIE, BambiSleepSimulator
from tgmux.bootstrap import load_config_text
from tgmux.errors import USER_MESSAGES, ConfigError, ErrorKind
from tgmux.harness import EngineHarness
from tgmux.hooks import build_plugin_manager

KEY = "key-one"
USER = "bambi"
PASSWORD = "pw-1"


@pytest.fixture
async def sim():
    async with BambiSleepSimulator(api_keys={KEY: USER},
                                   users={USER: PASSWORD, "alice": "pw-2"}) as server:
        yield server


def config(sim: BambiSleepSimulator, auth: str = f"api_key: {KEY}", extra: str = "",
           tail: str = "default: bambi") -> str:
    return f"""
backends:
  bambi:
    type: bambisleep
    base_url: {sim.base_url}
    timeout: 5
    {auth}
{extra}
{tail}
"""


SESSION_AUTH = f"username: {USER}\n    password: {PASSWORD}"


def harness(text: str, **kwargs) -> EngineHarness:
    # Registered explicitly too, so the tests do not depend on the installed entry points.
    return EngineHarness.from_yaml(text, plugins=[bambisleep_plugin], **kwargs)


def load(text: str):
    pm = build_plugin_manager()
    pm.register_from(bambisleep_plugin, "bambisleep", "test")
    return load_config_text(text, env={}, plugin_manager=pm)


def audio(sim: BambiSleepSimulator, n: int) -> Audio:
    """The reply's audio as the backend hands it on by default (``audio_as: voice``): the
    MP3's bytes, fetched, as a voice part (the Telegram frontend makes it a voice note)."""
    return Audio(data=sim.audio[f"response-{n}.mp3"], voice=True,
                 mime_type="audio/mpeg", filename=f"response-{n}.mp3")


# -- chat --------------------------------------------------------------------------------------


async def test_reply_text_triggers_then_voice(sim):
    async with harness(config(sim)) as h:
        parts = await h.say("Hello Bambi", user_id=42)
    assert parts == [
        Text("Bambi hears you: Hello Bambi\n\nTriggers: Good Girl, Bambi Sleep"),
        audio(sim, 123),
    ]
    [req, fetch] = sim.requests
    assert (req.method, req.path) == ("POST", "/v1/ai/generate")
    assert req.header("Authorization") == f"Bearer {KEY}"
    # then the audio file, by its public link: without the key
    assert (fetch.method, fetch.path) == ("GET", "/audio/response-123.mp3")
    assert fetch.header("Authorization") is None
    assert req.json == {"prompt": "Hello Bambi",
                        "settings": {"includeAudio": True, "includeTriggers": True}}


async def test_settings_reach_the_request_and_format(sim):
    extra = """    model: MODEL_2
    include_audio: false
    triggers_format: "{hashtags}"
    triggers_message: separate"""
    async with harness(config(sim, extra=extra)) as h:
        parts = await h.say("hi", user_id=1)
    assert parts == [Text("Bambi hears you: hi"), Text("#Good_Girl #Bambi_Sleep")]
    assert sim.requests[0].json == {"prompt": "hi", "settings": {
        "model": "MODEL_2", "includeAudio": False, "includeTriggers": True}}


async def test_route_overrides_and_no_triggers(sim):
    tail = """routes:
  - match: {chat_id: -100}
    backend: bambi
    options: {include_triggers: false, include_audio: false}
default: bambi"""
    async with harness(config(sim, tail=tail)) as h:
        group = await h.say("hey", user_id=5, chat_id=-100, chat_type="supergroup")
        private = await h.say("hey", user_id=5)
    assert group == [Text("Bambi hears you: hey")]
    assert private[0] == Text("Bambi hears you: hey\n\nTriggers: Good Girl, Bambi Sleep")
    assert sim.requests[0].json["settings"] == {"includeAudio": False, "includeTriggers": False}


def test_format_triggers_placeholders():
    assert format_triggers("{count}: {lines}", ["A b", "C"]) == "2: • A b\n• C"
    assert format_triggers("{triggers}", []) == ""
    assert format_triggers("", ["x"]) == ""


async def test_session_auth_and_relogin_through_engine(sim):
    async with harness(config(sim, SESSION_AUTH)) as h:
        assert (await h.say("one", user_id=1))[0].text.startswith("Bambi hears you: one")
        sim.expire_sessions()
        parts = await h.say("two", user_id=1)
    assert parts[0].text.startswith("Bambi hears you: two")
    api = [r for r in sim.requests if r.path.startswith("/v1/")]
    assert [(r.method, r.path) for r in api] == [
        ("POST", "/v1/auth/login"), ("POST", "/v1/ai/generate"),
        ("POST", "/v1/ai/generate"), ("POST", "/v1/auth/login"), ("POST", "/v1/ai/generate"),
    ]
    assert [s for (_, p, s) in sim.statuses if p == "/v1/ai/generate"] == [200, 401, 200]
    token = next(iter(sim.sessions))
    assert api[-1].header("Cookie") == f"{SESSION_COOKIE}={token}"
    # each reply's audio was fetched by its public link, without the session
    fetches = [r for r in sim.requests if r.path.startswith("/audio/")]
    assert len(fetches) == 2 and all(r.header("Cookie") is None for r in fetches)
    assert sim.logins == 2


async def test_concurrent_chats_share_one_relogin(sim):
    extra = "    include_audio: false\n    include_triggers: false"
    async with harness(config(sim, SESSION_AUTH, extra)) as h:
        await h.say("first", user_id=1)
        sim.expire_sessions()
        done = [(await h.submit(f"hi {chat}", user_id=chat))[1] for chat in range(1, 6)]
        await asyncio.gather(*done)
    assert sim.logins == 2
    assert sorted(p.text for _, p in h.delivered[1:]) == [
        f"Bambi hears you: hi {chat}" for chat in range(1, 6)]


async def test_bad_credentials_tell_the_user(sim):
    async with harness(config(sim, "api_key: wrong")) as h:
        parts = await h.say("hi", user_id=1)
    assert parts == [Notice(USER_MESSAGES[ErrorKind.AUTH])]


async def test_provider_down_tells_the_user(sim):
    sim.inject(status=500, path="/ai/generate",
               body={"error": True, "code": "INTERNAL", "message": "boom"})
    async with harness(config(sim)) as h:
        parts = await h.say("hi", user_id=1)
    assert parts == [Notice(USER_MESSAGES[ErrorKind.UNAVAILABLE])]
    assert len(sim.requests) == 1  # a POST that may have been processed is not repeated


# -- commands ----------------------------------------------------------------------------------


async def test_help_lists_the_commands(sim):
    async with harness(config(sim)) as h:
        [help_text] = await h.say("/help", user_id=1)
    for line in ("/profile [username] — Show the BambiSleep profile",
                 "/profile_set <display name> — Change the account's display name (admins "
                 "only)",
                 "/triggers — List the triggers you can use",
                 "/trigger_add name | description | content — Create a private trigger on "
                 "the account (admins only)",
                 "/sessions — List the account's past sessions (all users) (admins only)",
                 "/session <id> — Show the messages of a session (admins only)"):
        assert line + "\n" in help_text.text + "\n"


ADMIN = 1
OTHER = 2
#: The config's end for tests of the admin-only commands: user 1 is the admin.
ADMIN_TAIL = f"admins: [{ADMIN}]\ndefault: bambi"


async def test_account_wide_commands_are_for_admins(sim):
    """All Telegram users share one BambiSleep account: its sessions hold everyone's prompts,
    so /sessions, /session, /profile_set and /trigger_add are refused to non-admins."""
    async with harness(config(sim, tail=f"admins: [{ADMIN}]\ndefault: bambi")) as h:
        [help_text] = await h.say("/help", user_id=OTHER)
        refused = {cmd: await h.say(f"/{cmd}", user_id=OTHER) for cmd in (
            "sessions", "session sess_001", "profile_set Mallory", "trigger_add a | b | c")}
        assert sim.requests == []  # nothing reached the provider
        public = [await h.say("/profile bambi", user_id=OTHER),
                  await h.say("/triggers", user_id=OTHER)]
        admin = await h.say("/sessions", user_id=ADMIN)
    assert refused == {
        "sessions": [Notice("Only the bot's admins can use /sessions.")],
        "session sess_001": [Notice("Only the bot's admins can use /session.")],
        "profile_set Mallory": [Notice("Only the bot's admins can use /profile_set.")],
        "trigger_add a | b | c": [Notice("Only the bot's admins can use /trigger_add.")],
    }
    assert public[0][0].text.startswith("👤 Bambi (@bambi)")
    assert public[1][0].text.startswith("Triggers (2):")
    assert admin[0].text.startswith("Sessions (1):")
    assert "/sessions — List the account's past sessions (all users) (admins only)" \
        in help_text.text
    assert "/profile [username] — Show the BambiSleep profile\n" in help_text.text + "\n"
    assert sim.users[USER].display_name == "Bambi"
    assert [(r.method, r.path) for r in sim.requests] == [
        ("GET", "/v1/profile/bambi"), ("GET", "/v1/triggers"), ("GET", "/v1/sessions")]


async def test_without_admins_nobody_reads_the_account_sessions(sim):
    """``admins: []`` (config.example.yaml's) makes nobody an admin: no user reads the
    conversations of the others."""
    async with harness(config(sim, tail="admins: []\ndefault: bambi")) as h:
        said = [await h.say(f"/{cmd}", user_id=OTHER) for cmd in ("sessions",
                                                                  "session sess_001")]
    assert said == [[Notice("Only the bot's admins can use /sessions.")],
                    [Notice("Only the bot's admins can use /session.")]]
    assert sim.requests == []


async def test_profile_commands(sim):
    async with harness(config(sim, SESSION_AUTH, tail=ADMIN_TAIL)) as h:
        assert await h.say("/profile", user_id=1) == [Text(
            "👤 Bambi (@bambi)\nLevel 5 · 1,250 XP\nPublic profile\nMember since 2025-01-01\n"
            "Triggers: Good Girl, Bambi Sleep\nAvatar: https://bambisleep.chat/avatars/image.png"
        )]
        assert await h.say("/profile_set Bambi Doll", user_id=1) == [
            Text("Display name of @bambi is now: Bambi Doll")]
        assert (await h.say("/profile", user_id=1))[0].text.startswith(
            "👤 Bambi Doll (@bambi)")
        assert (await h.say("/profile @alice", user_id=1))[0].text.startswith(
            "👤 Alice (@alice)")
        assert await h.say("/profile nobody", user_id=1) == [
            Notice("There is no BambiSleep user nobody.")]
        assert await h.say("/profile_set", user_id=1) == [
            Notice("Usage: /profile_set <display name>")]
        assert await h.say("/profile_set " + "x" * 51, user_id=1) == [
            Notice("The display name was not accepted: displayName must be 1 to 50 characters")]
    put = sim.requests_to("/profile/bambi", "PUT")[0]
    assert put.json == {"displayName": "Bambi Doll"}
    assert sim.users["bambi"].display_name == "Bambi Doll"


async def test_private_profile_and_api_key_without_username(sim):
    sim.users["alice"].is_public = False
    async with harness(config(sim)) as h:
        assert await h.say("/profile alice", user_id=1) == [
            Notice("The profile of alice is private.")]
        [notice] = await h.say("/profile", user_id=1)
    assert notice.text.startswith("Whose profile? Use /profile <username>")


async def test_trigger_commands(sim):
    async with harness(config(sim, tail=ADMIN_TAIL)) as h:
        added = await h.say("/trigger_add Deep Drop | Sink deeper | Drop down | deeper",
                            user_id=1)
        listed = await h.say("/triggers", user_id=1)
        again = await h.say("/trigger_add Deep Drop | x | y", user_id=1)
        bad = await h.say("/trigger_add only a name", user_id=1)
    assert added == [Text("Created the private trigger “Deep Drop”.")]
    post = sim.requests_to("/triggers", "POST")[0]
    assert post.json == {"name": "Deep Drop", "description": "Sink deeper", "isPublic": False,
                         "content": "Drop down | deeper"}
    assert listed == [Text(
        "Triggers (3):\n"
        "• Good Girl — Feel proud and happy (public, by bambisleep)\n"
        "• Bambi Sleep — Drop deep (public, by bambisleep)\n"
        "• Deep Drop — Sink deeper (private, by bambi)"
    )]
    assert again == [Notice("The trigger was not created: "
                            "A trigger with this name already exists")]
    assert bad == [Notice("Usage: /trigger_add name | description | content")]


async def test_session_commands(sim):
    async with harness(config(sim, tail=ADMIN_TAIL)) as h:
        sessions = await h.say("/sessions", user_id=1)
        detail = await h.say("/session sess_001", user_id=1)
        missing = await h.say("/session sess_404", user_id=1)
        usage = await h.say("/session", user_id=1)
    assert sessions == [Text("Sessions (1):\n• sess_001 — 2025-01-01 00:00 UTC, 2 messages\n"
                             "Show one with /session <id>")]
    assert detail == [Text("Session sess_001 (2025-01-01 00:00 UTC):\n"
                           "[2025-01-01 00:00:00] You: Hello Bambi\n"
                           "[2025-01-01 00:00:01] Bambi: Hello! Relax and listen.")]
    assert missing == [Notice("There is no session sess_404. /sessions lists them.")]
    assert usage == [Notice("Usage: /session <id> (/sessions lists them)")]
    assert [(r.method, r.path) for r in sim.requests] == [
        ("GET", "/v1/sessions"), ("GET", "/v1/sessions/sess_001"),
        ("GET", "/v1/sessions/sess_404"),
    ]


# -- rate limits -------------------------------------------------------------------------------


def provider(rate_limit: int, rate_period: float) -> SimulatorProcess:
    """The BambiSleep simulator in a process of its own, key ``KEY`` (its 429s are logged)."""
    return SimulatorProcess("tgmux.backends.bambisleep.simulator", "--api-key", KEY,
                            "--rate-limit", str(rate_limit), "--rate-period", str(rate_period))


async def test_burst_of_100_from_10_chats_stays_under_the_limit():
    """20 requests per second allowed; two backends share the same key (one budget). (The
    provider in a process of its own: it sees arrivals as they come, whatever holds up the
    test's process.)"""
    sim = provider(rate_limit=20, rate_period=1)
    try:
        limits = "    include_audio: false\n    rate_limit: {requests: 20, period: 1}"
        text = f"""
backends:
  a:
    type: bambisleep
    base_url: {sim.base_url}
    api_key: {KEY}
{limits}
  b:
    type: bambisleep
    base_url: {sim.base_url}
    api_key: {KEY}
    include_triggers: false
{limits}
routes:
  - match: {{chat_id: [1, 2, 3, 4, 5]}}
    backend: a
default: b
"""
        async with harness(text) as h:
            started = time.monotonic()
            futures = []
            for i in range(10):
                for chat in range(1, 11):
                    futures.append((chat, i, (await h.submit(f"c{chat} m{i}",
                                                             user_id=chat))[1]))
            await asyncio.gather(*(f for _, _, f in futures))
            elapsed = time.monotonic() - started
    finally:
        sim.stop()
    assert "rate limited" not in sim.log(), sim.log()
    # 100 requests at 20 per (padded) second: 4 full windows after the first 20 (the
    # upper bound only catches waits far too long: a loaded machine is seconds late)
    assert 4.0 <= elapsed < 20, elapsed
    replies = [(chat, part.text) for chat, part in h.delivered]
    assert len(replies) == 100
    for chat in range(1, 11):
        mine = [t.split("\n")[0] for c, t in replies if c == chat]
        assert mine == [f"Bambi hears you: c{chat} m{i}" for i in range(10)]


def hold_up(monkeypatch: pytest.MonkeyPatch, marker: bytes, seconds: float) -> None:
    """Requests whose body holds ``marker`` reach the provider ``seconds`` after tgmux sent
    them (as a slow connect or a starved process does): after their rate-limit slot."""
    request = aiohttp.ClientSession._request

    async def late(self, method, url, **kwargs):
        if marker in (kwargs.get("data") or b""):
            await asyncio.sleep(seconds)
        return await request(self, method, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", late)


async def test_requests_arriving_late_do_not_overrun_the_provider_window(monkeypatch):
    """The provider counts requests when they arrive. Held up by 0.3 s (more than the 0.05 s
    padding) after their slot, a request would let the one reusing its slot arrive within
    the provider's second of it; a slot counts from when its request went out, so never.
    (The provider in a process of its own: it sees arrivals as they come, whatever holds up
    the test's process.)"""
    hold_up(monkeypatch, b"late", 0.3)
    sim = provider(rate_limit=2, rate_period=1)
    try:
        extra = ("    include_audio: false\n    include_triggers: false\n"
                 "    rate_limit: {requests: 2, period: 1}")
        async with harness(config(sim, extra=extra)) as h:
            texts = [("late" if chat % 3 == 1 else "prompt") + f" {chat}" for chat in range(1, 7)]
            done = [(await h.submit(text, user_id=chat))[1]
                    for chat, text in enumerate(texts, 1)]
            await asyncio.gather(*done)
    finally:
        sim.stop()
    assert "rate limited" not in sim.log(), sim.log()
    assert sorted(t.text for _, t in h.delivered) == sorted(
        f"Bambi hears you: {text}" for text in texts)


async def test_long_wait_tells_the_user():
    # 1 per 3 s, told from 0.5 s: "one" may take 2.5 s on a loaded machine and "two" still
    # waits long enough to be told (with 1 per 1 s, "one" had 0.5 s)
    async with BambiSleepSimulator(api_keys={KEY: USER}, rate_limit=1, rate_period=3.0) as sim:
        extra = ("    include_audio: false\n    include_triggers: false\n"
                 "    rate_limit: {requests: 1, period: 3, notify_after: 0.5}")
        async with harness(config(sim, extra=extra)) as h:
            assert await h.say("one", user_id=1) == [Text("Bambi hears you: one")]
            parts = await h.say("two", user_id=1)
        assert len(parts) == 2 and parts[1] == Text("Bambi hears you: two")
        # the wait left of the 3 s after "one": 3 s, or less on a slow machine
        assert parts[0] in [
            Notice(f"Your reply is delayed by about {seconds} s (the AI provider's rate "
                   "limit). I'll answer as soon as I can.") for seconds in (3, 2, 1)], parts
        assert sim.rate_limited == 0


async def test_429_from_the_provider_is_waited_out(sim):
    sim.inject(status=429, path="/ai/generate", headers={"Retry-After": "1"},
               body={"error": True, "code": "RATE_LIMITED", "message": "slow down"})
    extra = "    include_audio: false\n    include_triggers: false"
    async with harness(config(sim, extra=extra)) as h:
        started = time.monotonic()
        parts = await h.say("hi", user_id=1)
    assert parts == [Text("Bambi hears you: hi")]
    assert time.monotonic() - started >= 0.9
    assert len(sim.requests_to("/ai/generate")) == 2


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("auth", "problem"), [
    (f"api_key: k\n    username: u\n    password: {PASSWORD}", "not both"),
    ("model: MODEL_1", "needs api_key, or username and password"),
    (f"password: {PASSWORD}", "password needs username"),
    ("api_key: k\n    triggers_format: '{nope}'", "bad placeholder"),
    ("api_key: k\n    transport: carrier-pigeon", "transport"),
    ("api_key: k\n    webhook: {public_url: 'http://x/h', secret: s, listen: 'nope'}",
     "HOST:PORT"),
    ("api_key: k\n    webhook: {public_url: 'http://x/h', secret: s, events: [x.y]}", "events"),
])
def test_config_errors(auth, problem):
    text = f"""
backends:
  bambi:
    type: bambisleep
    {auth}
default: bambi
"""
    with pytest.raises(ConfigError) as info:
        load(text)
    assert problem in str(info.value)
    assert "backends.bambi" in str(info.value)


def test_config_defaults_and_secrets():
    text = "backends:\n  b:\n    type: bambisleep\n    api_key: sekret\ndefault: b\n"
    settings = load(text).backend_settings["b"]
    assert settings.base_url == "https://api.bambisleep.chat/v1"
    assert (settings.include_audio, settings.include_triggers, settings.transport) == (
        True, True, "rest")
    assert (settings.rate_limit.requests, settings.rate_limit.unauthenticated,
            settings.rate_limit.period) == (60, 10, 60.0)
    assert "sekret" not in repr(settings)


# -- demo --------------------------------------------------------------------------------------


async def test_demo_offer_starts_a_working_simulator():
    import yaml

    [offer] = bambisleep_plugin.tgmux_demo_backends()
    assert offer.name == "bambisleep"
    settings, stop = await offer.start()
    try:
        assert settings["type"] == "bambisleep" and settings["base_url"].startswith(
            "http://127.0.0.1:")
        text = yaml.safe_dump({"backends": {"bambi": settings}, "default": "bambi"})
        async with harness(text) as h:
            parts = await h.say("hello", user_id=1)
            profile = await h.say("/profile", user_id=1)
        assert parts[0] == Text("Bambi hears you: hello\n\nTriggers: Good Girl, Bambi Sleep")
        assert isinstance(parts[1], Audio) and parts[1].voice
        assert profile[0].text.startswith("👤 Bambi (@bambi)")
    finally:
        await stop()
