"""Registering the ``bambisleep`` backend's webhook with the provider, once.

The API can register a webhook but not list or delete one, and every registration delivers
every event once more. So tgmux registers once per (account, URL, events, secret) and remembers
it in the backend's persistent key-value store; a POST that may have reached the provider is
never repeated automatically. A refusal that proves nothing was registered (a 503, a connection
refused, a 429) is tried again in the background, with a doubling wait; a signed delivery that
arrives first proves the registration exists and ends the retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Literal

from tgmux.backend import KeyValue
from tgmux.errors import BackendError

from .client import BambiSleepClient, Webhook, nothing_was_done
from .settings import BambiSleepSettings

log = logging.getLogger("tgmux.backends.bambisleep")

#: The longest wait between two registration attempts, in seconds.
MAX_RETRY_DELAY = 300.0

Outcome = Literal["done", "retry", "refused", "uncertain"]


class WebhookRegistration:
    """The webhook of one backend instance: :meth:`ensure` at start, :meth:`confirm` on each
    verified delivery, :meth:`aclose` at shutdown.

    ``webhook_id`` is the provider's id (None when unknown, e.g. confirmed by a delivery);
    ``registered`` says the registration is known to exist; ``task`` is the background retry
    (None unless the first attempt was refused in a way that proves nothing was registered).
    """

    def __init__(self, client: BambiSleepClient, settings: BambiSleepSettings, kv: KeyValue,
                 *, name: str) -> None:
        if settings.webhook is None:
            raise ValueError("the settings have no webhook section")
        self.client = client
        self.settings = settings
        self.hook = settings.webhook
        self.kv = kv
        self.name = name
        self.webhook_id: str | None = None
        self.registered = False
        self.task: asyncio.Task[None] | None = None

    def key(self) -> str:
        """The key-value store key of this registration (no secret in it, only a hash)."""
        hook = self.hook
        material = json.dumps({
            "base_url": self.settings.base_url,
            "account": self.settings.identity,
            "url": hook.public_url,
            "events": sorted(hook.events),
            "secret": hashlib.sha256(hook.secret.get_secret_value().encode()).hexdigest(),
        }, sort_keys=True)
        return "webhook:" + hashlib.sha256(material.encode()).hexdigest()[:32]

    async def ensure(self) -> None:
        """Registered already (remembered)? Else register, retrying in the background when
        that is safe."""
        stored = await self.kv.get(self.key())
        if stored is not None:
            record = json.loads(stored)
            self.webhook_id = record.get("id")
            self.registered = True
            log.info("%s: webhook %s already registered (%s); not registering again",
                     self.name, self.webhook_id or "(id unknown)", record.get("how"))
            return
        if await self.register() == "retry":
            self.task = asyncio.create_task(self._keep_registering())

    async def confirm(self) -> None:
        """A correctly signed delivery arrived: it proves the registration exists (e.g. after
        a registration whose answer was lost): remember it, register no more."""
        if not self.registered:
            await self._remember(None, "confirmed by a delivery")
            log.info("%s: webhook registration confirmed by a delivery", self.name)

    async def aclose(self) -> None:
        """Stop retrying."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _remember(self, webhook_id: str | None, how: str) -> None:
        hook = self.hook
        self.webhook_id = webhook_id
        self.registered = True
        await self.kv.set(self.key(), json.dumps({
            "id": webhook_id, "url": hook.public_url, "events": list(hook.events), "how": how,
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }))

    async def register(self) -> Outcome:
        """One ``POST /webhooks``. "retry" only when the error proves nothing was
        registered and a later try may work."""
        hook = self.hook
        try:
            registered: Webhook = await self.client.register_webhook(
                hook.public_url, list(hook.events), hook.secret.get_secret_value()
            )
        except BackendError as exc:
            if not nothing_was_done(exc):
                log.error(
                    "%s: webhook registration (POST /webhooks) failed after it may have reached "
                    "BambiSleep (%s). tgmux does not send it again: a second registration would "
                    "deliver every event twice. If events arrive, nothing is to be done (the "
                    "first one confirms the registration); if none do, restart tgmux to "
                    "register again.", self.name, exc.log_text())
                return "uncertain"
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                log.error("%s: webhook registration refused (fix the config): %s", self.name,
                          exc.log_text())
                return "refused"
            log.warning("%s: webhook registration not accepted, will try again: %s",
                        self.name, exc.log_text())
            return "retry"
        await self._remember(registered.id, "registered")
        log.info("%s: webhook %s registered for %s", self.name, registered.id or "",
                 ", ".join(registered.events))
        return "done"

    async def _keep_registering(self) -> None:
        delay = self.hook.retry_delay
        while True:
            await asyncio.sleep(delay)
            if self.registered or await self.register() != "retry":
                return
            delay = min(delay * 2, MAX_RETRY_DELAY)
