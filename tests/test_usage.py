"""What each reply used, recorded with its cost (issue 23): the OpenAI simulator reports usage
as OpenAI does; the engine writes one row per reply (memory store: the rows are read back),
counts /metrics, prunes by ``usage_retention``, and never fails a reply over it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from tgmux.backend import Text
from tgmux.backends.openai.simulator import REASONING_TOKENS, Model, OpenAISimulator
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.prices import Prices
from tgmux.store.memory import MemoryStore
from tgmux.types import Usage, UsageRow
from tgmux.usage import utc_day

KEY = "sk-usage-test"
CONFIG = """
telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}
store: memory://
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: %(key)s
    model: %(model)s
    %(extra)s
default: gpt
%(top)s
"""
PRICED = "prices: {sim-gpt: {input: 2, output: 8, cached_input: 0.5}}"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    models = [Model("sim-gpt"), Model("gpt-4o-mini"), Model("local-llama")]
    async with OpenAISimulator(api_keys={KEY}, models=models, cache_min_tokens=0,
                               cache_block_tokens=1) as server:
        yield server  # type: ignore[misc]


def config(sim: OpenAISimulator, *, model: str = "sim-gpt", extra: str = "",
           top: str = PRICED) -> str:
    return CONFIG % {"url": sim.base_url, "key": KEY, "model": model, "extra": extra,
                     "top": top}


def rows(h: EngineHarness) -> list[UsageRow]:
    assert isinstance(h.store, MemoryStore)
    return list(h.store.usage.values())


def usage_of(sim: OpenAISimulator, n: int) -> dict[str, Any]:
    """What the simulator reported for its n-th completion (recomputed as it does)."""
    completion = sim.completions[n]
    prompt = sum(4 + -(-len(m["content"]) // 4) for m in completion.messages)
    return {"prompt": prompt, "completion": -(-len(completion.reply) // 4)}


async def test_a_streamed_reply_is_recorded_with_its_tokens_and_configured_cost(
        sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim, extra="system_prompt: " + "x" * 40)) as h:
        parts = await h.say("Hello there!", user_id=42)
        assert [p for p in parts if isinstance(p, Text)] == [Text("You said: Hello there!")]
        await h.say("Hello there!", user_id=42)  # its start again: served from the cache
        [row] = rows(h)
    first, second = (sim.completions[0].body, sim.completions[1].body)
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert second["stream_options"] == {"include_usage": True}
    # 4 + 10 (system) + 4 + 3 (user) = 21 prompt tokens; "You said: Hello there!" = 6
    assert usage_of(sim, 0) == {"prompt": 21, "completion": 6}
    # the remembered exchange and the message again: 21 + 10 + 7; its first 21 were cached
    assert usage_of(sim, 1) == {"prompt": 38, "completion": 21}
    assert row == UsageRow(
        day=utc_day(), account="main", user_id=42, chat_id=42, backend="gpt", model="sim-gpt",
        messages=2, input_tokens=59, output_tokens=27, cached_input_tokens=21,
        reasoning_tokens=0, cost=pytest.approx(((59 - 21) * 2 + 21 * 0.5 + 27 * 8) / 1e6))


async def test_a_json_reply_is_recorded_with_reasoning_tokens(sim: OpenAISimulator) -> None:
    sim.reasoning = True
    async with EngineHarness.from_yaml(config(sim, extra="stream: false")) as h:
        await h.say("Hi", user_id=7, chat_id=-100, chat_type="group")
        [row] = rows(h)
    assert "stream_options" not in sim.completions[0].body
    assert (row.user_id, row.chat_id, row.messages) == (7, -100, 1)
    assert (row.input_tokens, row.output_tokens, row.reasoning_tokens) == \
        (5, 3 + REASONING_TOKENS, REASONING_TOKENS)
    assert row.cost == pytest.approx((5 * 2 + (3 + REASONING_TOKENS) * 8) / 1e6)


async def test_the_librarys_price_for_a_model_it_knows(sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim, model="gpt-4o-mini", top="")) as h:
        await h.say("How much is this?", user_id=42)
        [row] = rows(h)
        scraped = (await h.engine.metrics.render()).decode()
    expected = float(genai_prices.calc_price(genai_prices.Usage(
        input_tokens=row.input_tokens, output_tokens=row.output_tokens), "gpt-4o-mini"
    ).total_price)
    assert (row.model, row.input_tokens, row.output_tokens) == ("gpt-4o-mini", 9, 7)
    # gpt-4o-mini: $0.15 in, $0.60 out per million tokens
    assert row.cost == pytest.approx(expected) == pytest.approx((9 * 0.15 + 7 * 0.6) / 1e6)
    assert 'tgmux_tokens_total{backend="gpt",kind="input",model="gpt-4o-mini"} 9.0' in scraped
    assert 'tgmux_tokens_total{backend="gpt",kind="output",model="gpt-4o-mini"} 7.0' in scraped
    assert f'tgmux_cost_total{{backend="gpt",model="gpt-4o-mini"}} {expected!r}' in scraped


async def test_a_model_without_a_price_keeps_tokens_and_no_cost(sim: OpenAISimulator) -> None:
    """Another currency: the library's USD prices do not apply; a configured one does."""
    top = "currency: EUR\nprices: {sim-gpt: {input: 1, output: 1}}"
    async with EngineHarness.from_yaml(config(sim, model="gpt-4o-mini", top=top)) as h:
        await h.say("Hi", user_id=42)
        [row] = rows(h)
        scraped = (await h.engine.metrics.render()).decode()
    assert (row.model, row.input_tokens, row.cost) == ("gpt-4o-mini", 5, None)
    assert "tgmux_cost_total{" not in scraped
    assert 'tgmux_tokens_total{backend="gpt",kind="input",model="gpt-4o-mini"} 5.0' in scraped


