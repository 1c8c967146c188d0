"""Sardana on the lab: Pool elements from tango_db/sardana.json, macros run through the Door as
spock would (tango_db.door_client: RunMacro, output and result from the Door's events), files
from Sardana's own HDF5 recorder and the DataWriter, physics checked against the bench's truth.

Tests needing instruments that are not in lab.json yet skip with the missing device named."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import datetime

import h5py
import numpy as np
import pytest
import tango

from deviceservers.bench.control import BenchClient
from deviceservers.bench.optics import OpticsModel, Polariser, WavePlate
from tango_db.config import load_config, server_instances
from tango_db.door_client import BUSY, MacroFailed, run_macro, stop_macro
from tangodaq_macros._polarization_analysis import fit_malus  # noqa: E402
from tests.system.scan_files import frames_of, last_entry, scan_file, set_camera_value_ref
from tests.waiting import wait_until

pytestmark = pytest.mark.system

LIGHT = ("lab/ell14/pol", "lab/ell14/hwp", "lab/ell14/qwp", "lab/maitai/1")


def lab_has(*devices: str) -> None:
    present = {d for si in server_instances(load_config()) for d in si.devices}
    missing = [d for d in devices if d not in present]
    assert not missing, f"lab.json has no {', '.join(missing)}: the Sardana tests need the whole lab"


class Door:
    """The lab's Door, driven as spock drives it."""

    def __init__(self, lab):
        import tango

        self.tango = tango
        self.name = f"tango://{lab.tango_host}/door/lab/1"
        self.proxy = lab.proxy("door/lab/1", timeout_ms=10000)
        self.lines: list[str] = []
        self.elapsed = 0.0

    def run(self, *argv, timeout: float = 60):
        """Run a macro to its end; its result (one string, a list or None); output in ``lines``."""
        self.lines = []
        t0 = time.monotonic()
        result = run_macro(self.name, *[str(a) for a in argv], say=self.lines.append, timeout=timeout)
        self.elapsed = time.monotonic() - t0
        return result

    def output(self) -> str:
        return "\n".join(self.lines)

    def start(self, *argv: str) -> None:
        """Start a macro and return while it runs (for stop/abort tests)."""
        self.proxy.RunMacro([str(a) for a in argv])
        wait_until(lambda: self.proxy.state() == self.tango.DevState.RUNNING, 10, interval=0.01,
                   what="the macro to start")

    def wait_done(self, timeout: float = 60):
        ended = (self.tango.DevState.ON, self.tango.DevState.ALARM)
        wait_until(lambda: self.proxy.state() in ended, timeout, interval=0.05, what="the macro to end")
        return self.proxy.state()


@pytest.fixture(scope="module")
def door(lab):
    return Door(lab)


@pytest.fixture(scope="module")
def laser(lab, door):
    """The laser emitting (shutter closed): the light-using macros open and close the shutter."""
    lab_has(*LIGHT)
    door.run("laser_on", timeout=120)
    return lab.proxy("lab/maitai/1")


@pytest.fixture(scope="module")
def truth(lab):
    with BenchClient(lab.port + 9) as bench:
        return bench.call("truth")


def optics_of(truth: dict) -> OpticsModel:
    """The bench's optics as configured (what the macros must find)."""
    return OpticsModel(hwp=WavePlate(0.5, offset_deg=truth["hwp"]["offset_deg"]),
                       qwp=WavePlate(0.25, offset_deg=truth["qwp"]["offset_deg"]),
                       pol=Polariser(offset_deg=truth["pol"]["offset_deg"], extinction=truth["pol"]["extinction"]))


def mounts(lab) -> dict[str, float]:
    return {m: lab.proxy(f"lab/ell14/{m}").read_attribute("Position").value for m in ("hwp", "qwp", "pol")}


def shutter_closed(lab) -> None:
    laser = lab.proxy("lab/maitai/1")
    wait_until(lambda: laser.read_attribute("Shutter").value is False, 3, what="the laser shutter to be closed")


