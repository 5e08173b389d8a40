"""The operator's console in a real headless Chromium, on a running ``tgmux simulate`` (its
``server.listen`` on a free 127.0.0.1 port, ``server.console`` on) whose chats talk to an
OpenAI-compatible simulator in this process: sign in, read each page, act on a chat and a user
and see the next simulated message follow, reload a broken config and read its errors.

The tests run in order on one browser page (one module, one signed-in session). Every wait is
for something to appear (Playwright's auto-waiting, a line on the process's stdout, a port that
answers), with generous deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tgmux.backends.openai.simulator import Model, OpenAISimulator

# the first test also starts Chromium and tgmux simulate: room for a loaded machine
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

TOKEN = "console-token-for-the-browser-tests"
KEY = "sk-browser-test-secret-key"
#: Deadlines (seconds / milliseconds): generous, CI is a loaded 2-core machine.
DEADLINE = 60
UI_TIMEOUT = 30_000

CONFIG = """\
store: "sqlite:///%(db)s"
backends:
  gpt:
    type: openai
    base_url: %(url)s
    api_key: "${OPENAI_TEST_KEY}"
    model: gpt-test
    history: {max_turns: 20}
  echo: {type: echo, prefix: "echo: "}
default: gpt
server:
  listen: 127.0.0.1:%(port)d
  console: {token: "${TGMUX_CONSOLE_TOKEN}"}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Simulate:
    """``tgmux simulate`` kept running: input lines written as the test goes, its output
    actions read as they come."""

    def __init__(self, process: asyncio.subprocess.Process, base: str, config: Path) -> None:
        self.process = process
        self.base = base
        self.config = config
        self.actions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self._ids = 0

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            await self.actions.put(json.loads(line))

    async def say(self, text: str, *, user_id: int) -> str:
        """Send a private message; the text of the reply to it."""
        assert self.process.stdin is not None
        self._ids += 1
        self.process.stdin.write(json.dumps({"user_id": user_id, "username": f"u{user_id}",
                                             "text": text}).encode() + b"\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(DEADLINE):
            while True:
                action = await self.actions.get()
                if action.get("action") == "send_message" and action["chat_id"] == user_id:
                    return action["text"]

    async def wait_ready(self) -> None:
        async with asyncio.timeout(DEADLINE), aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"tgmux simulate exited {self.process.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.base}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)  # polling a port for readiness, not a wait for it


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("gpt-test")]) as server:
        yield server  # type: ignore[misc]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tgmux(sim: OpenAISimulator, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Simulate]:
    folder = tmp_path_factory.mktemp("console")
    config = folder / "config.yaml"
    port = free_port()
    config.write_text(CONFIG % {"db": folder / "tgmux.db", "url": sim.base_url, "port": port})
    stderr = (folder / "stderr.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        env={**os.environ, "TGMUX_CONSOLE_TOKEN": TOKEN,
             "OPENAI_TEST_KEY": KEY})
    running = Simulate(process, f"http://127.0.0.1:{port}", config)
    try:
        try:
            await running.wait_ready()
        except (AssertionError, TimeoutError):
            stderr.flush()
            raise AssertionError("tgmux simulate did not serve: "
                                 + (folder / "stderr.log").read_text()[-2000:]) from None
        yield running
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()  # the end of the input: it finishes and exits
            try:
                await asyncio.wait_for(process.wait(), DEADLINE)
            except TimeoutError:
                process.kill()
                await process.wait()
        stderr.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def page(browser: Any, tgmux: Simulate) -> AsyncIterator[Any]:
    from playwright.async_api import expect

    expect.set_options(timeout=UI_TIMEOUT)
    context = await browser.new_context(base_url=tgmux.base, viewport={"width": 1100,
                                                                       "height": 800})
    context.set_default_timeout(UI_TIMEOUT)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


SCREENSHOTS = Path(os.environ.get("TGMUX_SCREENSHOTS")
                   or Path(__file__).resolve().parent / "screenshots")


