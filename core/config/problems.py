"""pydantic's validation errors as the config's one-line problems (``file:line: what``)."""

from __future__ import annotations

from pydantic import ValidationError

from tgmux.config.parse import KeyPath, ParsedConfig
from tgmux.redact import SECRET_KEY, redact_urls


def pydantic_problems(exc: ValidationError, parsed: ParsedConfig, prefix: KeyPath) -> list[str]:
    """pydantic's errors as ``file:line: key.path: what`` lines, secrets not shown."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            problems.append(f"{parsed.where(path)}: unknown key {path[-1]!r}")
        elif kind == "missing":
            problems.append(f"{parsed.where(path)}: required key is missing")
        else:
            got = err.get("input")
            if isinstance(got, dict | list):
                shown = ""
            elif SECRET_KEY.search(str(path[-1] if path else "")) or path[-1:] == ("proxy",):
                # (a proxy URL that does not parse may hide its password from redact_urls)
                shown = f" (got a {type(got).__name__}; value not shown)"
            else:
                shown = f" (got {redact_urls(repr(got))})"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{parsed.where(path)}: {msg}{shown}")
    return problems
