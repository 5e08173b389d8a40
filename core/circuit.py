"""Circuit breakers, one per backend instance and process.

``closed``: calls go through. After ``failures`` failed turns in a row: ``open`` for
``cooldown`` seconds — calls fail at once (:class:`tgmux.errors.CircuitOpenError`), so a
fallback chain moves on without waiting for timeouts. After the cooldown: ``half_open`` — one
probe turn is let through; its success closes the circuit, its failure opens it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Circuit"]

log = logging.getLogger("tgmux.circuit")

#: For the metric ``tgmux_circuit_state`` (0 closed, 1 half open, 2 open).
STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class Circuit:
    def __init__(self, name: str, failures: int, cooldown: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.failures = failures
        self.cooldown = cooldown
        self.state = "closed"
        self.failed_in_a_row = 0
        self.last_error: str | None = None
        self.last_error_at = 0.0  # on the clock
        self._clock = clock
        self._opened_at = 0.0
        self._probing = False
        self._on_change = on_change

    def _set(self, state: str, why: str) -> None:
        if state != self.state:
            self.state = state
            log.warning("backend %s: circuit %s (%s)", self.name, state.replace("_", " "), why)
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        """Whether a turn may go to the backend now (an open circuit past its cooldown lets
        one probe through)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self._opened_at < self.cooldown:
                return False
            self._set("half_open", f"cooldown of {self.cooldown:g} s over: one probe")
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through."""
        return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    def since_last_error(self) -> float | None:
        """Seconds since the last failed turn (None: none yet)."""
        return None if self.last_error is None else self._clock() - self.last_error_at

    def abandoned(self) -> None:
        """A turn let through ended without telling whether the backend works (the delivery
        stopped, or a stop cancelled it): a half-open circuit lets the next turn probe."""
        self._probing = False

    def succeeded(self) -> None:
        self._probing = False
        self.failed_in_a_row = 0
        self._set("closed", "a turn succeeded")

    def failed(self, kind: str) -> None:
        self._probing = False
        self.last_error, self.last_error_at = kind, self._clock()
        self.failed_in_a_row += 1
        if self.state == "half_open" or self.failed_in_a_row >= self.failures:
            self._opened_at = self._clock()
            self._set("open", f"{self.failed_in_a_row} failed turn(s) in a row, last {kind}; "
                              f"skipped for {self.cooldown:g} s")
