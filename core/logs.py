"""Logging for every command: ``log_level`` and ``log_format`` (``text`` or ``json``).

JSON is one object a line with ``ts``, ``level``, ``logger``, ``msg``; a line logged while a
message is handled also has ``account`` and ``chat_id``, one about a provider request
``backend`` and, when the provider gave one, ``request_id``. Both formats go through the same
redaction (:func:`tgmux.redact.redact`: credentials in URLs and every secret value of the
config, in the message, exception and stack text), and the chatty libraries are kept quiet
whatever the level.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from tgmux.redact import redact

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "log_fields", "setup_logging"]

#: Fields a line gets from where it was logged (set by the engine per message and backend).
log_fields: ContextVar[dict[str, Any] | None] = ContextVar("tgmux_log_fields", default=None)

CONTEXT_FIELDS = ("account", "chat_id", "backend", "request_id")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Context(logging.Filter):
    """Adds the context fields to each record and redacts its message once."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (log_fields.get() or {}).items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        message = redact(record.getMessage())
        record.msg, record.args = message, None
        return True


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, the whole line redacted (the exception's text too)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (replacing what was set up before)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "tgmux", False):
            root.removeHandler(old)
    handler.tgmux = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # httpx logs full URLs at INFO; websockets logs handshake headers (cookies) and frames
    # (auth tokens) at DEBUG; aiosqlite logs every statement with its parameters (users'
    # message texts) at DEBUG. Keep them quiet whatever log_level says.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
