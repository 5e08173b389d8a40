"""tgmux.merging: which queued messages join a turn, driven with a clock of the test's own (no
test here waits for time to pass), and what the merged message is; then in the engine: the
wait holds no concurrency slot, and a merge cut off by a crash is told once after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tgmux.backend import ChatIdentity, Media, Notice, Text
from tgmux.engine import Engine, IncomingMessage
from tgmux.harness import CaptureFrontend, EngineHarness
from tgmux.hooks import build_plugin_manager
from tgmux.merging import (
    ALBUM_MAX,
    ALBUM_WAIT,
    MERGE_MAX,
    MERGE_MAX_CHARS,
    ChatQueue,
    abandon,
    finish,
    merged,
    take_turn,
)
from tgmux.store import open_store
from tgmux.types import Entity, RepliedTo

T0 = 1_700_000_000.0


@dataclass
class Slot:
    message: IncomingMessage
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    fresh: bool = True
    interrupted: bool = False
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def __post_init__(self) -> None:
        self.ready.set()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_ids: Iterator[int] = iter(range(1, 10**6))


def msg(text: str = "", *, user: int = 1, at: float = T0, sent: float | None = None,
        group: str | None = None, photo: bool = False, thread: int | None = None,
        chat_id: int = 5, **fields: object) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatIdentity("supergroup", chat_id, user_id=user, message_id=next(_ids),
                          message_thread_id=thread),
        text=text, received_at=at, sent_at=sent, media_group_id=group,
        media=Media("photo", data=text.encode() or b"x") if photo or group else None,
        **fields)  # type: ignore[arg-type]


def queue_of(*messages: IncomingMessage) -> ChatQueue[Slot]:
    return ChatQueue(Slot(m) for m in messages)


async def taken_texts(queue: ChatQueue[Slot], window: float, now: float) -> list[str]:
    """What a turn takes when nothing more is coming (the clock is past every wait)."""
    return [s.message.text for s in await take_turn(queue, window, clock=Clock(now))]


# -- what joins --------------------------------------------------------------------------------


async def test_an_albums_items_join_however_late_the_turn_starts_and_at_most_ten() -> None:
    items = [msg(f"p{n}", group="g", at=T0 + n * 0.1) for n in range(ALBUM_MAX + 1)]
    queue = queue_of(*items, msg("after", group="h", at=T0 + 2))
    taken = await taken_texts(queue, 0, now=T0 + 100)
    assert taken == [f"p{n}" for n in range(ALBUM_MAX)]


async def test_without_a_window_only_albums_join() -> None:
    queue = queue_of(msg("one"), msg("two"), msg("three"))
    assert await taken_texts(queue, 0, now=T0) == ["one"]  # nothing waited for either


async def test_a_burst_joins_within_the_window_of_the_previous_message() -> None:
    queue = queue_of(msg("a", at=T0), msg("b", at=T0 + 1.5), msg("c", at=T0 + 3),
                     msg("too late", at=T0 + 5.1))
    assert await taken_texts(queue, 2, now=T0 + 100) == ["a", "b", "c"]


async def test_sent_apart_by_telegrams_dates_stays_apart_even_if_fetched_together() -> None:
    queue = queue_of(msg("a", sent=T0 - 60), msg("b", sent=T0 - 57), msg("c", sent=T0 - 30))
    # dates are whole seconds: 3 s apart is within a window of 2 (a second of slack), 27 not
    assert await taken_texts(queue, 2, now=T0 + 100) == ["a", "b"]


@pytest.mark.parametrize("second", [
    msg("other user", user=2), msg("/help"), msg("other topic", thread=9),
    msg("a photo", photo=True),
], ids=["other user", "command", "topic", "media"])
async def test_what_never_joins_a_burst(second: IncomingMessage) -> None:
    queue = queue_of(msg("first"), second, msg("same user again"))
    assert await taken_texts(queue, 5, now=T0 + 1) == ["first"]


async def test_a_command_takes_nothing_with_it() -> None:
    queue = queue_of(msg("/reset"), msg("hello"))
    assert await taken_texts(queue, 5, now=T0) == ["/reset"]


async def test_a_merge_is_bounded_in_messages_and_characters() -> None:
    many = queue_of(*(msg(str(n)) for n in range(MERGE_MAX + 5)))
    assert len(await taken_texts(many, 5, now=T0 + 100)) == MERGE_MAX
    long = "x" * (MERGE_MAX_CHARS // 2)
    queue = queue_of(msg(long), msg(long), msg("one more"))
    assert await taken_texts(queue, 5, now=T0 + 100) == [long]


async def test_a_duplicate_is_passed_over_and_interrupted_messages_merge_only_together() -> None:
    queue = queue_of(msg("a"), msg("again"), msg("b"), msg("c"))
    queue[1].fresh = False  # handled before: not part of the text
    queue[3].interrupted = True
    taken = await take_turn(queue, 5, clock=Clock(T0 + 100))
    assert [s.message.text for s in taken] == ["a", "again", "b"]
    assert merged(taken).text == "a\nb"


# -- waiting -----------------------------------------------------------------------------------


async def test_a_message_coming_during_the_wait_joins_and_the_wait_starts_again() -> None:
    clock = Clock(T0)
    queue = queue_of(msg("first", at=T0))
    turn = asyncio.create_task(take_turn(queue, 30, clock=clock))
    await asyncio.sleep(0)
    assert not turn.done()  # waiting for more, up to 30 s
    clock.now = T0 + 10
    queue.append(Slot(msg("second", at=T0 + 10)))
    await asyncio.sleep(0)
    assert not turn.done()  # the window starts again from the second
    clock.now = T0 + 45  # past it: the next message that comes ends the wait, not joining
    queue.append(Slot(msg("third", at=T0 + 45)))
    taken = await asyncio.wait_for(turn, 10)
    assert [s.message.text for s in taken] == ["first", "second"]


async def test_an_album_is_waited_for_a_second_after_its_latest_item() -> None:
    clock = Clock(T0)
    queue = queue_of(msg("p1", group="g", at=T0))
    turn = asyncio.create_task(take_turn(queue, 0, clock=clock))
    await asyncio.sleep(0)
    assert not turn.done()
    clock.now = T0 + ALBUM_WAIT / 2
    queue.append(Slot(msg("p2", group="g", at=clock.now)))
    clock.now = T0 + ALBUM_WAIT * 1.2  # past the first item's wait, not the second's
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not turn.done()
    clock.now = T0 + ALBUM_WAIT * 3
    queue.append(Slot(msg("not of it", at=clock.now)))
    assert [s.message.text for s in await asyncio.wait_for(turn, 10)] == ["p1", "p2"]


async def test_a_slot_not_yet_accepted_is_waited_for() -> None:
    queue = queue_of(msg("a"))
    pending = Slot(msg("b"))
    pending.ready.clear()  # the store is still taking it
    queue.append(pending)
    turn = asyncio.create_task(take_turn(queue, 5, clock=Clock(T0 + 100)))
    await asyncio.sleep(0)
    assert not turn.done()
    pending.ready.set()
    assert [s.message.text for s in await asyncio.wait_for(turn, 10)] == ["a", "b"]


async def test_finish_and_abandon_tell_whoever_waits() -> None:
    queue = queue_of(msg("a"), msg("b"), msg("c"))
    taken = list(queue)[:2]
    finish(queue, taken)
    assert [s.message.text for s in queue] == ["c"]
    assert all(s.done.done() and not s.done.cancelled() for s in taken)
    abandon(list(queue))
    assert queue[0].done.cancelled()


# -- the merged message ------------------------------------------------------------------------


async def test_the_merged_message_joins_texts_media_and_ids() -> None:
    replied = RepliedTo(text="earlier", author="Ann")
    first = msg("", group="g", photo=True, addressed=False)
    second = msg("🙂 look **here**", group="g", photo=True, reply_to=replied,
                 entities=(Entity("bold", 3, 8),))
    third = msg("", group="g", photo=True)
    fourth = msg("and this", entities=(Entity("italic", 4, 4),))
    message = merged([Slot(m) for m in (first, second, third, fourth)])
    assert message.text == "🙂 look **here**\nand this"
    # offsets count UTF-16 units: the emoji is two
    assert message.entities == (Entity("bold", 3, 8), Entity("italic", 16 + 1 + 4, 4))
    assert message.media == first.media
    assert message.album == (second.media, third.media)
    assert message.merged == tuple(m.chat.message_id for m in (second, third, fourth))
    assert message.chat == first.chat and message.addressed and message.reply_to == replied
    alone = Slot(msg("just one"))
    assert merged([alone]) is alone.message
    # kept in the inbox as one payload too (a restart reads it back the same)
    assert IncomingMessage.from_payload(message.to_payload()).merged == message.merged


# -- in the engine -----------------------------------------------------------------------------


async def test_a_chat_waiting_for_more_holds_no_slot_other_chats_are_answered() -> None:
    cfg = ("backends:\n  echo: {type: echo}\ndefault: echo\n"
           "engine: {concurrency: 1, merge_window: 30}\n")
    async with EngineHarness.from_yaml(cfg) as h:
        waiting, waiting_done = await h.submit("hello", user_id=1)
        # (a command: answered at once, no waiting for more in its chat)
        _, other_done = await h.submit("/help", user_id=2)
        await asyncio.wait_for(other_done, 20)  # answered while chat 1 waits for more
        assert [chat for chat, _ in h.delivered] == [2] and not waiting_done.done()
        more, more_done = await h.submit("and more", user_id=1)
        _, command_done = await h.submit("/help", user_id=1)  # ends the wait at once
        await asyncio.wait_for(asyncio.gather(waiting_done, more_done, command_done), 20)
        assert h.frontend.by_message[(1, waiting.chat.message_id)] == [Text("hello\nand more")]
        assert h.frontend.by_message.get((1, more.chat.message_id), []) == []


async def test_an_album_cut_off_by_a_crash_is_told_once_and_all_of_it_is_done(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    pm = build_plugin_manager()
    from tgmux.bootstrap import load_config_text

    config = load_config_text("backends:\n  echo: {type: echo}\ndefault: echo\n",
                              plugin_manager=pm)
    store = open_store(url)
    await store.open()
    chat = ChatIdentity("private", 5, 5, "bob", 41)
    for n, text in enumerate(("which one?", "", "")):  # an album the provider had
        item = IncomingMessage(chat=ChatIdentity("private", 5, 5, "bob", 41 + n), text=text,
                               media=Media("photo", mime_type="image/jpeg"),
                               media_group_id="77", received_at=T0 + n * 0.1)
        assert await store.inbox_accept(5, 41 + n, item.to_payload())
        await store.inbox_dispatched(5, 41 + n)
    later = IncomingMessage(chat=ChatIdentity("private", 5, 5, "bob", 44), text="still there?",
                            received_at=T0 + 1)
    assert await store.inbox_accept(5, 44, later.to_payload())
    await store.close()

    frontend = CaptureFrontend()
    engine = Engine(config, pm, open_store(url), frontend)
    await engine.start()
    await engine.drain()
    await engine.stop()
    assert frontend.delivered == [
        (5, Notice("I was restarted while answering your message “which one?” and may not "
                   "have finished. Please send it again if you still need an answer.")),
        (5, Text("still there?")),
    ]
    assert chat.message_id == 41
    store = open_store(url)
    await store.open()
    assert await store.inbox_unanswered() == []
    await store.close()


async def test_a_reload_applies_merge_window_from_the_next_message(tmp_path, caplog) -> None:
    import logging

    from tgmux.bootstrap import load
    from tgmux.reload import Reloader

    path = tmp_path / "config.yaml"
    text = "store: memory://\nbackends:\n  echo: {type: echo}\ndefault: echo\n"
    path.write_text(text)
    config, pm = load(path)
    async with EngineHarness(config, store=open_store("memory://"), plugin_manager=pm) as h:
        assert await h.say("one", user_id=3) == [Text("one")]
        assert await h.say("two", user_id=3) == [Text("two")]
        path.write_text(text + "engine: {merge_window: 30}\n")
        with caplog.at_level(logging.INFO, "tgmux.reload"):
            assert await Reloader(h.engine, pm, path).reload()
        assert "engine.merge_window: 0 → 30" in caplog.text
        first, first_done = await h.submit("three", user_id=3)
        _, second_done = await h.submit("four", user_id=3)
        _, command_done = await h.submit("/help", user_id=3)
        await asyncio.wait_for(asyncio.gather(first_done, second_done, command_done), 20)
        assert h.frontend.by_message[(3, first.chat.message_id)] == [Text("three\nfour")]


async def test_stopping_ends_the_wait_for_more_and_answers_what_came() -> None:
    cfg = ("backends:\n  echo: {type: echo}\ndefault: echo\n"
           "engine: {merge_window: 30}\n")
    h = EngineHarness.from_yaml(cfg)
    await h.__aenter__()
    first, _ = await h.submit("nearly", user_id=4)
    await h.submit("done", user_id=4)
    await h.engine.stop(timeout=10)  # not 30 s: nothing more can come
    assert h.frontend.by_message[(4, first.chat.message_id)] == [Text("nearly\ndone")]


async def test_a_wall_clock_set_back_does_not_make_the_wait_longer() -> None:
    queue = queue_of(msg("first", at=T0))
    # an hour back: by the wall clock the window is far from over; by the loop's, it ends
    taken = await asyncio.wait_for(take_turn(queue, 0.05, clock=Clock(T0 - 3600)), 30)
    assert [s.message.text for s in taken] == ["first"]


async def test_a_message_that_cannot_join_is_not_waited_for_while_the_store_takes_it() -> None:
    queue = queue_of(msg("a"))
    pending = Slot(msg("b"))
    pending.ready.clear()  # the store is still taking it (a slow store)
    queue.append(pending)
    # without a window it cannot join: the first goes on at once
    taken = await asyncio.wait_for(take_turn(queue, 0, clock=Clock(T0 + 100)), 10)
    assert [s.message.text for s in taken] == ["a"]
