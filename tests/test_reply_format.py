"""A backend's ``format`` on its reply parts (tgmux.reply): Markdown backends' parts are marked
Markdown, every other part (plain backends', tgmux's notices, a command's answer) says none and
is shown plain. (``format`` is not compared by ``==``: each test reads it.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tgmux.reply import ReplyShaper, with_format
from tgmux.types import Audio, Image, Metadata, Notice, Text, TextDelta

MARKDOWN = SimpleNamespace(format="markdown")
PLAIN = SimpleNamespace(format="plain")


def formats(parts: list[Any]) -> list[tuple[str, Any]]:
    return [(type(p).__name__, getattr(p, "format", "-")) for p in parts]


def test_a_markdown_backends_parts_are_marked_markdown():
    shaper = ReplyShaper(1000, MARKDOWN)
    parts = [*shaper.delta(TextDelta("**a")), shaper.own(Text("**a**")),
             shaper.own(Image(url="u", caption="*c*")), shaper.own(Audio(url="u", text="t")),
             shaper.own(Notice("n")), shaper.own(Metadata({}))]
    assert formats(parts) == [("TextDelta", "markdown"), ("Text", "markdown"),
                              ("Image", "markdown"), ("Audio", "markdown"),
                              ("Notice", "-"), ("Metadata", "-")]
    assert parts[1] == Text("**a**")  # what it says is unchanged


def test_a_part_that_says_its_format_keeps_it():
    shaper = ReplyShaper(1000, MARKDOWN)
    parts = [shaper.own(Text("5 * 3", "plain")), *shaper.delta(TextDelta("x", "plain"))]
    assert formats(parts) == [("Text", "plain"), ("TextDelta", "plain")]


def test_a_plain_backends_parts_say_no_format():
    for settings in (PLAIN, None, SimpleNamespace()):
        shaper = ReplyShaper(1000, settings)
        parts = [shaper.own(Text("5 * 3")), *shaper.delta(TextDelta("*smiles*"))]
        assert formats(parts) == [("Text", None), ("TextDelta", None)]


def test_a_commands_answer_is_plain():
    shaper = ReplyShaper(1000, MARKDOWN, command="history")
    assert shaper.own(Text("you: 5 * 3")).format is None


def test_a_cut_markdown_reply_stays_markdown_and_its_note_plain():
    shaper = ReplyShaper(5, MARKDOWN)
    parts = shaper.complete(shaper.own(Text("**bold** text")))
    assert parts == [Text("**bol"), Notice("The reply was cut at 5 characters.")]
    assert formats(parts) == [("Text", "markdown"), ("Notice", "-")]


def test_with_format_leaves_parts_without_text_alone():
    assert with_format(Metadata({}), "markdown") == Metadata({})
