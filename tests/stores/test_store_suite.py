"""What every store does (memory, SQLite, PostgreSQL): the ``store`` fixture is each of them."""

from __future__ import annotations

import asyncio
import time

from conftest import OpenStore

from tgmux.ratelimit import StoreLimiter
from tgmux.store import Store, StreamPosition, Unanswered
from tgmux.types import ChatLine, UsageRow


def payload(n: int) -> dict[str, object]:
    return {"chat": {"id": 1}, "text": f"message {n}", "n": n}


async def test_a_message_is_accepted_once(store: Store) -> None:
    assert await store.inbox_accept(1, 10, payload(10)) is True
    assert await store.inbox_accept(1, 10, payload(10)) is False
    await store.inbox_done(1, 10)
    assert await store.inbox_accept(1, 10, payload(10)) is False  # answered: still a duplicate
    assert await store.inbox_accept(2, 10, payload(10)) is True  # another chat


async def test_unanswered_are_oldest_first_and_say_whether_dispatched(store: Store) -> None:
    for n in range(5):
        assert await store.inbox_accept(7, n, payload(n))
    await store.inbox_dispatched(7, 1)
    await store.inbox_dispatched(7, 3)
    await store.inbox_done(7, 3)
    await store.inbox_done(7, 4)
    assert await store.inbox_unanswered() == [
        Unanswered(payload(0), False), Unanswered(payload(1), True), Unanswered(payload(2), False)]
    assert await store.inbox_backlog() == 3


async def test_dispatched_does_not_revive_a_done_message(store: Store) -> None:
    await store.inbox_accept(1, 1, payload(1))
    await store.inbox_done(1, 1)
    await store.inbox_dispatched(1, 1)
    assert await store.inbox_unanswered() == []
    assert await store.inbox_backlog() == 0


async def test_the_payload_comes_back_as_it_went_in(store: Store) -> None:
    odd = {"text": "é 😀 \u0000 \"quotes\" ' \\", "nested": {"list": [1, 2.5, None, True]},
           "big": 2**62}
    await store.inbox_accept(-1001234567890, 2**31 + 5, odd)
    assert await store.inbox_unanswered() == [Unanswered(odd, False)]


async def test_prune_forgets_only_old_answered_messages(store: Store) -> None:
    await store.inbox_accept(1, 1, payload(1))
    await store.inbox_done(1, 1)
    await store.inbox_accept(1, 2, payload(2))  # pending: kept whatever its age
    await store.inbox_accept(1, 3, payload(3), account="other")
    await store.inbox_done(1, 3, account="other")
    assert await store.inbox_prune(time.time() - 3600) == 0  # all are recent
    assert await store.inbox_prune(time.time() + 1, account="main") == 1
    assert await store.inbox_accept(1, 1, payload(1)) is True  # forgotten
    assert await store.inbox_prune(time.time() + 1) == 1  # "other"'s, with account=None
    assert [u.payload for u in await store.inbox_unanswered()] == [payload(2), payload(1)]


async def test_accounts_have_separate_inboxes(store: Store) -> None:
    assert await store.inbox_accept(1, 1, payload(1), account="a")
    assert await store.inbox_accept(1, 1, payload(2), account="b")
    assert await store.inbox_accept(1, 1, payload(3))  # "main"
    assert not await store.inbox_accept(1, 1, payload(1), account="a")
    await store.inbox_dispatched(1, 1, account="a")
    await store.inbox_done(1, 1, account="b")
    assert await store.inbox_unanswered(account="a") == [Unanswered(payload(1), True)]
    assert await store.inbox_unanswered(account="b") == []
    assert await store.inbox_unanswered() == [Unanswered(payload(3), False)]
    assert [await store.inbox_backlog(account=a) for a in ("a", "b", "main", "none")] == \
        [1, 0, 1, 0]


async def test_overrides_per_chat_and_account(store: Store) -> None:
    assert await store.get_override(5) is None
    await store.set_override(5, "lucy")
    await store.set_override(5, "sensay", account="second")
    assert await store.get_override(5) == "lucy"
    assert await store.get_override(5, account="second") == "sensay"
    await store.set_override(5, "echo")
    assert await store.get_override(5) == "echo"
    await store.set_override(5, None)
    await store.set_override(6, None)  # nothing to remove: fine
    assert await store.get_override(5) is None
    assert await store.get_override(5, account="second") == "sensay"


