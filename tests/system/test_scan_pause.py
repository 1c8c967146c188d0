"""Pause and resume (spock's Ctrl-Z / ``ResumeMacro``) of the lab's scans, through the Door.

Where Sardana can pause (read in ``sardana/macroserver/macro.py`` and ``scan/gscan.py``): a step
scan takes a pause at ``pausePoint()`` between two points, after the point in progress is
moved, counted and recorded; nothing is interrupted mid-point. While paused nothing moves, the
lab macro's shutter is closed (docs/laser-safety.md, Pause), and the resumed scan goes on at the
next point: Sardana's HDF5 file holds every point once, in order, at its position. A continuous
scan (``ascanct``) has no pause point inside its sweep: a pause is taken when the sweep ends.
A MacroServer killed mid-scan leaves the file readable with the points measured and no end time.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import tango

from tango_db.door_client import run_macro
from tangodaq_macros._polarization_analysis import periodicity
from tests.system.scan_files import last_entry, scan_file
from tests.waiting import wait_until

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def door(lab):
    return lab.proxy("door/lab/1", timeout_ms=10000)


@pytest.fixture(scope="module")
def run(lab):
    name = f"tango://{lab.tango_host}/door/lab/1"

    def run(*argv, timeout: float = 60):
        return run_macro(name, *[str(a) for a in argv], timeout=timeout)

    return run


@pytest.fixture(autouse=True)
def door_left_free(door):
    """A test that fails while a macro is paused or running leaves the shared lab's Door free."""
    yield
    state = wait_until(lambda: (door.state(),), 60, what="the Door answering")[0]  # a MacroServer restarting
    if state in (tango.DevState.STANDBY, tango.DevState.RUNNING):
        door.AbortMacro()
        wait_until(lambda: door.state() not in (tango.DevState.STANDBY, tango.DevState.RUNNING), 10,
                   what="the Door to abort the macro a failed test left")


@pytest.fixture(scope="module")
def laser(lab, run):
    laser = lab.proxy("lab/maitai/1")
    if not laser.read_attribute("Emission").value:
        run("laser_on", timeout=120)
    return laser


def still_while_paused(door, motor, seconds: float = 0.6) -> float:
    """The motor's position over ``seconds`` of pause: never MOVING, never elsewhere; returns it."""
    here = motor.read_attribute("Position").value
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert door.state() == tango.DevState.STANDBY
        assert motor.state() != tango.DevState.MOVING
        assert motor.read_attribute("Position").value == pytest.approx(here, abs=0.01)
        time.sleep(0.05)
    return here


def test_a_paused_step_scan_stands_still_in_the_dark_and_resumes_at_the_next_point(lab, door, run, laser):
    """polarization_scan (its ascan opens the shutter): paused mid-sweep, resumed, 13 points once each."""
    hwp = lab.proxy("lab/ell14/hwp")
    run("mv", "hwp", 0)
    door.RunMacro(["polarization_scan", "hwp", "0", "180", "12", "0.1"])
    wait_until(lambda: laser.read_attribute("Shutter").value, 10, what="the macro to open the shutter")
    # past the third point (30 deg) and before the last: the pause lands on the ascan mid-sweep
    wait_until(lambda: hwp.read_attribute("Position").value > 35, 20, interval=0.01, what="the sweep past 35 deg")
    door.PauseMacro()
    wait_until(lambda: door.state() == tango.DevState.STANDBY, 10, what="the Door paused")
    wait_until(lambda: not laser.read_attribute("Shutter").value, 3, interval=0.05, what="the shutter closed")
    at = still_while_paused(door, hwp)
    assert 35 < at < 180 and not laser.read_attribute("Shutter").value
    # the MacroServer holds the file open (HDF5's lock) until the scan ends; each point is flushed as
    # it is recorded, so a reader that skips the lock sees every point measured so far, and only those
    paused = last_entry(scan_file(lab), locking=False)
    done = len(paused["Pt_No"])
    assert paused["title"].startswith("ascan hwp 0.0 180.0 12 0.1") and 3 <= done < 13, paused
    np.testing.assert_array_equal(paused["Pt_No"], np.arange(done))
    assert paused["hwp"][-1] == pytest.approx(at, abs=0.1)  # it stands where its last point was measured
    door.ResumeMacro()
    wait_until(lambda: door.state() in (tango.DevState.ON, tango.DevState.ALARM), 30, what="the macro to end")
    assert door.state() == tango.DevState.ON, door.read_attribute("Output").value
    output = "\n".join(door.read_attribute("Output").value or ())
    assert "laser shutter reopened after the pause" in output
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan hwp 0.0 180.0 12 0.1")
    np.testing.assert_array_equal(data["Pt_No"], np.arange(13))  # nothing twice, nothing skipped
    np.testing.assert_allclose(data["hwp"], np.linspace(0, 180, 13), atol=0.1)
    np.testing.assert_array_equal(data["power"][:done], paused["power"])  # the points before the pause, kept
    assert np.all(np.asarray(data["power"]) > 1e-6), data["power"]  # no point measured dark
    assert not laser.read_attribute("Shutter").value  # closed again by the macro at its end



