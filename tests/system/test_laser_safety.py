"""Light only while someone who asked for it is alive, on the whole lab (docs/laser-safety.md).

Processes are killed with SIGKILL as a crash would: the MacroServer in the middle of a macro
that opened the shutter, the Mai Tai's server with the shutter open. The truth about the beam
comes from the virtual bench (what the simulated laser really does), not from the devices.
The shared session lab is used and left as it was found (servers back, Door ON).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tango

from deviceservers.bench.control import BenchClient
from deviceservers.bench.server import CONTROL_PORT_OFFSET
from tango_db.door_client import MacroFailed, MacroLost, run_macro
from tests.waiting import wait_until

pytestmark = pytest.mark.system

MACRO_LEASE_S = 5.0  # macros/lab_macros.py: the stated bound below is this plus poll and shutter travel
SHUTTER_CLOSED_AFTER_MACROSERVER_DEATH_S = MACRO_LEASE_S + 2.0


@pytest.fixture(scope="module")
def bench(lab):
    with BenchClient(lab.port + CONTROL_PORT_OFFSET) as client:
        yield client


@pytest.fixture(scope="module")
def door_name(lab) -> str:
    return f"tango://{lab.tango_host}/door/lab/1"


@pytest.fixture(scope="module")
def laser(lab, door_name):
    """The laser emitting with its shutter closed (laser_on through the Door)."""
    run_macro(door_name, "laser_on", say=lambda line: None, timeout=120)
    return lab.proxy("lab/maitai/1", timeout_ms=10000)


def beam_shutter_open(bench) -> bool:
    return bench.call("status")["laser"]["shutter_open"]


class MacroInThread:
    """run_macro in a thread, as a client script would run it; its outcome kept for the test."""

    def __init__(self, door_name: str, *argv: object) -> None:
        self.lines: list[str] = []
        self.result: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(door_name, argv), daemon=True)
        self._thread.start()

    def _run(self, door_name: str, argv: tuple) -> None:
        try:
            self.result = run_macro(door_name, *argv, say=self.lines.append, timeout=120)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"run_macro still waiting after {timeout} s; output: {self.lines}"


def door_back(lab) -> None:
    door = lab.proxy("door/lab/1")
    wait_until(lambda: door.state() == tango.DevState.ON, 60, interval=0.2, what="the Door back ON")


def scan_id(lab) -> int:
    """The MacroServer's ScanID (the number of the last scan's entry in the scan file)."""
    from taurus.core.util.codecs import CodecFactory

    raw = lab.proxy("macroserver/lab/1").read_attribute("Environment").value
    return int(CodecFactory().getCodec("pickle").decode(raw)[1]["new"].get("ScanID", 0))


def test_macroserver_killed_mid_macro_closes_the_shutter_and_the_client_raises(lab, bench, door_name, laser):
    before = scan_id(lab)
    run = MacroInThread(door_name, "polarization_scan", "hwp", 0, 180, 60, 0.5)  # ~30 s of light
    wait_until(lambda: laser.Shutter and laser.ShutterLease > 0, 20, what="the macro to open the shutter")
    wait_until(lambda: "macro lease" in laser.Status(), 3, what="the shutter held by the macro's lease")
    pid = lab.pid_of("MacroServer/lab")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not beam_shutter_open(bench), SHUTTER_CLOSED_AFTER_MACROSERVER_DEATH_S, interval=0.05,
               what="the laser server to close the shutter when the dead macro's lease ran out")
    closed_after = time.monotonic() - killed
    print(f"shutter closed {closed_after:.1f} s after the MacroServer was killed")
    assert closed_after > 1.0  # closed by the lease running out, not by anything in the dead process
    run.join(60)
    assert isinstance(run.error, MacroLost), f"run_macro returned {run.result!r}, error {run.error!r}"
    assert isinstance(run.error, MacroFailed) and run.error.how == "lost"
    assert "polarization_scan" in str(run.error)
    wait_until(lambda: "lease expired" in laser.Status(), 5, what="the laser's Status to say why it closed")
    door_back(lab)
    # killed as its scan started, while it wrote its environment: ScanID must not go back (the
    # next scan would find its entry in the scan file taken; tango_db/environment_file.py)
    assert scan_id(lab) >= before


def test_laser_server_killed_with_the_shutter_open_restarts_with_it_closed(lab, bench, laser):
    assert bench.call("status")["laser"]["watchdog_s"] in (10.0, 11.0)  # lab.json's WatchdogS (REMOTE probe +1)
    laser.OpenShutter()  # a person at a GUI: the manual lease
    assert beam_shutter_open(bench)
    pid = lab.pid_of("MaiTai/lab")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not beam_shutter_open(bench), 30, interval=0.1,
               what="the restarted laser server to close the shutter nobody holds")
    print(f"shutter closed {time.monotonic() - killed:.1f} s after the laser server was killed")
    wait_until(lambda: lab.pid_of("MaiTai/lab") != pid, 5, what="a new laser server")
    # "closed by this server": the server has read the shutter closed (while it still reads open,
    # Status says it is closing it, for the same reason, and State is ALARM)
    wait_until(lambda: "closed by this server" in laser.Status() and "nobody holds a lease" in laser.Status(), 10,
               what="Status to say why it closed")
    assert laser.State() == tango.DevState.ON and not laser.Shutter, laser.Status()  # emission kept: short restart


EXPERIMENT_HOLDING_LIGHT = """
import time
from tango_db import experiment
experiment.laser_on(lambda line: None)  # opens the shutter held by the experiment's renewed lease
print("HELD", flush=True)
time.sleep(300)
"""


def test_the_experiment_holds_its_light_by_a_renewed_lease_that_ends_with_its_process(lab, bench, laser):
    """tango_db/experiment.py opens with OpenShutterWithLease and renews from a thread: the shutter
    stays open past the 5 s lease while the process lives, and closes within it once it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", EXPERIMENT_HOLDING_LIGHT], env=lab.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        line = proc.stdout.readline()
        assert line.strip() == "HELD", line + proc.stdout.read() if proc.poll() is not None else line
        opened = time.monotonic()
        assert beam_shutter_open(bench) and "macro lease" in laser.Status()
        # renewed: still open after more than the lease (the check at 6.5 s, a renewal every 1 s)
        wait_until(lambda: time.monotonic() - opened > MACRO_LEASE_S + 1.5 or not beam_shutter_open(bench),
                   MACRO_LEASE_S + 5, interval=0.1)
        assert beam_shutter_open(bench) and laser.ShutterLease > 0
        proc.kill()
        killed = time.monotonic()
        wait_until(lambda: not beam_shutter_open(bench), SHUTTER_CLOSED_AFTER_MACROSERVER_DEATH_S + 5, interval=0.05,
                   what="the laser server to close the shutter when the dead experiment's lease ran out")
        print(f"shutter closed {time.monotonic() - killed:.1f} s after the experiment's process was killed")
        # and read back closed by the server (until then it is still closing it: ALARM, OpenShutter refused)
        wait_until(lambda: "lease expired" in laser.Status() and "closed by this server" in laser.Status()
                   and laser.State() == tango.DevState.ON, 5, what="the laser's Status to say why it closed")
    finally:
        proc.kill()
        proc.wait(10)


