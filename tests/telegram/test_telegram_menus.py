"""Telegram's command menus by scope, through the offline Telegram: what each chat's menu
lists, and what an unavailable command answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tgmux.backends.bambisleep.simulator import BambiSleepSimulator
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.reload import Reloader

LUCY_GROUP = -1001111111111
OTHER_GROUP = -1002222222222
ADMIN = 7
BUILTINS = ["start", "help", "reset", "backend", "usage"]
LUCY = ["image", "history"]


@pytest.fixture
async def lucy():
    async with LucyDreamSimulator(api_keys=["lucy-key"], free_messages=None) as server:
        yield server


@pytest.fixture
async def bambi():
    async with BambiSleepSimulator(api_keys={"bambi-key": "bambi"}) as server:
        yield server


@pytest.fixture
def config(lucy, bambi) -> str:
    return f"""
telegram: {{flood: {{private_per_second: 100, group_per_minute: 6000}}}}
backends:
  lucy: {{type: lucydream, api_key: lucy-key, base_url: "{lucy.base_url}"}}
  bambi: {{type: bambisleep, api_key: bambi-key, base_url: "{bambi.base_url}"}}
routes:
  - match: {{chat_id: {LUCY_GROUP}}}
    backend: lucy
default: bambi
admins: [{ADMIN}]
"""


def menus(bot: Any, since: int = 0) -> list[dict[str, Any]]:
    return [a for a in bot.actions[since:] if a["action"] == "set_commands"]


def names(menu: dict[str, Any]) -> list[str]:
    return [c["command"] for c in menu["commands"]]


def scoped(kind: str, chat_id: int | None = None, user_id: int | None = None):
    return lambda a: (a["action"] == "set_commands" and a["scope"] == kind
                      and a.get("chat_id") == chat_id and a.get("user_id") == user_id)


async def test_everyones_menu_has_no_admin_nor_other_backends_commands(tgmux_bot, config):
    bot = await tgmux_bot(config)
    default = await bot.wait_for(scoped("default"))
    private = await bot.wait_for(scoped("all_private_chats"))
    groups = await bot.wait_for(scoped("all_group_chats"))
    assert bot.actions[0] is default  # everyone's first
    # a group may be LucyDream's: BambiSleep's commands are not every chat's
    assert names(default) == BUILTINS
    assert names(groups) == BUILTINS
    # every private chat talks to BambiSleep (the default): its commands, not the admins' ones
    assert names(private) == [*BUILTINS, "profile", "triggers", "sessions", "stats"] or (
        "profile" in names(private) and "status" not in names(private)
        and "profile_set" not in names(private))
    for menu in (default, private, groups):
        assert "language_code" not in menu and "chat_id" not in menu
    # the admin's own menu (their private chat): the admin-only commands too; Telegram takes
    # it once the admin has written to the bot
    await bot.send("hi", user_id=ADMIN)
    admin = await bot.wait_for(scoped("chat", ADMIN))
    assert {"status", "profile_set", "profile"} <= set(names(admin))


async def test_a_chat_routed_to_lucydream_gets_lucydreams_commands(tgmux_bot, config):
    bot = await tgmux_bot(config)
    await bot.app.commands_task  # the menus set at start are out
    since = len(bot.actions)
    reply = await bot.send("/help", user_id=5, chat_id=LUCY_GROUP)
    assert "/image" in reply.text and "/profile" not in reply.text
    menu = await bot.wait_for(scoped("chat", LUCY_GROUP), start=since)
    assert names(menu) == [*BUILTINS, *LUCY]
    # BambiSleep's /profile in LucyDream's group: the commands that are there
    answer = await bot.send("/profile", user_id=5, chat_id=LUCY_GROUP)
    assert answer.text == (
        "/profile is not available in this chat. Commands here:\n"
        "/start — Start talking\n/help — What this bot can do\n"
        "/reset — Forget this conversation\n"
        "/backend [name] — Show or switch the AI behind this chat\n"
        "/usage — Your messages, tokens and cost, and their limits\n"
        "/image — get a picture from the chatbot\n"
        "/history — show your recent conversation with the chatbot")
    # a group that follows the default (BambiSleep): the groups' menu cannot list /profile
    # (LucyDream's group is a group too), so it gets its own
    await bot.send("/help", user_id=5, chat_id=OTHER_GROUP)
    other = await bot.wait_for(scoped("chat", OTHER_GROUP), start=since)
    assert "profile" in names(other) and "image" not in names(other)
    # an admin in LucyDream's group: their own menu there, with /status
    await bot.send("/help", user_id=ADMIN, chat_id=LUCY_GROUP)
    member = await bot.wait_for(scoped("chat_member", LUCY_GROUP, ADMIN), start=since)
    assert names(member) == [*BUILTINS, "status", *LUCY]
    # once per chat: seen again, nothing is published again
    await bot.send("/help", user_id=6, chat_id=OTHER_GROUP)
    await bot.send("/help", user_id=6, chat_id=LUCY_GROUP)
    await bot.settle()
    assert len([m for m in menus(bot, since) if m.get("chat_id") == OTHER_GROUP]) == 1
    assert len([m for m in menus(bot, since) if m.get("chat_id") == LUCY_GROUP
                and m["scope"] == "chat"]) == 1
    # a private chat that talks to the default: the private chats' menu, nothing published
    await bot.send("/help", user_id=9)
    await bot.settle()
    assert not [m for m in menus(bot, since) if m.get("chat_id") == 9]


async def test_a_chat_switched_by_backend_gets_the_new_backends_menu(tgmux_bot, config):
    bot = await tgmux_bot(config)
    await bot.app.commands_task
    since = len(bot.actions)
    switched = await bot.send("/backend lucy", user_id=ADMIN, chat_id=OTHER_GROUP)
    assert switched.text == "This chat now talks to: lucy"
    chat = await bot.wait_for(scoped("chat", OTHER_GROUP), start=since)
    assert names(chat) == [*BUILTINS, *LUCY]
    member = await bot.wait_for(scoped("chat_member", OTHER_GROUP, ADMIN), start=since)
    assert names(member) == [*BUILTINS, "status", *LUCY]
    # and back: the config's backend (BambiSleep) again
    since = len(bot.actions)
    await bot.send("/backend default", user_id=ADMIN, chat_id=OTHER_GROUP)
    chat = await bot.wait_for(scoped("chat", OTHER_GROUP), start=since)
    assert "profile" in names(chat) and "image" not in names(chat)
    # the admin's private chat, switched: their menu follows
    since = len(bot.actions)
    await bot.send("/backend lucy", user_id=ADMIN)
    mine = await bot.wait_for(scoped("chat", ADMIN), start=since)
    assert names(mine) == [*BUILTINS, "status", *LUCY]


async def test_a_reload_republishes_the_menus(tgmux_bot, config, tmp_path: Path):
    bot = await tgmux_bot(config)
    await bot.app.commands_task
    await bot.send("/help", user_id=5, chat_id=LUCY_GROUP)
    await bot.wait_for(scoped("chat", LUCY_GROUP))
    await bot.send("hi", user_id=ADMIN)
    await bot.wait_for(scoped("chat", ADMIN))
    since = len(bot.actions)
    # the two swap: LucyDream's group goes to BambiSleep, the default becomes LucyDream
    path = tmp_path / "config.yaml"
    path.write_text(config.replace("backend: lucy", "backend: bambi")
                    .replace("default: bambi", "default: lucy"))
    assert await Reloader(bot.engine, bot.pm, path).reload()
    private = await bot.wait_for(scoped("all_private_chats"), start=since)
    assert names(private) == [*BUILTINS, *LUCY]
    # the group remembered: its own menu is the new one
    group = await bot.wait_for(scoped("chat", LUCY_GROUP), start=since)
    assert "profile" in names(group) and "image" not in names(group)
    admin = await bot.wait_for(scoped("chat", ADMIN), start=since)
    assert names(admin) == [*BUILTINS, "status", *LUCY]


async def test_user_accounts_have_no_menus(tgmux_bot, config):
    bot = await tgmux_bot(config, is_bot=False, bot_username="alice_ai")
    await bot.send("/profile @alice_ai", user_id=5, chat_id=LUCY_GROUP)
    await bot.send("/backend lucy", user_id=ADMIN)
    await bot.settle()
    assert menus(bot) == []
