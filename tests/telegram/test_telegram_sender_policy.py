"""The sender's error policy, as a table: an error, what was being sent and how often it was
tried → wait N s / try again after N s / give up with this error / done / skipped."""

from __future__ import annotations

import pytest
from pyrogram import raw
from pyrogram.errors import (
    ChatWriteForbidden,
    FloodPremiumWait,
    FloodWait,
    MessageEmpty,
    MessageIdInvalid,
    MessageNotModified,
    ReplyMessageIdInvalid,
    RpcCallFail,
    RPCError,
    SlowmodeWait,
    UserIsBlocked,
)

from tgmux.telegram.sender import (
    MAX_FLOOD_RETRIES,
    MAX_FLOOD_WAIT,
    MAX_TRANSIENT_RETRIES,
    Attempt,
    ChatUnavailable,
    DeliveryFailed,
    FloodWaitRequired,
    FormattingRefused,
    OutcomeUnknown,
    ReplyGone,
    Verdict,
    error_id,
    retry_policy,
)

MESSAGE = Attempt()  # a new message: never sent twice
REPLY = Attempt(replying=True)  # a new message quoting another
EDIT = Attempt(idempotent=True)  # an edit, a draft, a deletion
MENU = Attempt(idempotent=True, wait_floods=False)  # the command menu: its caller waits
ACTION = Attempt(chat_action=True)  # "typing…": best effort


def tried(attempt: Attempt, *, floods: int = 0, retries: int = 0) -> Attempt:
    return Attempt(idempotent=attempt.idempotent, chat_action=attempt.chat_action,
                   replying=attempt.replying, wait_floods=attempt.wait_floods, floods=floods,
                   retries=retries)


WAIT, RETRY, GIVE_UP, DONE, SKIP = (Verdict.WAIT, Verdict.RETRY, Verdict.GIVE_UP, Verdict.DONE,
                                    Verdict.SKIP)