async def test_kv_namespaces_and_literal_prefixes(store: Store) -> None:
    ns, other = store.namespace("backend:a"), store.namespace("backend:b")
    await ns.set("k", "1")
    await other.set("k", "2")
    await ns.set("k", "3")
    assert (await ns.get("k"), await other.get("k"), await ns.get("missing")) == ("3", "2", None)
    for key in ("a%b", "aXb", "a_c", "abc", "a\\d", "A%b", "b"):
        await ns.set(key, key)
    assert [k for k, _ in await ns.items("a%")] == ["a%b"]
    assert [k for k, _ in await ns.items("a_")] == ["a_c"]
    assert [k for k, _ in await ns.items("a\\")] == ["a\\d"]
    assert [k for k, _ in await ns.items("A")] == ["A%b"]  # case-sensitive
    assert [k for k, _ in await ns.items("a")] == ["a%b", "aXb", "a\\d", "a_c", "abc"]  # by code
    await ns.delete("k")
    await ns.delete("never-there")
    assert await ns.get("k") is None and await other.get("k") == "2"
    assert len(await ns.items()) == 7


async def test_unicode_keys_sort_by_code_point(store: Store) -> None:
    for key in ("é", "z", "Z", "😀", "a"):
        await store.kv_set("ns", key, key)
    assert [k for k, _ in await store.kv_items("ns")] == sorted(["é", "z", "Z", "😀", "a"])


async def test_stores_on_the_same_data_accept_each_message_once(open_stores: OpenStore) -> None:
    """Two stores (two processes) racing on the same message ids: exactly one claim each."""
    first, second = await open_stores(), await open_stores()
    ids = range(200)
    results = await asyncio.gather(*(s.inbox_accept(1, i, payload(i))
                                     for i in ids for s in (first, second, first)))
    claims = [sum(results[3 * i:3 * i + 3]) for i in ids]
    assert claims == [1] * len(ids)
    assert await first.inbox_backlog() == await second.inbox_backlog() == len(ids)


async def test_two_stores_on_the_same_data_share_one_rate_budget(open_stores: OpenStore) -> None:
    first, second = await open_stores(), await open_stores()
    now = time.time()
    waits = await asyncio.gather(*(
        (first if n % 2 else second).rate_take("provider:key", 5, 1.0, now=now)
        for n in range(10)))
    assert waits.count(0.0) == 5
    assert [round(w, 6) for w in waits if w] == [1.0] * 5
    assert await first.rate_take("provider:key", 5, 1.0, now=now + 0.5) == 0.5
    assert await first.rate_take("provider:other", 5, 1.0, now=now) == 0.0  # keys are apart
    # once those events leave the window, as many may go again, and no more
    later = [await (first, second)[n % 2].rate_take("provider:key", 5, 1.0, now=now + 1.001)
             for n in range(6)]
    assert later[:5] == [0.0] * 5 and later[5] > 0.99


async def test_a_rate_block_holds_on_every_store(open_stores: OpenStore) -> None:
    first, second = await open_stores(), await open_stores()
    now = time.time()
    await first.rate_block("provider:key", now + 30)
    await first.rate_block("provider:key", now + 10)  # an earlier end does not shorten it
    assert abs(await second.rate_take("provider:key", 5, 1.0, now=now) - 30) < 0.01
    assert await second.rate_take("provider:key", 5, 1.0, now=now + 30.5) == 0.0


async def test_an_answered_event_counts_from_its_answer_on_every_store(
        open_stores: OpenStore) -> None:
    first, second = await open_stores(), await open_stores()
    now = time.time()
    assert await first.rate_take("provider:key", 2, 1.0, now=now - 0.5) == 0.0
    assert await first.rate_take("provider:key", 2, 1.0, now=now) == 0.0
    # answered 0.4 s after its grant (in another process): the oldest taken since moves
    await second.rate_restamp("provider:key", now - 0.2, now + 0.4)
    await second.rate_restamp("provider:key", now + 5, now + 6)  # none since: nothing moves
    await second.rate_restamp("provider:key", now - 1, now - 2)  # never earlier
    assert await first.rate_take("provider:key", 2, 1.0, now=now + 0.5) == 0.0
    # the moved one holds its slot until a window after its answer (and is not deleted as
    # expired before: its expiry moved with it)
    assert round(await first.rate_take("provider:key", 2, 1.0, now=now + 1.0), 6) == 0.4
    assert await first.rate_take("provider:key", 2, 1.0, now=now + 1.4001) == 0.0


