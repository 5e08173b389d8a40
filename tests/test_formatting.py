"""Markdown replies as the user reads them in Telegram: exact text and entities (UTF-16
offsets, Bot API names), messages split at Telegram's limits with formatting intact, streamed
text that never shows broken formatting, and no input that makes rendering fail."""

from __future__ import annotations

import random

import pytest
import telegramify_markdown

from tgmux.formatting import Formatted, check, plain, render, split, split_caption
from tgmux.types import Entity


def units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def ents(formatted: Formatted) -> list[tuple]:
    """Entities as (type, offset, length[, url or language]) for short exact assertions."""
    out = []
    for e in formatted.entities:
        extra = (e.url,) if e.url else (e.language,) if e.language else ()
        out.append((e.type, e.offset, e.length, *extra))
    return out


def rendered(markdown: str, **kwargs) -> tuple[str, list[tuple]]:
    formatted = render(markdown, **kwargs)
    check(formatted)
    return formatted.text, ents(formatted)


# -- the corpus: exact text and entities -------------------------------------------------------

CORPUS = [
    ("bold", "**bold** text", "bold text", [("bold", 0, 4)]),
    ("italic", "*one* and _two_", "one and two", [("italic", 0, 3), ("italic", 8, 3)]),
    ("nested", "***both*** and **bold *italic* bold**", "both and bold italic bold",
     [("bold", 0, 4), ("italic", 0, 4), ("bold", 9, 16), ("italic", 14, 6)]),
    ("strike_spoiler", "~~old~~ ||secret||", "old secret",
     [("strikethrough", 0, 3), ("spoiler", 4, 6)]),
    ("inline_code", "run `ls -la` now", "run ls -la now", [("code", 4, 6)]),
    ("pre_language", "Code:\n\n```python\nprint('hi')\n    return 1\n```",
     "Code:\n\nprint('hi')\n    return 1", [("pre", 7, 24, "python")]),
    ("pre_plain", "```\nno language\n```", "no language", [("pre", 0, 11)]),
    ("links", "[docs](https://example.com/docs) and <https://example.com>",
     "docs and https://example.com",
     [("text_link", 0, 4, "https://example.com/docs"), ("url", 9, 19)]),
    ("bold_link", "**see [docs](https://example.com)**", "see docs",
     [("bold", 0, 8), ("text_link", 4, 4, "https://example.com")]),
    ("unordered", "- one\n- two\n  - nested\n    - deeper",
     "• one\n• two\n  • nested\n    • deeper", []),
    ("ordered", "1. first\n2. **second**\n\n3) third", "1. first\n2. second\n\n3. third",
     [("bold", 12, 6)]),
    ("tasks", "- [ ] todo\n- [x] done", "☐ todo\n☑ done", []),
    ("headings", "# Title\n\nBody text.\n\n## Part `two`\n\n###### Small",
     "Title\n\nBody text.\n\nPart two\n\nSmall",
     [("bold", 0, 5), ("bold", 19, 5), ("code", 24, 3), ("bold", 29, 5)]),
    ("quote", "> quoted **text**\n> second line", "quoted text\nsecond line",
     [("blockquote", 0, 23), ("bold", 7, 4)]),
    ("nested_quote", "> outer\n> > inner", "outer\ninner", [("blockquote", 0, 11)]),
    ("table", "| Name | Qty |\n|------|----:|\n| apple | 3 |\n| kiwi | **12** |",
     "Name  | Qty\n------+----\napple | 3\nkiwi  | 12", [("pre", 0, 44)]),
    ("table_wide_chars", "| 日本 | x |\n|---|---|\n| abcde | y |",
     "日本  | x\n------+--\nabcde | y", [("pre", 0, 27)]),
    ("rule", "above\n\n---\n\nbelow", "above\n\n————————\n\nbelow", []),
    # 👋 is 2 UTF-16 units: the bold starts at 6, not 5
    ("emoji_before", "👋 Hi **there**", "👋 Hi there", [("bold", 6, 5)]),
    # 👨‍👩‍👧 is 8 units (3 emoji, 2 joiners)
    ("zwj_before", "👨\u200d👩\u200d👧 `x` **y**", "👨\u200d👩\u200d👧 x y",
     [("code", 9, 1), ("bold", 11, 1)]),
    ("stars_kept", "5 * 3 = 15, and *smiles*", "5 * 3 = 15, and smiles", [("italic", 16, 6)]),
    # CommonMark reads "*3 = 15 and 4*" as italic: stars between digits are arithmetic
    ("digit_stars", "5*3 = 15 and 4*2 = 8, `2*3*4`, 2**10", "5*3 = 15 and 4*2 = 8, 2*3*4, 2**10",
     [("code", 22, 5)]),
    ("escaped", r"\*not italic\* and snake_case_name", "*not italic* and snake_case_name", []),
    ("html_kept", "Use the <br> tag.\n\n<div>\nraw\n</div>",
     "Use the <br> tag.\n\n<div>\nraw\n</div>", []),
    # Telegram formats no code: bold is cut around it
    ("bold_around_code", "**see `x` here**", "see x here",
     [("bold", 0, 4), ("code", 4, 1), ("bold", 5, 5)]),
    # no code inside a link: the link (its URL) wins
    ("code_in_link", "[`api`](https://example.com/api)", "api",
     [("text_link", 0, 3, "https://example.com/api")]),
    # a spoiler crossing bold: bold cut where the spoiler ends
    ("crossing", "||hid **both|| bold**", "hid both bold",
     [("spoiler", 0, 8), ("bold", 4, 4), ("bold", 8, 5)]),
    ("bad_links", "[home](/home), [x](javascript:alert(1)) and [mail](mailto:a@b.org)",
     "home (/home), x (javascript:alert(1)) and mail (mailto:a@b.org)", []),
    ("bad_link_in_bold", "**[home](/home)** next", "home (/home) next", [("bold", 0, 4)]),
    ("image", "![diagram](https://example.com/d.png)", "diagram",
     [("text_link", 0, 7, "https://example.com/d.png")]),
    ("trimmed", "\n\n  **x**  \n\n", "x", [("bold", 0, 1)]),
    ("indented_code_first", "```\n    indented\n```", "    indented", [("pre", 0, 12)]),
]


