"""Continuous scans on the lab: ``ascanct`` through the Door against ``ascan`` of the same points.

Sardana's continuous scan moves the half-wave plate once at the speed the points ask for
(``Speed`` of the ELL14, through the motor's Velocity), the Pool's software synchronizer triggers
the power channel per point, and each point is the meter's average over its window. The same
Malus curve must come out as from the step scan, from one sweep, with the positions the mount
reported in each window (the ``*_pos`` channels of ``mg_continuous``)."""

from __future__ import annotations

import mmap
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from datawriter import ring_format
from deviceservers.MaiTai.lease import ShutterLease
from tango_db import environment
from tango_db.door_client import MacroFailed, run_macro
from tangodaq_macros._polarization_analysis import fit_malus
from tests.system.scan_files import frames_of, last_entry, scan_file, set_camera_value_ref
from tests.waiting import wait_until

pytestmark = pytest.mark.system

INTERVALS = 60  # 3 deg per point
INTEG_S = 0.05
# Between windows: more than the channels' own latency (~30-60 ms), so a loaded machine delays a
# window instead of skipping a trigger (a point without a value).
LATENCY_S = 0.05


def malus(fit, angles_deg: np.ndarray) -> np.ndarray:
    """The fitted curve at ``angles_deg``."""
    amplitude = fit.p_max - fit.p_min
    return fit.p_min + amplitude * np.cos(np.radians(fit.k * (angles_deg - fit.theta_max_deg))) ** 2


def test_ascanct_gives_the_step_scans_malus_curve_from_one_sweep(lab):
    door = f"tango://{lab.tango_host}/door/lab/1"
    lines: list[str] = []

    def run(*argv, timeout: float = 120):
        lines.clear()
        t0 = time.monotonic()
        run_macro(door, *[str(a) for a in argv], say=lines.append, timeout=timeout)
        return time.monotonic() - t0

    laser = lab.proxy("lab/maitai/1")
    if not laser.read_attribute("Emission").value:
        run("laser_on", timeout=120)
    run("mv", "hwp", 0, "qwp", 0, "pol", 0)
    lease = ShutterLease(f"tango://{lab.tango_host}/lab/maitai/1", owner="test_continuous_scan")
    lease.open()
    try:
        wait_until(lambda: laser.read_attribute("Shutter").value, 5, what="the shutter to open")
        run("senv", "ActiveMntGrp", "mg_power")
        step_s = run("ascan", "hwp", 0, 180, INTERVALS, INTEG_S)
        step = last_entry(scan_file(lab))
        run("senv", "ActiveMntGrp", "mg_continuous")
        # triggers on time, not on the Pool's position updates (every 100 ms by default: two
        # thresholds passed between two updates skip a trigger); the real positions are captured
        lab.proxy("mg_continuous").write_attribute("SoftwareSynchronizerInitialDomain", "Time")
        continuous_s = run("ascanct", "hwp", 0, 180, INTERVALS, INTEG_S, LATENCY_S)
        continuous = last_entry(scan_file(lab))
        output = list(lines)
    finally:
        lease.close()
        run("senv", "ActiveMntGrp", "mg_power")
    assert continuous["title"].startswith(f"ascanct hwp 0.0 180.0 {INTERVALS}"), continuous["title"]
    assert len(continuous["power"]) == len(step["power"]) == INTERVALS + 1
    power = np.asarray(continuous["power"], dtype=float)
    assert np.all(np.isfinite(power)), f"points without a value (skipped triggers): {power}\n{output}"
    # where the mount really was in each window (its own reports), not the trajectory's positions
    at = np.asarray(continuous["hwp_pos"], dtype=float)
    steps = np.diff(at)
    # a sweep at constant speed: windows late by a few ms on a loaded machine move their middles a little
    assert np.all(steps > 0) and np.allclose(steps, 180 / INTERVALS, rtol=0.5), at
    assert at[0] == pytest.approx(0, abs=2) and at[-1] == pytest.approx(180, abs=2), at
    fit_step = fit_malus(np.asarray(step["hwp"], dtype=float), np.asarray(step["power"], dtype=float), 2)
    fit_cont = fit_malus(at, power, 2)
    amplitude = fit_step.p_max - fit_step.p_min
    assert (fit_cont.theta_max_deg - fit_step.theta_max_deg + 45) % 90 - 45 == pytest.approx(0, abs=1.0)
    assert fit_cont.p_max == pytest.approx(fit_step.p_max, rel=0.03)
    # every continuous point on the step scan's curve, within the meter's noise (the step fit's scatter)
    misfit = float(np.sqrt(np.mean((power - malus(fit_step, at)) ** 2)))
    assert misfit < 3 * fit_step.residual_rms + 0.01 * amplitude, (misfit, fit_step, fit_cont)
    # Durations are printed, not asserted: with step scans at Sardana's floor (~0.15 s a point here:
    # 50 ms counting, the mount's 50 ms settling, ~40 ms of software) and the ELL14's speed in whole
    # percents, the sweep (~0.1 s a point: the window and the channels' latency) is only somewhat faster.
    print(f"ascan {step_s:.1f} s, ascanct {continuous_s:.1f} s: {step_s / continuous_s:.2f}x")


def ring_created(folder: str, stream: str) -> float:
    """When a ring was made (epoch s), from its header."""
    path = Path(folder) / f"tangodaq.{stream}"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return ring_format.parse_header(mm, str(path)).created_ns / 1e9


