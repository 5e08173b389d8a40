"""tgmux.command_menus: which commands each Telegram menu scope lists (pure)."""

from __future__ import annotations

from tgmux.bootstrap import load_text
from tgmux.chat_commands import BUILTIN_COMMANDS
from tgmux.command_menus import (
    Scope,
    account_menus,
    available_commands,
    chat_menu,
    fallback_menu,
    unavailable_notice,
)
from tgmux.config import Account
from tgmux.types import CommandSpec

COMMON = list(BUILTIN_COMMANDS)
BACKENDS = {
    "lucy": [CommandSpec("image", "a picture"), CommandSpec("history", "recent")],
    "bambi": [CommandSpec("profile", "the profile"),
              CommandSpec("profile_set", "rename", admin_only=True)],
    "echo": [CommandSpec("shout", "capitals")],
}
BASE = """
backends:
  lucy: {type: echo}
  bambi: {type: echo}
  echo: {type: echo}
admins: [7]
"""
LUCY_GROUP = -1001


def account(routes: str) -> Account:
    config, _ = load_text(BASE + routes)
    return config.account()


def names(commands) -> list[str]:
    return [c.name for c in commands]


def menus_by_scope(acc: Account) -> dict[Scope, list[str]]:
    return {m.scope: names(m.commands) for m in account_menus(acc, COMMON, BACKENDS)}


BUILTINS = ["start", "help", "reset", "backend", "usage"]


def test_everyones_menus_hold_no_admin_commands_and_no_backend_not_everyones() -> None:
    acc = account(f"""
routes:
  - match: {{chat_id: {LUCY_GROUP}}}
    backend: lucy
default: bambi
""")
    menus = menus_by_scope(acc)
    # a group may be lucy's: bambi's /profile is nobody's everywhere; private chats are bambi's
    assert menus[Scope("default")] == BUILTINS
    assert menus[Scope("all_group_chats")] == BUILTINS
    assert menus[Scope("all_private_chats")] == [*BUILTINS, "profile"]
    # the admin's private chat: admin-only commands too
    assert menus[Scope("chat", chat_id=7)] == [*BUILTINS, "status", "profile", "profile_set"]
    assert list(menus)[:3] == [Scope("default"), Scope("all_private_chats"),
                               Scope("all_group_chats")]


def test_one_backend_for_everyone_is_in_everyones_menu() -> None:
    menus = menus_by_scope(account("default: echo\n"))
    assert menus[Scope("default")] == [*BUILTINS, "shout"]


def test_a_chat_routed_to_another_backend_gets_its_commands_and_not_the_defaults() -> None:
    acc = account(f"""
routes:
  - match: {{chat_id: {LUCY_GROUP}}}
    backend: lucy
default: bambi
""")
    menu = chat_menu(acc, COMMON, BACKENDS, "supergroup", LUCY_GROUP, None)
    assert menu.scope == Scope("chat", chat_id=LUCY_GROUP)
    assert names(menu.commands) == [*BUILTINS, "image", "history"]
    # another group: bambi's, as every group that is not lucy's
    other = chat_menu(acc, COMMON, BACKENDS, "supergroup", -1002, None)
    assert names(other.commands) == [*BUILTINS, "profile"]
    assert other.commands != fallback_menu(acc, COMMON, BACKENDS, "supergroup").commands
    # an admin in lucy's group: their own menu there, with /status
    member = chat_menu(acc, COMMON, BACKENDS, "supergroup", LUCY_GROUP, None, member=7)
    assert member.scope == Scope("chat_member", chat_id=LUCY_GROUP, user_id=7)
    assert names(member.commands) == [*BUILTINS, "status", "image", "history"]


def test_an_override_decides_the_chats_menu() -> None:
    acc = account("default: bambi\n")
    menu = chat_menu(acc, COMMON, BACKENDS, "private", 42, "lucy")
    assert names(menu.commands) == [*BUILTINS, "image", "history"]
    # an override to a backend that no longer exists: the config's
    gone = chat_menu(acc, COMMON, BACKENDS, "private", 42, "removed")
    assert names(gone.commands) == [*BUILTINS, "profile"]
    assert gone.commands == fallback_menu(acc, COMMON, BACKENDS, "private").commands