async def test_metrics_add_up_replies(sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim)) as h:
        await h.say("one", user_id=1)
        await h.say("two", user_id=2)
        scraped = (await h.engine.metrics.render()).decode()
        total = sum(r.cost or 0 for r in rows(h))
    assert 'tgmux_tokens_total{backend="gpt",kind="input",model="sim-gpt"} 10.0' in scraped
    assert 'tgmux_tokens_total{backend="gpt",kind="output",model="sim-gpt"} 8.0' in scraped
    assert 'tgmux_tokens_total{backend="gpt",kind="cached_input",model="sim-gpt"}' not in scraped
    assert total == pytest.approx((10 * 2 + 8 * 8) / 1e6)
    assert f'tgmux_cost_total{{backend="gpt",model="sim-gpt"}} {total!r}' in scraped


async def test_a_reply_without_usage_counts_as_a_message_of_the_configured_model(
        sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim, extra="stream_usage: false")) as h:
        await h.say("Hi", user_id=42)
        await h.say("/history", user_id=42)  # a command of the backend: not an AI reply
        [row] = rows(h)
    assert "stream_options" not in sim.completions[0].body
    assert (row.model, row.messages, row.input_tokens, row.cost) == ("sim-gpt", 1, 0, None)


async def test_a_fallback_reply_is_recorded_under_the_backend_that_answered(
        sim: OpenAISimulator) -> None:
    text = config(sim, extra="fallback: [spare]").replace(
        "default: gpt", "  spare: {type: echo}\ndefault: gpt")
    sim.fail(503, times=10)
    async with EngineHarness.from_yaml(text) as h:
        await h.say("Hi", user_id=42)
        [row] = rows(h)
    assert (row.backend, row.model, row.messages, row.cost) == ("spare", "", 1, None)


class Rewrite:
    """A tgmux_after_backend hook that passes usage parts on, rewritten."""

    @hookimpl
    def tgmux_after_backend(self, part: Any) -> Any:
        if isinstance(part, Usage):
            return Usage(model="sim-gpt", input_tokens=part.input_tokens * 10,
                         output_tokens=part.output_tokens)
        return part


async def test_usage_is_what_the_after_backend_hooks_pass_on(sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim), plugins=[Rewrite()]) as h:
        await h.say("Hi", user_id=42)
        [row] = rows(h)
    assert (row.input_tokens, row.output_tokens) == (50, 3)


class BrokenStore(MemoryStore):
    async def usage_add(self, row: UsageRow) -> None:
        raise OSError("disk full")


