"""What a running tgmux counts, in Prometheus' text format (``GET /metrics``).

One registry per engine (not prometheus-client's global default), so several engines in one
process — tests, or several apps — count apart.

The counters and histograms counted per message are plain numbers in this process, read by a
collector at scrape time: prometheus-client's own take a lock on every ``inc`` and
``observe``, several of them per message, which was a measurable share of the engine's time.
Everything that counts runs on the event loop's thread, so no lock is needed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from tgmux.activity import Activity

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: provider answers take from tens of milliseconds to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """A counter or histogram family with labels, read by :class:`_Collector`."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 buckets: tuple[float, ...] | None = None) -> None:
        self.name, self.documentation, self.label_names = name, documentation, labels
        self.buckets = buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = (
                _CounterChild() if self.buckets is None else _HistogramChild(self.buckets))
        return child

    def collect(self) -> Metric:
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.documentation,
                                          labels=self.label_names)
            for values, child in list(self.children.items()):
                counter.add_metric(list(values), child.value)
            return counter
        histogram = HistogramMetricFamily(self.name, self.documentation,
                                          labels=self.label_names)
        for values, child in list(self.children.items()):
            total, buckets = 0, []
            for bound, count in zip((*child.bounds, math.inf), child.counts, strict=True):
                total += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
            histogram.add_metric(list(values), buckets, child.sum)
        return histogram


class _Collector:
    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_received = _Family(
            "tgmux_messages_received", "Messages taken from a frontend", ["account"])
        self.replies = _Family(
            "tgmux_replies", "Replies a backend was asked for, by how they ended",
            ["account", "backend", "outcome"])
        self.backend_latency = _Family(
            "tgmux_backend_latency_seconds", "From asking a backend to its last part",
            ["backend"], buckets=LATENCY_BUCKETS)
        self.first_token = _Family(
            "tgmux_first_token_seconds", "From asking a backend to its first visible part",
            ["backend"], buckets=LATENCY_BUCKETS)
        self.provider_errors = _Family(
            "tgmux_provider_errors", "Failed backend answers, by error kind",
            ["backend", "kind"])
        self.flood_wait = _Family(
            "tgmux_flood_wait_seconds", "Seconds Telegram told us to wait (FLOOD_WAIT)",
            ["account"])
        self.updates_skipped = _Family(
            "tgmux_updates_skipped", "Updates Telegram no longer had to give "
            "(differenceTooLong after a long outage)", ["account"])
        self.stale_messages = _Family(
            "tgmux_stale_messages", "Messages older than telegram.catch_up_max_age when they "
            "arrived: not answered, their user told", ["account"])
        self.tokens = _Family(
            "tgmux_tokens", "Tokens the providers reported, by kind: input (cached included), "
            "output (reasoning included), cached_input, reasoning", ["backend", "model", "kind"])
        self.cost = _Family(
            "tgmux_cost", "What replies cost, in the config's currency (replies of a model "
            "without a price add nothing)", ["backend", "model"])
        r.register(_Collector([self.messages_received, self.replies, self.backend_latency,
                               self.first_token, self.provider_errors, self.flood_wait,
                               self.updates_skipped, self.stale_messages, self.tokens,
                               self.cost]))
        self.circuit_state = Gauge(
            "tgmux_circuit_state", "A backend's circuit: 0 closed, 1 half open, 2 open",
            ["backend"], registry=r)
        self.inbox_pending = Gauge(
            "tgmux_inbox_pending", "Messages taken but not answered yet", ["account"],
            registry=r)
        #: the last hour, for the operator's console (tgmux.activity): not exported here
        self.activity = Activity()
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
