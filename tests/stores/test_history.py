"""Conversation memory in every store (memory, SQLite, PostgreSQL): exchanges come back oldest
first within max_turns and max_chars, appending forgets the oldest, conversations stay apart,
and a file store keeps them across a reopen."""

from __future__ import annotations

from conftest import OpenStore

from tgmux.store import Store
from tgmux.store.base import conversation_key
from tgmux.types import ChatIdentity, Exchange

LOTS = 10**6


def ex(n: int, size: int = 0) -> Exchange:
    return Exchange(f"q{n}" + "." * size, f"a{n}")


async def test_exchanges_come_back_oldest_first_within_max_turns(store: Store) -> None:
    for n in range(1, 6):
        await store.history_append("c", ex(n), max_turns=LOTS, max_chars=LOTS)
    assert await store.history_read("c", max_turns=3, max_chars=LOTS) == [ex(3), ex(4), ex(5)]
    assert await store.history_read("c", max_turns=LOTS, max_chars=LOTS) == \
        [ex(n) for n in range(1, 6)]
    assert await store.history_read("other", max_turns=LOTS, max_chars=LOTS) == []


async def test_max_chars_counts_from_the_newest_and_leaves_no_gap(store: Store) -> None:
    # chars: q1 + 8 dots + a1 = 12; q2 + a2 = 4; q3 + 20 dots + a3 = 24; q4 + a4 = 4
    for exchange in (ex(1, 8), ex(2), ex(3, 20), ex(4)):
        await store.history_append("c", exchange, max_turns=LOTS, max_chars=LOTS)
    assert await store.history_read("c", max_turns=LOTS, max_chars=28) == [ex(3, 20), ex(4)]
    # ex(2) would fit in 27 after ex(4), but ex(3) does not: the list ends there
    assert await store.history_read("c", max_turns=LOTS, max_chars=27) == [ex(4)]
    assert await store.history_read("c", max_turns=LOTS, max_chars=3) == []


async def test_append_forgets_the_oldest_beyond_the_limits(store: Store) -> None:
    for n in range(1, 8):
        await store.history_append("c", ex(n), max_turns=3, max_chars=LOTS)
    # gone for good: a larger limit does not bring them back
    assert await store.history_read("c", max_turns=LOTS, max_chars=LOTS) == [ex(5), ex(6), ex(7)]
    await store.history_append("c", ex(8, 30), max_turns=3, max_chars=40)
    assert await store.history_read("c", max_turns=LOTS, max_chars=LOTS) == [ex(7), ex(8, 30)]
    # one exchange alone over max_chars is not kept either
    await store.history_append("c", ex(9, 50), max_turns=3, max_chars=40)
    assert await store.history_read("c", max_turns=LOTS, max_chars=LOTS) == []


async def test_trim_and_clear_say_how_many_they_forgot(store: Store) -> None:
    for n in range(1, 6):
        await store.history_append("c", ex(n), max_turns=LOTS, max_chars=LOTS)
        await store.history_append("d", ex(n), max_turns=LOTS, max_chars=LOTS)
    assert await store.history_trim("c", max_turns=2, max_chars=LOTS) == 3
    assert await store.history_read("c", max_turns=LOTS, max_chars=LOTS) == [ex(4), ex(5)]
    assert await store.history_trim("c", max_turns=2, max_chars=LOTS) == 0
    assert await store.history_clear("c") == 2
    assert await store.history_clear("c") == 0
    assert await store.history_read("c", max_turns=LOTS, max_chars=LOTS) == []
    assert len(await store.history_read("d", max_turns=LOTS, max_chars=LOTS)) == 5  # untouched


async def test_texts_come_back_as_they_went_in(store: Store) -> None:
    odd = Exchange("é 😀 \"quotes\" ' \\ %_ \n\t", "<b>not markup</b> 🇺🇦 \u200d")
    await store.history_append("k/with/slashes", odd, max_turns=5, max_chars=LOTS)
    assert await store.history_read("k/with/slashes", max_turns=5, max_chars=LOTS) == [odd]
    # characters are counted as Python counts them (code points)
    assert await store.history_read("k/with/slashes", max_turns=5, max_chars=odd.chars) == [odd]
    assert await store.history_read("k/with/slashes", max_turns=5,
                                    max_chars=odd.chars - 1) == []


