"""``tgmux usage``: the store's usage rows summed by user, chat, backend, model or day, as a
table (with a total line), CSV or JSON.

Fields (CSV columns, JSON keys), after the grouping key (``user``, ``chat``, ``backend``,
``model`` or ``day``): ``messages``, ``input_tokens``, ``output_tokens``,
``cached_input_tokens``, ``reasoning_tokens``, ``unpriced_messages`` (those recorded without
a known price: their cost is not in ``cost``) and ``cost`` (in ``currency``; empty / null
when no row of the group had a known price).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from tgmux.budgets import Totals
from tgmux.types import UsageRow

__all__ = ["BY", "FIELDS", "Group", "group_rows", "render"]

By = Literal["user", "chat", "backend", "model", "day"]
BY: tuple[By, ...] = ("user", "chat", "backend", "model", "day")
FIELDS = ("messages", "input_tokens", "output_tokens", "cached_input_tokens",
          "reasoning_tokens", "unpriced_messages", "cost")
#: The table's column titles for :data:`FIELDS`.
_TITLES = ("messages", "input", "output", "cached", "reasoning", "unpriced", "cost")


@dataclass(frozen=True)
class Group:
    """One group's rows summed (:class:`tgmux.budgets.Totals`: the one way rows are added)."""

    key: str | int | None
    totals: Totals

    @property
    def messages(self) -> int:
        return self.totals.messages

    @property
    def cost(self) -> float | None:
        """The known costs summed; None when no row of the group had a known price."""
        totals = self.totals
        return None if totals.unpriced == totals.messages and not totals.cost else totals.cost

    def values(self) -> list[Any]:
        """:data:`FIELDS`' values (the cost rounded to 6 decimals: no float noise)."""
        t, cost = self.totals, self.cost
        return [t.messages, t.input_tokens, t.output_tokens, t.cached_input_tokens,
                t.reasoning_tokens, t.unpriced, None if cost is None else round(cost, 6)]


def _key(row: UsageRow, by: By) -> str | int | None:
    return {"user": row.user_id, "chat": row.chat_id, "backend": row.backend,
            "model": row.model, "day": row.day}[by]


def group_rows(rows: Iterable[UsageRow], by: By) -> tuple[list[Group], Group]:
    """The groups (days in order; the rest the costliest first) and their total."""
    rows = list(rows)
    grouped: dict[str | int | None, list[UsageRow]] = {}
    for row in rows:
        grouped.setdefault(_key(row, by), []).append(row)
    groups = {key: Group(key, Totals.of(members)) for key, members in grouped.items()}
    total = Group("total", Totals.of(rows))
    found = list(groups.values())
    if by == "day":
        found.sort(key=lambda g: str(g.key))
    else:
        found.sort(key=lambda g: (-(g.cost or 0.0), -g.messages, str(g.key)))
    return found, total


def _cost(cost: float | None) -> str:
    if cost is None:
        return ""
    return f"{cost:.6f}".rstrip("0").rstrip(".") if cost else "0"


def render(groups: list[Group], total: Group, *, by: By, fmt: str, since: str,
           currency: str) -> str:
    if fmt == "json":
        rows = [{by: g.key, **dict(zip(FIELDS, g.values(), strict=True))} for g in groups]
        return json.dumps({"since": since, "by": by, "currency": currency, "rows": rows,
                           "total": dict(zip(FIELDS, total.values(), strict=True))},
                          indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([by, *FIELDS])
        for g in groups:
            writer.writerow(["" if g.key is None else g.key, *g.values()[:-1], _cost(g.cost)])
        return out.getvalue()
    header = [by, *_TITLES[:-1], f"cost ({currency})"]
    lines = [[("-" if g.key is None else str(g.key)), *map(str, g.values()[:-1]),
              _cost(g.cost) or "-"] for g in [*groups, total]]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])]
                         + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    text = [f"Usage since {since} (UTC), by {by}:", line(header), *map(line, lines[:-1]),
            line(lines[-1])]
    if not groups:
        text.insert(2, "(nothing recorded)")
    return "\n".join(text) + "\n"