def scan_rows(lines: list[str]) -> list[list[float]]:
    """The table rows ascan printed (point number first)."""
    rows = []
    for line in lines:
        cells = line.split()
        if len(cells) >= 3 and cells[0].isdigit():
            rows.append([float(c) for c in cells])
    return rows


def pause_and_resume(door, bench, laser) -> None:
    door.PauseMacro()
    wait_until(lambda: door.state() == tango.DevState.STANDBY, 10, what="the Door paused")
    wait_until(lambda: not beam_shutter_open(bench), 3, interval=0.05, what="the shutter closed for the pause")
    paused_at = time.monotonic()
    wait_until(lambda: time.monotonic() - paused_at > 1.5 or beam_shutter_open(bench), 2, interval=0.05)
    assert not beam_shutter_open(bench) and laser.ShutterLease == 0.0  # stays closed while paused
    door.ResumeMacro()
    wait_until(lambda: beam_shutter_open(bench), 10, interval=0.05, what="the macro to reopen the shutter")


def test_pause_closes_the_shutter_and_only_the_macro_reopens_it_on_resume(lab, bench, door_name, laser):
    """Twice: a pause that lands on the lab macro itself (just after it opened the shutter) and one
    that lands on its ascan between two points; after each resume no point is measured dark."""
    door = lab.proxy("door/lab/1", timeout_ms=10000)
    run = MacroInThread(door_name, "polarization_scan", "hwp", 0, 180, 12, 0.3)
    wait_until(lambda: (laser.Shutter and laser.ShutterLease > 0) or run.error, 20, what="the macro to open the shutter")
    assert run.error is None, (run.error, run.lines)
    pause_and_resume(door, bench, laser)
    wait_until(lambda: len(scan_rows(run.lines)) >= 3, 20, what="three points of the scan")
    pause_and_resume(door, bench, laser)
    run.join(60)
    assert run.error is None, run.error
    assert sum("reopened after the pause" in line for line in run.lines) == 2, run.lines
    rows = scan_rows(run.lines)
    assert len(rows) == 13 and min(r[2] for r in rows) > 1e-6, rows  # power: no dark point (extinction ~2e-5 W)
    assert not beam_shutter_open(bench) and not laser.Shutter  # closed again by the macro at its end
