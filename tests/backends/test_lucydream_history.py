"""How /history text is put together: order, limit, and splitting by Telegram's measure."""

from __future__ import annotations

from tgmux.backends.lucydream.adapter import (
    NO_HISTORY,
    chronological,
    format_history,
    split_text_parts,
)
from tgmux.backends.lucydream.client import HistoryEntry


def entry(role: str, text: str, stamp: object = None, message: str | None = None) -> HistoryEntry:
    return HistoryEntry(role=role, message=message if message is not None else f"<p>{text}</p>",
                        clean_message=text, timestamp=stamp)


def test_newest_first_answer_is_shown_newest_last():
    entries = [
        entry("assistant", "third", "2025-12-25 10:00:02"),
        entry("user", "second", "2025-12-25 10:00:01"),
        entry("user", "first", "2025-12-25T10:00:00Z"),
    ]
    assert format_history(entries, 10) == ["user: first\nuser: second\nassistant: third"]


def test_unreadable_timestamps_keep_the_provider_order_and_equal_ones_are_stable():
    entries = [entry("user", "b", "yesterday"), entry("user", "a", None)]
    assert chronological(entries) == entries
    same = [entry("user", "q", 1700000000), entry("assistant", "a", "1700000000")]
    assert chronological(same) == same


def test_limit_keeps_the_newest_and_clean_message_falls_back_to_message():
    entries = [entry("user", str(i), i) for i in range(5)]
    entries.append(HistoryEntry(role="assistant", message="raw", clean_message="", timestamp=9))
    assert format_history(entries, 2) == ["user: 4\nassistant: raw"]
    assert format_history([], 5) == [NO_HISTORY]


def test_split_counts_utf16_units_like_telegram():
    # each emoji outside the BMP counts 2 for Telegram: 1500 of them are 3000 units
    block = "😀" * 1500
    parts = split_text_parts([block, block], 4000)
    assert parts == [block, block]


def test_one_overlong_entry_is_cut_at_spaces():
    words = " ".join(f"w{i:04d}" for i in range(2000))  # 11999 characters
    parts = split_text_parts([words], 4000)
    assert all(len(p) <= 4000 for p in parts)
    assert " ".join(parts).split() == words.split()
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in parts)
