"""The engine's part when an account's lease is lost (issue 20, "The database"): it starts no
more turns for the account at once, its queued messages stay pending in the inbox for whoever
runs it next, its turn under way is cancelled and left "dispatched" (the next holder tells the
user once). The whole with two `tgmux run` processes: tests/stores/test_lease_recovery.py."""

from __future__ import annotations

import asyncio

from tgmux.bootstrap import load_text
from tgmux.harness import EngineHarness
from tgmux.store import MemoryStore
from tgmux.types import Notice, Text

CONFIG = """
store: "memory://"
backends:
  echo: {type: echo, prefix: "echo: ", stream: true, delay: 0.5}
default: echo
"""


async def test_a_lost_account_starts_no_more_turns_and_hands_its_queue_back() -> None:
    config, pm = load_text(CONFIG, source="<test config>")
    store = MemoryStore()
    async with EngineHarness(config, store=store, plugin_manager=pm) as h:
        futures = [(await h.submit(f"m{n} w w w", message_id=n))[1] for n in (1, 2, 3)]
        async with asyncio.timeout(30):  # m1 is at the backend
            while store.inbox.get(("main", 1, 1), ("",))[0] != "dispatched":  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        h.engine.stop_serving("main")
        await asyncio.gather(*futures, return_exceptions=True)
        assert [p for _, p in h.delivered if isinstance(p, Text)] == []  # m1 cut, m2 m3 not begun
        assert {k[-1]: v[0] for k, v in store.inbox.items()} == \
            {1: "dispatched", 2: "pending", 3: "pending"}

        await h.engine.serve_account("main")  # taken back (or: what a standby does)
        await h.engine.drain()
        sent = [p.text for _, p in h.delivered if isinstance(p, Text | Notice)]
        assert sent[0].startswith("I was restarted while answering your message “m1 w w w”")
        assert sent[1:] == ["echo: m2 w w w", "echo: m3 w w w"]
