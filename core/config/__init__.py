"""The YAML config: parsing (:mod:`~tgmux.config.parse`: YAML with line numbers, ``${VAR}``
expansion), the schema (:mod:`~tgmux.config.schema`) and validation against the backend types
it is handed (:mod:`~tgmux.config.validate`).

Loading a config file *and* the plugins it names is :mod:`tgmux.bootstrap`'s job.
"""

from tgmux.backend import Strict
from tgmux.config.parse import KeyPath, ParsedConfig, parse_config_text, read_config_file
from tgmux.config.schema import (
    AccountConfig,
    EngineConfig,
    FloodLimits,
    GroupTrigger,
    RouteConfig,
    RouteMatch,
    TelegramConfig,
    TgmuxConfig,
)
from tgmux.config.validate import MAIN, SECRET_KEY, Account, Config, validate_config

__all__ = [
    "MAIN",
    "SECRET_KEY",
    "Account",
    "AccountConfig",
    "Config",
    "EngineConfig",
    "FloodLimits",
    "GroupTrigger",
    "KeyPath",
    "ParsedConfig",
    "RouteConfig",
    "RouteMatch",
    "Strict",
    "TelegramConfig",
    "TgmuxConfig",
    "parse_config_text",
    "read_config_file",
    "validate_config",
]