async def test_a_store_failure_while_recording_still_delivers_the_reply(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture) -> None:
    async with EngineHarness.from_yaml(config(sim)) as h:
        h.store = h.engine.store.inner = BrokenStore()
        parts = await h.say("Hi", user_id=42)
        again = await h.say("Again", user_id=42)
    assert [p for p in parts if isinstance(p, Text)] == [Text("You said: Hi")]
    assert [p for p in again if isinstance(p, Text)] == [Text("You said: Again")]
    assert "store: OSError: disk full" in caplog.text  # said once, by the store's guard


class NoUsageStore(MemoryStore):
    async def usage_add(self, row: UsageRow) -> None:
        raise NotImplementedError("usage is not kept in this store yet")


async def test_a_store_that_keeps_no_usage_is_not_an_outage(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture) -> None:
    async with EngineHarness.from_yaml(config(sim)) as h:
        h.store = h.engine.store.inner = NoUsageStore()
        for text in ("Hi", "Again"):
            parts = await h.say(text, user_id=42)
            [shown] = [p.text for p in parts if isinstance(p, Text)]
            assert shown.startswith(f"You said: {text}")
        assert h.engine.store.degraded is None  # /readyz: the store is fine
    said = [r.message for r in caplog.records if "usage is not recorded" in r.message]
    assert said == ["usage is not recorded: usage is not kept in this store yet"]


async def test_rows_older_than_the_retention_are_pruned(sim: OpenAISimulator) -> None:
    async with EngineHarness.from_yaml(config(sim, top="usage_retention: 30")) as h:
        store = h.store
        assert isinstance(store, MemoryStore)
        today = utc_day()
        for day in ("2000-01-01", utc_day(time.time() - 31 * 86400),
                    utc_day(time.time() - 29 * 86400), today):
            await store.usage_add(UsageRow(day, "main", 1, 1, "gpt", "sim-gpt", messages=1))
        await h.engine._prune()
        assert sorted(r.day for r in store.usage.values()) == \
            [utc_day(time.time() - 29 * 86400), today]


def test_prices_from_config_override_the_library() -> None:
    from tgmux.config.schema import ModelPrice

    prices = Prices({"gpt-4o-mini": ModelPrice(input=1, output=2)})
    usage = Usage("gpt-4o-mini", input_tokens=1_000_000, output_tokens=1_000_000,
                  cached_input_tokens=500_000)
    assert prices.cost(usage) == 3.0  # cached at the input price when none is set
    assert Prices({}).cost(usage) is None  # not loaded: no library price yet


