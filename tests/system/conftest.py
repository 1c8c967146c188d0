"""System-test fixtures: the whole simulated lab, started with `tangodaq up` on an embedded database.

- ``lab`` (session): one lab for the whole session; use ``lab.proxy("lab/powermeter/1")``,
  ``lab.tango_host``, ``lab.env`` (for subprocesses), ``lab.tangodaq("status")``. Do not stop it.
- ``lab_factory`` (function): ``lab_factory()`` starts a private lab in its own folder and port
  (for tests that stop or break the lab); each is torn down after the test.

Every lab runs with its own ``TANGODAQ_HOME``; teardown runs `tangodaq down` and then kills any
process still carrying that ``TANGODAQ_HOME`` in its environment, so nothing is ever left behind,
even when a test or the launcher itself fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port_block

TANGODAQ = str(Path(sys.executable).parent / "tangodaq")
UP_TIMEOUT_S = 90


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds ``key=value`` (via /proc, no psutil)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if needle in env and not zombie:
            found.append(int(entry))
    return found


class Lab:
    """A lab started by `tangodaq up` in ``home`` on ``127.0.0.1:<port>``."""

    def __init__(self, home: Path, port: int | None = None, lab_file: str | None = None) -> None:
        self.home = Path(home)
        self.port = port or free_port_block()
        self.tango_host = f"127.0.0.1:{self.port}"
        self.lab_file = lab_file
        self.env = {**os.environ, "TANGODAQ_HOME": str(self.home), "TANGO_HOST": self.tango_host,
                    "TANGODAQ_BENCH_FAST": "1"}
        self.env.pop("TANGODAQ_SHM_DIR", None)  # the lab's rings go to its own per-port folder
        self.env.pop("TANGODAQ_CLI", None)  # its messages name `tangodaq`, as the tests expect

    def tangodaq(
        self, *args: str, timeout: float = 120, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [TANGODAQ, *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def up(self, *extra: str) -> subprocess.CompletedProcess:
        args = ["up", "--timeout", str(UP_TIMEOUT_S), *extra]
        if self.lab_file:
            args += ["--lab", self.lab_file]
        result = self.tangodaq(*args, timeout=UP_TIMEOUT_S + 60)
        if result.returncode != 0:
            raise RuntimeError(
                f"tangodaq up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.logs()}"
            )
        return result

    def state(self) -> dict:
        return json.loads((self.home / "state.json").read_text())

    def pid_of(self, name: str) -> int | None:
        return next(p["pid"] for p in self.state()["processes"] if p["name"] == name)

    def proxy(self, name: str, timeout_ms: int = 3000):
        import tango

        proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{name}")
        proxy.set_timeout_millis(timeout_ms)
        return proxy

    def leftovers(self) -> list[int]:
        return processes_with_env("TANGODAQ_HOME", str(self.home))

    def logs(self) -> str:
        out = []
        for log in sorted((self.home / "logs").glob("*.log")):
            out.append(f"----- {log.name}\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.tangodaq("down", timeout=60)
        for _ in range(2):
            pids = self.leftovers()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """One simulated lab for the whole test session (do not stop it)."""
    the_lab = Lab(tmp_path_factory.mktemp("tangodaq-lab"))
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.teardown()


@pytest.fixture
def lab_factory(tmp_path):
    """Start private labs (``lab_factory(lab_file=None, start=True)``), torn down after the test."""
    labs: list[Lab] = []

    def make(lab_file: str | None = None, start: bool = True) -> Lab:
        new = Lab(tmp_path / f"lab{len(labs)}", lab_file=lab_file)
        labs.append(new)
        if start:
            new.up()
        return new

    try:
        yield make
    finally:
        for one in labs:
            one.teardown()
