"""The fake Telegram, a test kit: the real Pyrogram ``Client`` with only its network replaced.

Used by ``tgmux simulate`` (:mod:`tgmux.telegram.simulate`), the ``tgmux.testing`` pytest
plugin and tgmux's own tests; never by ``tgmux run`` (nothing in the frontend imports it).

:class:`FakeTelegram` plays Telegram's servers. :meth:`FakeTelegram.attach` (or
:func:`offline_client`) replaces a client's ``connect``, ``disconnect`` and ``get_session`` so
that every raw request reaches :meth:`FakeTelegram.answer` instead of a socket; everything above
that — ``start()``/``stop()``, update parsing, the dispatcher, handlers, ``send_message``,
``edit_message_text``, ``send_message_draft``, media uploads — is Pyrogram's own code.

Incoming messages (:meth:`FakeTelegram.incoming`) are logged in the update log and pushed in
the form Telegram uses (compact ``updateShortMessage`` for a plain text from a known peer, a full
``Updates`` otherwise; or, when asked, not at all — a gap — or as ``updatesTooLong``),
round-tripped through the wire format (as if they came off the network) and handed to
``client.handle_updates``. The log keeps the account's pts/qts/seq/date and each channel's pts
and answers ``updates.getState``, ``getDifference`` (sliced, too long) and
``getChannelDifference``. Messages that arrive while the client is not connected are served from
it when it starts again (catch-up). Pushes and answers can be delayed (latency, seeded), the
connection dropped, the session revoked or the account banned, and the server side kept in a
state file across processes.

Every outgoing request that does something visible is recorded as an *action*: a dict in the
``tgmux simulate`` output format (see docs/simulate.md), e.g.
``{"action": "send_message", "chat_id": 42, "message_id": 1001, "text": "hi"}``; with
:meth:`FakeTelegram.file_replies` each is also filed under the message whose reply it belongs
to. Requests the fake does not know raise :class:`UnknownRequest` (fail loudly). Faults are
injected with :meth:`FakeTelegram.fail` (``FLOOD_WAIT_3``, ``USER_IS_BLOCKED``,
``RPC_CALL_FAIL``, ``TIMEOUT``..., before or after the request took effect). As with the real
network, the client's session retries a request that timed out or met a server error (the same
request, so the same ``random_id``), and the fake, as Telegram does, sends a message only once
per ``random_id``.

The modules, each one purpose:

- :mod:`~tgmux.telegram.fake.session` — the fake network under a real ``Client``
  (:class:`FakeSession`, :func:`offline_client`);
- :mod:`~tgmux.telegram.fake.updates` — what the fake knows (users, chats, messages) and the
  raw updates, peers, entities and media it builds;
- :mod:`~tgmux.telegram.fake.handlers` — its answers to requests (``_on_messages_SendMessage``...);
- :mod:`~tgmux.telegram.fake.log` — the update log: pts, seq, differences;
- :mod:`~tgmux.telegram.fake.state` — the server side in a file (``--telegram-state``);
- :mod:`~tgmux.telegram.fake.faults` — injected faults and error codes;
- :mod:`~tgmux.telegram.fake.server` — :class:`FakeTelegram`: the record of actions, faults,
  the request dispatch.
"""

from tgmux.telegram.fake.faults import HANG, TIMEOUT, Fault, UnknownRequest
from tgmux.telegram.fake.flood import FloodModel
from tgmux.telegram.fake.handlers import chat_action_name
from tgmux.telegram.fake.server import FakeTelegram, Request, replying_to
from tgmux.telegram.fake.session import FakeSession, offline_client
from tgmux.telegram.fake.updates import CHANNEL_ID_BASE, check_chat, infer_chat_type

__all__ = [
    "CHANNEL_ID_BASE",
    "HANG",
    "TIMEOUT",
    "FakeSession",
    "FakeTelegram",
    "Fault",
    "FloodModel",
    "Request",
    "UnknownRequest",
    "chat_action_name",
    "check_chat",
    "infer_chat_type",
    "offline_client",
    "replying_to",
]
