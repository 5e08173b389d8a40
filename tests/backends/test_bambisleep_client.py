"""BambiSleep client against the real simulator on 127.0.0.1: exact requests, both auth modes,
re-login, error mapping, 429 + Retry-After, audio, webhooks registration."""

from __future__ import annotations

import time

import httpx
import pytest

from tgmux.backends.bambisleep.client import (
    BambiSleepClient,
    GenerateResult,
    Profile,
    SessionMessage,
    Trigger,
    default_ws_url,
)
from tgmux.backends.bambisleep.simulator import SESSION_COOKIE, BambiSleepSimulator, sample_mp3
from tgmux.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    RateLimitedError,
)
from tgmux.ratelimit import SlidingWindowLimiter

KEY = "key-one"
USER = "bambi"
PASSWORD = "pw-1"


@pytest.fixture
async def sim():
    async with BambiSleepSimulator(api_keys={KEY: USER}, users={USER: PASSWORD,
                                                                "alice": "pw-2"}) as server:
        yield server


def keyed(sim: BambiSleepSimulator, **kwargs) -> BambiSleepClient:
    return BambiSleepClient(api_key=KEY, base_url=sim.base_url, timeout=5, **kwargs)


def session(sim: BambiSleepSimulator, **kwargs) -> BambiSleepClient:
    return BambiSleepClient(username=USER, password=PASSWORD, base_url=sim.base_url, timeout=5,
                            **kwargs)


def test_exactly_one_auth_mode():
    with pytest.raises(ValueError, match="exactly one"):
        BambiSleepClient(api_key="k", username="u", password="p")
    with pytest.raises(ValueError, match="exactly one"):
        BambiSleepClient()
    with pytest.raises(ValueError, match="username"):
        BambiSleepClient(password="p")


async def test_api_key_generate_exact_request(sim):
    async with keyed(sim) as c:
        result = await c.generate("Hello Bambi", model="MODEL_2")
    [req] = sim.requests
    assert (req.method, req.path) == ("POST", "/v1/ai/generate")
    assert req.header("Authorization") == f"Bearer {KEY}"
    assert req.header("Cookie") is None
    assert req.json == {"prompt": "Hello Bambi", "settings": {
        "model": "MODEL_2", "includeAudio": True, "includeTriggers": True}}
    assert result == GenerateResult(
        response="Bambi hears you: Hello Bambi",
        audio_url=f"{sim.root_url}/audio/response-123.mp3",
        triggers=["Good Girl", "Bambi Sleep"],
    )
    assert sim.logins == 0


async def test_generate_without_model_audio_or_triggers(sim):
    async with keyed(sim) as c:
        result = await c.generate("hi", include_audio=False, include_triggers=False)
    assert sim.requests[0].json == {"prompt": "hi", "settings": {
        "includeAudio": False, "includeTriggers": False}}
    assert result == GenerateResult(response="Bambi hears you: hi", audio_url=None, triggers=[])


async def test_session_login_keeps_cookie(sim):
    async with session(sim) as c:
        await c.generate("one")
        await c.list_triggers()
    login, gen, trig = sim.requests
    assert (login.method, login.path) == ("POST", "/v1/auth/login")
    assert login.json == {"username": USER, "password": PASSWORD}
    assert login.header("Authorization") is None and login.header("Cookie") is None
    token = next(iter(sim.sessions))
    assert c.session_token == token
    for req in (gen, trig):
        assert req.header("Cookie") == f"{SESSION_COOKIE}={token}"
        assert req.header("Authorization") is None
    assert sim.logins == 1


async def test_relogin_once_after_session_expired(sim):
    async with session(sim) as c:
        await c.get_profile(USER)
        first = c.session_token
        sim.expire_sessions()
        profile = await c.get_profile(USER)
    assert profile.username == USER
    assert [(r.method, r.path) for r in sim.requests] == [
        ("POST", "/v1/auth/login"), ("GET", "/v1/profile/bambi"),
        ("GET", "/v1/profile/bambi"),  # 401 SESSION_EXPIRED
        ("POST", "/v1/auth/login"), ("GET", "/v1/profile/bambi"),
    ]
    assert [s for (_, p, s) in sim.statuses if p == "/v1/profile/bambi"] == [200, 401, 200]
    assert sim.requests[-1].header("Cookie") == f"{SESSION_COOKIE}={c.session_token}"
    assert c.session_token != first