def test_routes_on_what_a_menu_cannot_know_make_a_command_nobodys_for_sure() -> None:
    acc = account("""
routes:
  - match: {text: "^dream"}
    backend: lucy
  - match: {user_id: 42}
    backend: lucy
  - match: {command: image}
    backend: lucy
default: bambi
""")
    # /profile may meet lucy (a text pattern): not listed anywhere
    assert "profile" not in menus_by_scope(acc)[Scope("all_private_chats")]
    # /image is routed to lucy by its command in every chat: everyone's
    assert "image" in menus_by_scope(acc)[Scope("default")]
    # user 42's private chat is lucy's for sure (after the text route, a maybe)
    mine = chat_menu(acc, COMMON, BACKENDS, "private", 42, None)
    assert names(mine.commands) == [*BUILTINS, "image", "history"]
    # in a group, a member is not known: user 42 may or may not be the one writing
    assert "history" not in names(chat_menu(acc, COMMON, BACKENDS, "group", -5, None).commands)
    # ...but the answer to one member is
    assert "history" in names(available_commands(acc, COMMON, BACKENDS, "group", -5, 42, None))


def test_no_default_and_no_route_lists_no_backend_command() -> None:
    acc = account(f"""
routes:
  - match: {{chat_id: {LUCY_GROUP}}}
    backend: lucy
""")
    assert menus_by_scope(acc)[Scope("all_private_chats")] == BUILTINS


def test_the_answer_to_an_unavailable_command_lists_the_available_ones() -> None:
    acc = account("default: bambi\n")
    available = available_commands(acc, COMMON, BACKENDS, "private", 42, 42, None)
    assert unavailable_notice("image", available) == (
        "/image is not available in this chat. Commands here:\n"
        "/start — Start talking\n/help — What this bot can do\n"
        "/reset — Forget this conversation\n"
        "/backend [name] — Show or switch the AI behind this chat\n"
        "/usage — Your messages, tokens and cost, and their limits\n"
        "/profile — the profile")
    assert unavailable_notice("nosuch", available, known=False).startswith(
        "Unknown command /nosuch. Commands here:\n/start")
    admin = available_commands(acc, COMMON, BACKENDS, "private", 7, 7, None)
    assert {"status", "profile_set"} <= set(names(admin))


# -- when menus are published (tgmux.menu_publisher), through the engine -------------------------

ENGINE = """
backends:
  echo: {type: echo}
  other: {type: echo}
routes:
  - match: {chat_id: -5}
    backend: other
default: echo
admins: [7]
"""


class Recorder:
    """A frontend's ``publish_menus``: what the core handed over, by scope."""

    def __init__(self) -> None:
        self.menus: list[tuple[str, Scope]] = []

    def __call__(self, account: str, menus: list) -> None:
        self.menus += [(account, m.scope) for m in menus]


async def test_a_chat_is_published_once_bounded_and_again_when_a_reload_changes_it() -> None:
    from tgmux.bootstrap import load_text as load
    from tgmux.harness import EngineHarness

    async with EngineHarness.from_yaml(ENGINE) as h:
        sent = Recorder()
        h.frontend.publish_menus = sent  # type: ignore[attr-defined]
        # both backends have /shout: the same menu everywhere; nothing of a chat's own
        await h.say("hi", user_id=5, chat_id=-5, chat_type="supergroup")
        await h.say("hi", user_id=6)
        assert sent.menus == []
        # an admin in a group: their own menu there, once
        await h.say("hi", user_id=7, chat_id=-5, chat_type="supergroup")
        await h.say("again", user_id=7, chat_id=-5, chat_type="supergroup")
        assert sent.menus == [("main", Scope("chat_member", chat_id=-5, user_id=7))]
        # a reload: the accounts' menus, and the remembered chats' where they changed (none)
        config, _ = load(ENGINE.replace("admins: [7]", "admins: [7, 8]"))
        await h.engine.reload(config)
        assert [s for _, s in sent.menus[1:]] == [
            Scope("default"), Scope("all_private_chats"), Scope("all_group_chats"),
            Scope("chat", chat_id=7), Scope("chat", chat_id=8)]
        # bounded: the oldest chats are forgotten
        h.engine.menus.CHATS_KEPT = 2
        for chat_id in (-11, -12, -13):
            await h.say("hi", user_id=1, chat_id=chat_id, chat_type="supergroup")
        assert len(h.engine.menus._chats) == 2