async def test_memory_survives_reopening(open_stores: OpenStore, store_url: str) -> None:
    first = await open_stores()
    await first.history_append("gpt/main/42", ex(1), max_turns=20, max_chars=LOTS)
    await first.history_append("gpt/main/42", ex(2), max_turns=20, max_chars=LOTS)
    await first.close()
    again = await open_stores()  # memory:// is the same store object, reopened
    assert await again.history_read("gpt/main/42", max_turns=20, max_chars=LOTS) == \
        [ex(1), ex(2)]


async def test_a_conversation_handle_applies_its_limits(store: Store) -> None:
    chat = ChatIdentity("private", 42, 42)
    talk = store.conversation("gpt", chat, max_turns=2, max_chars=LOTS)
    for n in range(1, 4):
        await talk.append(f"q{n}", f"a{n}")
    assert await talk.read() == [ex(2), ex(3)]
    assert await talk.keep_newest(1) == 1
    assert await talk.read() == [ex(3)]
    off = store.conversation("gpt", chat, max_turns=0, max_chars=LOTS)
    await off.append("q", "a")  # memory off: nothing written, nothing read
    assert await off.read() == []
    assert await talk.read() == [ex(3)]
    assert await talk.clear() == 1


def test_conversation_keys() -> None:
    group = ChatIdentity("supergroup", -1001, 7, account="work")
    assert conversation_key("gpt", group) == "gpt/work/-1001"
    assert conversation_key("gpt", group, "user") == "gpt/work/-1001/7"
    # in a private chat the user is the chat; a channel post has no sender
    assert conversation_key("gpt", ChatIdentity("private", 7, 7), "user") == "gpt/main/7"
    assert conversation_key("gpt", ChatIdentity("channel", -1002), "user") == "gpt/main/-1002"


def test_conversation_keys_follow_topics() -> None:
    forum = ChatIdentity("supergroup", -1001, 7, message_thread_id=5, account="work")
    assert conversation_key("gpt", forum) == "gpt/work/-1001/topic:5"
    assert conversation_key("gpt", forum, "user") == "gpt/work/-1001/topic:5/7"
    # a private chat's topic (threaded mode) too; the chat outside topics keeps its key
    assert conversation_key("gpt", ChatIdentity("private", 7, 7, message_thread_id=3)) == \
        "gpt/main/7/topic:3"
    assert conversation_key("gpt", ChatIdentity("private", 7, 7)) == "gpt/main/7"
    assert conversation_key("gpt", ChatIdentity("supergroup", -1001, 7)) == "gpt/main/-1001"
    # basic groups and channels have no topics: a thread id there is a reply thread's
    assert conversation_key("gpt", ChatIdentity("group", -5, 7, message_thread_id=9)) == \
        "gpt/main/-5"


async def test_topics_are_separate_conversations(store: Store) -> None:
    chat = ChatIdentity("supergroup", -1001, 7)
    topic_a = store.conversation("gpt", ChatIdentity("supergroup", -1001, 7, message_thread_id=2),
                                 max_turns=5, max_chars=LOTS)
    topic_b = store.conversation("gpt", ChatIdentity("supergroup", -1001, 8, message_thread_id=3),
                                 max_turns=5, max_chars=LOTS)
    whole = store.conversation("gpt", chat, max_turns=5, max_chars=LOTS)
    await topic_a.append("in a", "ra")
    await topic_b.append("in b", "rb")
    await whole.append("outside", "r")
    assert await topic_a.read() == [Exchange("in a", "ra")]
    assert await topic_b.read() == [Exchange("in b", "rb")]
    assert await whole.read() == [Exchange("outside", "r")]
    assert await topic_a.clear() == 1
    assert await topic_b.read() == [Exchange("in b", "rb")]
    assert await whole.read() == [Exchange("outside", "r")]
