"""The offline Telegram is as demanding as Telegram: the raw update forms it pushes, its pts,
its differences (sliced, too long), gaps, faults on any method, a revoked session or banned
account, a state that outlives the process, scopes of command menus, the service account,
private topics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pyrogram import raw
from pyrogram.errors import FloodWait, RPCError, Unauthorized

from tgmux.telegram.fake import FakeTelegram, offline_client
from tgmux.telegram.fake.log import DIFFERENCE_LIMIT

SUPERGROUP = -1001234567890
GROUP = -4012345678


class Recorder:
    """Stands in for a connected client: keeps what is pushed to it."""

    def __init__(self) -> None:
        self.is_connected = True
        self.pushed: list[Any] = []

    async def handle_updates(self, updates: Any) -> None:
        self.pushed.append(updates)


def recorded(**options: Any) -> tuple[FakeTelegram, Recorder]:
    fake = FakeTelegram(**options)
    recorder = Recorder()
    fake.client = recorder  # type: ignore[assignment]
    return fake, recorder


async def difference(fake: FakeTelegram, pts: int) -> Any:
    return await fake.answer(raw.functions.updates.GetDifference(pts=pts, date=0, qts=0),
                             fake.client)


async def channel_difference(fake: FakeTelegram, pts: int, limit: int = 100) -> Any:
    channel = raw.types.InputChannel(channel_id=1234567890, access_hash=0)
    return await fake.answer(raw.functions.updates.GetChannelDifference(
        channel=channel, filter=raw.types.ChannelMessagesFilterEmpty(), pts=pts, limit=limit),
        fake.client)


async def test_plain_text_comes_compact_as_on_telegram_full_updates_otherwise():
    fake, client = recorded()
    await fake.incoming(user_id=42, text="hi")  # a peer the account never saw: full
    await fake.incoming(user_id=42, text="again")
    await fake.incoming(user_id=42, text="/start")  # a command entity: full
    await fake.incoming(user_id=42, text="again", delivery="push")
    await fake.incoming(chat_id=GROUP, user_id=42, text="in a group")
    await fake.incoming(chat_id=GROUP, user_id=42, text="in a group again")
    await fake.incoming(chat_id=SUPERGROUP, user_id=42, text="in a supergroup")
    forms = [type(u).__name__ for u in client.pushed]
    assert forms == ["Updates", "UpdateShortMessage", "Updates", "Updates", "Updates",
                     "UpdateShortChatMessage", "Updates"]
    short, short_chat = client.pushed[1], client.pushed[5]
    assert (short.user_id, short.message, short.pts, short.pts_count) == (42, "again", 3, 1)
    assert (short_chat.from_id, short_chat.chat_id, short_chat.pts) == (42, 4012345678, 7)
    assert [u.updates[0].pts for u in client.pushed if isinstance(u, raw.types.Updates)] == \
        [2, 4, 5, 6, 2]  # the last: the supergroup's own pts
    channel_update = client.pushed[6].updates[0]
    assert isinstance(channel_update, raw.types.UpdateNewChannelMessage)
    seqs = [u.seq for u in client.pushed if isinstance(u, raw.types.Updates)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_pts_counts_every_update_incoming_sent_edited_deleted():
    fake, _ = recorded()
    await fake.incoming(user_id=42, text="hi")  # pts 2
    peer = raw.types.InputPeerUser(user_id=42, access_hash=0)
    sent = await fake.answer(raw.functions.messages.SendMessage(
        peer=peer, message="hello", random_id=1), fake.client)
    assert isinstance(sent, raw.types.UpdateShortSentMessage)
    assert (sent.pts, sent.pts_count) == (3, 1)
    await fake.answer(raw.functions.messages.EditMessage(peer=peer, id=sent.id,
                                                         message="hello!"), fake.client)
    affected = await fake.answer(raw.functions.messages.DeleteMessages(id=[sent.id]),
                                 fake.client)
    assert (affected.pts, affected.pts_count) == (5, 1)
    state = await fake.answer(raw.functions.updates.GetState(), fake.client)
    assert state.pts == 5
    diff = await difference(fake, 1)
    assert isinstance(diff, raw.types.updates.Difference)
    assert [m.message for m in diff.new_messages] == ["hi", "hello!"]
    assert [type(u).__name__ for u in diff.other_updates] == ["UpdateEditMessage",
                                                              "UpdateDeleteMessages"]
    assert diff.state.pts == 5
    assert isinstance(await difference(fake, 5), raw.types.updates.DifferenceEmpty)


async def test_a_gap_shows_in_the_next_updates_pts_and_get_difference_fills_it():
    fake, client = recorded()
    await fake.incoming(user_id=42, text="one")
    await fake.incoming(user_id=42, text="lost", delivery="gap")
    await fake.incoming(user_id=42, text="three")
    first, third = client.pushed
    assert first.updates[0].pts == 2
    assert (third.pts, third.pts_count) == (4, 1)  # 4 - 1 != 2: a gap
    diff = await difference(fake, 2)
    assert [m.message for m in diff.new_messages] == ["lost", "three"]
    assert fake.undelivered == {}


async def test_too_long_is_sent_instead_of_the_update():
    fake, client = recorded()
    await fake.incoming(user_id=42, text="hi", delivery="too_long")
    await fake.incoming(chat_id=SUPERGROUP, user_id=42, text="hi", delivery="too_long")
    assert isinstance(client.pushed[0], raw.types.UpdatesTooLong)
    update = client.pushed[1].updates[0]
    assert isinstance(update, raw.types.UpdateChannelTooLong)
    assert update.channel_id == 1234567890
    assert len(fake.undelivered) == 2


async def test_a_difference_comes_in_slices_of_at_most_100():
    fake, client = recorded()
    for n in range(250):
        await fake.incoming(user_id=42, text=f"m{n}", delivery="gap")
    assert client.pushed == []
    pts, texts, forms = 1, [], []
    while True:
        diff = await difference(fake, pts)
        forms.append(type(diff).__name__)
        texts += [m.message for m in diff.new_messages]
        assert len(diff.new_messages) <= DIFFERENCE_LIMIT
        if isinstance(diff, raw.types.updates.DifferenceSlice):
            pts = diff.intermediate_state.pts
            continue
        break
    assert forms == ["DifferenceSlice", "DifferenceSlice", "Difference"]
    assert texts == [f"m{n}" for n in range(250)]


async def test_a_backlog_past_the_limit_is_too_long():
    fake, _ = recorded(too_long=50)
    for n in range(60):
        await fake.incoming(user_id=42, text=f"m{n}", delivery="gap")
    diff = await difference(fake, 1)
    assert isinstance(diff, raw.types.updates.DifferenceTooLong)
    assert diff.pts == 61
    assert isinstance(await difference(fake, 20), raw.types.updates.Difference)


async def test_channel_difference_slices_and_too_long():
    fake, _ = recorded()
    for n in range(150):
        await fake.incoming(chat_id=SUPERGROUP, user_id=42, text=f"m{n}", delivery="gap")
    first = await channel_difference(fake, 1, limit=10_000)
    assert isinstance(first, raw.types.updates.ChannelDifference) and not first.final
    assert len(first.new_messages) == 100 and first.pts == 101
    rest = await channel_difference(fake, first.pts)
    assert rest.final and [m.message for m in rest.new_messages][-1] == "m149"
    assert isinstance(await channel_difference(fake, 151),
                      raw.types.updates.ChannelDifferenceEmpty)
    fake.log.too_long = 20
    too_long = await channel_difference(fake, 100)
    assert isinstance(too_long, raw.types.updates.ChannelDifferenceTooLong)
    assert too_long.dialog.pts == 151


async def test_faults_on_any_raw_method_and_unknown_methods_refused():
    fake, _ = recorded()
    fake.fail("updates.GetDifference", "FLOOD_WAIT_30")
    with pytest.raises(FloodWait) as info:
        await difference(fake, 1)
    assert info.value.value == 30
    assert isinstance(await difference(fake, 1), raw.types.updates.DifferenceEmpty)
    fake.fail("updates.GetChannelDifference", "RPC_CALL_FAIL", times=2)
    await fake.incoming(chat_id=SUPERGROUP, user_id=42, text="x")
    for _ in range(2):
        with pytest.raises(RPCError, match="RPC_CALL_FAIL"):
            await channel_difference(fake, 1)
    with pytest.raises(ValueError, match=r"no Telegram method 'updates\.GetNothing'"):
        fake.fail("updates.GetNothing", "FLOOD_WAIT_1")


@pytest.mark.parametrize(("act", "error"), [
    ("revoke_session", "AUTH_KEY_UNREGISTERED"), ("ban_account", "USER_DEACTIVATED_BAN")])
async def test_a_revoked_session_or_banned_account_fails_every_later_request(act, error):
    fake, client = recorded()
    getattr(fake, act)()
    for query in (raw.functions.updates.GetState(),
                  raw.functions.updates.GetDifference(pts=1, date=0, qts=0)):
        with pytest.raises(Unauthorized) as info:
            await fake.answer(query, client)
        assert info.value.ID == error and info.value.CODE == 401
    await fake.incoming(user_id=42, text="hi")
    assert client.pushed == []


async def test_a_disconnect_drops_pushes_and_holds_requests():
    fake, client = recorded()
    fake.disconnect(0.3)
    await fake.incoming(user_id=42, text="while down")
    assert client.pushed == []
    state = await fake.answer(raw.functions.updates.GetState(), client)  # waits it out
    assert state.pts == 2
    await fake.incoming(user_id=42, text="back")
    assert len(client.pushed) == 1


async def test_latency_delays_pushes_and_settles():
    fake, client = recorded(latency=0.05, seed=7)
    for n in range(5):
        await fake.incoming(user_id=42, text=f"m{n}")
    await fake.settle_pushes()
    assert len(client.pushed) == 5


async def test_the_state_file_outlives_the_process(tmp_path: Path):
    path = tmp_path / "telegram.db"
    fake, _ = recorded(state=path)
    await fake.incoming(user_id=42, username="alice", text="one")
    await fake.incoming(chat_id=SUPERGROUP, user_id=42, text="two", delivery="gap")
    await fake.incoming(user_id=42, text="three", delivery="gap")
    fake.close()

    again, _ = recorded(state=path)
    assert again.log.common.pts == 3 and again.log.channel(1234567890).pts == 2
    diff = await difference(again, 2)
    assert [m.message for m in diff.new_messages] == ["three"]
    assert diff.users[0].username in ("alice", "tgmux_bot")
    channel = await channel_difference(again, 1)
    assert [m.message for m in channel.new_messages] == ["two"]
    await again.incoming(user_id=42, text="four")  # numbering goes on
    assert again.log.common.pts == 4
    assert again._messages[(42, 3)].message == "four"
    again.revoke_session()
    again.close()
    revoked, _ = recorded(state=path)
    with pytest.raises(Unauthorized):
        await difference(revoked, 1)
    revoked.close()


async def test_the_state_file_of_another_account_is_refused(tmp_path: Path):
    FakeTelegram(state=tmp_path / "t.db").close()
    with pytest.raises(ValueError, match="the state of another account"):
        FakeTelegram(state=tmp_path / "t.db", user_id=99)


async def test_command_scopes_are_named_as_the_bot_api_does():
    fake, client = recorded()
    commands = [raw.types.BotCommand(command="status", description="Health")]
    scopes = [
        raw.types.BotCommandScopeDefault(),
        raw.types.BotCommandScopeUsers(),
        raw.types.BotCommandScopeChats(),
        raw.types.BotCommandScopeChatAdmins(),
        raw.types.BotCommandScopePeer(peer=raw.types.InputPeerChat(chat_id=4012345678)),
        raw.types.BotCommandScopePeerAdmins(peer=raw.types.InputPeerChannel(
            channel_id=1234567890, access_hash=0)),
        raw.types.BotCommandScopePeerUser(
            peer=raw.types.InputPeerChat(chat_id=4012345678),
            user_id=raw.types.InputUser(user_id=42, access_hash=0)),
    ]
    for scope in scopes:
        await fake.answer(raw.functions.bots.SetBotCommands(
            scope=scope, lang_code="de" if scope is scopes[-1] else "", commands=commands),
            client)
    assert [{k: v for k, v in a.items() if k != "commands"} for a in fake.actions] == [
        {"action": "set_commands", "scope": "default"},
        {"action": "set_commands", "scope": "all_private_chats"},
        {"action": "set_commands", "scope": "all_group_chats"},
        {"action": "set_commands", "scope": "all_chat_administrators"},
        {"action": "set_commands", "chat_id": GROUP, "scope": "chat"},
        {"action": "set_commands", "chat_id": SUPERGROUP, "scope": "chat_administrators"},
        {"action": "set_commands", "chat_id": GROUP, "scope": "chat_member", "user_id": 42,
         "language_code": "de"},
    ]


async def test_777000_is_telegrams_service_account():
    fake, client = recorded()
    await fake.incoming(user_id=777000, text="Login code: 12345")
    user = client.pushed[0].users[0]
    assert (user.id, user.support, user.first_name) == (777000, True, "Telegram")


async def test_private_chats_take_topics_through_the_real_client():
    fake = FakeTelegram()
    client = offline_client(fake)
    seen: list[Any] = []

    async def on_message(_: Any, message: Any) -> None:
        seen.append(message)

    from pyrogram.handlers import MessageHandler

    client.add_handler(MessageHandler(on_message))
    await client.start()
    try:
        await fake.incoming(user_id=42, text="in a topic", thread_id=7)
        await fake.incoming(user_id=42, text="plain, compact")  # via getDifference
        async with asyncio.timeout(10):
            while len(seen) < 2:  # noqa: ASYNC110 (the dispatcher's queue)
                await asyncio.sleep(0.01)
    finally:
        await client.stop()
    assert (seen[0].text, seen[0].message_thread_id, seen[0].topic_message) == \
        ("in a topic", 7, True)
    assert seen[1].text == "plain, compact"
    assert "updates.GetDifference" in {r.name for r in fake.requests}


async def test_the_test_kit_takes_latency_and_compact_updates(tgmux_bot):
    bot = await tgmux_bot("backends:\n  echo: {type: echo, prefix: 'echo: '}\ndefault: echo\n",
                          latency=0.03, seed=1)
    assert (await bot.send("hi", user_id=42)).text == "echo: hi"
    assert (await bot.send("again", user_id=42)).text == "echo: again"  # compact
    assert bot.telegram.undelivered == {}
    assert "updates.GetDifference" in {r.name for r in bot.telegram.requests}


async def test_a_difference_names_a_channel_with_news_as_telegram_does():
    """Telegram's getDifference carries an ``updateChannel`` (the channel in ``chats``) for a
    channel with news: a client that never heard of the channel learns of it there."""
    fake, _ = recorded()
    await fake.incoming(chat_id=SUPERGROUP, user_id=42, text="while away", delivery="gap")
    first = await difference(fake, 1)  # nothing in the account's own box: still named
    assert isinstance(first, raw.types.updates.Difference)
    assert [type(u).__name__ for u in first.other_updates] == ["UpdateChannel"]
    assert first.other_updates[0].channel_id == 1234567890
    assert [c.id for c in first.chats] == [1234567890]
    await channel_difference(fake, 1)  # fetched: named again only for news past the date
    later = fake.log.date + 10**6
    assert isinstance(await fake.answer(raw.functions.updates.GetDifference(
        pts=first.state.pts, date=later, qts=0), fake.client), raw.types.updates.DifferenceEmpty)
    fake.connected()  # a new connection: a push may have been lost on the way
    again = await fake.answer(raw.functions.updates.GetDifference(
        pts=first.state.pts, date=later, qts=0), fake.client)
    assert [u.channel_id for u in again.other_updates] == [1234567890]
