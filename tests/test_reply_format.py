"""A backend's ``format`` on its reply parts (tgmux.reply): Markdown backends' parts are marked
Markdown, every other part (plain backends', tgmux's notices) says none and is shown plain."""

from __future__ import annotations

from types import SimpleNamespace

from tgmux.reply import ReplyShaper, with_format
from tgmux.types import Audio, Image, Metadata, Notice, Text, TextDelta

MARKDOWN = SimpleNamespace(format="markdown")
PLAIN = SimpleNamespace(format="plain")


def test_a_markdown_backends_parts_are_marked_markdown():
    shaper = ReplyShaper(1000, MARKDOWN)
    assert shaper.delta(TextDelta("**a")) == [TextDelta("**a", "markdown")]
    assert shaper.own(Text("**a**")) == Text("**a**", "markdown")
    assert shaper.own(Image(url="u", caption="*c*")) == Image(url="u", caption="*c*",
                                                              format="markdown")
    assert shaper.own(Audio(url="u", text="t")).format == "markdown"
    assert shaper.own(Notice("n")) == Notice("n")  # tgmux's own: plain
    assert shaper.own(Metadata({})) == Metadata({})


def test_a_part_that_says_its_format_keeps_it():
    shaper = ReplyShaper(1000, MARKDOWN)
    assert shaper.own(Text("5 * 3", "plain")) == Text("5 * 3", "plain")
    assert shaper.delta(TextDelta("x", "plain")) == [TextDelta("x", "plain")]


def test_a_plain_backends_parts_say_no_format():
    for settings in (PLAIN, None, SimpleNamespace()):
        shaper = ReplyShaper(1000, settings)
        assert shaper.own(Text("5 * 3")) == Text("5 * 3")
        assert shaper.delta(TextDelta("*smiles*")) == [TextDelta("*smiles*")]


def test_a_cut_markdown_reply_stays_markdown_and_its_note_plain():
    shaper = ReplyShaper(5, MARKDOWN)
    assert shaper.complete(shaper.own(Text("**bold** text"))) == [
        Text("**bol", "markdown"), Notice("The reply was cut at 5 characters.")]


def test_with_format_leaves_parts_without_text_alone():
    assert with_format(Metadata({}), "markdown") == Metadata({})