async def test_a_store_limiter_counts_a_late_request_from_its_answer_for_every_process(
        open_stores: OpenStore) -> None:
    one = StoreLimiter(await open_stores(), "k", 2, 0.5)
    two = StoreLimiter(await open_stores(), "k", 2, 0.5)  # another process's, on the same data
    await one.acquire()
    await two.acquire()
    two.sent()  # answered at once
    await asyncio.sleep(0.3)  # one's request is held up on its way (on purpose)
    answered_at = time.time()
    one.sent()
    await one.written()  # the stamp moves in the store, in the background
    await two.written()
    await two.acquire()  # the slot of two's own request: a period after its grant
    await two.acquire()  # the slot of one's: a period after its answer, in the other process
    assert time.time() >= answered_at + 0.5 - 1e-6


async def test_rate_count_reads_a_budget_without_taking_from_it(
        open_stores: OpenStore) -> None:
    first, second = await open_stores(), await open_stores()
    now = time.time()
    for at in (now - 20, now - 5, now - 1):
        await first.rate_take("limit:main:user:42", 10, 60.0, now=at)
    assert await second.rate_count("limit:main:user:42", 10.0, now=now) == 2
    assert await second.rate_count("limit:main:user:42", 60.0, now=now) == 3
    assert await second.rate_count("limit:main:user:42", 60.0, now=now) == 3  # took nothing
    assert await second.rate_count("limit:main:user:43", 60.0, now=now) == 0


async def test_rate_events_are_deleted_as_they_age(store: Store) -> None:
    now = time.time()
    for n in range(50):
        await store.rate_take(f"key-{n}", 3, 1.0, now=now)
    for _ in range(3):
        await store.rate_take("busy", 3, 1.0, now=now + 5)
    assert await store.rate_take("busy", 3, 1.0, now=now + 5) > 0
    assert await rate_rows(store) <= 3 + 100  # the busy key's, plus at most one sweep left


async def rate_rows(store: Store) -> int:
    if hasattr(store, "rate_events"):
        return sum(len(v) for v in store.rate_events.values())  # type: ignore[attr-defined]
    if hasattr(store, "db"):
        return await store._one("SELECT count(*) FROM rate_event", ())  # type: ignore[attr-defined]
    return await store.pool.fetchval("SELECT count(*) FROM tgmux_rate_event")  # type: ignore[attr-defined]


async def test_accepts_at_once_each_say_whether_the_message_is_new(store: Store) -> None:
    # SQLite takes accepts made at the same moment in one statement: each still learns
    # whether its message is new, a message twice in one batch is new once
    await store.inbox_accept(1, 1, {"n": 0})
    keys = [(1, 1), (1, 2), (2, 2), (1, 2), (3, 7)] + [(9, n) for n in range(600)]
    fresh = await asyncio.gather(*(store.inbox_accept(chat, message, {"n": i})
                                   for i, (chat, message) in enumerate(keys)))
    assert (fresh[0], fresh[2], fresh[4]) == (False, True, True)
    assert sorted([fresh[1], fresh[3]]) == [False, True]  # new once, either one
    assert all(fresh[5:])
    assert await store.inbox_backlog() == 1 + 3 + 600


async def test_a_session_is_kept_per_account_and_forgotten(store: Store) -> None:
    assert await store.session_read("main") is None
    await store.session_write('{"dc_id": 2}', account="main")
    await store.session_write('{"dc_id": 4}', account="second")
    await store.position_write(StreamPosition(3, "p3"), account="main")
    assert await store.session_read("main") == '{"dc_id": 2}'
    assert await store.session_read("second") == '{"dc_id": 4}'
    await store.session_write('{"dc_id": 1}', account="main")
    assert await store.session_read("main") == '{"dc_id": 1}'
    assert await store.position_read("main") == StreamPosition(3, "p3")  # kept alongside
    await store.session_write(None, account="main")
    assert await store.session_read("main") is None
    assert await store.session_read("second") == '{"dc_id": 4}'


