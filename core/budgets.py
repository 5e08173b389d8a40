"""Budgets in money (``limits.daily_cost_per_user``, ``limits.monthly_cost_per_user``) and
what ``/usage`` shows: sums of the usage rows the store keeps (:meth:`Store.usage_rows`).

Days and months are UTC, as the rows' days are. What counts against a budget is what was
recorded before a message arrives: a reply in flight when the budget is reached is not
stopped, so a user may overrun their budget by the replies in flight (one, as a chat's
messages are answered in order; and the cut replies read on for their usage: tgmux.usage).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from tgmux.config.schema import LimitsConfig
from tgmux.store import Store
from tgmux.types import UsageRow

__all__ = ["Over", "Periods", "Totals", "format_money", "over_budget", "periods", "spent"]


@dataclass(frozen=True)
class Totals:
    """Rows summed. ``cost`` sums the known costs; ``unpriced`` counts the messages of rows
    whose cost was not known."""

    messages: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0

    @classmethod
    def of(cls, rows: Iterable[UsageRow]) -> Totals:
        totals = [0, 0, 0, 0, 0, 0.0, 0]
        for row in rows:
            for i, value in enumerate((row.messages, row.input_tokens, row.output_tokens,
                                       row.cached_input_tokens, row.reasoning_tokens)):
                totals[i] += value
            if row.cost is None:
                totals[6] += row.messages
            else:
                totals[5] += row.cost
        return cls(*totals)  # type: ignore[arg-type]

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Periods:
    """Today and this month (UTC) at one moment, and the seconds until each ends."""

    today: str  # YYYY-MM-DD
    month: str  # the month's first day, YYYY-MM-DD
    day_ends_in: float
    month_ends_in: float


def periods(now: float) -> Periods:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    return Periods(day.date().isoformat(), month.date().isoformat(),
                   (day + dt.timedelta(days=1) - moment).total_seconds(),
                   (next_month - moment).total_seconds())


def format_money(amount: float, currency: str) -> str:
    """``USD 0.50``; under 1, up to 4 decimals (``USD 0.0123``), so a small cost shows."""
    text = f"{amount:.2f}" if abs(amount) >= 1 else f"{amount:.4f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return f"{currency} {text}"


def budgeted(limits: LimitsConfig) -> bool:
    return limits.daily_cost_per_user is not None or limits.monthly_cost_per_user is not None


async def spent(store: Store, account: str, user_id: int,
                now: Periods) -> tuple[Totals, Totals]:
    """What ``user_id`` used today and this month: one store read (the month's rows)."""
    rows = await store.usage_rows(since=now.month, account=account, user_id=user_id)
    return Totals.of(r for r in rows if r.day == now.today), Totals.of(rows)


@dataclass(frozen=True)
class Over:
    """A budget spent: ``period`` (``daily``, ``monthly``), its limit, when it resets, and
    ``key``, the period's first day."""

    period: str
    limit: float
    reset_in: float
    key: str


def over_budget(limits: LimitsConfig, today: Totals, month: Totals,
                now: Periods) -> Over | None:
    """The budget spent, if any; the monthly one first (it is the later to reset)."""
    # a sum of floats: 0.1 + 0.2 must reach a 0.3 budget
    if (limits.monthly_cost_per_user is not None
            and round(month.cost, 9) >= limits.monthly_cost_per_user):
        return Over("monthly", limits.monthly_cost_per_user, now.month_ends_in, now.month)
    if (limits.daily_cost_per_user is not None
            and round(today.cost, 9) >= limits.daily_cost_per_user):
        return Over("daily", limits.daily_cost_per_user, now.day_ends_in, now.today)
    return None
