"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl on a private folder and a free
port on 127.0.0.1 only (as the ``postgres`` user when running as root: initdb refuses root).

TCP connections need a password (scram-sha-256); the role ``tgmux`` has :data:`PASSWORD`, which
needs URL-encoding, so that every error path is checked for leaking it. The superuser
``postgres`` connects through the Unix socket in the private folder (trust).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

PASSWORD = "pw'\"@/:x"
USER = "tgmux"
DATABASE = "tgmux"


class Unavailable(Exception):
    """No PostgreSQL server can be started here."""


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def url(port: int, *, user: str = USER, password: str = PASSWORD, database: str = DATABASE,
        host: str = "127.0.0.1", **query: str) -> str:
    text = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/" \
           f"{quote(database, safe='')}"
    if query:
        text += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
    return text


class Server:
    def __init__(self) -> None:
        found = bindir()
        if found is None:
            raise Unavailable("no PostgreSQL binaries (initdb) found: apt-get install postgresql")
        self.bin = found
        self.root = Path(tempfile.mkdtemp(prefix="tgmux-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise Unavailable("running as root and runuser is missing")
            try:
                shutil.chown(self.root, "postgres")
            except (LookupError, OSError) as exc:
                raise Unavailable(f"running as root and there is no postgres user: {exc}") \
                    from exc
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True,
                                timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise Unavailable(f"{Path(args[0]).name} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def create(self) -> Server:
        """initdb, start, create the role and the database."""
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--locale=C.UTF-8")
        for attempt in range(3):
            self.port = free_port()
            try:
                self.start()
                break
            except Unavailable:
                if attempt == 2:
                    raise
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD.replace(chr(39), chr(39) * 2)}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        return self

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "-t", "30", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = self.bin / "psql"
        return self._run(str(psql) if psql.exists() else "psql", "-X", "-q", "-At",
                         "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p", str(self.port),
                         "-U", "postgres", "-d", database, "-c", sql)

    def url(self, **kwargs: str) -> str:
        return url(self.port, **kwargs)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> Server:
    server = Server()
    try:
        return server.create()
    except BaseException:
        server.destroy()
        raise