@pytest.mark.parametrize(("markdown", "text", "entities"),
                         [case[1:] for case in CORPUS], ids=[case[0] for case in CORPUS])
def test_corpus_renders_exact_text_and_entities(markdown, text, entities):
    assert rendered(markdown) == (text, entities)


def test_a_long_quote_is_expandable():
    text, entities = rendered("> " + "word " * 50)
    assert entities == [("expandable_blockquote", 0, 249)]
    assert text == ("word " * 50).strip()


def test_entities_are_bot_api_json():
    formatted = render("```py\nx\n```\n\n[a](https://a.example)")
    assert [e.to_json() for e in formatted.entities] == [
        {"type": "pre", "offset": 0, "length": 1, "language": "py"},
        {"type": "text_link", "offset": 3, "length": 1, "url": "https://a.example"},
    ]


def test_plain_has_no_entities():
    assert plain("**as is**") == Formatted("**as is**", ())


def test_the_process_wide_config_of_the_library_is_untouched():
    # Another user of telegramify-markdown in the process keeps its own symbols.
    render("# Title\n\n- item")
    text, _ = telegramify_markdown.convert("# Title\n\n- item")
    assert text.startswith("\N{PUSHPIN}") and "\N{Z NOTATION SPOT}" in text


# -- no reply grows out of bounds ----------------------------------------------------------


