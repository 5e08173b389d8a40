"""The backend lifecycle base: :class:`tgmux.backend.HttpBackend`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from tgmux.backend import Backend, HttpBackend, HttpBackendSettings, ReplyPart, Text, Turn
from tgmux.backends.bambisleep import BambiSleepBackend, BambiSleepSettings
from tgmux.backends.lucydream import LucyDreamBackend, LucyDreamSettings
from tgmux.backends.sensay import SensayBackend, SensaySettings
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl


class FakeClient:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


class FakeBackend(HttpBackend[FakeClient]):
    type_name = "fake"
    Settings = HttpBackendSettings

    def __init__(self) -> None:
        super().__init__("fake", HttpBackendSettings(type="fake", base_url="http://x"), None)
        self.made: list[FakeClient] = []

    def make_client(self) -> FakeClient:
        client = FakeClient(len(self.made) + 1)
        self.made.append(client)
        return client

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield Text(str(self.client.number))


def test_the_client_is_made_lazily_and_once():
    backend = FakeBackend()
    assert backend.made == []
    first = backend.client
    assert backend.client is first
    assert backend.made == [first]


async def test_start_makes_the_client():
    backend = FakeBackend()
    await backend.start()
    assert len(backend.made) == 1
    await backend.start()  # a second start keeps it
    assert len(backend.made) == 1
    await backend.close()


async def test_close_is_idempotent():
    backend = FakeBackend()
    await backend.start()
    client = backend.made[0]
    await backend.close()
    await backend.close()
    assert client.closed == 1


async def test_close_without_start_does_nothing():
    backend = FakeBackend()
    await backend.close()
    assert backend.made == []


async def test_a_client_after_close_is_a_fresh_one():
    backend = FakeBackend()
    old = backend.client
    await backend.close()
    new = backend.client
    assert new is not old and old.closed == 1 and new.closed == 0
    await backend.close()
    assert new.closed == 1


def test_make_client_is_required():
    class NoClient(HttpBackend[FakeClient]):
        type_name = "no-client"

        async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
            yield Text("")

    with pytest.raises(TypeError, match="make_client"):
        NoClient("n", HttpBackendSettings(type="n", base_url="http://x"), None)  # type: ignore[abstract]


@pytest.mark.parametrize("backend", [
    lambda: LucyDreamBackend("l", LucyDreamSettings(api_key="k"), None),
    lambda: SensayBackend("s", SensaySettings(organization_secret="s", user_id="u",
                                              replica_uuid="r"), None),
    lambda: BambiSleepBackend("b", BambiSleepSettings(api_key="k"), None),
], ids=["lucydream", "sensay", "bambisleep"])
async def test_the_bundled_http_backends_share_the_lifecycle(backend):
    backend = backend()
    assert isinstance(backend, HttpBackend)
    await backend.close()  # never started: nothing to close
    await backend.start()
    client = backend.client
    await backend.close()
    await backend.close()
    assert client.http._client.is_closed
    assert backend.client is not client  # a fresh one after close
    await backend.close()


class _StartFails(Backend):
    type_name = "start_fails"
    closed: ClassVar[list[str]] = []

    async def start(self) -> None:
        raise OSError("port in use")

    async def close(self) -> None:
        _StartFails.closed.append(self.name)

    async def reply(self, turn):  # pragma: no cover - never reached
        yield Text("")


class _StartFailsPlugin:
    @hookimpl
    def tgmux_backend_types(self):
        return [_StartFails]


async def test_a_backend_whose_start_fails_is_closed_too() -> None:
    h = EngineHarness.from_yaml("backends:\n  bad: {type: start_fails}\ndefault: bad\n",
                                plugins=[_StartFailsPlugin()])
    with pytest.raises(ConfigError, match=r"backends\.bad: could not start: port in use"):
        await h.engine.start()
    assert _StartFails.closed == ["bad"]