async def test_relogin_is_one_retry_not_a_loop(sim):
    async with session(sim) as c:
        await c.ensure_session()
        # every session expires at once: the repeated request fails too, and that is final
        sim.inject(status=401, body={"error": True, "code": "SESSION_EXPIRED",
                                     "message": "expired"}, path="/sessions", times=2)
        with pytest.raises(AuthError) as info:
            await c.list_sessions()
    assert info.value.status == 401
    assert info.value.details["code"] == "SESSION_EXPIRED"
    assert [(r.method, r.path) for r in sim.requests] == [
        ("POST", "/v1/auth/login"), ("GET", "/v1/sessions"),
        ("POST", "/v1/auth/login"), ("GET", "/v1/sessions"),
    ]


async def test_api_key_401_is_not_retried(sim):
    async with BambiSleepClient(api_key="wrong", base_url=sim.base_url, timeout=5) as c:
        with pytest.raises(AuthError) as info:
            await c.generate("hi")
    assert info.value.status == 401
    assert info.value.provider_message == "Invalid API key"
    assert len(sim.requests) == 1


async def test_wrong_password(sim):
    async with BambiSleepClient(username=USER, password="nope", base_url=sim.base_url) as c:
        with pytest.raises(AuthError) as info:
            await c.generate("hi")
    assert info.value.details == {"code": "INVALID_CREDENTIALS"}
    assert [r.path for r in sim.requests] == ["/v1/auth/login"]


async def test_profile_get_and_update(sim):
    async with keyed(sim) as c:
        profile = await c.get_profile(USER)
        assert profile == Profile(
            username="bambi", id="user_1", display_name="Bambi",
            avatar_url="https://bambisleep.chat/avatars/image.png", is_public=True, xp=1250,
            level=5, created_at="2025-01-01T00:00:00Z", triggers=["Good Girl", "Bambi Sleep"],
        )
        updated = await c.update_profile(USER, display_name="Bambi Doll")
        assert updated is not None and updated.display_name == "Bambi Doll"
        with pytest.raises(AuthError) as info:  # someone else's profile: 403
            await c.update_profile("alice", display_name="x")
        assert info.value.status == 403
        with pytest.raises(NotFoundError):
            await c.get_profile("nobody")
        with pytest.raises(BadRequestError) as bad:
            await c.update_profile(USER, display_name="x" * 51)
    put = sim.requests[1]
    assert (put.method, put.path, put.json) == ("PUT", "/v1/profile/bambi",
                                                 {"displayName": "Bambi Doll"})
    assert bad.value.details == {"code": "VALIDATION_ERROR",
                                 "details": {"field": "displayName"}}
    assert bad.value.provider_message == "displayName must be 1 to 50 characters"


async def test_triggers_and_sessions(sim):
    async with keyed(sim) as c:
        created = await c.create_trigger("Sleepy", "Feel sleepy", "Sleepy now")
        triggers = await c.list_triggers()
        sessions = await c.list_sessions()
        detail = await c.get_session(sessions[0].id)
        with pytest.raises(NotFoundError):
            await c.get_session("sess_999")
    post = sim.requests[0]
    assert (post.method, post.path, post.json) == ("POST", "/v1/triggers", {
        "name": "Sleepy", "description": "Feel sleepy", "isPublic": False,
        "content": "Sleepy now"})
    assert created == Trigger(name="Sleepy", id="trg_3", description="Feel sleepy",
                              is_public=False, creator=USER, content="Sleepy now")
    assert [t.name for t in triggers] == ["Good Girl", "Bambi Sleep", "Sleepy"]
    assert sessions[0].id == "sess_001" and sessions[0].message_count == 2
    assert detail.messages[0] == SessionMessage("user", "Hello Bambi", "2025-01-01T00:00:00Z")


async def test_retry_after_is_honored(sim):
    sim.inject(status=429, path="/ai/generate", headers={"Retry-After": "1"},
               body={"error": True, "code": "RATE_LIMITED", "message": "slow down"})
    limiter = SlidingWindowLimiter(60, 60)
    async with keyed(sim, limiter=limiter) as c:
        started = time.monotonic()
        result = await c.generate("hi")
        waited = time.monotonic() - started
    assert result.response == "Bambi hears you: hi"
    assert len(sim.requests_to("/ai/generate")) == 2
    assert 0.9 <= waited < 10  # (the upper bound only catches a wait far too long)
    assert limiter.delay() == 0  # the penalty (1 s) is over


