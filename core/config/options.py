"""A backend's settings with the options a route (or a persona) overrides: only the keys the
backend type lets a route set (``Backend.route_options``), validated by its settings model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tgmux.backend import Backend, BackendSettings
from tgmux.config.parse import KeyPath, ParsedConfig
from tgmux.config.problems import pydantic_problems


def overridden(parsed: ParsedConfig, path: KeyPath, base: BackendSettings,
               backend_type: type[Backend], options: Mapping[str, Any]
               ) -> tuple[BackendSettings | None, list[str]]:
    """``base`` with ``options`` (written at ``path``) over it, and every problem: a key the
    backend does not let a route set, a value its settings refuse (None then)."""
    problems: list[str] = []
    allowed = backend_type.route_options
    for key in options:
        if key == "type" or (allowed is not None and key not in allowed):
            hint = ", ".join(sorted(allowed)) if allowed is not None else "none"
            problems.append(f"{parsed.where((*path, key))}: {key!r} cannot be set per route "
                            f"for {base.type} (can: {hint})")
    overrides = {k: v for k, v in options.items()
                 if k != "type" and (allowed is None or k in allowed)}
    try:
        return type(base).model_validate({**base.model_dump(), **overrides}), problems
    except ValidationError as exc:
        return None, problems + pydantic_problems(exc, parsed, path)
