"""The Mai Tai component without Tango, on the in-process ``sim://`` link."""

from __future__ import annotations

import math
import time
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


# ---------------------------------------------------------------------- light only while its owner is alive
def started(url: str, **kwargs) -> tuple[MaiTaiComponent, MaiTaiSimulator]:
    """A component on its own simulator (``url`` unique per test: simulators are per URL)."""
    sim = protocol_sim.get_simulator(url)
    assert isinstance(sim, MaiTaiSimulator)
    comp = MaiTaiComponent(LinkSettings(url=url, flow_control="xonxoff", timeout_s=0.3), poll_period_s=0.05, **kwargs)
    comp.start()
    wait_until(lambda: comp.communication_ok and comp.state != DeviceState.INIT, 5, what="connected")
    return comp, sim


def test_a_new_server_run_closes_a_shutter_nobody_holds(request) -> None:
    url = URL + "&seed=101"
    sim = protocol_sim.get_simulator(url)
    sim.front_panel_shutter(True)  # left open by a server that was killed, or by anybody
    wait_until(lambda: sim.shutter_open, 1, what="shutter open before the server starts")
    comp, _ = started(url)
    request.addfinalizer(comp.stop)
    wait_until(lambda: not sim.shutter_open, 2, what="the new server to close the shutter")
    wait_until(lambda: comp.state == DeviceState.OFF and "closed by this server" in comp.status
               and "nobody holds a lease" in comp.status, 2, what="OFF, and Status saying why it closed")
    assert comp.shutter_lease.value == 0.0


def test_the_manual_lease_closes_the_shutter_unless_opened_again(request) -> None:
    comp, sim = started(URL + "&seed=102", manual_lease_s=0.6)
    request.addfinalizer(comp.stop)
    comp.open_shutter()  # a person at a GUI: the manual lease
    assert sim.shutter_open and 0 < comp.shutter_lease.value <= 0.6
    wait_until(lambda: comp.shutter_lease.value < 0.3, 1, interval=0.01, what="the lease to run down")
    comp.open_shutter()  # opening again renews it
    assert comp.shutter_lease.value > 0.4 and sim.shutter_open
    wait_until(lambda: not sim.shutter_open, 2, interval=0.02, what="the server to close the shutter")
    assert "lease expired" in comp.status and "manual lease" in comp.status
    with pytest.raises(RuntimeError, match="No shutter lease"):
        comp.renew_lease(5)
    assert not sim.shutter_open
    with pytest.raises(ValueError, match="ManualShutterLeaseS"):
        MaiTaiComponent(LinkSettings(url=URL), manual_lease_s=0)


def test_the_serial_watchdog_stops_emission_when_nothing_talks_to_the_laser(request) -> None:
    comp, sim = started(URL + "&seed=103", watchdog_s=1)
    request.addfinalizer(comp.stop)
    assert sim.watchdog_s in (1.0, 2.0)  # the REMOTE probe alternates 1 and 2 s
    comp.on()
    comp.open_shutter()
    assert sim.emission and sim.shutter_open
    sim.unplug()  # the line (or the server) is gone: no command reaches the laser any more
    t0 = time.monotonic()
    wait_until(lambda: not sim.emission, 3.5, interval=0.05, what="the laser's watchdog to switch the pump off")
    assert time.monotonic() - t0 <= 2.0 + 0.3  # the longer probe value, plus one poll and the link time-out
    sim.plug()
    wait_until(lambda: comp.communication_ok, 5, what="reconnected")
    wait_until(lambda: not sim.shutter_open, 3, what="the shutter closed after the link came back")
    wait_until(lambda: comp.state == DeviceState.ALARM and "without an Off" in comp.status, 3,
               what="ALARM for the emission nobody stopped")
    comp.on()
    assert comp.state == DeviceState.ON and sim.emission and not sim.shutter_open
