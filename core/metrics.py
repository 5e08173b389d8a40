"""What a running tgmux counts, in Prometheus' text format (``GET /metrics``).

One registry per engine (not prometheus-client's global default), so several engines in one
process — tests, or several apps — count apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: provider answers take from tens of milliseconds to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "tgmux_messages_received", "Messages taken from a frontend", ["account"], registry=r)
        self.replies = Counter(
            "tgmux_replies", "Replies a backend was asked for, by how they ended",
            ["account", "backend", "outcome"], registry=r)
        self.backend_latency = Histogram(
            "tgmux_backend_latency_seconds", "From asking a backend to its last part",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram(
            "tgmux_first_token_seconds", "From asking a backend to its first visible part",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.provider_errors = Counter(
            "tgmux_provider_errors", "Failed backend answers, by error kind",
            ["backend", "kind"], registry=r)
        self.flood_wait = Counter(
            "tgmux_flood_wait_seconds", "Seconds Telegram told us to wait (FLOOD_WAIT)",
            ["account"], registry=r)
        self.circuit_state = Gauge(
            "tgmux_circuit_state", "A backend's circuit: 0 closed, 1 half open, 2 open",
            ["backend"], registry=r)
        self.inbox_pending = Gauge(
            "tgmux_inbox_pending", "Messages taken but not answered yet", ["account"],
            registry=r)
        self._before_scrape: list[Callable[[], Awaitable[None]]] = []
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus-client looks labels up under a
        lock on every call, which is measurable per message."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def before_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``refresh`` (e.g. read a gauge's value from the store) before each scrape."""
        self._before_scrape.append(refresh)

    async def render(self, *, refresh: bool = True) -> bytes:
        """The text format; ``refresh``: update the gauges first (see :meth:`before_scrape`)."""
        if refresh:
            for update in self._before_scrape:
                await update()
        return generate_latest(self.registry)
