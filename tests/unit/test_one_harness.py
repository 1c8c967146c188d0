"""Every test and benchmark serves its devices through one harness (tests/harness.py: simulator →
server → devices → ready), not through pytango's test contexts built by hand in each module."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_no_test_or_benchmark_builds_its_own_test_context():
    files = sorted(TESTS.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if p.name != "harness.py" and p.name != Path(__file__).name
                 and "tango.test_context" in p.read_text(encoding="utf-8")]
    assert not offenders, f"serve devices with tests.harness.served: {offenders}"


_ORPHAN = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tango.server import Device
from tests.harness import served

class Orphan(Device):
    pass

with served({Orphan: {"test/orphan/1": {}}}) as server:
    print("server pid", server.context.thread.pid, flush=True)
    time.sleep(600)  # killed by the test long before
"""


def test_a_forked_server_dies_with_the_test_process():
    """A test run killed from outside (a CI time-out, kill -9) left its forked servers running."""
    import os
    import signal
    import subprocess
    import sys

    from tests.waiting import wait_until

    tests_process = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("server pid "):  # after the server's own "Ready to accept request"
            line = tests_process.stdout.readline()
            assert line, "the test process ended before its server was up"
        server_pid = int(line.split()[-1])
        os.kill(server_pid, 0)  # running
        tests_process.send_signal(signal.SIGKILL)
        tests_process.wait(10)

        def gone() -> bool:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{server_pid}/stat") as f:  # a zombie until init reaps it is gone too
                return f.read().split(") ")[-1].startswith("Z")

        wait_until(gone, 10, what=f"the forked server {server_pid} to end with its test process")
    finally:
        tests_process.kill()
