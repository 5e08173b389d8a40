"""The user's formatting as a backend reads it (tgmux.user_text): Markdown for a backend of
``format: markdown``, readable plain text (a link's URL kept) for ``format: plain``."""

from __future__ import annotations

from tgmux.types import Entity
from tgmux.user_text import as_markdown, as_plain, user_text


def test_each_entity_in_markdown() -> None:
    text = "bold italic gone code docs"
    entities = [Entity("bold", 0, 4), Entity("italic", 5, 6), Entity("strikethrough", 12, 4),
                Entity("code", 17, 4), Entity("text_link", 22, 4, url="https://ex.com/d")]
    assert as_markdown(text, entities) == \
        "**bold** _italic_ ~~gone~~ `code` [docs](https://ex.com/d)"


def test_nested_entities_and_blanks_outside_the_markers() -> None:
    # "see the docs": bold over "the docs " (a trailing blank), a link inside it
    text = "see the docs now"
    entities = [Entity("bold", 4, 9), Entity("text_link", 8, 4, url="https://ex.com")]
    assert as_markdown(text, entities) == "see **the [docs](https://ex.com)** now"


def test_utf16_offsets_after_an_emoji() -> None:
    text = "👋 hi *you*"  # the emoji is 2 UTF-16 units; the stars are the user's own text
    assert as_markdown(text, [Entity("bold", 3, 2)]) == "👋 **hi** *you*"
    assert as_markdown("a👋b", [Entity("italic", 1, 2)]) == "a_👋_b"


def test_code_blocks_keep_their_language_and_code_its_backticks() -> None:
    text = "run:\nprint(1)\nnow `x`"
    entities = [Entity("pre", 5, 8, language="python"), Entity("code", 18, 3)]
    assert as_markdown(text, entities) == "run:\n```python\nprint(1)\n```\nnow `` `x` ``"
    assert as_markdown("a **b**", [Entity("code", 2, 5)]) == "a `**b**`"  # code is verbatim


def test_quotes_and_what_markdown_cannot_say() -> None:
    text = "line one\nline two\nsecret"
    entities = [Entity("blockquote", 0, 17), Entity("spoiler", 18, 6),
                Entity("underline", 0, 4)]
    assert as_markdown(text, entities) == "> line one\n> line two\nsecret"


def test_plain_keeps_a_text_links_url_and_nothing_else() -> None:
    text = "read the docs, **now**"
    entities = [Entity("text_link", 9, 4, url="https://ex.com/d"), Entity("bold", 15, 7)]
    assert as_plain(text, entities) == "read the docs (https://ex.com/d), **now**"
    assert as_plain("https://ex.com", [Entity("text_link", 0, 14, url="https://ex.com")]) == \
        "https://ex.com"
    assert user_text("5 * 3", [], "markdown") == "5 * 3"
    assert user_text(text, entities, "plain") == as_plain(text, entities)


def test_entities_out_of_range_or_overlapping_do_not_break_the_text() -> None:
    assert as_markdown("abc", [Entity("bold", 1, 10)]) == "a**bc**"
    assert as_markdown("abc", [Entity("bold", 5, 1)]) == "abc"
    # overlapping (not nested): the second is cut at the first's end
    assert as_markdown("abcdef", [Entity("bold", 0, 4), Entity("italic", 2, 4)]) == \
        "**ab_cd_**ef"
