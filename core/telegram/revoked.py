"""Telegram refusing an account for good while it runs: the session revoked (logged out,
terminated from another device, the bot token revoked in @BotFather) or the account banned or
deleted. What that looks like (the 401 errors) and what to tell the operator."""

from __future__ import annotations

from pyrogram.errors import RPCError, Unauthorized

__all__ = ["ACCOUNT_ERRORS", "AccountRevoked", "error_code", "is_account_error",
           "revocation_advice"]

#: The errors that mean the account cannot be used any more (401 and the ban).
ACCOUNT_ERRORS = frozenset({"AUTH_KEY_UNREGISTERED", "AUTH_KEY_INVALID", "SESSION_REVOKED",
                            "SESSION_EXPIRED", "USER_DEACTIVATED", "USER_DEACTIVATED_BAN",
                            "AUTH_KEY_PERM_EMPTY"})


class AccountRevoked(Exception):
    """Telegram refuses the account: session revoked, token revoked, account banned."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def error_code(exc: BaseException) -> str | None:
    """Telegram's error string of an RPC error (``AUTH_KEY_UNREGISTERED``), else None."""
    if isinstance(exc, RPCError):
        return str(exc.ID or exc.NAME)
    return None


def is_account_error(exc: BaseException) -> bool:
    return isinstance(exc, Unauthorized) or error_code(exc) in ACCOUNT_ERRORS


def revocation_advice(code: str, *, is_bot: bool) -> str:
    """What happened and what to do, for one log line."""
    if code in ("USER_DEACTIVATED_BAN", "USER_DEACTIVATED"):
        what = "banned" if code.endswith("BAN") else "deleted"
        return (f"Telegram says this account was {what} ({code}): it cannot be used any more; "
                "remove it from the config or log in another account with `tgmux login`")
    if is_bot:
        return (f"Telegram no longer accepts this bot's session ({code}): the bot token was "
                "revoked in @BotFather (or the bot was logged out); set telegram.bot_token to "
                "the token @BotFather shows now and start tgmux again")
    return (f"Telegram ended this account's session ({code}: logged out or terminated from "
            "another device); run `tgmux login` again and set session_string to the new string")
