"""What an operator watches: /healthz, /readyz, /metrics, and JSON logs with context."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import tgmux.hookspecs
import tgmux.testing
from tgmux.harness import EngineHarness
from tgmux.logs import JsonFormatter, log_fields, setup_logging
from tgmux.ops import start_ops_server
from tgmux.server import OpsServer
from tgmux.store.changes import CHANNEL

ECHO = 'store: "memory://"\nbackends:\n  e: {type: echo, prefix: "echo: "}\ndefault: e\n'


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


async def test_metrics_move_and_probes_answer() -> None:
    config = ECHO + "server: {listen: 127.0.0.1:0}\n"
    async with EngineHarness.from_yaml(config) as h:
        server = await start_ops_server(h.config, h.engine)
        assert server is not None
        base = f"http://127.0.0.1:{server.port}"
        try:
            await h.say("one", user_id=4)
            await h.say("two", user_id=5)
            status, text = await get(f"{base}/metrics")
            assert status == 200
            assert metric(text, "tgmux_messages_received_total", account="main") == 2
            assert metric(text, "tgmux_replies_total", account="main", backend="e",
                          outcome="ok") == 2
            assert metric(text, "tgmux_backend_latency_seconds_count", backend="e") == 2
            assert metric(text, "tgmux_first_token_seconds_count", backend="e") == 2
            assert metric(text, "tgmux_inbox_pending", account="main") == 0
            assert (await get(f"{base}/healthz"))[0] == 200
            status, body = await get(f"{base}/readyz")
            assert status == 200 and json.loads(body)["checks"]["store"]["ok"] is True

            async def down() -> str:
                return "not connected"

            server.add_check("account main", down)
            status, body = await get(f"{base}/readyz")
            assert status == 503
            assert json.loads(body) == {"ready": False, "checks": {
                "store": {"ok": True, "detail": "ok"},
                "account main": {"ok": False, "detail": "not connected"}}}
        finally:
            await server.stop()


ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def not_metric_names() -> set[str]:
    """The other ``tgmux_…`` names the docs use: hooks, store tables, the store's NOTIFY
    channel, the pytest fixture (and the simulated bot's default username)."""
    hooks = {name for name in dir(tgmux.hookspecs) if name.startswith("tgmux_")}
    tables = {name for path in (ROOT / "core" / "store").rglob("*.py")
              for name in re.findall(r"CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?(tgmux_\w+)",
                                     path.read_text(), re.I)}
    return hooks | tables | {CHANNEL} | {n for n in tgmux.testing.__all__
                                         if n.startswith("tgmux_")}


def documented_metrics() -> dict[str, str]:
    """Every metric name the docs mention → where (page:line)."""
    others = not_metric_names()
    found: dict[str, str] = {}
    for page in DOC_PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for name in re.findall(r"\btgmux_\w+", line):
                if name not in others:
                    found.setdefault(name, f"{page.relative_to(ROOT)}:{number}")
    return found


async def test_every_metric_the_docs_name_is_what_metrics_serves() -> None:
    config = ECHO + "server: {listen: 127.0.0.1:0}\n"
    async with EngineHarness.from_yaml(config) as h:
        server = await start_ops_server(h.config, h.engine)
        assert server is not None
        try:
            await h.say("one", user_id=4)
            status, text = await get(f"http://127.0.0.1:{server.port}/metrics")
        finally:
            await server.stop()
    assert status == 200
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    served = set(families) | samples
    documented = documented_metrics()
    wrong = {f"{where}: {name}" for name, where in documented.items() if name not in served}
    assert not wrong, f"the docs name metrics /metrics does not serve: {sorted(wrong)}"
    # and the table in docs/operations.md lists every one that is served
    table = set(re.findall(r"^\| `(tgmux_\w+)` \|", (ROOT / "docs" / "operations.md").read_text(),
                           re.M))
    assert table == set(families)


async def test_a_taken_port_is_a_clear_error() -> None:
    from tgmux.errors import ConfigError
    from tgmux.metrics import Metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"server.listen: cannot listen on 127.0.0.1:{port}"):
            await OpsServer(f"127.0.0.1:{port}", Metrics()).start()