def test_pool_elements_exist_for_every_configured_device(lab):
    from tango_db.sardana_setup import lab_devices, load_sardana_config, plan

    controllers, groups, _ = plan(load_sardana_config(), lab_devices(load_config()))
    expected = {e["name"] for c in controllers for e in c.get("elements", [])} | {g["name"] for g in groups}
    assert {"power", "meter_wavelength", "mg_power"} <= expected
    pool = lab.proxy("pool/lab/1")
    names = set()
    for attr in ("MotorList", "ExpChannelList", "MeasurementGroupList"):
        names |= {json.loads(s)["name"] for s in pool.read_attribute(attr).value or ()}
    assert expected <= names
    motor = lab.proxy("meter_wavelength")
    assert motor.TangoDevice == "lab/powermeter/1" and motor.PositionAttribute == "Wavelength"
    # the groups as sardana.json configures them: power plotted live, continuous triggers on time
    channels = {ch["name"]: ch for ctrl in json.loads(lab.proxy("mg_power").Configuration)["controllers"].values()
                for ch in ctrl["channels"].values()}
    assert channels["power"]["plot_type"] == 1 and channels["power"]["plot_axes"] == ["<mov>"]
    assert lab.proxy("mg_continuous").SoftwareSynchronizerInitialDomain == "Time"
    # A motor cannot be turned into a way round the laser's access rules (the Pool's account may
    # write the Shutter; whoever configures a motor may not).
    with pytest.raises(tango.DevFailed, match="PositionAttribute must be one of Position, Wavelength"):
        lab.proxy("hwp").write_attribute("PositionAttribute", "Shutter")
    assert lab.proxy("hwp").PositionAttribute == "Position"


def test_ct_averages_the_power_over_the_count_time(lab, door):
    door.run("ct", "1.2")
    assert door.elapsed >= 1.2
    power = lab.proxy("power")
    assert power.Source == "tango" and power.Samples >= 2, f"{power.Samples} sample(s) from {power.Source}"
    assert "power" in door.output()


def test_ct_reads_the_ring_when_the_meter_streams(lab, door):
    meter = lab.proxy("lab/powermeter/1")
    meter.write_attribute("Streaming", True)
    try:
        wait_until(lambda: meter.read_attribute("SampleRate").value > 10, 5, what="the meter to stream")
        rate = meter.read_attribute("SampleRate").value
        door.run("ct", "0.5")
        power = lab.proxy("power")
        assert power.Source == "ring"
        assert 0.5 * rate * 0.5 <= power.Samples <= 0.5 * rate * 1.5, f"{power.Samples} samples at {rate} Hz"
    finally:
        meter.write_attribute("Streaming", False)


def test_mv_and_wa(lab, door):
    door.run("mv", "meter_wavelength", "850")
    assert lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value == pytest.approx(850)
    door.run("wa")
    assert "meter_wavelength" in door.output() and "850" in door.output()


def test_ascan_is_recorded_by_sardanas_hdf5_recorder(lab, door):
    door.run("ascan", "meter_wavelength", "700", "900", "4", "0.2")
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan meter_wavelength 700.0 900.0 4 0.2")
    np.testing.assert_allclose(data["meter_wavelength"], [700, 750, 800, 850, 900], atol=0.5)
    assert len(data["power"]) == 5 and np.all(np.isfinite(data["power"]))  # dark noise when the laser is off


def _start_scan_and_wait_mid_way(lab, door) -> None:
    door.run("mv", "meter_wavelength", 900)
    door.start("ascan", "meter_wavelength", "700", "900", "20", "0.3")
    meter = lab.proxy("lab/powermeter/1")
    # the scan starts at 700 nm (the meter may be elsewhere before): past its second point
    wait_until(lambda: 710 <= meter.read_attribute("Wavelength").value <= 880, 15, what="the scan to pass 710 nm")


def test_stop_mid_scan_leaves_the_motors_still(lab, door):
    _start_scan_and_wait_mid_way(lab, door)
    door.proxy.StopMacro()
    door.wait_done(15)
    assert str(lab.proxy("meter_wavelength").state()) == "ON"
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan meter_wavelength 700.0 900.0 20")
    assert 0 < len(data["power"]) < 21  # stopped part way, what ran is recorded


