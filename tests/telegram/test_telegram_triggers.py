"""Who tgmux answers on Telegram: private chats, groups, supergroups, forum topics, channels,
commands for us and for other bots, non-text messages."""

from __future__ import annotations

import tg_test_backends

PLUGINS = [tg_test_backends]
GROUP = -4001234567
SUPERGROUP = -1001234567890

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}  # pacing is not what these test
backends:
  echo: {type: echo, prefix: "echo: "}
  media: {type: media}
routes:
  - match: {chat_id: -1009999999999}
    backend: echo
    group_trigger: always
  - match: {chat_id: -1008888888888}
    backend: echo
    group_trigger: command
  - match: {chat_type: channel, chat_id: -1007777777777}
    backend: echo
  - match: {user_id: 77}
    backend: media
default: echo
"""


async def test_private_chat_answers_every_message(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("hello there", user_id=42, username="alice")
    assert tg_test_backends.untimed(reply.actions) == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001, "text": "echo: hello there"}
    ]
    reply = await bot.send("and again", user_id=42)
    assert reply.messages[0]["message_id"] == 1002
    assert reply.text == "echo: and again"


async def test_group_answers_mentions_and_replies_only(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    quiet = await bot.send("just chatting", user_id=42, chat_id=GROUP)
    assert quiet.actions == [] and not quiet.ignored

    mention = await bot.send("@tgmux_bot what is up", user_id=42, chat_id=GROUP)
    # the mention is stripped; in groups the reply quotes the message it answers
    assert mention.messages == [{"action": "send_message", "chat_id": GROUP, "message_id": 1001,
                                 "text": "echo: what is up",
                                 "reply_to_message_id": mention.message_id}]

    mid_text = await bot.send("hey @TGMUX_BOT, how are you?", user_id=42, chat_id=GROUP)
    assert mid_text.text == "echo: hey, how are you?"

    reply = await bot.send("and you?", user_id=43, chat_id=GROUP, reply_to_bot=True)
    assert reply.text == "echo: and you?"
    assert reply.messages[0]["reply_to_message_id"] == reply.message_id

    other = await bot.send("@someone_else hi", user_id=42, chat_id=GROUP)
    assert other.actions == []


async def test_supergroup_forum_topic_answers_in_the_topic(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("@tgmux_bot hi", user_id=42, username="alice",
                           chat_id=SUPERGROUP, chat_type="supergroup", message_id=17,
                           thread_id=5)
    assert tg_test_backends.untimed(reply.actions) == [
        {"action": "send_message", "chat_id": SUPERGROUP, "message_id": 1001, "text": "echo: hi",
         "reply_to_message_id": 17, "message_thread_id": 5}]
    # a reply to the bot inside the topic is addressed to it, and stays in the topic
    again = await bot.send("more", user_id=43, chat_id=SUPERGROUP, thread_id=5,
                           reply_to_bot=True)
    assert again.messages[0]["message_thread_id"] == 5
    assert again.text == "echo: more"
    # unaddressed talk in the topic is left alone
    assert (await bot.send("chatter", user_id=43, chat_id=SUPERGROUP, thread_id=5)).actions == []


async def test_commands_for_us_and_for_other_bots(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    ours = await bot.send("/shout@tgmux_bot loud", user_id=42, chat_id=GROUP)
    assert ours.text == "echo: LOUD"
    bare = await bot.send("/shout quiet", user_id=42, chat_id=GROUP)
    assert bare.text == "echo: QUIET"
    theirs = await bot.send("/shout@otherbot nope", user_id=42, chat_id=GROUP)
    assert theirs.ignored and theirs.actions == []
    in_private = await bot.send("/shout@otherbot nope", user_id=42)
    assert in_private.ignored
    help_reply = await bot.send("/help@TGMUX_BOT", user_id=42)
    assert help_reply.text.startswith("Send me a message and I will answer.")


async def test_group_trigger_always_and_command(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    always = await bot.send("anything", user_id=42, chat_id=-1009999999999)
    assert always.text == "echo: anything"
    command_only = await bot.send("@tgmux_bot hi", user_id=42, chat_id=-1008888888888)
    assert command_only.actions == []
    command = await bot.send("/shout hi", user_id=42, chat_id=-1008888888888)
    assert command.text == "echo: HI"


async def test_channels_are_ignored_unless_a_route_names_them(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    unrouted = await bot.send("post", user_id=1, chat_id=-1006666666666, chat_type="channel")
    assert unrouted.actions == []
    routed = await bot.send("post", user_id=1, chat_id=-1007777777777, chat_type="channel")
    assert routed.text == "echo: post"


async def test_non_text_messages(tgmux_bot, tmp_path):
    photo = tmp_path / "cat.png"
    photo.write_bytes(tg_test_backends.PNG)
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    # echo takes no media: a short polite answer
    refused = await bot.send(user_id=42, sticker="😀")
    assert refused.text == ("I can only read text messages here. Please write your message as "
                            "text.")
    # the media backend takes photos: it gets the bytes, and the caption as text
    taken = await bot.send("look", user_id=77, photo=str(photo))
    assert taken.text == f"got photo ({len(tg_test_backends.PNG)} bytes) look"
    voice = await bot.send(user_id=77, voice=tg_test_backends.OGG)
    assert voice.text == f"got voice ({len(tg_test_backends.OGG)} bytes)"
    # ...but not stickers
    sticker = await bot.send(user_id=77, sticker="🐱")
    assert sticker.text.startswith("I can only read text messages")
    # an unaddressed photo in a group is not downloaded nor answered
    group_photo = await bot.send("", user_id=77, chat_id=GROUP, photo=str(photo))
    assert group_photo.actions == []
    assert bot.telegram.requests[-1].name != "upload.GetFile"


async def test_commands_are_published_at_start(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    menu = bot.actions[0]
    assert menu["action"] == "set_commands" and menu["scope"] == "default"
    names = [c["command"] for c in menu["commands"]]
    assert names[:4] == ["start", "help", "reset", "backend"]
    # the echo backend's own command is not everyone's: user 77 talks to `media`
    assert "shout" not in names and "status" not in names
    assert bot.app.commands_published is True


async def test_user_accounts_do_not_publish_commands_nor_use_drafts(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, is_bot=False, bot_username="alice_ai")
    assert bot.actions == []
    reply = await bot.send("hi", user_id=42)
    assert reply.text == "echo: hi"
    mention = await bot.send("@alice_ai hi", user_id=42, chat_id=GROUP)
    assert mention.text == "echo: hi"