# (error, attempt, verdict, delay, error raised (type, first arg) or None, flood penalty)
TABLE = [
    # flood waits: waited out (the chat is slowed by the wait whatever the verdict)
    pytest.param(FloodWait(value=3), MESSAGE, WAIT, 3.0, None, 3.0, id="flood-message"),
    pytest.param(FloodWait(value=3), EDIT, WAIT, 3.0, None, 3.0, id="flood-edit"),
    pytest.param(SlowmodeWait(value=5), MESSAGE, WAIT, 5.0, None, 5.0, id="slowmode"),
    pytest.param(FloodPremiumWait(value=2), MESSAGE, WAIT, 2.0, None, 2.0, id="flood-premium"),
    pytest.param(FloodWait(value=int(MAX_FLOOD_WAIT)), MESSAGE, WAIT, MAX_FLOOD_WAIT, None,
                 MAX_FLOOD_WAIT, id="flood-at-the-threshold"),
    pytest.param(FloodWait(value=int(MAX_FLOOD_WAIT) + 1), MESSAGE, GIVE_UP, 0.0,
                 (DeliveryFailed, "FLOOD_WAIT_X"), MAX_FLOOD_WAIT + 1,
                 id="flood-above-the-threshold"),
    pytest.param(FloodWait(value=3), tried(MESSAGE, floods=MAX_FLOOD_RETRIES - 1), WAIT, 3.0,
                 None, 3.0, id="flood-fifth-wait"),
    pytest.param(FloodWait(value=3), tried(MESSAGE, floods=MAX_FLOOD_RETRIES), GIVE_UP, 0.0,
                 (DeliveryFailed, "FLOOD_WAIT_X"), 3.0, id="flood-sixth-wait"),
    pytest.param(FloodWait(value=30), MENU, GIVE_UP, 0.0, (FloodWaitRequired, "FLOOD_WAIT_X"),
                 30.0, id="flood-caller-waits"),
    pytest.param(FloodWait(value=3), ACTION, SKIP, 0.0, None, 3.0, id="flood-chat-action"),
    pytest.param(FloodWait(value=None), MESSAGE, GIVE_UP, 0.0, (DeliveryFailed, "FLOOD_WAIT_X"),
                 None, id="flood-without-seconds"),
    # nothing to change: success
    pytest.param(MessageNotModified(), EDIT, DONE, 0.0, None, None, id="not-modified"),
    pytest.param(MessageNotModified(), ACTION, DONE, 0.0, None, None, id="not-modified-action"),
    # the chat cannot be reached: the reply stops
    pytest.param(UserIsBlocked(), MESSAGE, GIVE_UP, 0.0, (ChatUnavailable, "USER_IS_BLOCKED"),
                 None, id="blocked"),
    pytest.param(ChatWriteForbidden(), EDIT, GIVE_UP, 0.0,
                 (ChatUnavailable, "CHAT_WRITE_FORBIDDEN"), None, id="write-forbidden"),
    pytest.param(UserIsBlocked(), ACTION, SKIP, 0.0, None, None, id="blocked-chat-action"),
    # the message replied to is gone: the caller sends without the reply
    pytest.param(ReplyMessageIdInvalid(), REPLY, GIVE_UP, 0.0,
                 (ReplyGone, "REPLY_MESSAGE_ID_INVALID"), None, id="reply-gone"),
    pytest.param(ReplyMessageIdInvalid(), MESSAGE, GIVE_UP, 0.0,
                 (DeliveryFailed, "REPLY_MESSAGE_ID_INVALID"), None, id="reply-gone-not-replying"),
    # other refusals: this request failed, the reply goes on
    pytest.param(MessageIdInvalid(), EDIT, GIVE_UP, 0.0, (DeliveryFailed, "MESSAGE_ID_INVALID"),
                 None, id="edit-of-a-gone-message"),
    pytest.param(MessageEmpty(), MESSAGE, GIVE_UP, 0.0, (DeliveryFailed, "MESSAGE_EMPTY"), None,
                 id="refused"),
    # 5xx: a new message may have been sent (it is not sent again); an edit is retried
    pytest.param(RpcCallFail(), MESSAGE, GIVE_UP, 0.0, (OutcomeUnknown, "RPC_CALL_FAIL"), None,
                 id="5xx-message"),
    pytest.param(RpcCallFail(), REPLY, GIVE_UP, 0.0, (OutcomeUnknown, "RPC_CALL_FAIL"), None,
                 id="5xx-reply"),
    pytest.param(RpcCallFail(), EDIT, RETRY, 1.0, None, None, id="5xx-edit"),
    pytest.param(RpcCallFail(), tried(EDIT, retries=1), RETRY, 2.0, None, None,
                 id="5xx-edit-second-retry"),
    pytest.param(RpcCallFail(), tried(EDIT, retries=2), RETRY, 4.0, None, None,
                 id="5xx-edit-third-retry"),
    pytest.param(RpcCallFail(), tried(EDIT, retries=MAX_TRANSIENT_RETRIES), GIVE_UP, 0.0,
                 (OutcomeUnknown, "RPC_CALL_FAIL"), None, id="5xx-edit-retries-spent"),
    pytest.param(RpcCallFail(), ACTION, SKIP, 0.0, None, None, id="5xx-chat-action"),
    # no answer at all: the same
    pytest.param(TimeoutError("Request timed out"), MESSAGE, GIVE_UP, 0.0,
                 (OutcomeUnknown, "TimeoutError"), None, id="timeout-message"),
    pytest.param(TimeoutError("Request timed out"), EDIT, RETRY, 1.0, None, None,
                 id="timeout-edit"),
    pytest.param(TimeoutError(), MENU, RETRY, 1.0, None, None, id="timeout-menu"),
    pytest.param(ConnectionResetError(), tried(EDIT, retries=MAX_TRANSIENT_RETRIES), GIVE_UP,
                 0.0, (OutcomeUnknown, "ConnectionResetError"), None,
                 id="connection-lost-retries-spent"),
    pytest.param(OSError("network down"), MESSAGE, GIVE_UP, 0.0, (OutcomeUnknown, "OSError"),
                 None, id="os-error-message"),
    pytest.param(TimeoutError(), ACTION, SKIP, 0.0, None, None, id="timeout-chat-action"),
    # not Telegram's error (a bug, an unknown request): logged, never a crash
    pytest.param(ValueError("bug"), MESSAGE, GIVE_UP, 0.0, (DeliveryFailed, "ValueError"), None,
                 id="bug"),
    pytest.param(ValueError("bug"), EDIT, GIVE_UP, 0.0, (DeliveryFailed, "ValueError"), None,
                 id="bug-edit"),
    pytest.param(ValueError("bug"), ACTION, SKIP, 0.0, None, None, id="bug-chat-action"),
]


@pytest.mark.parametrize(("error", "attempt", "verdict", "delay", "raised", "flood"), TABLE)
def test_retry_policy(error: Exception, attempt: Attempt, verdict: Verdict, delay: float,
                      raised: tuple[type[Exception], str] | None, flood: float | None) -> None:
    decision = retry_policy(error, attempt)
    assert decision.verdict is verdict
    assert decision.delay == delay
    assert decision.flood == flood
    if raised is None:
        assert decision.error is None
    else:
        kind, first = raised
        assert type(decision.error) is kind
        assert decision.error.args[0] == first
    if isinstance(decision.error, FloodWaitRequired):
        assert decision.error.seconds == flood


def _refused(error: str) -> Exception:
    """Telegram's error as kurigram raises it (a generic BadRequest for one it does not know)."""
    try:
        RPCError.raise_it(raw.types.RpcError(error_code=400, error_message=error),
                          raw.functions.messages.SendMessage)
    except RPCError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize("error", ["ENTITY_BOUNDS_INVALID", "ENTITY_TEXTURL_INVALID",
                                   "ENTITIES_TOO_LONG", "ENTITY_MENTION_USER_INVALID"])
@pytest.mark.parametrize("attempt", [MESSAGE, REPLY, EDIT])
def test_refused_formatting_gives_up_for_a_plain_resend(error: str, attempt: Attempt):
    exc = _refused(error)
    assert error_id(exc) == error  # also for errors kurigram has no class for
    decision = retry_policy(exc, attempt)
    assert decision.verdict is Verdict.GIVE_UP
    assert isinstance(decision.error, FormattingRefused) and decision.error.args == (error,)
