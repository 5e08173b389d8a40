"""Fallback chains and circuit breakers, with LucyDream's simulator on 127.0.0.1 as the
provider that fails."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import tgmux.backends.lucydream as lucydream_plugin
from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, TextDelta, Turn
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.bootstrap import load_config_text
from tgmux.errors import USER_MESSAGES, ConfigError, ErrorKind, UnavailableError
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.types import Notice

KEY = "key-one"


@pytest.fixture
async def sim():
    async with LucyDreamSimulator(api_keys={KEY}, free_messages=None) as server:
        yield server


def config(sim: LucyDreamSimulator, lucy_extra: str = "", rest: str = "") -> str:
    return f"""
store: "memory://"
backends:
  lucy:
    type: lucydream
    api_key: {KEY}
    base_url: {sim.base_url}
    timeout: 10
    fallback: [echo]
{lucy_extra}
  echo: {{type: echo, prefix: "echo: "}}
  other: {{type: echo, prefix: "other: "}}
default: lucy
{rest}
"""


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []

    @hookimpl
    def tgmux_reply_sent(self, turn, parts):
        self.sent.append((turn.backend_name, turn.fallback_from))


def harness(text: str, *plugins: object) -> EngineHarness:
    return EngineHarness.from_yaml(text, plugins=[lucydream_plugin, *plugins])


def sends(sim: LucyDreamSimulator) -> int:
    return len(sim.requests_to("send-message"))


async def test_a_dead_provider_is_answered_by_the_next_in_one_reply(sim) -> None:
    recorder = Recorder()
    async with harness(config(sim), recorder) as h:
        assert await h.say("hi", user_id=42) != []  # lucy answers while it is up
        await sim.stop()
        assert await h.say("are you there?", user_id=42) == [Text("echo: are you there?")]
    assert recorder.sent[-1] == ("echo", "lucy")


async def test_the_circuit_opens_after_failures_and_probes_after_the_cooldown(sim) -> None:
    extra = "    circuit: {failures: 2, cooldown: 30s}"
    async with harness(config(sim, extra), ) as h:
        # the circuit's clock is the test's: the cooldown is over when the test says so (on
        # real time the 3 turns after the opening had to fit in the cooldown, a loaded machine
        # could let a probe through among them)
        now = [1000.0]
        h.engine.circuits["lucy"]._clock = lambda: now[0]
        await h.say("warm up", user_id=42)  # creates the sub-user
        sim.inject(path="send-message", status=503, times=100)
        for i in range(5):
            assert await h.say(f"m{i}", user_id=42) == [Text(f"echo: m{i}")]
        # 2 failed turns opened the circuit: the other 3 never reached the provider
        assert sends(sim) == 1 + 2
        assert h.engine.circuits["lucy"].state == "open"
        sim.faults.clear()
        now[0] += 30  # the cooldown is over: one probe goes through, and closes it
        [answer] = await h.say("back?", user_id=42)
        assert isinstance(answer, Text) and not answer.text.startswith("echo: ")
        assert h.engine.circuits["lucy"].state == "closed"
        text = (await h.engine.metrics.render()).decode()
        assert 'tgmux_circuit_state{backend="lucy"} 0.0' in text
        # 2 failures and 3 turns the open circuit sent on at once
    assert 'tgmux_replies_total{account="main",backend="lucy",outcome="fell_back"} 5.0' \
            in text


async def test_bad_requests_do_not_fall_back_unless_listed(sim) -> None:
    async with harness(config(sim)) as h:
        await h.say("warm up", user_id=42)
        sim.inject(path="send-message", status=400, body={"code": "invalid", "message": "no"})
        [notice] = await h.say("odd", user_id=42)
        assert isinstance(notice, Notice) and not notice.text.startswith("echo")
    async with harness(config(sim, "    fallback_on: [bad_request]")) as h:
        await h.say("warm up", user_id=43)
        sim.inject(path="send-message", status=400, body={"code": "invalid", "message": "no"})
        assert await h.say("odd", user_id=43) == [Text("echo: odd")]


async def test_a_backends_own_command_never_falls_back(sim) -> None:
    async with harness(config(sim)) as h:
        await h.say("warm up", user_id=42)
        await sim.stop()
        [notice] = await h.say("/image", user_id=42)
    assert notice == Notice(USER_MESSAGES[ErrorKind.UNAVAILABLE])


class CutMidStream(Backend):
    """Shows some text, then fails."""

    type_name = "cut_mid_stream"
    Settings = BackendSettings
    asked = 0

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        CutMidStream.asked += 1
        yield TextDelta("partial answer")
        raise UnavailableError("dropped")


class CutPlugin:
    @hookimpl
    def tgmux_backend_types(self):
        return [CutMidStream]


async def test_a_stream_cut_after_text_is_not_asked_again() -> None:
    text = ('store: "memory://"\nbackends:\n  cut: {type: cut_mid_stream, fallback: [echo]}\n'
            '  echo: {type: echo, prefix: "echo: "}\ndefault: cut\n')
    CutMidStream.asked = 0
    async with EngineHarness.from_yaml(text, plugins=[CutPlugin()]) as h:
        parts = await h.say("hi", user_id=1)
    assert parts == [TextDelta("partial answer"), Notice(USER_MESSAGES[ErrorKind.UNAVAILABLE])]
    assert CutMidStream.asked == 1


async def test_a_routes_chain_replaces_the_backends(sim) -> None:
    rest = "routes:\n  - match: {chat_type: group}\n    backend: lucy\n    fallback: [other]\n"
    async with harness(config(sim, rest=rest)) as h:
        await sim.stop()
        assert await h.say("hi", user_id=1, chat_id=-5, chat_type="group") == [
            Text("other: hi")]
        assert await h.say("hi", user_id=1) == [Text("echo: hi")]


def test_two_backends_may_back_each_other_up_but_not_themselves() -> None:
    ok = load_config_text('backends:\n  a: {type: echo, fallback: [b]}\n'
                          '  b: {type: echo, fallback: [a]}\ndefault: a\n', env={})
    assert ok.backend_core["a"].fallback == ["b"]
    with pytest.raises(ConfigError) as caught:
        load_config_text('backends:\n  a:\n    type: echo\n    fallback: [a, nope]\n'
                         'default: a\nroutes:\n  - backend: a\n    fallback: [zz]\n', env={})
    assert caught.value.problems == [
        "<config>:4: backends.a.fallback[0]: 'a' cannot be its own fallback",
        "<config>:4: backends.a.fallback[1]: unknown backend 'nope' (defined: a)",
        "<config>:8: routes[0].fallback[0]: unknown backend 'zz' (defined: a)",
    ]
    with pytest.raises(ConfigError) as caught:
        load_config_text('backends:\n  a: {type: echo, circuit: {cooldown: soon}}\n'
                         'default: a\n', env={})
    assert caught.value.problems == [
        "<config>:2: backends.a.circuit.cooldown: expected a duration such as 30, 10s, 1m, 2h "
        "or 1d, not 'soon' (got 'soon')"]
    durations = load_config_text('backends:\n  a: {type: echo, circuit: {cooldown: 2m}}\n'
                                 'default: a\n', env={})
    assert durations.backend_core["a"].circuit.cooldown == 120.0


def test_a_probe_that_ends_without_a_verdict_lets_the_next_turn_probe() -> None:
    from tgmux.circuit import Circuit

    now = [0.0]
    circuit = Circuit("b", failures=1, cooldown=10, clock=lambda: now[0])
    circuit.failed("unavailable")
    assert circuit.state == "open" and not circuit.allow()
    now[0] = 11
    assert circuit.allow() and circuit.state == "half_open"
    assert not circuit.allow()  # one probe at a time
    circuit.abandoned()  # e.g. the user blocked the bot while the probe was answering
    assert circuit.allow()
    circuit.failed("timeout")
    assert circuit.state == "open"
