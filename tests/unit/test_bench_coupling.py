"""The bench couples the simulators: laser → plates → polariser → meter, stage → camera spot."""

from __future__ import annotations

import math

import pytest

from deviceservers.bench.control import BenchClient
from deviceservers.bench.server import Bench, ports_from_config
from tests.waiting import wait_until


def send(sim, *commands: bytes) -> list[bytes]:
    """Talk to a simulator with the instrument's real bytes; return what it answered."""
    conn = sim.connect()
    out = []
    for c in commands:
        conn.write(c)
        out.append(conn.read(200, 0.5))
    conn.close()
    return out


@pytest.fixture
def bench():
    b = Bench(fast=True, seed=1)
    b.serve({name: ("127.0.0.1", 0) for name in b.simulators}, control=("127.0.0.1", 0))
    yield b
    b.close()


def laser_on_shutter_open(bench: Bench) -> None:
    bench.maitai.finish_warmup()
    send(bench.maitai, b"ON\n", b"SHUT 1\n")
    wait_until(lambda: bench.maitai.emission and bench.maitai.shutter_open, 5)


def test_dark_until_emission_and_shutter(bench):
    assert bench.transmitted_power()[0] == 0.0
    laser_on_shutter_open(bench)
    power, nm = bench.transmitted_power()
    assert power > 0 and nm == pytest.approx(800, abs=1)


def test_meter_reads_the_beam_through_the_optics(bench):
    laser_on_shutter_open(bench)
    expected, _ = bench.transmitted_power()
    bench.meter.noise = 0.0
    reading, _ = bench.meter.measure()
    assert math.isclose(reading, expected, rel_tol=1e-3)


def test_rotating_the_half_wave_plate_changes_the_meter_reading(bench):
    laser_on_shutter_open(bench)
    before = bench.transmitted_power()[0]
    # ELL14 move absolute of mount 2 by 45 degrees: 143360/8 pulses, 8 hex digits
    send(bench.ell14, b"2ma%08X" % (143360 // 8))
    wait_until(lambda: abs(bench.ell14.position_degrees("2") - 45) < 0.01, 5)
    after = bench.transmitted_power()[0]
    assert after < 0.2 * before  # the HWP at ~45° turns the beam toward the polariser's blocked axis


def test_scene_follows_the_stage(bench):
    s0 = bench.scene()
    send(bench.esp300, b"1MO\r", b"1PA1.5\r")
    wait_until(lambda: not bench.esp300.is_moving(1) and abs(bench.esp300.position(1) - 1.5) < 1e-6, 10)
    s1 = bench.scene()
    assert s1["spot_x_px"] - s0["spot_x_px"] == pytest.approx(1.5 * bench.optics.px_per_mm)


def test_control_port_injects_faults_and_reports(bench):
    with BenchClient(bench.control.port) as client:
        client.call("unplug", instrument="maitai")
        assert bench.maitai.faults.unplugged
        status = client.call("status")
        assert status["instruments"]["maitai"]["unplugged"]
        client.call("plug", instrument="maitai")
        client.call("interlock", open=True)
        assert bench.maitai.interlock_open_now
        client.call("stall", address="3")
        assert "3" in bench.ell14.mechanical_timeout
        truth = client.call("truth")
        assert truth["hwp"]["offset_deg"] == bench.optics.hwp.offset_deg
        with pytest.raises(RuntimeError, match="no instrument 'toaster'"):
            client.call("mute", instrument="toaster")


def test_ports_come_from_the_lab_configuration():
    config = {"servers": {"MaiTai": {"lab": {"MaiTai": {"lab/maitai/1": {"properties": {
        "SerialURL": ["socket://127.0.0.1:4003"]}}}}}, "Ell14": {"lab": {"Ell14": {
            "lab/ell14/hwp": {"properties": {"SerialURL": ["socket://127.0.0.1:4002"]}},
            "lab/ell14/pol": {"properties": {"SerialURL": ["socket://127.0.0.1:4002"]}}}}}}}
    assert ports_from_config(config) == {"maitai": ("127.0.0.1", 4003), "ell14": ("127.0.0.1", 4002)}
