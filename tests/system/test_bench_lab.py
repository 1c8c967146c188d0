"""The simulated lab on the virtual bench: devices reach their instruments over TCP, and a fault
injected at the bench hits exactly the device behind it, which recovers on its own."""

from __future__ import annotations

import json

import pytest
import tango

from deviceservers.bench.control import BenchClient
from deviceservers.bench.server import CONTROL_PORT_OFFSET
from tango_db.environment import split_tango_host
from tests.waiting import wait_until

pytestmark = pytest.mark.system

INSTRUMENT_DEVICES = {
    "esp300": ["lab/esp300/x", "lab/esp300/y", "lab/esp300/z"],
    "ell14": ["lab/ell14/hwp", "lab/ell14/pol", "lab/ell14/qwp"],
    "maitai": ["lab/maitai/1"],
    "newport1830c": ["lab/powermeter/1"],
}
ALL_DEVICES = [d for devs in INSTRUMENT_DEVICES.values() for d in devs] + ["lab/camera/1", "lab/datawriter/1"]


@pytest.fixture(scope="module")
def bench(lab):
    with BenchClient(lab.port + CONTROL_PORT_OFFSET) as client:
        yield client


def test_every_device_answers_and_none_is_in_fault(lab):
    for name in ALL_DEVICES:
        proxy = lab.proxy(name)
        wait_until(lambda p=proxy: p.State() != tango.DevState.FAULT, 20, what=f"{name} out of FAULT")
        state = proxy.State()
        assert state in (tango.DevState.ON, tango.DevState.OFF, tango.DevState.RUNNING, tango.DevState.ALARM), name


def test_serial_urls_point_at_the_bench(lab, bench):
    status = bench.call("status")
    db = tango.Database(*split_tango_host(lab.tango_host))
    for instrument, devices in INSTRUMENT_DEVICES.items():
        url = status["instruments"][instrument]["url"]
        for dev in devices:
            assert list(db.get_device_property(dev, "SerialURL")["SerialURL"]) == [url]


@pytest.mark.parametrize("instrument", ["maitai", "ell14"])
def test_dropped_connection_faults_exactly_that_device_then_recovers(lab, bench, instrument):
    victims = INSTRUMENT_DEVICES[instrument]
    bystanders = [d for i, devs in INSTRUMENT_DEVICES.items() if i != instrument for d in devs]
    bench.call("unplug", instrument=instrument)
    try:
        for name in victims:
            p = lab.proxy(name)
            wait_until(lambda p=p: p.State() == tango.DevState.FAULT, 20, what=f"{name} in FAULT")
            assert "No communication" in p.Status() or "not connected" in p.Status()
        for name in bystanders:
            assert lab.proxy(name).State() != tango.DevState.FAULT, name
    finally:
        bench.call("plug", instrument=instrument)
    for name in victims:
        p = lab.proxy(name)
        wait_until(lambda p=p: p.State() != tango.DevState.FAULT, 30, what=f"{name} recovered")
        assert p.CommunicationOk


def test_interlock_trips_the_laser_into_alarm_and_clears(lab, bench):
    laser = lab.proxy("lab/maitai/1")
    bench.call("interlock", open=True)
    try:
        wait_until(lambda: laser.State() == tango.DevState.ALARM, 15, what="laser ALARM on interlock")
        assert "nterlock" in laser.Status()
    finally:
        bench.call("interlock", open=False)
    wait_until(lambda: laser.State() != tango.DevState.ALARM, 30, what="laser out of ALARM")


def test_bench_truth_is_what_the_demo_fits(bench):
    truth = bench.call("truth")
    assert json.dumps(truth)  # plain JSON for the calibration tests
    assert {truth["hwp"]["address"], truth["pol"]["address"], truth["qwp"]["address"]} == {"2", "3", "8"}
