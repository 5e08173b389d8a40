"""tgmux.context: a turn's context (the replied-to message, the group's recent messages) in
the short text prepended for providers that take one text message."""

from __future__ import annotations

from tgmux.context import reply_preamble, with_context
from tgmux.types import ChatLine, RepliedTo

ANNA = RepliedTo(text="the meeting is at noon, room 4", author="Anna", quote="room 4")
BOT = RepliedTo(text="Paris is the capital.", author="tgmux", from_bot=True)


def test_reply_preamble_says_who_and_what() -> None:
    assert reply_preamble(BOT) == '[In reply to your message: "Paris is the capital."]'
    assert reply_preamble(ANNA) == '[In reply to Anna: "room 4"]'
    assert reply_preamble(ANNA, whole=True) == \
        '[In reply to Anna: "the meeting is at noon, room 4" — quoting: "room 4"]'
    assert reply_preamble(None) == ""
    assert reply_preamble(RepliedTo(text="", author="Anna")) == ""  # a photo without caption
    assert reply_preamble(RepliedTo(text="x" * 400, author="A")).endswith('x…"]')


def test_with_context_puts_the_group_then_the_reply_before_the_text() -> None:
    lines = (ChatLine("Anna", "lunch?"), ChatLine("Bob", "  "), ChatLine("Bob", "yes"))
    assert with_context("and you?", BOT, lines) == (
        'Anna: lunch?\nBob: yes\n[In reply to your message: "Paris is the capital."]'
        "\n\nand you?")
    assert with_context("plain") == "plain"


def test_with_context_cuts_whole_old_lines_then_the_reply_never_the_text() -> None:
    lines = tuple(ChatLine(f"U{i}", "m" * 50) for i in range(10))
    text = "q" * 100
    cut = with_context(text, BOT, lines, max_chars=300)
    assert len(cut) <= 300 and cut.endswith("\n\n" + text)
    kept = cut.split("\n\n")[0].split("\n")
    assert kept[-1] == '[In reply to your message: "Paris is the capital."]'
    assert [line.split(":")[0] for line in kept[:-1]] == ["U8", "U9"]  # the newest, whole
    long_reply = RepliedTo(text="r" * 1000, author="Anna")
    shortened = with_context(text, long_reply, max_chars=250)
    assert len(shortened) <= 250 and shortened.startswith('[In reply to Anna: "rrr')
    assert with_context(text, long_reply, lines, max_chars=110) == text  # no room at all