async def screenshot(page: Any, name: str) -> None:
    """Saved by every run (git-ignored), for a person to look at."""
    os.makedirs(SCREENSHOTS, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_sign_in_refuses_a_wrong_token_and_takes_the_right_one(page: Any) -> None:
    from playwright.async_api import expect

    await page.goto("/console")
    await expect(page.locator("h1")).to_have_text("Sign in")
    await screenshot(page, "sign-in")
    await page.fill("input[name=token]", "not-the-console-token")
    await page.click("button[type=submit]")
    await expect(page.locator("#sign-in-error")).to_be_visible()
    await expect(page.locator("h1")).to_have_text("Sign in")
    cookies = await page.context.cookies()
    assert not cookies
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Overview")
    [cookie] = await page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


async def test_each_page_reads_and_shows_nothing_secret(page: Any, tgmux: Simulate) -> None:
    from playwright.async_api import expect

    assert (await tgmux.say("I am Ann.", user_id=42)) == "You said: I am Ann."
    await page.goto("/console")
    await expect(page.locator("#accounts")).to_contain_text("main")
    await expect(page.locator("#backends")).to_contain_text("gpt")
    await expect(page.locator("#backends")).to_contain_text("echo")
    await expect(page.locator("#messages-chart")).to_be_visible()
    await expect(page.locator("figcaption")).to_contain_text("in the last hour")
    await screenshot(page, "overview")

    await page.goto("/console/chats")
    await expect(page.locator("#chats")).to_contain_text("u42")
    await screenshot(page, "chats")
    await page.fill("input[name=q]", "no-such-chat")
    await page.click("form.inline button[type=submit] >> text=Filter")
    await expect(page.locator("#chats")).to_contain_text("No chat matches")
    await page.fill("input[name=q]", "42")
    await page.click("text=Filter")
    await page.click("#chats a >> text=42")
    await expect(page.locator("h1")).to_contain_text("Chat 42")
    await expect(page.locator("#chat-backend")).to_have_text("gpt")
    await expect(page.locator("#chat-memory")).to_have_text("1 exchange")
    await screenshot(page, "chat")

    await page.goto("/console/users")
    await expect(page.locator("#user-42")).to_contain_text("allowed")
    await screenshot(page, "users")

    await page.goto("/console/config")
    await expect(page.locator("#config")).to_contain_text("config.yaml:")
    await expect(page.locator("#config")).to_contain_text("***")
    await screenshot(page, "config")
    for path in ["/console", "/console/chats", "/console/chats/main/42", "/console/users",
                 "/console/config"]:
        response = await page.goto(path)
        body = await response.text()
        assert KEY not in body and TOKEN not in body, path
        assert "I am Ann." not in body, path  # messages stay private (show_messages is off)
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]


async def test_switching_a_chat_backend_sends_its_next_message_there(
        page: Any, tgmux: Simulate, sim: OpenAISimulator) -> None:
    from playwright.async_api import expect

    await page.goto("/console/chats/main/42")
    await page.select_option("#set-backend select", "echo")
    await page.click("#set-backend button")
    await expect(page.locator("#notice")).to_contain_text("backend set to echo")
    await expect(page.locator("#chat-backend")).to_have_text("echo")
    asked = len(sim.completions)
    assert (await tgmux.say("to whom?", user_id=42)) == "echo: to whom?"
    assert len(sim.completions) == asked  # the provider was not asked
    await page.select_option("#set-backend select", "")
    await page.click("#set-backend button")
    await expect(page.locator("#chat-backend")).to_have_text("gpt")
    assert (await tgmux.say("back?", user_id=42)).startswith("You said: back?")


async def test_reset_forgets_the_conversation(page: Any, tgmux: Simulate) -> None:
    from playwright.async_api import expect

    assert "I remember" in await tgmux.say("still there?", user_id=42)
    await page.goto("/console/chats/main/42")
    await page.click("#reset button")
    await expect(page.locator("#notice")).to_contain_text("conversation reset")
    await expect(page.locator("#chat-memory")).to_have_text("0 exchanges")
    assert (await tgmux.say("who am I?", user_id=42)) == "You said: who am I?"


async def test_a_blocked_user_is_refused(page: Any, tgmux: Simulate,
                                         sim: OpenAISimulator) -> None:
    from playwright.async_api import expect

    assert (await tgmux.say("hello", user_id=77)) == "You said: hello"
    await page.goto("/console/users")
    await page.click("#user-77 button")
    await expect(page.locator("#notice")).to_contain_text("user 77 blocked")
    await expect(page.locator("#user-77 .verdict")).to_contain_text("blocked")
    asked = len(sim.completions)
    # told why, with the account's access.denied_reply; the provider is not asked
    assert (await tgmux.say("hello again", user_id=77)) == "This bot is private."
    assert len(sim.completions) == asked
    await page.click("#user-77 button")  # unblock
    await expect(page.locator("#notice")).to_contain_text("user 77 unblocked")
    assert (await tgmux.say("and now?", user_id=77)).startswith("You said: and now?")


async def test_reloading_a_broken_config_shows_its_errors_with_file_and_line(
        page: Any, tgmux: Simulate) -> None:
    from playwright.async_api import expect

    good = tgmux.config.read_text()
    tgmux.config.write_text(good.replace("default: gpt", "default: nowhere"))
    line = good.splitlines().index("default: gpt") + 1
    try:
        await page.goto("/console/config")
        await page.click("#reload button")
        await expect(page.locator("#reload-errors")).to_contain_text(
            f"{tgmux.config}:{line}")
        await screenshot(page, "reload-errors")
    finally:
        tgmux.config.write_text(good)
    await page.click("#reload button")
    await expect(page.locator("#notice")).to_contain_text("Reload: applied")
    assert (await tgmux.say("still answered?", user_id=42)).startswith("You said")
