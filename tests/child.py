"""A ``tgmux`` command in a child process, for signal tests: its stderr is read as it comes
(:meth:`Child.wait_log`), and a plugin backend (:data:`GATED_PLUGIN`) marks each step of its
life with a file and can hold there until the test lets it go. A test waits for a mark (a
readiness signal), never for a fixed time."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

#: A backend type ``gated``: ``start``, ``reply`` and ``close`` each touch a file of that name
#: in the plugin's folder (``reply`` once per turn, as ``reply-N``); when ``<mark>.hold``
#: exists there, the step waits until ``<mark>.go`` exists too (at most a minute). A turn's
#: reply is the text and, when the text is a URL, what fetching it gave.
GATED_PLUGIN = '''
import asyncio, itertools, pathlib
from tgmux import hookimpl
from tgmux.backend import Backend, BackendSettings, Text

MARKS = pathlib.Path(__file__).parent
TURNS = itertools.count(1)


async def step(mark):
    (MARKS / mark).touch()
    if not (MARKS / f"{mark}.hold").exists():
        return
    for _ in range(6000):  # a minute at most: a test that forgot never hangs
        if (MARKS / f"{mark}.go").exists():
            return
        await asyncio.sleep(0.01)


class Gated(Backend):
    """Each step marked with a file; held while the test says so."""
    type_name = "gated"
    Settings = BackendSettings

    async def start(self):
        await step("start")

    async def close(self):
        await step("close")

    async def reply(self, turn):
        await step(f"reply-{next(TURNS)}")
        yield Text("gated: " + turn.text)


@hookimpl
def tgmux_backend_types():
    return [Gated]
'''


def gated_config(folder: Path, extra: str = "") -> Path:
    """A config on the gated backend (its plugin written next to it)."""
    (folder / "gatedplug.py").write_text(GATED_PLUGIN)
    config = folder / "config.yaml"
    config.write_text('store: "memory://"\nplugins: [gatedplug]\nbackends:\n  g: {type: gated}\n'
                      f"default: g\n{extra}")
    return config


def hold(folder: Path, *marks: str) -> None:
    for mark in marks:
        (folder / f"{mark}.hold").touch()


def let_go(folder: Path, mark: str) -> None:
    (folder / f"{mark}.go").touch()


def wait_file(path: Path, timeout: float = 30, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child is not None and child.popen.poll() is not None:
            raise AssertionError(f"the process ended ({child.popen.returncode}) before "
                                 f"{path.name}; stderr: {child.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} in {timeout} s"
                                 + (f"; stderr: {child.stderr()}" if child else ""))
        time.sleep(0.01)


def child_env(folder: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")},
            "PYTHONPATH": str(folder)}


class Child:
    """``python -m tgmux ARGS`` (or ``python -c CODE ARGS`` with ``code``)."""

    def __init__(self, *args: str, env: dict[str, str], code: str | None = None) -> None:
        command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "tgmux"]
        self.popen = subprocess.Popen([*command, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._err_lines: queue.Queue[str] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.out.append),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self._err_lines.put),
                             daemon=True)]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def stderr(self) -> str:
        while not self._err_lines.empty():
            self.err.append(self._err_lines.get())
        return "".join(self.err)

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        if text in self.stderr():
            return
        while time.monotonic() < deadline:
            try:
                line = self._err_lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None and self._err_lines.empty():
                    break
                continue
            self.err.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in {timeout} s (exit status: {self.popen.poll()});"
                             f" stderr: {self.stderr()}")

    def write(self, text: str, *, close: bool = False) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()
        if close:
            self.popen.stdin.close()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        """The exit status, once the process ended and its output was read."""
        code = self.popen.wait(timeout)
        for pump in self._pumps:  # the pipes close with the process: the rest is read
            pump.join(10)
        return code

    def stdout(self) -> str:
        return "".join(self.out)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


class SimulatorProcess:
    """A provider simulator in a process of its own (``python -m MODULE ARGS``): it counts a
    request when it really arrives, however long the test's own process is held up (a
    simulator in the test's event loop counts it when that loop gets to it: a stall of the
    test process makes requests look later than they came). ``base_url`` once it serves;
    :meth:`log` its stderr (its log lines) after :meth:`stop`."""

    def __init__(self, module: str, *args: str, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TGMUX_")}
        self.popen = subprocess.Popen([sys.executable, "-m", module, *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env)
        first: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: first.put(self.popen.stdout.readline()),  # type: ignore[union-attr]
                         daemon=True).start()
        try:
            line = first.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"{module}: no base_url in {timeout} s; {self.log()}") from None
        if "base_url " not in line:
            self.stop()
            raise AssertionError(f"{module}: {line!r}; {self.log()}")
        self.base_url = line.split("base_url ", 1)[1].strip()
        self._err = ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            _, self._err = self.popen.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, self._err = self.popen.communicate(timeout=10)

    def log(self) -> str:
        return getattr(self, "_err", "")