def test_a_pause_during_a_continuous_sweep_is_taken_when_the_sweep_ends(lab, door, run):
    """Sardana's ``ascanct`` cannot pause mid-sweep (its points are triggers along one constant-
    velocity move: ``CTScan.scan_loop`` reaches ``pausePoint()`` only after the last waypoint).
    A pause sent during the sweep is deferred: the sweep and its acquisition run to the end, then
    the Door pauses with every point recorded once; nothing moves while paused; resume ends it."""
    hwp = lab.proxy("lab/ell14/hwp")
    run("mv", "hwp", 0)
    run("senv", "ActiveMntGrp", "mg_continuous")
    lab.proxy("mg_continuous").write_attribute("SoftwareSynchronizerInitialDomain", "Time")  # as test_continuous_scan
    try:
        door.RunMacro(["ascanct", "hwp", "0", "60", "20", "0.05"])
        wait_until(lambda: hwp.read_attribute("Position").value > 10, 20, interval=0.01, what="the sweep past 10 deg")
        door.PauseMacro()
        # the sweep goes on to its end (60 deg plus the run-out, back to 60) before the pause is taken
        furthest = 0.0
        while door.state() == tango.DevState.RUNNING:
            furthest = max(furthest, hwp.read_attribute("Position").value)
            time.sleep(0.02)
        assert furthest > 59, f"the sweep stopped at {furthest} deg: the pause was not deferred to its end"
        assert door.state() == tango.DevState.STANDBY, door.read_attribute("Output").value
        at = still_while_paused(door, hwp)
        assert at == pytest.approx(60, abs=0.5)
        door.ResumeMacro()
        wait_until(lambda: door.state() in (tango.DevState.ON, tango.DevState.ALARM), 20, what="the macro to end")
        assert door.state() == tango.DevState.ON, door.read_attribute("Output").value
    finally:
        if door.state() in (tango.DevState.STANDBY, tango.DevState.RUNNING):
            door.AbortMacro()
            wait_until(lambda: door.state() not in (tango.DevState.STANDBY, tango.DevState.RUNNING), 10)
        run("senv", "ActiveMntGrp", "mg_power")
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascanct hwp 0.0 60.0 20"), data["title"]
    np.testing.assert_array_equal(data["Pt_No"], np.arange(21))
    at = np.asarray(data["hwp_pos"], dtype=float)  # where the mount was in each window
    assert np.all(np.diff(at) > 0) and np.allclose(np.diff(at), 3, rtol=0.25), at
    assert np.all(np.isfinite(np.asarray(data["power"], dtype=float))), data["power"]


