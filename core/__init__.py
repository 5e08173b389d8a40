"""tgmux: one Telegram account in front of many AI chat providers, routed per chat by YAML."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tgmux")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from tgmux.hooks import hookimpl

__all__ = ["__version__", "hookimpl"]