async def test_the_highest_position_is_kept(store: Store) -> None:
    assert await store.position_read("main") is None
    await store.position_write(StreamPosition(2, "two"), account="main")
    await store.position_write(StreamPosition(1, "one"), account="main")  # older: ignored
    assert await store.position_read("main") == StreamPosition(2, "two")
    await store.position_write(StreamPosition(5, "five"), account="main")
    assert await store.position_read("main") == StreamPosition(5, "five")
    assert await store.position_read("second") is None
    await store.position_write(None, account="main")  # forgotten: any order is kept next
    assert await store.position_read("main") is None
    await store.position_write(StreamPosition(1, "again"), account="main")
    assert await store.position_read("main") == StreamPosition(1, "again")


async def test_an_accept_writes_the_position_with_the_message(store: Store) -> None:
    assert await store.inbox_accept(1, 10, payload(10), account="main",
                                    position=StreamPosition(1, "past 10"))
    assert await store.position_read("main") == StreamPosition(1, "past 10")
    # a duplicate still moves the position; an older one does not move it back
    assert not await store.inbox_accept(1, 10, payload(10), account="main",
                                        position=StreamPosition(3, "past 10 again"))
    assert await store.inbox_accept(1, 11, payload(11), account="main",
                                    position=StreamPosition(2, "late"))
    assert await store.position_read("main") == StreamPosition(3, "past 10 again")
    assert [u.payload["n"] for u in await store.inbox_unanswered(account="main")] == [10, 11]


async def test_accepts_at_once_keep_the_highest_position(store: Store) -> None:
    fresh = await asyncio.gather(*(
        store.inbox_accept(chat, 1, payload(chat), account=account,
                           position=StreamPosition(chat, f"{account} past {chat}"))
        for chat in (3, 1, 5, 2) for account in ("main", "second")))
    assert all(fresh)
    assert await store.position_read("main") == StreamPosition(5, "main past 5")
    assert await store.position_read("second") == StreamPosition(5, "second past 5")


def line(n: int, at: float = 1000.0) -> ChatLine:
    return ChatLine(f"Anna {n}", f"line {n}", at + n, user_id=40 + n, message_id=n,
                    username=None if n % 2 else f"anna{n}")


async def test_group_context_keeps_the_newest_and_is_taken_once(store: Store) -> None:
    for n in range(1, 6):
        await store.context_add("main", -100, None, line(n), keep=3)
    assert await store.context_take("main", -100, None) == [line(3), line(4), line(5)]
    assert await store.context_take("main", -100, None) == []  # each line is given once
    await store.context_add("main", -100, None, line(6), keep=3)
    assert await store.context_take("main", -100, None) == [line(6)]


async def test_group_context_is_kept_per_account_chat_and_topic(store: Store) -> None:
    await store.context_add("main", -100, 5, line(1), keep=10)
    await store.context_add("main", -100, 6, line(2), keep=10)
    await store.context_add("main", -100, None, line(3), keep=10)
    await store.context_add("other", -100, 5, line(4), keep=10)
    await store.context_add("main", -200, 5, line(5), keep=10)
    assert await store.context_take("main", -100, 6) == [line(2)]
    assert await store.context_take("main", -100, 5) == [line(1)]
    assert await store.context_take("main", -100, None) == [line(3)]
    assert await store.context_take("other", -100, 5) == [line(4)]
    assert await store.context_take("main", -200, 5) == [line(5)]


async def test_group_context_prune_forgets_old_lines_only(store: Store) -> None:
    await store.context_add("main", -100, None, line(1, at=100.0), keep=5)
    await store.context_add("main", -100, None, line(2, at=5000.0), keep=5)
    await store.context_add("main", -300, None, line(3, at=100.0), keep=5)
    assert await store.context_prune(1000.0) == 2
    assert await store.context_take("main", -100, None) == [line(2, at=5000.0)]
    assert await store.context_take("main", -300, None) == []


async def test_group_context_keeps_odd_text_as_it_was(store: Store) -> None:
    odd = ChatLine("Zoë 🦊 \"x\"", "quote ' \" \\ %_ 🦊\nnew line", 1.5, user_id=2**40)
    await store.context_add("main", -1001234567890, 2**31 + 1, odd, keep=1)
    assert await store.context_take("main", -1001234567890, 2**31 + 1) == [odd]