def test_json_log_lines_carry_their_context() -> None:
    formatter = JsonFormatter()
    token = log_fields.set({"account": "support", "chat_id": 42, "backend": "lucy"})
    try:
        record = logging.LogRecord("tgmux.http", logging.WARNING, __file__, 1,
                                   "lucy: POST /x failed via postgresql://u:secret@db/x", (),
                                   None)
        record.request_id = "req-7"
        from tgmux.logs import _Context

        _Context().filter(record)
        line = json.loads(formatter.format(record))
    finally:
        log_fields.reset(token)
    assert line["level"] == "WARNING" and line["logger"] == "tgmux.http"
    assert line["msg"] == "lucy: POST /x failed via postgresql://u:***@db/x"
    assert (line["account"], line["chat_id"], line["backend"], line["request_id"]) == (
        "support", 42, "lucy", "req-7")
    assert line["ts"].endswith("Z")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chat_serves_metrics_and_logs_json(tmp_path: Path) -> None:
    """`tgmux chat` with server.listen and log_format: json, as an operator runs it."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(ECHO + f"server: {{listen: '127.0.0.1:{port}'}}\nlog_format: json\n"
                      "log_level: INFO\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
    proc = subprocess.Popen([sys.executable, "-m", "tgmux", "chat", "-c", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdin is not None
        proc.stdin.write("hello\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        body = ""
        while time.monotonic() < deadline:
            try:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                if 'tgmux_replies_total{account="main",backend="e",outcome="ok"} 1.0' in body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert 'tgmux_replies_total{account="main",backend="e",outcome="ok"} 1.0' in body
        out, err = proc.communicate("", timeout=20)
    finally:
        proc.kill()
    assert out == "echo: hello\n"
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any("health and metrics on" in line["msg"] for line in lines)


def test_setup_logging_keeps_one_handler(restore_logging: None) -> None:
    setup_logging("INFO", "json")
    setup_logging("WARNING", "text")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "tgmux", False)]
    assert len(ours) == 1


async def test_a_provider_failure_logs_its_request_id_as_a_json_field(caplog) -> None:
    from aiohttp import web

    from tgmux.http import HttpClient

    async def fail(request):
        return web.Response(status=503, text="<html>down</html>",
                            headers={"X-Request-Id": "req-123"})

    app = web.Application()
    app.router.add_get("/x", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with HttpClient(f"http://127.0.0.1:{port}", retries=0, name="p") as client:
            with caplog.at_level(logging.WARNING, logger="tgmux.http"):
                with pytest.raises(Exception):  # noqa: B017 - the kind is tested elsewhere
                    await client.request("GET", "/x")
    finally:
        await runner.cleanup()
    [record] = [r for r in caplog.records if r.name == "tgmux.http"]
    assert json.loads(JsonFormatter().format(record))["request_id"] == "req-123"


async def test_histograms_count_each_value_in_every_bucket_it_fits() -> None:
    from tgmux.metrics import Metrics

    m = Metrics()
    for seconds in (0.05, 0.3, 7, 1000):  # on a bound, between bounds, above all of them
        m.of(m.backend_latency, "e").observe(seconds)
    m.of(m.flood_wait, "main").inc(2.5)
    text = (await m.render()).decode()
    le = 'tgmux_backend_latency_seconds_bucket{backend="e",le="%s"} %s'
    for bound, count in (("0.05", "1.0"), ("0.25", "1.0"), ("0.5", "2.0"), ("10.0", "3.0"),
                         ("300.0", "3.0"), ("+Inf", "4.0")):
        assert le % (bound, count) in text
    assert 'tgmux_backend_latency_seconds_count{backend="e"} 4.0' in text
    assert 'tgmux_backend_latency_seconds_sum{backend="e"} 1007.35' in text
    assert 'tgmux_flood_wait_seconds_total{account="main"} 2.5' in text
