"""Faults in the deployment files a user copies: the Kubernetes example (docs/deploy.md) must
roll out with a standby and report health right, compose.yaml must pass what the example
configs name (and a password that would break a URL), and both must agree with the Dockerfile
(its user, its data and config directories, the ops port). docs/reliability.md lists them."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tgmux.harness import EngineHarness
from tgmux.ops import start_ops_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy.md"
BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.M | re.S)
#: What TelegramAccount.ready says on a standby (tgmux.telegram.app)
STANDING_BY = "not running here (standing by, or not started)"


def deploy_examples() -> list[Any]:
    return [yaml.safe_load(m.group(1)) for m in BLOCK.finditer(DEPLOY.read_text())]


def kubernetes_deployment() -> dict[str, Any]:
    (found,) = [d for d in deploy_examples() if isinstance(d, dict) and d.get("kind") ==
                "Deployment"]
    return found


def compose_config() -> str:
    """The config docs/deploy.md gives for compose (the one whose store is ${TGMUX_STORE})."""
    (found,) = [m.group(1) for m in BLOCK.finditer(DEPLOY.read_text())
                if "${TGMUX_STORE}" in m.group(1)]
    return found


class Dockerfile:
    def __init__(self) -> None:
        self.text = (ROOT / "Dockerfile").read_text()

    def one(self, pattern: str) -> str:
        (found,) = re.findall(pattern, self.text, re.M)
        return found

    @property
    def uid(self) -> int:
        return int(self.one(r"useradd .*--uid (\d+)"))

    @property
    def gid(self) -> int:
        return int(self.one(r"groupadd .*--gid (\d+)"))

    @property
    def user(self) -> str:
        return self.one(r"^USER (\S+)$")

    @property
    def volume(self) -> str:
        return self.one(r'^VOLUME \["([^"]+)"\]$')

    @property
    def config_file(self) -> str:
        return self.one(r"TGMUX_CONFIG=(\S+)")


async def get(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status


async def healthcheck(tmp_path: Path, listen: str) -> int:
    """``tgmux healthcheck`` for a config whose server listens on ``listen`` (in a child
    process: the server it asks runs on this event loop)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"server: {{listen: '{listen}'}}\n")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "healthcheck", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with asyncio.timeout(60):
        return await child.wait()


async def test_the_kubernetes_example_is_ready_on_a_standby_and_rolls_out(tmp_path: Path) -> None:
    deployment = kubernetes_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] == 2  # one runs the accounts, one stands by
    (container,) = spec["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["port"] in port and liveness["httpGet"]["port"] in port
    # A real ops server of a process that stands by (its account runs elsewhere): what the
    # probes ask must answer 200 there, or the standby is never ready, the Deployment shows
    # 1/2 forever and a rollout (which waits for every new pod to be ready) never finishes.
    listen = yaml.safe_load(compose_config())["server"]["listen"]
    assert listen.endswith(f":{port[readiness['httpGet']['port']]}")  # the port it listens on
    config = ('store: "memory://"\nbackends:\n  e: {type: echo}\ndefault: e\n'
              "server: {listen: 127.0.0.1:0}\n")
    async with EngineHarness.from_yaml(config) as h:
        server = await start_ops_server(h.config, h.engine)
        assert server is not None

        async def standing_by() -> str:
            return STANDING_BY

        server.add_check("account main", standing_by)  # as tgmux run adds it
        base = f"http://127.0.0.1:{server.port}"
        try:
            assert await get(base + "/readyz") == 503  # by design: this pod does not serve
            assert await get(base + readiness["httpGet"]["path"]) == 200
            assert await get(base + liveness["httpGet"]["path"]) == 200
            if "startupProbe" in container:
                assert await get(base + container["startupProbe"]["httpGet"]["path"]) == 200
            # compose and `docker run`: the image's HEALTHCHECK passes on a standby too
            assert '["tgmux", "healthcheck"]' in Dockerfile().one(r"^[ \t]+CMD (.*)$")
            assert await healthcheck(tmp_path, f"127.0.0.1:{server.port}") == 0
        finally:
            await server.stop()
    # the rollout: a new pod (a standby) comes up before an old one goes, or all are replaced
    strategy = spec.get("strategy", {"type": "RollingUpdate"})
    if strategy["type"] == "RollingUpdate":
        assert strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0
    else:
        assert strategy == {"type": "Recreate"}
    # replies are finished within telegram.shutdown_timeout (20 s) of SIGTERM, then a margin
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > 20


def test_the_kubernetes_example_runs_as_the_images_user_with_nothing_but_the_database() -> None:
    docker = Dockerfile()
    pod = kubernetes_deployment()["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsUser"] == docker.uid == 10001
    assert security["runAsGroup"] == docker.gid == 10001
    assert security["runAsNonRoot"] is True
    # runAsNonRoot can check a numeric USER only (a name: "cannot verify user is non-root")
    assert docker.user == f"{docker.uid}:{docker.gid}"
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # no shared data volume (a ReadWriteMany claim most clusters cannot give): the session
    # and the update position are in PostgreSQL, a standby on another node needs nothing else
    assert set(mounts) == {"config"}
    assert [volume["name"] for volume in pod["volumes"]] == ["config"]
    assert docker.config_file == mounts["config"] + "/config.yaml"
    # the working directory is the image's own /data, its user's: writable with no volume
    assert docker.volume == "/data" and "chown tgmux:tgmux /data" in docker.text


def test_compose_shares_no_data_volume() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = compose["services"]["tgmux"].get("volumes", [])
    assert [m for m in mounts if m.split(":")[1] == "/data"] == []
    assert set(compose.get("volumes", {})) == {"pgdata"}  # PostgreSQL's own only
    assert "data_dir" not in compose_config()


def names_in(text: str) -> set[str]:
    """The environment variables a config names (${NAME}, ${NAME:-default}), comments too."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def compose_tgmux() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["tgmux"]


def test_compose_passes_every_variable_the_example_configs_name() -> None:
    environment = compose_tgmux()["environment"]
    example = names_in((ROOT / "config.example.yaml").read_text())
    assert {"TG_API_ID", "OPENAI_API_KEY", "SENSAY_ORG_SECRET"} <= example  # what is read
    missing = (example | names_in(compose_config())) - set(environment)
    assert not missing, f"compose.yaml does not pass {sorted(missing)}"


def test_compose_keeps_the_database_password_out_of_the_url() -> None:
    """The password is passed as PGPASSWORD: in the URL an "@", ":" or "/" in it would break
    it (tests/stores/test_postgres.py opens a store the way compose sets it up)."""
    environment = compose_tgmux()["environment"]
    assert "POSTGRES_PASSWORD" not in environment["TGMUX_STORE"]
    assert environment["PGPASSWORD"] == "${POSTGRES_PASSWORD}"