def test_nested_lists_are_indented_six_levels_at_most():
    # "1. 1. 1. ..." (5 000 nested lists in 15 000 characters) made 25 million characters
    markdown = "\n".join("  " * i + f"- l{i + 1}" for i in range(8))
    assert rendered(markdown) == ("• l1\n  • l2\n    • l3\n      • l4\n        • l5\n"
                                  "          • l6\n          • l7\n          • l8", [])
    assert units(render("1. " * 5000).text) < 5 * 15_000


def test_a_table_too_wide_to_align_is_not_padded():
    # padding a long cell's width into every row multiplied the text by the rows
    long = "y" * 90
    text, entities = rendered(f"| a | b |\n|---|---|\n| {long} | z |\n| x | x |")
    assert (text, entities) == (f"a | b\n{long} | z\nx | x", [("pre", 0, 106)])


def test_urls_of_refused_links_are_shown_up_to_the_texts_length():
    # one reference definition used 300 times: its URL would be shown 300 times
    markdown = "[r]: /" + "u" * 300 + "\n\n" + "[x][r] " * 300
    text = render(markdown).text
    assert text.startswith(f"x (/{'u' * 300}) x (/uuu") and text.endswith(" x x")
    # URLs add at most as many characters as the text has (at least 1 000): 3 of them
    assert text.count(" (/") == 3 and len(text) == 300 * 2 - 1 + 3 * 304


def test_a_streamed_paragraph_with_many_open_markers_is_left_as_written():
    assert rendered("*a _b " * 3, partial=True) == ("*a _b *a _b *a _b", [])


# -- check: what Telegram refuses ----------------------------------------------------------


@pytest.mark.parametrize(("entities", "message"), [
    ([Entity("bold", 0, 0)], "outside"),
    ([Entity("bold", 3, 5)], "outside"),
    ([Entity("bold", -1, 2)], "outside"),
    ([Entity("magic", 0, 2)], "unknown"),
    ([Entity("bold", 0, 3), Entity("italic", 2, 3)], "crosses"),
    ([Entity("pre", 0, 5), Entity("bold", 1, 2)], "may not be inside"),
    ([Entity("bold", 0, 5), Entity("code", 1, 2)], "may not be inside"),
    ([Entity("text_link", 0, 5, url="https://a.example"), Entity("code", 1, 2)],
     "may not be inside"),
    ([Entity("blockquote", 0, 5), Entity("blockquote", 1, 2)], "may not be inside"),
    ([Entity("text_link", 0, 2, url="/relative")], "refuses the URL"),
    ([Entity("text_link", 0, 2, url="javascript:alert(1)")], "refuses the URL"),
])
def test_check_refuses_what_telegram_refuses(entities, message):
    with pytest.raises(ValueError, match=message):
        check(Formatted("abcde", tuple(entities)))


def test_check_refuses_an_entity_ending_inside_an_emoji():
    with pytest.raises(ValueError, match="outside the BMP"):
        check(Formatted("😀x", (Entity("bold", 0, 1),)))
    check(Formatted("😀x", (Entity("bold", 0, 2),)))


def test_check_accepts_what_telegram_takes():
    check(Formatted("abcde", (
        Entity("blockquote", 0, 5), Entity("bold", 0, 1), Entity("pre", 1, 2, language="py"),
        Entity("text_link", 3, 2, url="https://a.example"), Entity("italic", 3, 1))))


@pytest.mark.parametrize("markdown", ["**see `x`**", "||a **b|| c**", "[`x`](https://a.b)",
                                      "> a\n> > b", "[x](/relative)"])
def test_the_library_alone_gives_entities_telegram_refuses(markdown):
    # Why tgmux.formatting normalizes telegramify-markdown's output (see the corpus above).
    text, entities = telegramify_markdown.convert(markdown)
    raw = Formatted(text, tuple(Entity(e.type, e.offset, e.length, e.url, e.language)
                                for e in entities))
    with pytest.raises(ValueError):
        check(raw)
    check(render(markdown))


# -- splitting -------------------------------------------------------------------------------


