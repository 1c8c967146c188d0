"""The Mai Tai component without Tango, on the in-process ``sim://`` link."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from deviceservers.common import protocol_sim
from deviceservers.common.component import DeviceState
from deviceservers.common.parameter import ParameterError
from deviceservers.common.serial_link import LinkSettings
from deviceservers.MaiTai.component import MaiTaiComponent
from deviceservers.MaiTai.simulator import MaiTaiSimulator
from tests.waiting import wait_until

URL = "sim://maitai?reply_delay_s=0&start_warm=true&tuning_rate_nm_s=300&shutter_lag_s=0.1"


@pytest.fixture
def laser() -> Iterator[tuple[MaiTaiComponent, MaiTaiSimulator]]:
    comp = MaiTaiComponent(LinkSettings(url=URL, flow_control="xonxoff", timeout_s=0.3), poll_period_s=0.05)
    comp.start()
    wait_until(lambda: comp.communication_ok and comp.state == DeviceState.OFF, 5, what="connected, OFF")
    sim = protocol_sim.get_simulator(URL)
    assert isinstance(sim, MaiTaiSimulator)
    yield comp, sim
    comp.stop()


def test_wavelength_limits_come_from_the_laser_and_errors_name_them(laser) -> None:
    comp, sim = laser
    assert (comp.wavelength.minimum, comp.wavelength.maximum) == (690.0, 1040.0)
    with pytest.raises(ParameterError, match="690"):
        comp.set_wavelength(650)
    with pytest.raises(ParameterError, match="1040"):
        comp.set_wavelength(1041)
    with pytest.raises(ParameterError, match="finite"):
        comp.set_wavelength(math.nan)
    assert comp.wavelength_setpoint.value == 800.0 and not any(b"WAV" in raw and b"?" not in raw for _, raw in sim.log)


def test_tuning_is_derived_from_readback_and_reaches_the_target(laser) -> None:
    comp, sim = laser
    comp.move_to(1000)
    assert comp.is_moving() and comp.state == DeviceState.MOVING
    assert comp.wavelength.value != 1000.0  # read = actual, never the target pasted in
    wait_until(lambda: not comp.is_moving(), 3, what="tuning to finish")
    assert abs(comp.position() - 1000) <= 0.5 and comp.state == DeviceState.OFF


def test_stop_shuts_only_the_shutter_this_server_opened(laser) -> None:
    comp, sim = laser
    comp.open_shutter()
    assert sim.shutter_open and comp.shutter_open()
    comp.stop()
    assert not sim.shutter_open
    comp.start()  # a new server run: the shutter opened from the front panel is not ours
    wait_until(lambda: comp.communication_ok, 5, what="reconnected")
    sim.front_panel_shutter(True)
    wait_until(lambda: comp.shutter.value is True, 3, what="front-panel opening seen")
    start = len(sim.log)
    comp.stop()
    assert sim.shutter_open and all(b"SHUT" not in raw or b"?" in raw for _, raw in sim.log[start:])