def test_abort_mid_scan_leaves_the_motors_still(lab, door):
    _start_scan_and_wait_mid_way(lab, door)
    door.proxy.AbortMacro()
    door.wait_done(15)
    assert str(lab.proxy("meter_wavelength").state()) == "ON"
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan meter_wavelength 700.0 900.0 20")
    assert len(data["power"]) < 21  # aborted part way


def test_a_stop_sent_as_the_macro_starts_is_not_lost(lab, door):
    """Sardana ignores a Stop that arrives before the macro runs; stop_macro re-sends it.

    The Door goes RUNNING only when Sardana's thread takes the queued macro: stop_macro is called
    from then on (on a Door still ON it would find nothing to stop, and the scan would run on
    into the next test)."""
    door.proxy.RunMacro(["ascan", "meter_wavelength", "700", "900", "40", "0.05"])
    wait_until(lambda: door.proxy.state() in BUSY, 10, interval=0.005, what="the Door to take the macro")
    assert stop_macro(door.proxy, abort_after=20) == "stopped"
    assert str(door.proxy.state()) == "ON"
    assert str(lab.proxy("meter_wavelength").state()) == "ON"


def test_a_client_disconnecting_mid_macro_does_not_stop_it(lab, door):
    script = (
        "import tango,sys; d=tango.DeviceProxy('door/lab/1');"
        "d.RunMacro(['ascan','meter_wavelength','700','800','6','0.3']); sys.exit(0)"
    )
    subprocess.run([sys.executable, "-c", script], env=lab.env, check=True, timeout=30)
    wait_until(lambda: str(door.proxy.state()) == "RUNNING", 10, what="the macro to run")
    door.wait_done(60)
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan meter_wavelength 700.0 800.0 6")
    assert len(data["power"]) == 7


def test_bad_parameters_are_refused_before_anything_moves(lab, door):
    before = lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value
    with pytest.raises(MacroFailed) as failed:
        door.run("polarization_scan", "meter_wavelength", "0", "30", "2", "0.1")
    assert failed.value.how == "exception"
    assert any("at least 90 degrees" in line or "intervals" in line for line in failed.value.lines)
    assert lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value == before


def test_lab_status_and_setups(lab, door):
    door.run("lsenv")
    assert any(line.split()[:2] == ["JsonRecorder", "True"] for line in door.lines), door.lines  # the GUI's live plot
    assert not any(line.split()[:1] == ["_JsonRecorder"] for line in door.lines)  # sardana.json's comments stay there
    door.run("lab_status")
    out = door.output()
    assert "lab/powermeter/1" in out and "pool/lab/1" in out
    meter = lab.proxy("lab/powermeter/1")
    meter.write_attribute("Wavelength", 780.0)
    door.run("save_setup", "t1")
    meter.write_attribute("Wavelength", 910.0)
    door.run("restore_setup", "t1")
    assert meter.read_attribute("Wavelength").value == pytest.approx(780.0)


# ----------------------------------------------------------------------- the lab's macros, with light


def test_polarization_scan_fits_malus_law_where_the_bench_optics_put_it(lab, door, laser, truth):
    door.run("mv", "hwp", 0, "qwp", 0, "pol", 0)
    at = mounts(lab)
    optics = optics_of(truth)
    angles = np.linspace(0, 180, 19)
    for mount, k in (("pol", 1), ("hwp", 2)):
        fit = json.loads(door.run("polarization_scan", mount, 0, 180, 18, 0.2, timeout=120))
        assert fit["mount"] == mount and fit["points"] == 19 and fit["period_deg"] == 180 / k
        # where the configured offsets put the maximum, for the other mounts where they are
        p = [optics.transmitted_power(1.0, 800.0, *[a if m == mount else at[m] for m in ("hwp", "qwp", "pol")])
             for a in angles]
        expected = fit_malus(angles, np.array(p), k).theta_max_deg
        period = 180 / k
        assert (fit["angle_of_max_deg"] - expected + period / 2) % period - period / 2 == pytest.approx(0, abs=1.0)
        assert fit["extinction_ratio"] > 10
        assert f"{mount}: period {period:.0f} deg" in door.output()
        assert laser.read_attribute("Shutter").value is False  # it opened it, it closed it