def long_reply() -> str:
    """About 10 000 characters: prose, a 3 900-character bold paragraph, a long code block."""
    intro = " ".join(f"Intro sentence number {i} explains things." for i in range(20))
    bold = "**" + " ".join(f"important{i}" for i in range(350)) + "**"
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(125))
    return f"{intro}\n\n{bold}\n\n```python\n{code}\n```\n\nThe end, with a [link](https://example.com)."


def test_a_10000_character_reply_splits_with_entities_intact():
    whole = render(long_reply())
    assert 9_500 < units(whole.text) < 10_500
    pieces = split(whole)
    for piece in pieces:
        check(piece)
        assert 0 < units(piece.text) <= 4096
    # nothing lost but the whitespace at the cuts
    assert "".join("".join(p.text.split()) for p in pieces) == "".join(whole.text.split())
    assert len(pieces) == 3
    first, second, third = pieces
    # the prose is too short a message alone: the cut is at a space in the bold paragraph,
    # and the bold goes on at the start of the next message
    intro_end = first.text.index("\n\n") + 2
    assert ents(first) == [("bold", intro_end, units(first.text) - intro_end)]
    bold_rest = second.text.index("\n\n")
    assert ents(second)[0] == ("bold", 0, bold_rest)
    # the code block cut at a line: both messages hold a python pre, the indentation kept
    assert ents(second)[1] == ("pre", bold_rest + 2, units(second.text) - bold_rest - 2,
                               "python")
    assert ents(third)[0] == ("pre", 0, third.text.index("\n\nThe end"), "python")
    assert third.text.startswith("    value_")
    assert ents(third)[1:] == [("text_link", units(third.text) - 5, 4, "https://example.com")]
    # each message ends where the next begins: at a space, then at a line break
    cut_word = first.text.rsplit(" ", 1)[1]
    assert f"{cut_word} {second.text.split(' ', 1)[0]}" in whole.text
    assert f"{second.text.rsplit(chr(10), 1)[1]}\n{third.text.split(chr(10), 1)[0]}" in whole.text


def test_split_prefers_a_blank_line_then_a_line_then_a_space():
    a, b = "a" * 3000, "b" * 3000
    assert [p.text for p in split(plain(f"{a}\n\n{b}"))] == [a, b]
    assert [p.text for p in split(plain(f"{'x ' * 500}{a}\n{b}"))] == [f"{'x ' * 500}{a}", b]
    words = "word " * 1000
    pieces = split(plain(words))
    assert [units(p.text) for p in pieces] == [4094, 904]
    assert all(not p.text.startswith(" ") and not p.text.endswith(" ") for p in pieces)


def test_split_cuts_before_a_link_rather_than_inside_it():
    text = "x" * 4080 + " [a link with many words](https://example.com) after"
    pieces = split(render(text))
    assert [p.text for p in pieces] == ["x" * 4080, "a link with many words after"]
    assert ents(pieces[1]) == [("text_link", 0, 22, "https://example.com")]


def test_a_cut_code_block_is_closed_and_reopened_with_its_language():
    code = "\n".join(f"  line {i:04}" for i in range(800))  # 11 characters a line
    pieces = split(render(f"```rust\n{code}\n```"))
    assert len(pieces) == 3
    for piece in pieces:
        check(piece)
        assert ents(piece) == [("pre", 0, units(piece.text), "rust")]
        assert piece.text.startswith("  line ")  # the indentation is code: kept
    assert "\n".join(p.text for p in pieces) == code


def test_split_counts_utf16_and_never_cuts_an_emoji():
    pieces = split(render("**" + "😀" * 3000 + "**"))
    assert [len(p.text) for p in pieces] == [2048, 952]
    assert [ents(p) for p in pieces] == [[("bold", 0, 4096)], [("bold", 0, 1904)]]
    family = "👨\u200d👩\u200d👧"  # 5 characters, 8 units
    pieces = split(plain(family * 600))
    assert [p.text for p in pieces] == [family * 512, family * 88]


