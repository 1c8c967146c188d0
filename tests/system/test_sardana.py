"""Sardana on the lab: Pool elements from tango_db/sardana.json, macros run through the Door as
spock would (RunMacro, Door state, Output/Result), files from Sardana's own HDF5 recorder.

Tests needing instruments that are not in lab.json yet skip with the missing device named."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tango_db.config import load_config, server_instances

pytestmark = pytest.mark.system


def lab_has(*devices: str) -> None:
    present = {d for si in server_instances(load_config()) for d in si.devices}
    missing = [d for d in devices if d not in present]
    if missing:
        pytest.skip(f"lab.json has no {', '.join(missing)} yet")


class Door:
    def __init__(self, lab):
        import tango

        self.tango = tango
        self.proxy = lab.proxy("door/lab/1", timeout_ms=10000)

    def start(self, *argv: str) -> None:
        self.proxy.RunMacro([str(a) for a in argv])
        self.wait_for(lambda s: s != self.tango.DevState.ON, 10, "the macro to start")

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.proxy.state()
            if predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (door {self.proxy.state()})")

    def wait_done(self, timeout: float = 60):
        return self.wait_for(lambda s: s in (self.tango.DevState.ON, self.tango.DevState.ALARM), timeout,
                             "the macro to end")

    def run(self, *argv: str, timeout: float = 60) -> list[str]:
        t0 = time.monotonic()
        self.proxy.RunMacro([str(a) for a in argv])
        time.sleep(0.05)
        state = self.wait_done(timeout)
        self.elapsed = time.monotonic() - t0
        error = self.proxy.read_attribute("Error").value
        assert state == self.tango.DevState.ON, f"{argv} ended {state}: {error}"
        deadline = time.monotonic() + 2.0  # the Result may land just after the state
        result = list(self.proxy.read_attribute("Result").value or [])
        while not result and time.monotonic() < deadline:
            time.sleep(0.05)
            result = list(self.proxy.read_attribute("Result").value or [])
        self.last_output = self.output()
        return result

    def output(self) -> str:
        return "\n".join(self.proxy.read_attribute("Output").value or [])


@pytest.fixture(scope="module")
def door(lab):
    return Door(lab)


def scan_file(lab) -> Path:
    return lab.home / "scans" / "scans.h5"


def last_entry(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        name = sorted(f, key=lambda n: int(n.removeprefix("entry")))[-1]
        m = f[name]["measurement"]
        return {k: m[k][()] for k in m if k != "pre_scan_snapshot"} | {"title": f[name]["title"][()].decode()}


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


def test_ct_averages_the_power_over_the_count_time(lab, door):
    door.run("ct", "2.0")
    assert door.elapsed >= 2.0
    power = lab.proxy("power")
    assert power.Samples >= 2, f"{power.Samples} sample(s) from {power.Source} in 2 s"
    assert power.Source in ("tango", "ring")
    assert "power" in door.output()


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


def test_stop_mid_scan_leaves_the_motors_still(lab, door):
    door.start("ascan", "meter_wavelength", "700", "900", "20", "0.3")
    time.sleep(1.0)
    door.proxy.StopMacro()
    door.wait_done(15)
    motor = lab.proxy("meter_wavelength")
    assert str(motor.state()) == "ON"
    time.sleep(0.5)
    data = last_entry(scan_file(lab))
    assert 0 < len(data["power"]) < 21  # stopped part way, what ran is recorded


def test_abort_mid_scan_leaves_the_motors_still(lab, door):
    door.start("ascan", "meter_wavelength", "700", "900", "20", "0.3")
    time.sleep(1.0)
    door.proxy.AbortMacro()
    door.wait_done(15)
    assert str(lab.proxy("meter_wavelength").state()) == "ON"


def test_a_client_disconnecting_mid_macro_does_not_stop_it(lab, door):
    script = (
        "import tango,sys; d=tango.DeviceProxy('door/lab/1');"
        "d.RunMacro(['ascan','meter_wavelength','700','800','6','0.3']); sys.exit(0)"
    )
    subprocess.run([sys.executable, "-c", script], env=lab.env, check=True, timeout=30)
    door.wait_for(lambda s: str(s) == "RUNNING", 10, "the macro to run")
    door.wait_done(60)
    data = last_entry(scan_file(lab))
    assert data["title"].startswith("ascan meter_wavelength 700.0 800.0 6")
    assert len(data["power"]) == 7


def test_bad_parameters_are_refused_before_anything_moves(lab, door):
    before = lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value
    door.proxy.RunMacro(["polarization_scan", "meter_wavelength", "0", "30", "2", "0.1"])
    time.sleep(0.05)
    door.wait_done(20)
    error = "\n".join(door.proxy.read_attribute("Error").value or [])
    assert "at least 90 degrees" in error or "intervals" in error
    assert lab.proxy("lab/powermeter/1").read_attribute("Wavelength").value == before


def test_lab_status_and_setups(lab, door):
    door.run("lab_status")
    out = door.output()
    assert "lab/powermeter/1" in out and "pool/lab/1" in out
    meter = lab.proxy("lab/powermeter/1")
    meter.write_attribute("Wavelength", 780.0)
    door.run("save_setup", "t1")
    meter.write_attribute("Wavelength", 910.0)
    door.run("restore_setup", "t1")
    assert meter.read_attribute("Wavelength").value == pytest.approx(780.0)


# ----------------------------------------------------------------------- need the bench's optics


def test_malus_fit_recovers_the_polariser(lab, door):
    lab_has("lab/ell14/pol", "lab/ell14/hwp", "lab/ell14/qwp", "lab/maitai/1")
    door.run("laser_on", timeout=300)
    result = door.run("polarization_scan", "pol", "0", "180", "18", "0.2", timeout=180)
    assert result, door.last_output
    result = json.loads(result[0])
    assert result["period_deg"] == 180
    assert result["extinction_ratio"] > 10


def test_characterization_finds_the_configured_plates_and_offsets(lab, door):
    lab_has("lab/ell14/pol", "lab/ell14/hwp", "lab/ell14/qwp", "lab/maitai/1")
    door.run("laser_on", timeout=300)
    report = json.loads(door.run("polarization_characterization", "20", "0.2", "700", timeout=600)[0])
    assert report["roles"] == {"hwp": "half-wave plate", "qwp": "quarter-wave plate", "pol": "polariser"}
    truth = {"hwp": 3.2, "qwp": -1.7, "pol": 5.0}  # deviceservers/bench/optics.py OpticsModel defaults
    for mount, offset in truth.items():
        assert report["offsets_deg"][mount] == pytest.approx(offset, abs=1.0)
    assert lab.proxy("lab/maitai/1").read_attribute("Shutter").value is False  # it opened it, it closed it
