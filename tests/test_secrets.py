"""Secrets never reach the logs, whatever happens (success, auth failure, provider errors)."""

from __future__ import annotations

import logging

import pytest

from tgmux.backend import Notice
from tgmux.backends.bambisleep.simulator import BambiSleepSimulator
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.backends.sensay.simulator import DEMO_REPLICA, SensaySimulator
from tgmux.harness import EngineHarness

LUCY_KEY = "lucy-secret-key-0123456789abcdef"
SENSAY_SECRET = "sensay-org-secret-0123456789abcdef"
BAMBI_KEY = "bambi-bearer-key-0123456789abcdef"


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for secret in secrets:
        assert secret not in text


async def test_no_backend_logs_its_credentials(all_logs: pytest.LogCaptureFixture) -> None:
    async with (
        LucyDreamSimulator(api_keys=[LUCY_KEY]) as lucy,
        SensaySimulator(organization_secret=SENSAY_SECRET) as sensay,
        BambiSleepSimulator(api_keys={BAMBI_KEY: "bambi"}) as bambi,
    ):
        config = f"""
backends:
  lucy: {{type: lucydream, api_key: "{LUCY_KEY}", base_url: "{lucy.base_url}"}}
  lucy_bad: {{type: lucydream, api_key: "{LUCY_KEY}x", base_url: "{lucy.base_url}"}}
  sensay: {{type: sensay, organization_secret: "{SENSAY_SECRET}", user_id: "u",
            replica_uuid: "{DEMO_REPLICA}", base_url: "{sensay.base_url}"}}
  sensay_bad: {{type: sensay, organization_secret: "{SENSAY_SECRET}x", user_id: "u",
                replica_uuid: "{DEMO_REPLICA}", base_url: "{sensay.base_url}"}}
  bambi: {{type: bambisleep, api_key: "{BAMBI_KEY}", base_url: "{bambi.base_url}"}}
  bambi_bad: {{type: bambisleep, api_key: "{BAMBI_KEY}x", base_url: "{bambi.base_url}"}}
default: lucy
admins: [10, 11, 12]
"""
        async with EngineHarness.from_yaml(config) as h:
            for n, name in enumerate(["lucy", "sensay", "bambi"]):
                user = 10 + n
                assert await h.say(f"/backend {name}", user_id=user)
                ok = await h.say("hello", user_id=user)
                assert ok and not any(isinstance(p, Notice) for p in ok), ok
                assert await h.say(f"/backend {name}_bad", user_id=user)
                (failed,) = await h.say("hello", user_id=user)
                assert isinstance(failed, Notice)
    assert_not_logged(all_logs, LUCY_KEY, SENSAY_SECRET, BAMBI_KEY)
