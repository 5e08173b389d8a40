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


# -- every configured secret value is masked, wherever it appears ------------------------------

ECHOED_KEY = "lucy-echoed-key-0123456789abcdef"


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_provider_that_repeats_the_api_key_is_masked_in_the_logs(
    fmt: str, restore_logging: None, capsys: pytest.CaptureFixture[str],
) -> None:
    from tgmux.logs import setup_logging

    async with LucyDreamSimulator(api_keys=[ECHOED_KEY]) as lucy:
        lucy.inject(status=401, body={"success": False,
                                      "message": f"invalid API key {ECHOED_KEY}"})
        config = f"""
backends:
  lucy: {{type: lucydream, api_key: "{ECHOED_KEY}", base_url: "{lucy.base_url}"}}
default: lucy
"""
        async with EngineHarness.from_yaml(config) as h:
            setup_logging("DEBUG", fmt)
            (failed,) = await h.say("hello", user_id=1)
            try:
                raise RuntimeError(f"boom with {ECHOED_KEY} inside")
            except RuntimeError:
                logging.getLogger("tgmux.test").exception("failed: %s", ECHOED_KEY)
    err = capsys.readouterr().err
    assert "lucy: POST" in err and "kind=auth" in err and "boom with" in err
    assert ECHOED_KEY not in err
    assert "invalid API key ***" in err
    assert ECHOED_KEY not in failed.text


def test_every_kind_of_configured_secret_is_masked() -> None:
    from tgmux.bootstrap import load_config_text
    from tgmux.errors import AuthError
    from tgmux.redact import redact

    token = "123456789:" + "A" * 35
    session = "sessionsecret" * 3
    config = f"""
telegram: {{api_id: 1, api_hash: "0123456789abcdef0123456789abcdef", bot_token: "{token}"}}
store: "postgresql://tgmux:dsn%2Fpass@db:5432/tgmux"
backends:
  lucy: {{type: lucydream, api_key: "{LUCY_KEY}"}}
  sensay: {{type: sensay, organization_secret: "{SENSAY_SECRET}", user_id: "u",
            replica_uuid: "{DEMO_REPLICA}"}}
  bambi:
    type: bambisleep
    username: bambi
    password: "bambi-password-1"
    webhook: {{public_url: "http://127.0.0.1:1/h", secret: "hook-secret-1"}}
  proxied: {{type: openai, base_url: "http://user:proxy-pass-1@127.0.0.1:1/v1",
             api_key: "{session}", model: m}}
  short: {{type: lucydream, api_key: "abc"}}
default: lucy
"""
    load_config_text(config, env={})
    for secret in (token, "0123456789abcdef0123456789abcdef", "dsn%2Fpass", "dsn/pass",
                   LUCY_KEY, SENSAY_SECRET, "bambi-password-1", "hook-secret-1",
                   "proxy-pass-1", session):
        assert redact(f"a {secret} b") == "a *** b", secret
    assert redact("abc and lucy and tgmux") == "abc and lucy and tgmux"  # too short / names
    error = AuthError("x", user_message=f"The provider said: bad key {LUCY_KEY}")
    assert error.user_message == "The provider said: bad key ***"
    # a reload: the new config's secrets are masked, the old ones still (they may be in use)
    load_config_text(config.replace(LUCY_KEY, "a-new-lucy-key-42"), env={})
    assert redact(f"{LUCY_KEY} a-new-lucy-key-42") == "*** ***"


def test_cli_errors_mask_configured_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    from tgmux.cli import _fail, _run
    from tgmux.errors import ConfigError, TgmuxError
    from tgmux.redact import remember_secrets

    remember_secrets(["cli-secret-0123456789"])

    async def fails() -> None:
        raise TgmuxError("the store refused cli-secret-0123456789")

    with pytest.raises(SystemExit):
        _fail(ConfigError("c.yaml:1: x: cli-secret-0123456789 is wrong"))
    with pytest.raises(SystemExit):
        _run(fails())
    err = capsys.readouterr().err
    assert "c.yaml:1: x: *** is wrong" in err and "the store refused ***" in err
    assert "cli-secret-0123456789" not in err