def test_characterization_finds_the_configured_plates_and_offsets(lab, door, laser, truth):
    report = json.loads(door.run("polarization_characterization", 30, 0.1, 700, timeout=240))
    assert report["roles"] == {"hwp": "half-wave plate", "qwp": "quarter-wave plate", "pol": "polariser"}
    for mount in ("hwp", "qwp", "pol"):
        assert report["offsets_deg"][mount] == pytest.approx(truth[mount]["offset_deg"], abs=1.0), report
    shutter_closed(lab)


def test_wavelength_scan_waits_for_tuning_and_the_meter_follows(lab, door, laser, truth):
    door.run("mv", "wavelength_tracked", 1000)  # so that the first point needs a long tuning
    at = mounts(lab)
    curve = json.loads(door.run("wavelength_scan", 720, 880, 2, 0.3, timeout=120))
    np.testing.assert_allclose(curve["wavelength_nm"], [720, 800, 880], atol=0.6)
    assert lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value == pytest.approx(880)
    # each power is the one at its wavelength: laser gain curve x optics, read at the right wavelength
    optics = optics_of(truth)
    expected = [math.exp(-0.5 * ((nm - 800) / 120) ** 2) * optics.transmitted_power(1.0, nm, at["hwp"], at["qwp"], at["pol"])
                for nm in (720, 800, 880)]
    measured = np.array(curve["power_w"])
    np.testing.assert_allclose(measured / measured[1], np.array(expected) / expected[1], rtol=0.05)
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan wavelength_tracked 720.0 880.0 2")
    np.testing.assert_allclose(data["power"], measured)
    shutter_closed(lab)


def test_wavelength_tracked_moves_laser_and_meter(lab, door):
    lab_has("lab/maitai/1")
    door.run("mv", "wavelength_tracked", 850)
    assert lab.proxy("lab/maitai/1").read_attribute("Wavelength").value == pytest.approx(850, abs=0.6)
    assert lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value == pytest.approx(850)
    door.run("wm", "wavelength_tracked", "wavelength", "meter_wavelength")
    assert door.output().count("850") >= 3, door.output()
    door.run("mv", "wavelength_tracked", 800)


@pytest.mark.parametrize("how", ["StopMacro", "AbortMacro"])
def test_stop_or_abort_mid_polarization_scan_closes_the_shutter(lab, door, laser, how):
    pol = lab.proxy("lab/ell14/pol")
    door.run("mv", "pol", 0)
    door.start("polarization_scan", "pol", 0, 180, 3, 0.2)
    wait_until(lambda: laser.read_attribute("Shutter").value, 5, what="the macro to open the shutter")
    wait_until(lambda: str(pol.state()) == "MOVING", 10, interval=0.005, what="the mount to move")
    door.proxy.command_inout(how)
    door.wait_done(15)
    shutter_closed(lab)
    wait_until(lambda: str(pol.state()) == "ON", 2, what="the mount to be still")
    here = pol.read_attribute("Position").value
    time.sleep(0.3)  # a motor left moving would be elsewhere by now (a 60 deg step takes ~0.2 s)
    assert pol.read_attribute("Position").value == pytest.approx(here, abs=0.01)
    assert lab.proxy("pol").state() == door.tango.DevState.ON


def test_waveplate_calibration_stops_and_resumes_where_it_stopped(lab, door, laser):
    folder = lab.home / "scans"
    before = set(folder.glob("waveplate_calibration_*.jsonl"))
    door.start("waveplate_calibration", 800, 800, 0, 90, 0.1)  # 2 x 2 x 2 = 8 points
    path = wait_until(lambda: list(set(folder.glob("waveplate_calibration_*.jsonl")) - before), 10)[0]
    wait_until(lambda: path.read_text().count("\n") >= 3, 30, what="3 points measured")
    door.proxy.StopMacro()
    door.wait_done(15)
    shutter_closed(lab)
    done = path.read_text().splitlines()
    assert 3 <= len(done) < 8
    estimate = next(line for line in door.proxy.read_attribute("Output").value if "points to measure" in line)
    assert estimate.startswith("8 points to measure, about")
    estimate_s = float(estimate.split("about")[1].split()[0])

    assert door.run("waveplate_calibration", 0, 0, 0, 1, 1, True, timeout=60) == str(path)
    assert f"resuming {path} at point {len(done) + 1}/8" in door.output()
    per_point_s = door.elapsed / (8 - len(done))
    assert 0.25 < estimate_s / 8 / per_point_s < 4, f"estimated {estimate_s} s for 8 points, took {per_point_s:.2f} s each"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.read_text().splitlines()[: len(done)] == done  # what was measured is kept
    assert [r["point"] for r in rows] == list(range(8))  # nothing twice, nothing skipped
    assert {(r["pol"], r["hwp"], r["qwp"]) for r in rows} == {(p, h, q) for p in (0, 90) for h in (0, 90) for q in (0, 90)}
    assert all(r["wavelength_nm"] == 800 and math.isfinite(r["power_w"]) for r in rows)
    shutter_closed(lab)
    with pytest.raises(MacroFailed, match="nothing to resume"):
        door.run("waveplate_calibration", 0, 0, 0, 1, 1, True)


