"""The Mai Tai driver against its simulator, over both link settings the lab uses.

RS-232 (9600 baud, XON/XOFF) through the in-process ``sim://`` port, and the USB-style link
(115200, no flow control) through ``socket://`` as a terminal server serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deviceservers.common import protocol_sim
from deviceservers.common.serial_link import (
    LinkSettings,
    LinkTimeout,
    ProtocolError,
    SerialLink,
    wait_connected,
)
from deviceservers.common.tcp_server import SimulatorServer
from deviceservers.MaiTai import driver
from deviceservers.MaiTai.simulator import IDN, MaiTaiSimulator
from tests.waiting import wait_until

SIM_OPTIONS = "reply_delay_s=0&warmup_s=0.4&tuning_rate_nm_s=400&shutter_lag_s=0.15"


class Laser:
    """A driver-level handle: the simulator and a function running driver calls on the link."""

    def __init__(self, sim: MaiTaiSimulator, link: SerialLink) -> None:
        self.sim = sim
        self.link = link

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.link.run(lambda port: fn(port, *args), idempotent=False, description=fn.__name__)

    def raw(self, text: str) -> str:
        return self.link.run(lambda port: port.query(text, 0.5))


@pytest.fixture(params=["rs232-sim", "usb-socket"])
def laser(request: pytest.FixtureRequest) -> Iterator[Laser]:
    url = f"sim://maitai?{SIM_OPTIONS}"
    sim = protocol_sim.get_simulator(url)
    assert isinstance(sim, MaiTaiSimulator)
    server = None
    if request.param == "rs232-sim":
        settings = LinkSettings(url=url, baudrate=9600, flow_control="xonxoff", timeout_s=0.5, retries=0)
    else:
        server = SimulatorServer(sim).start()
        settings = LinkSettings(url=server.url, baudrate=115200, flow_control="none", timeout_s=0.5, retries=0)
    link = SerialLink(settings)
    link.start()
    assert wait_connected(link, 5), link.health.down_reason
    yield Laser(sim, link)
    link.close()
    if server is not None:
        server.close()


def warm_up(laser: Laser) -> None:
    laser(driver.emission_on)  # at 0 % this starts the warm-up
    wait_until(lambda: laser(driver.read_warmup_percent) == 100.0, 5, what="warm-up to 100 %")


# ---------------------------------------------------------------------- parsing (logged replies)
def test_parse_logged_replies_strips_units() -> None:
    assert driver.parse_number("820nm", "nm") == 820.0
    assert driver.parse_number("3.000W", "W") == 3.0
    assert driver.parse_number("100.00%", "%") == 100.0
    assert driver.parse_number("13.43W", "W") == 13.43
    assert driver.parse_number("7.26%", "%") == 7.26
    assert driver.parse_number("0", "") == 0.0
    with pytest.raises(ProtocolError):
        driver.parse_number("3.000W", "nm")  # the reply to another query
    with pytest.raises(ProtocolError):
        driver.parse_number("nm", "nm")


def test_status_byte_decoding_and_emission_bit() -> None:
    logged = driver.StatusByte(8)  # logged from a lab unit that was emitting
    assert not logged.emission  # manual's bit 6
    assert driver.StatusByte(8, emission_bit=3).emission  # that unit needs EmissionBit = 3
    stb = driver.StatusByte(0b1010_0011)
    assert stb.command_error and stb.execution_error and stb.system_error and stb.any_error
    assert "interlock" in stb.describe()
    assert driver.StatusByte(0).describe() == "no flags"


def test_parse_error_queue_entries() -> None:
    assert driver.parse_error('0,"No error"') == driver.LaserError(0, "No error")
    assert driver.parse_error('-221,"Settings conflict"').code == -221
    assert str(driver.parse_error("310")) == "error 310"
    with pytest.raises(ProtocolError):
        driver.parse_error("garbage")


# ---------------------------------------------------------------------- commands against the simulator
def test_identity_and_read_only_values(laser: Laser) -> None:
    assert laser(driver.identify) == IDN
    assert laser(driver.read_wavelength_limits) == (690.0, 1040.0)
    assert laser(driver.read_mode) == "POW"
    assert laser(driver.read_pump_power_setting) == 13.43
    assert laser(driver.read_humidity) == pytest.approx(7.26, abs=0.1)
    assert laser(driver.read_watchdog) == 0.0
    assert laser(driver.drain_errors) == []


def test_commands_are_case_insensitive_with_long_and_short_forms(laser: Laser) -> None:
    for query in ("WAVELENGTH?", "wavelength?", "WAV?", "wav?", "WAVelength?"):
        assert laser.raw(query) == "800nm"
    assert laser.raw("READ:WAVELENGTH?") == "800nm"
    assert laser.raw(":read:wav?") == "800nm"
    assert laser.raw("SHUTTER?") == "0"
    assert laser.raw("POWER?") == "0.000W"
    assert laser.raw("*idn?") == IDN
    laser.link.run(lambda port: port.write("shut 1"))
    wait_until(lambda: laser.raw("SHUT?") == "1", 2, what="shutter open after 'shut 1'")
    # a half-abbreviated node is not SCPI: the laser stays silent and flags a command error
    with pytest.raises(LinkTimeout):
        laser.raw("WAVEL?")
    stb = laser(driver.read_status_byte)
    assert stb.command_error and stb.any_error
    assert [e.code for e in laser(driver.drain_errors)] == [-113]
    assert not laser(driver.read_status_byte).any_error


def test_warmup_refuses_on_between_1_and_99_percent(laser: Laser) -> None:
    laser.sim.warmup_s = 2.0
    assert laser(driver.read_warmup_percent) == 0.0
    laser(driver.emission_on)  # starts the warm-up
    pct = wait_until(lambda: laser(driver.read_warmup_percent), 2, what="warm-up started")
    assert 0 < pct < 100
    laser(driver.emission_on)
    stb = laser(driver.read_status_byte)
    assert stb.execution_error and stb.any_error and not stb.emission
    errors = laser(driver.drain_errors)
    assert len(errors) == 1 and errors[0].code == -221 and "warming up" in errors[0].text
    assert not laser(driver.read_status_byte).any_error
    laser.sim.finish_warmup()
    assert laser(driver.read_warmup_percent) == 100.0
    laser(driver.emission_on)
    assert laser(driver.read_status_byte).emission
    assert laser(driver.read_pump_power) == 13.43


def test_emission_power_depends_on_wavelength_and_off(laser: Laser) -> None:
    warm_up(laser)
    assert laser(driver.read_power) == 0.0  # warm but no emission
    laser(driver.emission_on)
    assert laser(driver.read_status_byte).emission
    at_800 = laser(driver.read_power)
    laser(driver.set_wavelength, 1030)
    wait_until(lambda: laser(driver.read_wavelength) == 1030, 3, what="tuned to 1030 nm")
    at_1030 = laser(driver.read_power)
    assert 2.5 < at_800 < 3.5
    assert 0 < at_1030 < at_800 / 2
    laser(driver.emission_off)
    assert not laser(driver.read_status_byte).emission
    assert laser(driver.read_power) == 0.0
    assert laser(driver.read_pump_power) == 0.0


def test_tuning_actual_lags_the_setpoint(laser: Laser) -> None:
    laser.sim.tuning_rate_nm_s = 200
    assert laser(driver.set_wavelength, 899.6) == 900  # whole nanometres
    assert laser(driver.read_wavelength_setpoint) == 900.0
    first = laser(driver.read_wavelength)
    assert 800 <= first < 900
    seen = {first}
    wait_until(lambda: seen.add(laser(driver.read_wavelength)) or 900.0 in seen, 3, what="tuned to 900 nm")
    assert len(seen) > 2  # intermediate wavelengths on the way


def test_wavelength_out_of_range_is_an_execution_error(laser: Laser) -> None:
    laser(driver.set_wavelength, 500)
    assert laser(driver.read_wavelength_setpoint) == 800.0
    assert laser(driver.read_status_byte).execution_error
    assert [e.code for e in laser(driver.drain_errors)] == [-222]


def test_shutter_readback_lags(laser: Laser) -> None:
    laser(driver.set_shutter, True)
    assert laser(driver.read_shutter) is False  # still the old state
    wait_until(lambda: laser(driver.read_shutter), 2, what="shutter open")
    assert laser.sim.shutter_open
    laser(driver.set_shutter, False)
    wait_until(lambda: not laser(driver.read_shutter), 2, what="shutter closed")


def test_watchdog_switches_the_pump_off(laser: Laser) -> None:
    warm_up(laser)
    laser(driver.emission_on)
    laser(driver.set_watchdog, 1)
    assert laser(driver.read_watchdog) == 1.0
    assert laser.sim.emission
    # nothing is sent now: the laser must switch itself off after 1 s
    wait_until(lambda: not laser.sim.emission, 3, interval=0.05, what="watchdog to stop emission")
    assert not laser(driver.read_status_byte).emission
    with pytest.raises(ValueError):
        driver.set_watchdog(None, -1)  # type: ignore[arg-type]


def test_local_mode_ignores_set_commands(laser: Laser) -> None:
    warm_up(laser)
    laser.sim.set_local_mode(True)
    laser(driver.set_shutter, True)
    laser(driver.set_wavelength, 900)
    laser(driver.emission_on)
    assert laser(driver.read_wavelength_setpoint) == 800.0
    assert not laser(driver.read_status_byte).emission
    assert laser(driver.drain_errors) == []  # ignored silently, nothing to read but the readback
    laser.sim.set_local_mode(False)
    laser(driver.emission_on)
    assert laser(driver.read_status_byte).emission
    laser.sim.set_key_switch(False)
    assert not laser(driver.read_status_byte).emission
    laser(driver.emission_on)
    assert not laser(driver.read_status_byte).emission


def test_interlock_is_a_system_error(laser: Laser) -> None:
    warm_up(laser)
    laser(driver.emission_on)
    laser(driver.set_shutter, True)
    wait_until(lambda: laser(driver.read_shutter), 2, what="shutter open")
    laser.sim.open_interlock()
    stb = laser(driver.read_status_byte)
    assert stb.system_error and stb.any_error and not stb.emission
    assert laser(driver.read_shutter) is False
    errors = laser(driver.drain_errors)
    assert errors[0].code == 310 and "interlock" in errors[0].text
    laser(driver.emission_on)
    assert laser(driver.drain_errors)[0].code == -221
    laser.sim.close_interlock()
    stb = laser(driver.read_status_byte)
    assert not stb.system_error and not stb.any_error and not stb.emission


def test_identify_rejects_another_instrument() -> None:
    class Port:
        def query(self, command: str, timeout: float | None = None) -> str:
            return "NEWPORT 1830-C"

    with pytest.raises(ProtocolError, match="not a Spectra-Physics Mai Tai"):
        driver.identify(Port())  # type: ignore[arg-type]
