"""``tgmux run`` does not load the fake Telegram (a test kit). (No import cycle anywhere, and
who imports the fake: tests/test_architecture.py.)"""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_tgmux_run_does_not_load_the_fake() -> None:
    result = python(
        "import sys, tgmux.telegram, tgmux.telegram.run, tgmux.cli\n"
        # (not just 'fake' in the name: pyrogram itself has faketls modules)
        "loaded = sorted(m for m in sys.modules if m.startswith('tgmux') and 'fake' in m)\n"
        "assert not loaded, loaded\n"
        "assert 'tgmux.telegram.simulate' not in sys.modules\n")
    assert result.returncode == 0, result.stderr