async def test_the_library_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: Any) -> None:
        raise AssertionError("genai-prices reached the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    prices = Prices({})
    await prices.load()
    assert prices.cost(Usage("gpt-4o-mini", input_tokens=1_000_000)) == pytest.approx(0.15)
    assert prices.cost(Usage("local-llama", input_tokens=1)) is None


async def test_simulate_sends_stream_options_and_shows_no_usage(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config(sim))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    line = json.dumps({"user_id": 42, "text": "Hello"}) + "\n"
    out, err = await asyncio.wait_for(process.communicate(line.encode()), 60)
    assert process.returncode == 0, err.decode()
    actions = [json.loads(each) for each in out.decode().splitlines()]
    texts = [a.get("text") for a in actions if a["action"] in ("send_message", "edit_message")]
    assert texts[-1] == "You said: Hello"
    assert set(texts) == {"You said: Hello"}  # the usage is not shown
    [completion] = sim.completions
    assert completion.body == {"model": "sim-gpt", "stream": True,
                               "stream_options": {"include_usage": True},
                               "messages": [{"role": "user", "content": "Hello"}]}


async def test_a_server_that_refuses_stream_options_is_asked_without_them(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture) -> None:
    # an older compatible server answers 400 to stream_options (tgmux did not send them
    # before usage was recorded): the reply still comes, and the next request goes without
    sim.refuse_stream_options = True
    async with EngineHarness.from_yaml(config(sim)) as h:
        first = await h.say("Hello", user_id=42)
        second = await h.say("Again", user_id=42)
        [row] = rows(h)
    assert first[-1] == Text("You said: Hello") and second[-1].text.startswith("You said: Again")
    assert ["stream_options" in c.body for c in sim.completions] == [False, False]
    assert [r.message for r in caplog.records if "refuses" in r.message] == [
        "gpt: the server refuses stream_options: streaming without usage from now on (set "
        "stream_usage: false to say so)"]  # once (the HTTP layer logged its 400 once too)
    assert (row.messages, row.input_tokens, row.cost) == (2, 0, None)


def test_the_fast_flat_prices_are_the_librarys_for_every_model_it_knows() -> None:
    """A flat-priced model is priced without calc_price (~0.1 ms a reply): for every model
    genai-prices knows, the cost is its calc_price to the last digit that matters."""
    from genai_prices.data_snapshot import get_snapshot

    from tgmux.prices import UNKNOWN, library_cost

    prices = Prices({})
    prices._loaded = True  # imported here already
    models = {model.id for provider in get_snapshot().providers for model in provider.models}
    fast = 0
    for model in sorted(models):
        for usage in (Usage(model, 1234, 567, 0), Usage(model, 250_000, 3000, 200_000)):
            expected = library_cost(usage)
            got = prices.cost(usage)
            if expected is None:
                continue  # the id alone does not find it (a provider-prefixed one)
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (model, usage)
        fast += prices._flat_price(model) not in (None, UNKNOWN)
    assert fast > 300  # most are flat


def test_check_warns_about_a_model_without_a_price(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("""\
store: memory://
admins: [1]
backends:
  gpt: {type: openai, api_key: sk-x, model: gpt-4o-mini}
  local: {type: openai, base_url: "http://127.0.0.1:9/v1", model: llama3.2}
  mine: {type: openai, base_url: "http://127.0.0.1:9/v1", model: my-model}
  echo: {type: echo}
routes:
  - match: {text: "^x"}
    backend: gpt
    options: {model: gpt-9-unknown}
default: gpt
prices: {my-model: {input: 1, output: 2}}
""")
    result = subprocess.run([sys.executable, "-m", "tgmux", "check", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "price" in line]
    assert warnings == [
        f"warning: {path}:5: backends.local: model llama3.2 has no price in USD: its "
        "replies' tokens are recorded without a cost (add it to prices:)",
        f"warning: {path}:11: routes[0].options.model: model gpt-9-unknown has no price in "
        "USD: its replies' tokens are recorded without a cost (add it to prices:)"]


async def test_a_reloaded_price_applies_to_the_next_replies(sim: OpenAISimulator) -> None:
    from tgmux.bootstrap import load_config_text

    async with EngineHarness.from_yaml(config(sim)) as h:
        await h.say("Hi", user_id=1)  # 5 in, 3 out at 2 and 8 a million
        cheaper = config(sim, top="prices: {sim-gpt: {input: 1, output: 1}}")
        await h.engine.reload(load_config_text(cheaper, plugin_manager=h.pm))
        await h.say("Hi", user_id=2)
        costs = {row.user_id: row.cost for row in rows(h)}
    assert costs == {1: pytest.approx((5 * 2 + 3 * 8) / 1e6), 2: pytest.approx(8 / 1e6)}


async def test_replies_priced_by_the_recorder_spend_a_budget_that_holds_across_a_restart(
        sim: OpenAISimulator, tmp_path: Path) -> None:
    # end to end through tgmux simulate: a reply's usage recorded with its configured price
    # in the SQLite store; after a restart the user is over daily_cost_per_user and told when
    # to come back, and the provider is not asked
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        config(sim, extra="stream: false",
               top="prices: {sim-gpt: {input: 100000, output: 100000}}\n"
                   "limits: {daily_cost_per_user: 1.0}\n")
        .replace("store: memory://", f"store: sqlite:///{tmp_path / 'tgmux.db'}"))

    async def run(line: dict[str, Any]) -> list[str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tgmux", "simulate", "-c", str(config_file),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(json.dumps(line).encode()), 120)
        assert process.returncode == 0, err.decode()
        return [json.loads(a)["text"] for a in out.decode().splitlines()
                if json.loads(a)["action"] == "send_message"]

    assert await run({"user_id": 42, "text": "Hello", "message_id": 1}) == ["You said: Hello"]
    [refused] = await run({"user_id": 42, "text": "Again", "message_id": 2})
    assert re.fullmatch(r"You have used your daily budget of USD 1\.00; you can write again "
                        r"in \d+ (h|min)\.", refused), refused
    assert len(sim.completions) == 1