# ----------------------------------------------------------------------- camera and DataWriter


def spot_centre(frame: np.ndarray) -> tuple[float, float]:
    """(column, row) centroid of the pixels above half the frame's maximum."""
    background = np.median(frame)
    bright = frame > background + (frame.max() - background) / 2
    rows, cols = np.nonzero(bright)
    return float(cols.mean()), float(rows.mean())


def test_stage_camera_raster_records_one_frame_per_point(lab, door, laser, truth):
    lab_has("lab/esp300/x", "lab/esp300/y", "lab/camera/1", "lab/datawriter/1")
    door.run("mv", "hwp", 0, "qwp", 0, "pol", 0)  # light through to the camera
    assert door.run("stage_camera_raster", -1, 1, 1, -1, 1, 1, 0.05, timeout=120) is None
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("mesh stage_x -1.0 1.0 1 stage_y -1.0 1.0 1 0.05")
    refs = frames_of(data["camera"])
    assert len(refs) == 4 and len({f for f, _, _ in refs}) == 1 and [i for _, _, i in refs] == [0, 1, 2, 3]
    file, dataset, _ = refs[0]
    with h5py.File(file, "r") as f:
        frames = f[dataset][()]
    assert frames.shape[0] == 4  # one frame per point, no more
    for frame, x, y in zip(frames, data["stage_x"], data["stage_y"], strict=True):
        expected = (truth["spot_origin_px"][0] + x * truth["px_per_mm"], truth["spot_origin_px"][1] + y * truth["px_per_mm"])
        assert spot_centre(frame) == pytest.approx(expected, abs=3)  # this point's frame, not another's
    shutter_closed(lab)
    assert not lab.proxy("lab/datawriter/1").read_attribute("Recording").value  # its own recording, stopped


def test_camera_channel_in_ct_and_ascan_gives_frame_references(lab, door):
    lab_has("lab/camera/1", "lab/datawriter/1")
    door.run("ct", 0.05, "mg_camera")
    (file, dataset, index), = frames_of([line.split("=", 1)[1].strip() for line in door.lines if "camera" in line])
    with h5py.File(file, "r") as f:
        assert f[dataset].shape[0] == 1 and index == 0
    door.run("senv", "ActiveMntGrp", "mg_camera")
    try:
        door.run("ascan", "stage_x", 0, 1, 2, 0.05, timeout=60)
    finally:
        door.run("senv", "ActiveMntGrp", "mg_power")
    data = last_entry(scan_file(lab))
    refs = frames_of(data["camera"])
    assert [i for _, _, i in refs] == [0, 1, 2]
    with h5py.File(refs[0][0], "r") as f:
        assert f[refs[0][1]].shape[0] == 3
    assert len(data["power"]) == 3


