"""What a reply cost: prices per model, per million tokens.

A model's price comes from the config's ``prices:`` (by the model's name as the provider
reports it, in the config's ``currency``) or, when the config has none for it and the currency
is USD, from genai-prices (pydantic's maintained price data for the major providers, with
cached-input and tiered prices, and price changes by date). genai-prices is used offline: its
bundled snapshot only (its ``UpdatePrices``, which fetches, is never started), imported on the
first lookup in a worker thread (it takes ~0.1 s) so the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tgmux.config.schema import ModelPrice
from tgmux.types import Usage

__all__ = ["LIBRARY_CURRENCY", "Prices", "configured_cost", "price_warnings"]

log = logging.getLogger("tgmux.prices")

#: genai-prices' prices are in US dollars.
LIBRARY_CURRENCY = "USD"
PER = 1_000_000
#: models whose flat price is kept at most
FLAT_KEPT = 1000


def configured_cost(price: ModelPrice, usage: Usage) -> float:
    """``usage`` at ``price``: prompt tokens not cached at ``input``, cached ones at
    ``cached_input`` (default: ``input``), reply tokens (reasoning included) at ``output``."""
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return ((usage.input_tokens - cached) * price.input + cached * cached_price
            + usage.output_tokens * price.output) / PER


def library_cost(usage: Usage) -> float | None:
    """``usage`` at genai-prices' price for its model (USD); None when it does not know the
    model. Blocking the first time (the import): see :meth:`Prices.load`."""
    import genai_prices

    if not usage.model:
        return None
    try:
        price = genai_prices.calc_price(genai_prices.Usage(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=min(usage.cached_input_tokens, usage.input_tokens)),
            usage.model)
    except LookupError:  # a model it does not know (a local one, a new one)
        return None
    return float(price.total_price)


#: Price keys that never apply to what a Usage counts (tokens of text in and out, cached
#: reads): a model priced only by these and flat input/output/cache-read prices is priced by
#: :func:`flat_cost`, which is what genai-prices computes, ~50 times faster (its calc_price
#: takes ~0.1 ms a reply).
_FLAT = ("input_mtok", "output_mtok", "cache_read_mtok")
_UNUSED = frozenset({"web_searches_kcount", "storage_searches_kcount", "cache_write_mtok",
                     "cache_write_1h_mtok", "input_audio_mtok", "output_audio_mtok",
                     "input_image_mtok", "output_image_mtok", "input_video_mtok",
                     "output_video_mtok", "cache_audio_read_mtok", "cache_image_read_mtok",
                     "audio_hours", "input_audio_hours", "input_document_kpages",
                     "input_annotated_document_kpages"})
#: (input, output, cache read) per million tokens; None: not flat (the library prices it);
#: UNKNOWN: the library does not know the model.
Flat = tuple[float, float, float | None]
UNKNOWN: Flat = (-1.0, -1.0, None)


def flat_price(model: str, now: datetime | None = None) -> Flat | None:
    """The library's flat price of ``model`` at ``now`` (see :data:`_UNUSED`); None when it
    is tiered or has a price :func:`flat_cost` does not apply; :data:`UNKNOWN`."""
    from decimal import Decimal

    from genai_prices.data_snapshot import get_snapshot

    try:
        _, info = get_snapshot().find_provider_model(model, None, None, None)
    except LookupError:
        return UNKNOWN
    price = info.get_prices(now or datetime.now(UTC))
    fields = {k: v for k, v in vars(price).items() if not k.startswith("_") and v is not None}
    if not set(fields) <= _UNUSED | set(_FLAT) or any(
            not isinstance(fields.get(k, Decimal(0)), Decimal) for k in _FLAT):
        return None
    cached = fields.get("cache_read_mtok")
    return (float(fields.get("input_mtok", 0)), float(fields.get("output_mtok", 0)),
            None if cached is None else float(cached))


class Prices:
    """The prices of one config: ``prices:`` first, then (in USD only) the library's."""

    def __init__(self, configured: Mapping[str, ModelPrice], currency: str = "USD") -> None:
        self.configured = dict(configured)
        self.currency = currency
        self.use_library = currency.upper() == LIBRARY_CURRENCY
        self._loaded = False
        self._loading: asyncio.Lock | None = None
        self._flat: dict[str, Flat | None] = {}
        self._flat_day = datetime.now(UTC).date()

    @classmethod
    def of(cls, config: Any) -> Prices:
        """The prices of a loaded config (:class:`tgmux.config.Config`)."""
        return cls(config.data.prices, config.data.currency)

    async def load(self) -> None:
        """Import the library in a worker thread, once (a no-op without it)."""
        if self._loaded or not self.use_library:
            return
        self._loading = self._loading or asyncio.Lock()
        async with self._loading:
            if not self._loaded:
                await asyncio.to_thread(library_cost, Usage(model="gpt-4o-mini"))
                self._loaded = True

    def cost(self, usage: Usage) -> float | None:
        """What ``usage`` cost in :attr:`currency`; None when the price is not known. Call
        :meth:`load` first for the library's prices (without it: configured prices only)."""
        price = self.configured.get(usage.model or "")
        if price is not None:
            return configured_cost(price, usage)
        if not self._loaded or not usage.model:
            return None
        try:
            flat = self._flat_price(usage.model)
            if flat is UNKNOWN:
                return None
            if flat is not None and (flat[2] is not None or not usage.cached_input_tokens):
                return configured_cost(ModelPrice(input=flat[0], output=flat[1],
                                                  cached_input=flat[2]), usage)
            return library_cost(usage)
        except Exception as exc:  # a price entry it cannot apply: the usage is kept all the same
            log.warning("no price for model %s: %s", usage.model, exc)
            return None

    def _flat_price(self, model: str) -> Flat | None:
        """:func:`flat_price`, kept per model for the UTC day (prices change by date)."""
        day = datetime.now(UTC).date()
        if day != self._flat_day:
            self._flat, self._flat_day = {}, day
        if model not in self._flat:
            if len(self._flat) >= FLAT_KEPT:  # a provider naming ever new models
                self._flat.clear()
            self._flat[model] = flat_price(model)
        return self._flat[model]

    def known(self, model: str) -> bool:
        """Whether ``model`` has a price (blocking: for ``tgmux check``, not the loop)."""
        if model in self.configured:
            return True
        return self.use_library and library_cost(Usage(model=model)) is not None


def price_warnings(config: Any) -> list[str]:
    """What ``tgmux check`` warns about: each model a backend that reports usage is set to
    (its own ``model``, a route's ``options.model``) without a price (blocking: the CLI's)."""
    prices = Prices.of(config)
    found: dict[str, None] = {}
    routes = [(("routes", i), r) for i, r in enumerate(config.data.routes)]
    for account, data in (config.data.accounts or {}).items():
        routes += [(("accounts", account, "routes", i), r)
                   for i, r in enumerate(data.routes or [])]
    uses = [(("backends", name), name, getattr(settings, "model", None))
            for name, settings in config.backend_settings.items()]
    uses += [((*path, "options", "model"), route.backend, route.options.get("model"))
             for path, route in routes if isinstance(route.options.get("model"), str)]
    for path, backend, model in uses:
        cls = config.backend_classes.get(backend)
        if cls is None or not cls.reports_usage or not isinstance(model, str) or not model:
            continue
        if not prices.known(model):
            where = config.where(path) if path in config.lines else config.where(path[:2])
            found[f"{where}: model {model} has no price in {prices.currency}: its replies' "
                  f"tokens are recorded without a cost (add it to prices:)"] = None
    return list(found)
