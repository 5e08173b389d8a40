"""Every YAML example a user may copy from README.md or docs/ parses as printed, uses only keys
tgmux knows, and — when it is a whole config (it has ``backends:``) — validates."""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

import pytest
import yaml

from tgmux.bootstrap import load_text
from tgmux.config import TgmuxConfig
from tgmux.hooks import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.M | re.S)


def examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 2
            found.append((f"{page.relative_to(ROOT)}:{line}", m.group(1)))
    return found


class PlausibleEnv(dict):
    """Any ``${VAR}`` an example names gets a value of the right shape."""

    def get(self, name: str, default: object = None) -> str:
        if "UUID" in name:
            return str(uuid.UUID(int=1))
        if "STORE" in name:
            return "memory://"
        if name.endswith("SESSION"):
            return base64.urlsafe_b64encode(bytes(271)).decode().rstrip("=")
        if name.endswith(("_ID", "_PORT")):
            return "12345"
        if name.endswith("_HASH"):  # Telegram's api_hash: 32 hex digits
            return "0123456789abcdef" * 2
        if name.endswith("BOT_TOKEN"):  # @BotFather's: the bot's number, ':', 35 characters
            return f"{sum(map(ord, name))}:" + "x" * 35  # one bot per variable
        return "x" * 12


def test_there_are_examples_to_check() -> None:
    assert len(examples()) >= 10


@pytest.mark.parametrize(("where", "text"), examples(), ids=[w for w, _ in examples()])
def test_yaml_example(where: str, text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{where}: does not parse as printed: {str(exc).splitlines()[0]}")
    if not isinstance(data, dict) or not set(data) & set(TgmuxConfig.model_fields):
        return  # not a tgmux config (a compose file, a Kubernetes manifest)
    # The bundled plugins an example names are loaded: their sections are known keys.
    bundled = [p for p in data.get("plugins") or []
               if isinstance(p, str) and p.startswith("tgmux.plugins.")]
    sections = build_plugin_manager(bundled).plugin_settings_models()
    unknown = set(data) - set(TgmuxConfig.model_fields) - set(sections)
    assert not unknown, f"{where}: keys tgmux does not know: {sorted(unknown)}"
    if "backends" not in data:
        return
    if "plugins" in data:  # others are plugins the reader would write
        data["plugins"] = bundled
    if "default" not in data and "routes" not in data:
        data["default"] = next(iter(data["backends"]))
    load_text(yaml.safe_dump(data, sort_keys=False), source=where, env=PlausibleEnv())
