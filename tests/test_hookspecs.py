"""Every extension point is documented where plugin authors look."""

from __future__ import annotations

import inspect
from pathlib import Path

from tgmux import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def test_every_hook_has_a_docstring_and_a_docs_section() -> None:
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("tgmux_")]
    assert len(hooks) >= 12
    text = DOCS.read_text()
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 60, f"{name} needs a docstring saying when, with what, returning what"
        assert f"## `{name}`" in text, f"docs/hooks.md has no section for {name}"