def test_split_gives_no_blank_piece():
    assert split(plain("")) == []
    assert split(plain(" \n\n \t")) == []
    pieces = split(plain("a\n\n\n\n     \n\nb"), limit=2)
    assert [p.text for p in pieces] == ["a", "b"]


def test_a_short_text_is_one_piece():
    formatted = render("**hi** there 😀")
    assert split(formatted) == [formatted]


def test_split_caption_takes_a_shorter_first_piece():
    text = " ".join(f"s{i}." for i in range(700))  # 4 089 characters
    caption, rest = split_caption(render(f"**{text}**"))
    assert units(caption.text) <= 1024 and caption.text.startswith("s0.")
    assert ents(caption) == [("bold", 0, units(caption.text))]
    assert [units(p.text) <= 4096 for p in rest] == [True]
    assert ents(rest[0]) == [("bold", 0, units(rest[0].text))]
    assert split_caption(plain("short")) == (plain("short"), [])
    assert split_caption(plain("  ")) == (plain(""), [])


# -- streaming ------------------------------------------------------------------------------

PARTIAL = [
    ("**unclos", "unclos", [("bold", 0, 6)]),
    ("Hi *there", "Hi there", [("italic", 3, 5)]),
    ("a ~~gone", "a gone", [("strikethrough", 2, 4)]),
    ("**bold *both", "bold both", [("bold", 0, 9), ("italic", 5, 4)]),
    ("run `ls -", "run ls -", [("code", 4, 4)]),
    ("text **", "text", []),  # a marker just typed: not shown yet
    ("list:\n\n- item **b", "list:\n\n• item b", [("bold", 14, 1)]),
    ("```python\ndef f(x):\n    return", "def f(x):\n    return", [("pre", 0, 20, "python")]),
    ("```py\nx = 1\n``", "x = 1\n``", [("pre", 0, 8, "py")]),  # the closing fence in progress
    ("para\n\n```", "para", []),
    ("see [docs](https://exa", "see docs", []),
    ("see ![chart](https://exa", "see chart", []),
    ("5 * 3 = ", "5 * 3 =", []),
    ("snake_ca", "snake_ca", []),
    ("**done** and *", "done and", [("bold", 0, 4)]),
]


@pytest.mark.parametrize(("markdown", "text", "entities"), PARTIAL)
def test_a_streamed_reply_shows_formatting_or_plain_never_broken(markdown, text, entities):
    assert rendered(markdown, partial=True) == (text, entities)


def test_every_prefix_of_a_streamed_reply_renders_and_the_final_text_is_exact():
    reply = ("# Plan\n\nHere is **the plan** with *some* `code`:\n\n```python\nx = [1, 2]\n"
             "print(x)\n```\n\n- step [one](https://example.com/1)\n- step ~~two~~\n\n"
             "> a **quoted** line\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nBye 👋 **now**")
    for end in range(len(reply) + 1):
        check(render(reply[:end], partial=True))
    assert render(reply) == render(reply, partial=False)
    text, entities = rendered(reply)
    assert text == ("Plan\n\nHere is the plan with some code:\n\nx = [1, 2]\nprint(x)\n\n"
                    "• step one\n• step two\n\na quoted line\n\na | b\n--+--\n1 | 2\n\nBye 👋 now")
    assert entities == [("bold", 0, 4), ("bold", 14, 8), ("italic", 28, 4), ("code", 33, 4),
                        ("pre", 40, 19, "python"), ("text_link", 68, 3, "https://example.com/1"),
                        ("strikethrough", 79, 3), ("blockquote", 84, 13), ("bold", 86, 6),
                        ("pre", 99, 17), ("bold", 125, 3)]


# -- nothing makes it fail -------------------------------------------------------------------