def test_a_macroserver_killed_mid_scan_leaves_a_readable_file_and_the_lab_macro_resumes_there(lab, door, run, laser):
    """SIGKILL, as a crash, during polarization_scan: Sardana's file (flushed at each point) opens
    after the death, holds the points measured, once each, at their positions, and no end time (the
    scan did not end). ``polarization_scan ... True`` then measures only the other points (a new
    entry), and its fit is over the whole curve, each angle once (issue 13: only the waveplate
    calibration resumed)."""
    hwp = lab.proxy("lab/ell14/hwp")
    run("mv", "hwp", 0)
    door.RunMacro(["polarization_scan", "hwp", "0", "180", "36", "0.1"])
    wait_until(lambda: hwp.read_attribute("Position").value > 20, 20, interval=0.01, what="the scan past 20 deg")
    pid = lab.pid_of("MacroServer/lab")
    os.kill(pid, signal.SIGKILL)
    # with HDF5's lock: it opens once the dead process's last thread is gone (nobody holds the file)
    data = wait_until(lambda: last_entry(scan_file(lab)), 10, what="the scan file to open")
    done = len(data["Pt_No"])
    assert data["title"].startswith("ascan hwp 0.0 180.0 36 0.1") and 4 <= done < 37, data
    assert not data["ended"]  # no end_time: the scan stopped at point done - 1
    np.testing.assert_array_equal(data["Pt_No"], np.arange(done))
    np.testing.assert_allclose(data["hwp"], np.linspace(0, 180, 37)[:done], atol=0.1)
    assert np.all(np.isfinite(np.asarray(data["power"], dtype=float)))
    wait_until(lambda: door.state() == tango.DevState.ON, 60, interval=0.2,
               what="the Door back ON (the launcher restarts the MacroServer)")
    # ON comes before the restarted MacroServer has the Pool's elements: a macro run then fails
    # with "Moveable with name hwp does not exist in any Pool []" (seen in a rehearsal). The
    # launcher says the MacroServer is ready (`tangodaq status`, "answers again") only once it
    # knows them: what an operator waits for; then the waveplate is there at once.
    def macroserver_ready_again() -> bool:
        p = next(p for p in lab.state()["processes"] if p["name"] == "MacroServer/lab")
        return p["restarts"] >= 1 and p["pid"] is not None and p["ready"]

    wait_until(macroserver_ready_again, 60, interval=0.2, what="the launcher to call the restarted MacroServer ready")
    assert b'"hwp"' in lab.proxy("macroserver/lab/1").read_attribute("Elements").value[1]

    # Resumed as an operator would at once: through the Door, which this process reached before
    # the restart; its event channel to the restarted MacroServer is re-made by cppTango's keep-alive
    # only ~10-20 s later (a run_macro here saw no end status: door_client's MacroEndUnknown), so
    # the end is followed by reading the Door and the scan file.
    door.RunMacro(["polarization_scan", "hwp", "0", "180", "36", "0.1", "True"])

    def resumed_entry():
        if door.state() != tango.DevState.ON:
            return None
        entry = last_entry(scan_file(lab))
        return entry if entry["title"].startswith("fscan") and entry["ended"] else None

    rest = wait_until(resumed_entry, 90, interval=0.2, what="the resumed run to end with its fscan entry")
    assert len(rest["Pt_No"]) == 37 - done
    angles = np.concatenate([data["hwp"], rest["hwp"]])
    np.testing.assert_allclose(angles, np.linspace(0, 180, 37), atol=0.1)  # each angle once, in order
    power = np.concatenate([np.asarray(data["power"], float), np.asarray(rest["power"], float)])
    assert np.all(np.isfinite(power)) and power.max() > 10 * power.min()  # lit again after the resume
    k, _, _ = periodicity(angles, power)  # the curve the resumed macro fits: whole, Malus's with a 90 deg period
    assert k == 2
    # the completed run leaves nothing to resume (a resume now says so: tests/system/test_sardana.py)
    from taurus.core.util.codecs import CodecFactory

    raw = lab.proxy("macroserver/lab/1").read_attribute("Environment").value
    assert "LabScanProgress" not in CodecFactory().getCodec("pickle").decode(raw)[1]["new"]
