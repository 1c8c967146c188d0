"""The 1830-C driver against its simulator, with the logged replies of real units."""

from __future__ import annotations

import math

import pytest

from deviceservers.common import protocol_sim
from deviceservers.common.serial_link import (
    InstrumentError,
    LinkSettings,
    ProtocolError,
    SerialLink,
    wait_connected,
)
from deviceservers.Newport1830C import driver
from deviceservers.Newport1830C.simulator import RANGE_FULL_SCALE, Newport1830CSimulator, format_sci

URL = "sim://newport1830c?reply_delay_s=0&reading_delay_s=0&noise=0&seed=1"


@pytest.mark.parametrize(
    ("reply", "watts"),
    [("+.11E-9", 0.11e-9), ("5E-9", 5e-9), ("+.75E-9", 0.75e-9), ("1.234E-6", 1.234e-6)],
)
def test_logged_real_readings_parse(reply, watts):
    r = driver.parse_power(reply)
    assert r.valid and math.isclose(r.watts, watts)


@pytest.mark.parametrize("text", ["ERR", "OVER", "UNDER", "SAT"])
def test_text_readings_are_not_numbers(text):
    r = driver.parse_power(text)
    assert not r.valid and r.text == text


@pytest.mark.parametrize("garbage", ["", "12.3", "1,2E-3", "#@!", "E-9"])
def test_garbage_readings_raise(garbage):
    with pytest.raises(ProtocolError):
        driver.parse_power(garbage)


def test_status_byte_decoding():
    s = driver.StatusByte(4 | 8 | 128)
    assert s.saturated and s.over_range and s.reading_ready and not s.command_error
    assert s.describe() == "saturated, over range, reading ready"
    assert driver.watts_to_dbm(1e-3) == 0.0 and driver.watts_to_dbm(0.0) is None


def test_simulator_formats_like_the_meter():
    for watts in (1.234e-6, 5e-9, 0.11e-9):
        assert math.isclose(float(format_sci(watts)), watts, rel_tol=1e-3)
        assert driver.is_scientific(format_sci(watts))


@pytest.fixture
def link():
    link = SerialLink(LinkSettings(url=URL, timeout_s=0.5))
    link.add_connect_hook(driver.connect)
    link.start()
    assert wait_connected(link, 5), link.health.down_reason
    yield link
    link.close()


@pytest.fixture
def sim(link) -> Newport1830CSimulator:
    return protocol_sim.get_simulator(URL)


def test_connect_turns_echo_off_and_selects_watts(link, sim):
    assert sim.echo is False and sim.units == 1


def test_every_setting_round_trips(link, sim):
    run = link.run
    assert run(lambda p: driver.set_wavelength(p, 632.8)) == 633
    assert run(driver.read_wavelength) == 633 and sim.wavelength_nm == 633
    for i in range(9):
        run(lambda p, i=i: driver.set_range(p, i))
        assert run(driver.read_range) == i
    for i, name in enumerate(driver.FILTERS):
        run(lambda p, i=i: driver.set_filter(p, i))
        assert run(driver.read_filter) == i, name
    for on in (True, False):
        run(lambda p, on=on: driver.set_attenuator(p, on))
        assert run(driver.read_attenuator) is on
        run(lambda p, on=on: driver.set_zero(p, on))
        assert run(driver.read_zero) is on
    run(lambda p: driver.set_beeper(p, False))
    assert sim.beeper is False
    run(lambda p: driver.set_hold(p, True))
    assert sim.hold is True
    run(lambda p: driver.set_hold(p, False))
    run(lambda p: driver.set_backlight(p, 2))
    assert sim.backlight == 2
    run(lambda p: driver.set_lockout(p, True))
    assert sim.lockout is True
    run(lambda p: driver.set_wavelength(p, 800))  # the simulated beam is at 800 nm
    run(driver.store_reference)
    assert math.isclose(sim.reference_w, 1.234e-6, rel_tol=0.01)
    assert run(driver.read_units) == 1


def test_refused_values_raise_and_clear_the_error(link, sim):
    with pytest.raises(InstrumentError, match="outside 300-1100"):
        link.run(lambda p: driver.set_wavelength(p, 5000))
    with pytest.raises(InstrumentError, match="range 9 does not exist"):
        link.run(lambda p: driver.set_range(p, 9))
    with pytest.raises(InstrumentError, match="unknown command"):
        link.run(lambda p: driver.send(p, "X7"))
    assert sim.error_bits == 0  # cleared with CS so later checks are not polluted
    assert link.run(driver.read_status).raw & 3 == 0


def test_reading_follows_power_and_wavelength_responsivity(link, sim):
    r = link.run(driver.read_power)
    assert math.isclose(r.watts, 1.234e-6, rel_tol=1e-3)
    link.run(lambda p: driver.set_wavelength(p, 600))  # true 800 nm, meter told 600 nm
    r = link.run(driver.read_power)
    assert math.isclose(r.watts, 1.234e-6 * 0.52 / 0.37, rel_tol=1e-3)


def test_front_panel_unit_change_is_undone(link, sim):
    sim.units = 3  # somebody pressed UNITS: D? now answers dBm
    r = link.run(driver.read_power)
    assert math.isclose(r.watts, 1.234e-6, rel_tol=1e-3) and sim.units == 1


def test_over_range_and_saturation_flags(link, sim):
    link.run(lambda p: driver.set_range(p, 1))  # 2.5 nW full scale
    r = link.run(driver.read_power)
    status = link.run(driver.read_status)
    assert status.over_range and math.isclose(r.watts, RANGE_FULL_SCALE[0])
    sim.text_errors = True
    assert link.run(driver.read_power).text == "OVER"
    sim.incident_power_w = 0.05
    link.run(lambda p: driver.set_range(p, 0))
    assert link.run(driver.read_status).saturated
    assert link.run(driver.read_power).text == "SAT"
    link.run(lambda p: driver.set_attenuator(p, True))
    assert not link.run(driver.read_status).saturated
    assert math.isclose(link.run(driver.read_power).watts, 0.05, rel_tol=1e-3)


def test_zero_subtracts_the_stored_offset(link, sim):
    link.run(lambda p: driver.set_zero(p, True))
    assert abs(link.run(driver.read_power).watts) < 1e-9
    sim.incident_power_w = 2.234e-6
    assert math.isclose(link.run(driver.read_power).watts, 1.0e-6, rel_tol=1e-2)


def test_reply_delay_is_realistic_by_default():
    sim = Newport1830CSimulator()
    assert sim.reading_delay_s >= 0.1 and sim.echo is True