FRAGMENTS = [
    "**", "*", "_", "__", "~~", "~", "`", "```", "```py\n", "\n", "\n\n", " ", "[", "]", "(",
    ")", "](", "https://x.example", "javascript:x", "/rel", "# ", "## ", "> ", "> > ", "- ",
    "1. ", "  - ", "| a | b |\n|---|---|\n", "|", "||", "<b>", "</b>", "<div>\n", "😀",
    "👨\u200d👩\u200d👧", "🇩🇪", "e\u0301", "日本", "\\", "$", "$$", "\\(", "\\alpha", "\\)",
    "word", "text ", "    ", "\t", "![a](", "<https://a.example>", "&amp;", "\r\n", "- [ ] ",
    "---\n", "\ud800", "\udfff", "\u200d", "x" * 40, "5*3", "4**", "2",
]


def test_random_markdown_never_fails_and_always_gives_valid_entities():
    rng = random.Random(22)
    for _ in range(1500):
        markdown = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 50)))
        for partial in (False, True):
            formatted = render(markdown, partial=partial)
            check(formatted)
            limit = rng.choice([2, 3, 7, 40, 4096])
            pieces = split(formatted, limit)
            for piece in pieces:
                check(piece)
                assert piece.text.strip() and units(piece.text) <= limit
            assert "".join("".join(p.text.split()) for p in pieces) == \
                "".join(formatted.text.split())


def test_lone_surrogates_are_replaced_not_fatal():
    text, entities = rendered("**a\ud800b**")
    assert (text, entities) == ("a\ufffdb", [("bold", 0, 3)])


def test_an_internal_failure_gives_the_text_plain(monkeypatch, caplog):
    import tgmux.formatting as formatting

    def broken(markdown):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(formatting, "_convert", broken)
    assert render("**x**") == plain("**x**")
    assert render("**x", partial=True) == plain("**x")


def test_the_librarys_own_split_is_not_what_tgmux_needs():
    # Why split() is tgmux's own: telegramify-markdown's split_entities cuts mid-word, inside
    # an emoji sequence, and keeps the newline at a cut inside its pre entity.
    family = "👨\u200d👩\u200d👧"
    words = "word " * 1000
    theirs = telegramify_markdown.split_entities(words, [], 4096)
    assert theirs[0][0].endswith(" w")
    assert [p.text[-4:] for p in split(plain(words))] == ["word", "word"]
    theirs = telegramify_markdown.split_entities("x" + family * 600, [], 4096)
    assert not theirs[1][0].startswith(family)  # the family cut in two
    assert split(plain("x" + family * 600))[1].text.startswith(family)
    text, entities = telegramify_markdown.convert("```\n" + "line\n" * 1000 + "```")
    theirs = telegramify_markdown.split_entities(text, entities, 4096)
    assert theirs[0][0].endswith("\n") and theirs[0][1][0].length == len(theirs[0][0])
    assert not any(p.text.endswith("\n") for p in split(render("```\n" + "line\n" * 1000)))


def test_the_module_imports_no_other_part_of_tgmux_than_its_types():
    import ast
    from pathlib import Path

    import tgmux.formatting as formatting

    tree = ast.parse(Path(formatting.__file__).read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert {name for name in imported if name.startswith("tgmux")} == {"tgmux.types"}
    assert not any(name.startswith("pyrogram") for name in imported)


def test_a_reply_dense_with_formatting_is_split_at_100_entities_a_message():
    # Telegram shows 100 entities of a message and drops the rest silently: a short reply
    # with 250 bold words goes as messages of 100 entities at most, every entity kept
    formatted = render(" ".join(f"**w{i}**" for i in range(250)))
    assert len(formatted.entities) == 250 and len(formatted.text) < 4096
    pieces = split(formatted)
    assert [len(p.entities) for p in pieces] == [100, 100, 50]
    for piece in pieces:
        check(piece)
        assert all(piece.text[e.offset:e.offset + e.length].startswith("w")
                   for e in piece.entities)
    assert " ".join(p.text for p in pieces) == formatted.text