def usage(day: str = "2026-03-04", user_id: int | None = 7, *, account: str = "main",
          chat_id: int = 7, backend: str = "gpt", model: str = "gpt-4o",
          cost: float | None = 0.25, tokens: int = 100) -> UsageRow:
    return UsageRow(day, account, user_id, chat_id, backend, model, messages=1,
                    input_tokens=tokens, output_tokens=tokens // 2, cached_input_tokens=3,
                    reasoning_tokens=2, cost=cost)


async def test_usage_of_one_key_adds_up(store: Store) -> None:
    await store.usage_add(usage())
    await store.usage_add(usage(tokens=10, cost=0.5))
    assert await store.usage_rows(since="2026-03-01") == [UsageRow(
        "2026-03-04", "main", 7, 7, "gpt", "gpt-4o", messages=2, input_tokens=110,
        output_tokens=55, cached_input_tokens=6, reasoning_tokens=4, cost=0.75)]


async def test_an_unknown_cost_stays_unknown_until_a_known_one_is_added(store: Store) -> None:
    await store.usage_add(usage(cost=None))
    assert [r.cost for r in await store.usage_rows(since="2026-03-04")] == [None]
    await store.usage_add(usage(cost=None))
    assert [r.cost for r in await store.usage_rows(since="2026-03-04")] == [None]
    await store.usage_add(usage(cost=0.125))
    await store.usage_add(usage(cost=None))  # adds nothing to a known cost
    [row] = await store.usage_rows(since="2026-03-04")
    assert (row.messages, row.cost) == (4, 0.125)


async def test_usage_rows_are_kept_per_key_and_filtered(store: Store) -> None:
    rows = [usage("2026-03-01"), usage("2026-03-02"), usage("2026-03-03"),
            usage("2026-03-02", user_id=8), usage("2026-03-02", account="other"),
            usage("2026-03-02", chat_id=-100123, backend="lucy", model="lucy-1"),
            usage("2026-03-02", model="gpt-4o-mini"), usage("2026-03-02", user_id=None,
                                                           chat_id=-5)]
    for row in rows:
        await store.usage_add(row)
    everything = await store.usage_rows(since="2026-01-01")
    assert sorted(everything, key=repr) == sorted(rows, key=repr)
    assert [r.day for r in everything] == sorted(r.day for r in everything)  # by day
    assert await store.usage_rows(since="2026-03-03") == [usage("2026-03-03")]
    assert await store.usage_rows(since="2026-03-01", until="2026-03-01") == \
        [usage("2026-03-01")]
    assert await store.usage_rows(since="2026-03-01", user_id=8) == \
        [usage("2026-03-02", user_id=8)]
    assert await store.usage_rows(since="2026-03-01", account="other") == \
        [usage("2026-03-02", account="other")]
    mine = await store.usage_rows(since="2026-03-02", until="2026-03-02", account="main",
                                  user_id=7)
    assert sorted(mine, key=repr) == sorted(
        [usage("2026-03-02"), usage("2026-03-02", chat_id=-100123, backend="lucy",
                                    model="lucy-1"), usage("2026-03-02", model="gpt-4o-mini")],
        key=repr)
    assert None in {r.user_id for r in everything}  # no user comes back as no user


async def test_usage_prune_forgets_days_before(store: Store) -> None:
    for day in ("2025-12-31", "2026-01-01", "2026-01-02"):
        await store.usage_add(usage(day))
        await store.usage_add(usage(day, user_id=9))
    assert await store.usage_prune("2026-01-02") == 4
    assert [r.day for r in await store.usage_rows(since="2000-01-01")] == ["2026-01-02"] * 2
    assert await store.usage_prune("2026-01-02") == 0


async def test_usage_keeps_big_ids_and_counts(store: Store) -> None:
    row = UsageRow("2026-03-04", "main", 2**40, -1001234567890, "é/b", "m:😀", 3, 2**33,
                   2**32, 0, 0, 1234.5678)
    await store.usage_add(row)
    assert await store.usage_rows(since="2026-03-04", user_id=2**40) == [row]