async def test_server_side_limit_answers_429_with_retry_after():
    async with BambiSleepSimulator(api_keys={KEY: USER}, rate_limit=2, rate_period=30) as sim:
        async with keyed(sim) as c:
            c.http.retries = 0
            await c.list_triggers()
            await c.list_triggers()
            with pytest.raises(RateLimitedError) as info:
                await c.list_triggers()
        assert info.value.retry_after == 30
        assert info.value.details["code"] == "RATE_LIMITED"
        assert sim.rate_limited == 1


async def test_unauthenticated_limit_is_ten_per_period():
    async with BambiSleepSimulator(users={USER: PASSWORD}, api_keys={}) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url) as raw:
            codes = [(await raw.post("/auth/login", json={"username": USER, "password": "x"}))
                     .status_code for _ in range(11)]
            limited = await raw.get("/triggers")
    assert codes == [401] * 10 + [429]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["code"] == "RATE_LIMITED"


async def test_audio_url_is_served(sim):
    async with keyed(sim) as c:
        result = await c.generate("hi")
    assert result.audio_url is not None
    async with httpx.AsyncClient() as raw:  # a public URL: no credentials needed
        response = await raw.get(result.audio_url)
        missing = await raw.get(f"{sim.root_url}/audio/nope.mp3")
    assert response.content == sample_mp3()
    assert response.content.startswith(b"ID3")  # a real MP3, made by PyAV's libmp3lame
    assert response.headers["Content-Type"] == "audio/mpeg"
    assert missing.status_code == 404


async def test_register_webhook_exact_request(sim):
    async with keyed(sim) as c:
        hook = await c.register_webhook("https://example.org/hook", ["message.new"], "s3")
        with pytest.raises(BadRequestError):
            await c.register_webhook("https://example.org/hook", ["no.such"], "s3")
    assert sim.requests[0].json == {"url": "https://example.org/hook",
                                    "events": ["message.new"], "secret": "s3"}
    assert hook.id == "wh_1" and hook.events == ["message.new"]
    assert sim.webhooks[0].secret == "s3"


def test_default_ws_url():
    assert default_ws_url("https://api.bambisleep.chat/v1") == "wss://api.bambisleep.chat/ws/chat"
    assert default_ws_url("http://127.0.0.1:9/v1") == "ws://127.0.0.1:9/ws/chat"


async def test_relative_audio_url_is_resolved_against_the_api_host():
    async with BambiSleepClient(api_key="k", base_url="https://api.example.org/v1") as c:
        assert c.absolute_url("/audio/r.mp3") == "https://api.example.org/audio/r.mp3"
        assert c.absolute_url("https://cdn.example.org/a.mp3") == "https://cdn.example.org/a.mp3"


async def test_the_credentials_limit_is_kept_in_the_store_when_there_is_one(sim, tmp_path):
    from tgmux.backends.bambisleep.adapter import BambiSleepBackend, provider_limiters
    from tgmux.ratelimit import SlidingWindowLimiter, StoreLimiter
    from tgmux.store import SQLiteStore

    settings = BambiSleepBackend.Settings.model_validate(
        {"base_url": sim.base_url, "api_key": KEY, "rate_limit": {"requests": 2, "period": 1}})
    local, _ = provider_limiters(settings)
    assert isinstance(local, SlidingWindowLimiter)  # no store: this process alone
    stores = [SQLiteStore(tmp_path / "tgmux.db"), SQLiteStore(tmp_path / "tgmux.db")]
    for store in stores:
        await store.open()
    try:
        # two processes' backends on one store (here: two store objects on one file)
        one, _ = provider_limiters(settings, stores[0].namespace("backend:b"))
        two, _ = provider_limiters(settings, stores[1].namespace("backend:b"))
        assert isinstance(one, StoreLimiter) and isinstance(two, StoreLimiter)
        assert one is not two and one.key == two.key
        assert KEY not in one.key and one.key.startswith(f"bambisleep:{sim.base_url}:")
        assert one is provider_limiters(settings, stores[0].namespace("other"))[0]  # per store
        started = time.monotonic()
        for limiter in (one, two, one):
            await limiter.acquire()
        assert time.monotonic() - started >= 0.95  # the third waited for the shared window
    finally:
        for store in stores:
            await store.close()