def test_a_count_with_the_camera_live_is_refused_before_anything_moves(lab, door):
    """The camera's live view (StartAcquisition with NbFrames 0) owns the camera: a scan used to
    move its first point and then fail at the first Snap; it is refused at its preparation with
    what to do, and runs once the live view is stopped."""
    lab_has("lab/camera/1", "lab/datawriter/1")
    camera = lab.proxy("lab/camera/1")
    frames_before = camera.read_attribute("NbFrames").value
    camera.write_attribute("NbFrames", 0)
    camera.command_inout("StartAcquisition")
    try:
        wait_until(lambda: camera.read_attribute("Live").value, 5, what="the live view to run")
        with pytest.raises(MacroFailed) as failed:
            door.run("ct", 0.05, "mg_camera")
        assert any("acquiring live" in line and "StopAcquisition" in line for line in failed.value.lines), \
            failed.value.lines
    finally:
        camera.command_inout("StopAcquisition")
        camera.write_attribute("NbFrames", frames_before)
    door.run("ct", 0.05, "mg_camera")
    assert any("h5file://" in line for line in door.lines if "camera" in line), door.lines


def test_camera_channel_without_referencing_gives_the_frame_and_refuses_a_binned_preview(lab, door):
    lab_has("lab/camera/1", "lab/datawriter/1")
    camera = lab.proxy("lab/camera/1")
    set_camera_value_ref(lab, False)
    try:
        door.run("ct", 0.05, "mg_camera")
        (camera_line,) = [line for line in door.lines if "camera" in line]
        assert "h5file://" not in camera_line and "nodata" not in camera_line, camera_line
        camera.write_attribute("PreviewBinning", 2)
        with pytest.raises(MacroFailed) as failed:
            door.run("ct", 0.05, "mg_camera")
        assert any("PreviewBinning is 2" in line for line in failed.value.lines), failed.value.lines
    finally:
        camera.write_attribute("PreviewBinning", 1)
        set_camera_value_ref(lab, True)


def test_record_start_and_stop_record_the_streams(lab, door):
    lab_has("lab/datawriter/1", "lab/powermeter/1")
    meter, writer = lab.proxy("lab/powermeter/1"), lab.proxy("lab/datawriter/1")
    meter.write_attribute("Streaming", True)
    streaming_since = time.time()
    try:
        # streaming, with more history in the ring than the pre-trigger asks for (0.2 s): the ring
        # starts when streaming does
        wait_until(lambda: meter.read_attribute("SampleRate").value > 10 and time.time() - streaming_since > 0.6,
                   5, what="the meter to stream for 0.6 s")
        t0 = time.time()
        path = door.run("record_start", "sardana_test", 0.2)
        assert path.endswith(".h5") and f"recording to {path}" in door.output()
        assert writer.read_attribute("Recording").value
        wait_until(lambda: time.time() - t0 > 1.0, 2)
        assert door.run("record_stop") == path
        t1 = time.time()
        assert not writer.read_attribute("Recording").value
    finally:
        meter.write_attribute("Streaming", False)
    with h5py.File(path, "r") as f:
        ts = f["entry/instrument/lab_powermeter_1/power/timestamp"][()] / 1e9
        started = datetime.fromisoformat(f["entry/start_time"][()].decode()).timestamp()
    assert len(ts) > 20
    # the pre-trigger's history is in: samples from ~0.2 s before the DataWriter started (measured
    # from its own start, not from the test's clock before the macro: the Door's latency varies)
    assert started - 1.5 < ts[0] < started - 0.1, (ts[0] - started, t0)
    assert ts[-1] <= t1


# ----------------------------------------------------------------------- restart


def test_second_up_on_the_same_database_and_the_laser_warms_up_through_the_door(lab_factory):
    """`tangodaq up` again on a database where the Pool's elements exist: the elements step waits
    for them and changes nothing; then the cold laser (a fresh bench) warms up under laser_on."""
    lab_has(*LIGHT)
    private = lab_factory()
    down = private.tangodaq("down", timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    again = private.up()
    assert "all elements exist" in again.stdout and "environment already set" in again.stdout, again.stdout
    door = Door(private)
    laser = private.proxy("lab/maitai/1")
    assert laser.read_attribute("WarmupPercent").value < 100
    door.run("laser_on", timeout=60)
    percents = [float(line.split()[2]) for line in door.lines if line.startswith("warming up:")]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100, door.lines
    assert door.lines[-1].startswith("laser on:")
    assert laser.read_attribute("Emission").value and laser.read_attribute("Shutter").value is False
    door.run("laser_off")
    assert not laser.read_attribute("Emission").value and laser.read_attribute("Shutter").value is False
