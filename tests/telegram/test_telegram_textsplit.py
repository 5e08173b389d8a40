"""Splitting text at Telegram's limits, measured in UTF-16 code units."""

from __future__ import annotations

import pytest

from tgmux.telegram.textsplit import split_caption, split_pieces, split_text, utf16_len


def rejoin(text: str, limit: int) -> str:
    return "".join(chunk + sep for chunk, sep in split_pieces(text, limit))


def test_utf16_length_counts_astral_characters_twice():
    assert utf16_len("abc") == 3
    assert utf16_len("é") == 1  # BMP, precomposed
    assert utf16_len("😀") == 2
    assert utf16_len("👍🏽") == 4  # thumbs up + skin tone: two astral code points
    assert utf16_len("𝔘𝔫𝔦") == 6


def test_short_text_is_one_message_and_blank_text_none():
    assert split_text("hello") == ["hello"]
    assert split_text("x" * 4096) == ["x" * 4096]
    assert split_text("") == []
    assert split_text(" \n\t ") == []


def test_paragraph_boundaries_come_first():
    first = "First paragraph. " * 150  # ~2550 chars
    second = "Second paragraph, quite long as well. " * 60  # ~2280 chars
    text = first.strip() + "\n\n" + second.strip()
    chunks = split_text(text)
    assert chunks == [first.strip(), second.strip()]


def test_sentence_boundary_when_there_is_no_paragraph():
    sentence = "This is a sentence that goes on for a while. "
    text = sentence * 120  # 5400 chars, no newlines
    chunks = split_text(text)
    assert len(chunks) == 2
    assert all(utf16_len(c) <= 4096 for c in chunks)
    assert chunks[0].endswith("a while.")  # cut after a full stop, not mid-sentence
    assert rejoin(text, 4096) == text


def test_line_breaks_before_sentences():
    line = "item: a line without a full stop"
    text = "\n".join([line] * 200)
    chunks = split_text(text, 1000)
    assert all(c.startswith("item:") and c.endswith("full stop") for c in chunks)
    assert all(utf16_len(c) <= 1000 for c in chunks)


def test_words_are_not_cut():
    text = "lorem ipsum dolor " * 300
    chunks = split_text(text, 500)
    assert all(utf16_len(c) <= 500 for c in chunks)
    words = {w for c in chunks for w in c.split()}
    assert words == {"lorem", "ipsum", "dolor"}


def test_a_huge_word_is_cut_hard_without_loss():
    text = "a" * 10000
    chunks = split_text(text)
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert "".join(chunks) == text


def test_emoji_are_measured_in_utf16_and_never_split():
    text = "😀" * 3000  # 6000 UTF-16 units, 3000 code points
    chunks = split_text(text)
    assert [utf16_len(c) for c in chunks] == [4096, 1904]
    assert "".join(chunks) == text
    # an odd limit cannot hold half an emoji: the cut falls before it
    odd = split_text("😀" * 10, 5)
    assert [utf16_len(c) for c in odd] == [4, 4, 4, 4, 4]


def test_mixed_bmp_and_astral_text_at_the_exact_limit():
    text = "a" * 4095 + "😀" + "b"  # the emoji would straddle the limit
    chunks = split_text(text)
    assert chunks == ["a" * 4095, "😀b"]
    assert utf16_len(chunks[0]) <= 4096


def test_grapheme_clusters_stay_whole():
    family = "👨‍👩‍👧‍👦"  # four people joined by zero-width joiners: 11 UTF-16 units
    chunks = split_text(family * 50, 100)
    assert all(c == family * (len(c) // len(family)) for c in chunks)
    assert "".join(chunks) == family * 50
    flags = "🇩🇪🇫🇷🇯🇵" * 30  # regional indicator pairs
    chunks = split_text(flags, 25)
    assert "".join(chunks) == flags
    assert all(len(c) % 2 == 0 for c in chunks)  # never half a flag
    accents = "e\u0301" * 3000  # e + combining acute accent
    chunks = split_text(accents, 4096)
    assert all(c.startswith("e") and c.endswith("\u0301") for c in chunks)


def test_separators_are_the_only_thing_dropped():
    text = ("Para one is here.\n\nPara two, a bit longer.  Then a sentence! And another?\n"
            "A line.\n\n\n") * 80
    for limit in (50, 333, 4096):
        pieces = split_pieces(text, limit)
        assert rejoin(text, limit) == text
        assert all(sep.strip() == "" for _, sep in pieces)
        assert all(chunk.strip() and utf16_len(chunk) <= limit for chunk, _ in pieces)


def test_caption_and_the_rest_as_text():
    caption, rest = split_caption("short")
    assert (caption, rest) == ("short", [])
    text = "Caption sentence number one. " * 60  # ~1740 chars
    caption, rest = split_caption(text)
    assert utf16_len(caption) <= 1024 and caption.endswith(".")
    assert len(rest) == 1
    assert caption + " " + rest[0] == text
    emoji_caption, rest = split_caption("🙂" * 600)  # 1200 units
    assert utf16_len(emoji_caption) == 1024 and utf16_len(rest[0]) == 176
    assert split_caption("") == ("", [])


def test_limit_must_hold_one_character():
    with pytest.raises(ValueError):
        split_text("abc", 1)
