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
from typing import Any

from tgmux.config.schema import ModelPrice
from tgmux.types import Usage

__all__ = ["LIBRARY_CURRENCY", "Prices", "configured_cost"]

log = logging.getLogger("tgmux.prices")

#: genai-prices' prices are in US dollars.
LIBRARY_CURRENCY = "USD"
PER = 1_000_000


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


class Prices:
    """The prices of one config: ``prices:`` first, then (in USD only) the library's."""

    def __init__(self, configured: Mapping[str, ModelPrice], currency: str = "USD") -> None:
        self.configured = dict(configured)
        self.currency = currency
        self.use_library = currency.upper() == LIBRARY_CURRENCY
        self._loaded = False
        self._loading: asyncio.Lock | None = None

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
        if not self._loaded:
            return None
        try:
            return library_cost(usage)
        except Exception as exc:  # a price entry it cannot apply: the usage is kept all the same
            log.warning("no price for model %s: %s", usage.model, exc)
            return None

    def known(self, model: str) -> bool:
        """Whether ``model`` has a price (blocking: for ``tgmux check``, not the loop)."""
        if model in self.configured:
            return True
        return self.use_library and library_cost(Usage(model=model)) is not None