def test_ascanct_with_the_camera_references_one_frame_exposed_in_each_window(lab):
    """Issue 13: the camera in a continuous scan. Each window is one frame exposed for the window's
    integration time, recorded by the DataWriter and referenced by the scan; the windows follow
    one another with no trigger skipped; the recording the channel started is closed when the
    scan ends. Without value referencing the scan is refused with what to do (it used to stall
    the MacroServer for minutes on an 8 MiB NaN image per skipped window)."""
    door = f"tango://{lab.tango_host}/door/lab/1"
    lines: list[str] = []

    def run(*argv, timeout: float = 120):
        lines.clear()
        run_macro(door, *[str(a) for a in argv], say=lines.append, timeout=timeout)

    intervals, integ_s = 12, 0.05
    group = lab.proxy("mg_camera")
    group.write_attribute("SoftwareSynchronizerInitialDomain", "Time")
    camera = lab.proxy("lab/camera/1")
    full_roi = camera.read_attribute("Roi").value
    run("mv", "hwp", 0)
    run("senv", "ActiveMntGrp", "mg_camera")
    try:
        # a new frame shape: the scan's preparation makes its ring, not the first window
        camera.write_attribute("Roi", [0, 0, 1024, 1024])
        run("ascanct", "hwp", 0, 60, intervals, integ_s)
        scan = last_entry(scan_file(lab))
        output = list(lines)
        with pytest.MonkeyPatch.context() as env:
            env.delenv(environment.RING_FOLDER_VARIABLE, raising=False)  # the lab's, not the tests' folder
            ring_made = ring_created(environment.ring_folder(lab.tango_host), "lab.camera.1.frames")
        # the same group with the camera's references off: refused before anything moves
        set_camera_value_ref(lab, False)
        with pytest.raises(MacroFailed):
            run("ascanct", "hwp", 0, 60, intervals, integ_s)
        refused = "\n".join(lines)
    finally:
        set_camera_value_ref(lab, True)
        run("senv", "ActiveMntGrp", "mg_power")
        camera.write_attribute("Roi", full_roi)
    assert "records the camera only by reference" in refused and "'Ref'" in refused, refused
    frames = frames_of(scan["camera"])
    assert len(frames) == intervals + 1, output
    assert len({path for path, _, _ in frames}) == 1 and len({ds for _, ds, _ in frames}) == 1
    assert [row for _, _, row in frames] == list(range(intervals + 1)), frames
    path, dataset = frames[0][0], frames[0][1]
    with h5py.File(path, "r") as f:  # plain h5py: the recording the channel started is closed
        stream = f[dataset.rsplit("/", 1)[0]]
        assert stream["data"].shape[0] == intervals + 1 and stream["data"].shape[1:] == (1024, 1024)
        recording_started = datetime.fromisoformat(f["entry/start_time"][()].decode()).timestamp()
        exposure = stream["exposure_time"][:]
        bof = stream["timestamp_bof"][:].astype(np.float64) / 1e9  # ns since 1970
    assert ring_made < recording_started, (ring_made, recording_started)  # made by the preparation
    np.testing.assert_allclose(exposure, integ_s, rtol=1e-6)
    steps = np.diff(bof)
    # one frame per window, one window after the other: no frame before the previous window ended,
    # and no gap of a skipped trigger (two periods) between two frames
    assert np.all(steps >= integ_s) and np.all(steps < 1.8 * np.median(steps)), steps


def test_meshct_and_timescan_on_the_lab(lab):
    """Issue 13: Sardana's other continuous scans on the lab's instruments. ``meshct``: the
    ESP300's x sweeps each row at the speed the windows need while y steps between rows; the
    positions per point are where the stage reported it was. ``timescan``: the power meter's
    average over each window, one after the other."""
    door = f"tango://{lab.tango_host}/door/lab/1"
    lines: list[str] = []

    def run(*argv, timeout: float = 120):
        lines.clear()
        run_macro(door, *[str(a) for a in argv], say=lines.append, timeout=timeout)

    columns, rows = 5, 2  # intervals: 6 points a row, 3 rows
    run("mv", "stage_x", 0, "stage_y", 0)
    run("senv", "ActiveMntGrp", "mg_continuous")
    lab.proxy("mg_continuous").write_attribute("SoftwareSynchronizerInitialDomain", "Time")
    try:
        run("meshct", "stage_x", 0, 1, columns, "stage_y", 0, 0.5, rows, INTEG_S, False, LATENCY_S)
        mesh = last_entry(scan_file(lab))
        mesh_output = list(lines)
        run("timescan", 9, INTEG_S, LATENCY_S)
        series = last_entry(scan_file(lab))
    finally:
        run("senv", "ActiveMntGrp", "mg_power")
    assert mesh["title"].startswith("meshct stage_x"), mesh["title"]
    x = np.asarray(mesh["stage_x_pos"], dtype=float)
    y = np.asarray(mesh["stage_y_pos"], dtype=float)
    assert x.shape == y.shape == ((columns + 1) * (rows + 1),), mesh_output
    assert np.all(np.isfinite(np.asarray(mesh["power"], dtype=float))), mesh_output
    for row, (xs, ys) in enumerate(zip(x.reshape(rows + 1, -1), y.reshape(rows + 1, -1), strict=True)):
        # each row a sweep of x at constant speed, at the y of its row (the stage did not move in y)
        assert np.all(np.diff(xs) > 0) and np.allclose(np.diff(xs), 1 / columns, rtol=0.5), xs
        assert xs[0] == pytest.approx(0, abs=0.1) and xs[-1] == pytest.approx(1, abs=0.1), xs
        assert np.allclose(ys, row * 0.5 / rows, atol=1e-3), ys
    power = np.asarray(series["power"], dtype=float)
    assert series["title"].startswith("timescan") and power.shape == (9,) and np.all(np.isfinite(power)), series
    period = np.diff(np.asarray(series["dt"], dtype=float))  # one window after the other, none skipped
    assert np.all(period >= INTEG_S) and np.all(period < 1.8 * np.median(period)), period
