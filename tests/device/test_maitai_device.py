"""The MaiTai Tango device against the simulator served on TCP (the bench's socket:// path).

One device server process serves the whole module (starting one takes seconds); each test
brings the laser to the state it needs through the device itself or the simulator's front
panel and fault injection, in the test process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import tango

from deviceservers.MaiTai.device import MaiTai
from deviceservers.MaiTai.simulator import IDN, MaiTaiSimulator
from tests.harness import SIMULATOR_URL, in_state, served
from tests.waiting import EventCollector, wait_state, wait_until

DEVICE = "test/nodb/maitai"
ON, OFF, MOVING, INIT = tango.DevState.ON, tango.DevState.OFF, tango.DevState.MOVING, tango.DevState.INIT
ALARM, FAULT, DISABLE = tango.DevState.ALARM, tango.DevState.FAULT, tango.DevState.DISABLE


@pytest.fixture(scope="module")
def sim() -> MaiTaiSimulator:
    return MaiTaiSimulator(reply_delay_s=0.005, warmup_s=1.5, tuning_rate_nm_s=150, shutter_lag_s=0.3)


@pytest.fixture(scope="module")
def laser(sim: MaiTaiSimulator) -> Iterator[tango.DeviceProxy]:
    props = {"SerialURL": SIMULATOR_URL, "PollPeriodMs": 100, "TimeoutS": 0.5, "WatchdogS": 30}
    with served({MaiTai: {DEVICE: props}}, simulator=sim, ready=lambda proxy: proxy.CommunicationOk) as server:
        yield server.only


@pytest.fixture
def sim_ok(sim: MaiTaiSimulator) -> MaiTaiSimulator:
    """No fault left over from another test."""
    sim.plug()
    sim.set_local_mode(False)
    sim.set_key_switch(True)
    sim.close_interlock()
    return sim


def warm_idle(laser: tango.DeviceProxy, sim: MaiTaiSimulator) -> None:
    """Warm laser, emission off, shutter closed, at its setpoint."""
    sim.finish_warmup()
    wait_until(lambda: laser.State() != DISABLE, 5, what="no LOCAL left over")  # cleared by polling
    if laser.State() in (ON, MOVING, ALARM) or laser.Shutter:
        laser.Off()  # also acknowledges an emission stop nobody asked for
    wait_state(laser, OFF)
    assert not sim.emission and not sim.shutter_open


def emitting(laser: tango.DeviceProxy, sim: MaiTaiSimulator) -> None:
    warm_idle(laser, sim)
    laser.On()
    wait_state(laser, ON)


def commands_since(sim: MaiTaiSimulator, start: int) -> list[str]:
    return [raw.decode().upper() for _, raw in sim.log[start:]]


# ---------------------------------------------------------------------- warm-up and On
def test_warmup_from_cold_and_on_refused_until_ready(laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    sim = sim_ok
    sim.power_cycle()
    wait_until(lambda: laser.WarmupPercent == 0.0 and laser.State() == OFF, 5, what="a cold laser")
    assert "cold" in laser.Status() and "run On" in laser.Status()
    assert laser.Identity == IDN
    laser.On()  # at 0 %: starts the warm-up, no emission
    assert laser.State() == INIT
    assert "Warming up" in laser.Status() and "%" in laser.Status()
    assert not laser.Emission and not sim.emission
    with pytest.raises(tango.DevFailed) as refused:
        laser.On()
    desc = refused.value.args[0].desc
    assert "warm-up is at" in desc and "On is possible at 100 %, in about" in desc
    assert refused.value.args[0].reason == "NotAllowed"
    assert not sim.emission and sim.errors == []  # refused by the device, not sent to the laser
    wait_until(lambda: laser.WarmupPercent == 100.0, 5, what="warm-up to finish")
    wait_state(laser, OFF)
    assert "warmed up" in laser.Status()
    laser.On()
    assert laser.State() == ON and laser.Emission and sim.emission
    assert laser.Power > 2.0 and laser.PumpPower == pytest.approx(13.43)
    assert 0 < laser.Humidity < 100


# ---------------------------------------------------------------------- tuning
def test_tuning_moves_with_events_until_the_actual_wavelength_arrives(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    start = laser.Wavelength
    target = 950.0 if start < 900 else 800.0
    with EventCollector(laser, "State") as states, EventCollector(laser, "Wavelength") as wavelengths, \
            EventCollector(laser, "Tuning") as tuning:
        laser.Wavelength = target
        assert laser.WavelengthSetpoint == target
        assert laser.State() == MOVING and laser.Tuning
        # the first event of each subscription is the current value: wait for what follows
        wait_until(lambda: MOVING in states.values and states.values[-1] == ON, 10, what="MOVING then ON")
        wait_until(lambda: True in tuning.values and tuning.values[-1] is False, 5, what="Tuning true then false")
        wavelengths.wait_for(lambda w: abs(w - target) <= 0.5, 5)
    assert abs(laser.Wavelength - target) <= 0.5
    # State is pushed with every Status change (the wavelength is in it): compare the transitions
    transitions = [s for i, s in enumerate(states.values) if i == 0 or s != states.values[i - 1]]
    assert transitions == [ON, MOVING, ON]
    between = [w for w in wavelengths.values if min(start, target) + 1 < w < max(start, target) - 1]
    assert len(between) >= 2, f"expected intermediate wavelengths, got {wavelengths.values}"
    assert tuning.values == [False, True, False]
    assert abs(sim_ok.actual_wavelength_nm - target) <= 0.5


def test_bad_wavelengths_are_refused_and_change_nothing(laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    wait_until(lambda: laser.State() in (ON, OFF), 10, what="an idle laser")
    config = laser.get_attribute_config("Wavelength")
    assert (config.min_value, config.max_value) == ("690", "1040")  # from WAV:MIN?/MAX?
    before = laser.WavelengthSetpoint
    start = len(sim_ok.log)
    for bad in (math.nan, 500.0, 1100.0, math.inf):
        with pytest.raises(tango.DevFailed) as err:
            laser.Wavelength = bad
        assert any(word in err.value.args[0].desc for word in ("minimum", "maximum", "NaN"))
    with pytest.raises((tango.DevFailed, TypeError)):  # PyTango refuses text for a double client-side
        laser.write_attribute("Wavelength", "eight hundred")
    assert not any(c.startswith("WAV") and "?" not in c for c in commands_since(sim_ok, start))
    assert laser.WavelengthSetpoint == before and not laser.Tuning
    with pytest.raises(tango.DevFailed):
        laser.Tuning = True  # read-only


# ---------------------------------------------------------------------- shutter and Off
def test_shutter_is_confirmed_by_readback(laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    laser.OpenShutter()  # returns once SHUTter? says 1 (the simulator lags 0.3 s)
    assert laser.Shutter and sim_ok.shutter_open
    laser.CloseShutter()
    assert not laser.Shutter and not sim_ok.shutter_open
    laser.Shutter = True
    assert laser.Shutter and sim_ok.shutter_open
    laser.Shutter = False
    assert not sim_ok.shutter_open


def test_off_closes_the_shutter_before_switching_emission_off(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    laser.OpenShutter()
    start = len(sim_ok.log)
    laser.Off()
    sent = [c for c in commands_since(sim_ok, start) if not c.endswith("?")]
    assert sent == ["SHUTTER 0", "OFF"]
    shut_at = next(i for i, c in enumerate(commands_since(sim_ok, start)) if c == "SHUTTER 0")
    confirmed = [c for c in commands_since(sim_ok, start)[shut_at:] if c in ("SHUTTER?", "OFF")]
    assert confirmed.index("OFF") > 0  # the shutter was read back before OFF
    assert not sim_ok.shutter_open and not sim_ok.emission
    assert laser.State() == OFF and not laser.Emission and not laser.Shutter


# ---------------------------------------------------------------------- LOCAL, key switch, interlock
def test_local_mode_is_found_by_polling_reported_and_cleared_when_it_ends(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    sim_ok.set_local_mode(True)  # nobody sends a command: polling alone must notice
    wait_state(laser, DISABLE, timeout=5)
    assert "LOCAL" in laser.Status() and "REMOTE" in laser.Status()
    with pytest.raises(tango.DevFailed) as err:
        laser.OpenShutter()
    assert "LOCAL" in err.value.args[0].desc
    assert not laser.Shutter and not sim_ok.shutter_open
    with pytest.raises(tango.DevFailed):
        laser.Wavelength = 900.0
    sim_ok.set_local_mode(False)
    wait_state(laser, ON, timeout=5)  # cleared by polling, no command needed
    assert "LOCAL" not in laser.Status()


def test_key_off_with_the_shutter_open_is_alarm_the_server_closes_it_and_on_is_refused(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    laser.OpenShutter()
    sim_ok.set_key_switch(False)  # emission stops; set commands are ignored from now on
    wait_state(laser, ALARM, timeout=5)
    status = laser.Status()
    assert "key switch" in status and "without an Off" in status and "closing the shutter" in status
    with pytest.raises(tango.DevFailed, match="shutter is open"):
        laser.On()
    assert not sim_ok.emission
    sim_ok.set_key_switch(True)  # the server's re-sent SHUTter 0 is followed at once
    wait_until(lambda: not sim_ok.shutter_open, 3, what="the server to close the shutter")
    wait_until(lambda: not laser.Shutter and "closed by this server" in laser.Status(), 3,
               what="Status to say the server closed the shutter")
    assert laser.State() == ALARM and not sim_ok.emission  # emission lost: acknowledged by On or Off
    laser.On()
    assert laser.State() == ON and sim_ok.emission and not sim_ok.shutter_open


def test_shutter_opened_outside_tangodaq_is_alarm_until_taken_over(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    sim_ok.front_panel_shutter(True)
    wait_state(laser, ALARM, timeout=3)
    assert "opened outside tangodaq" in laser.Status()
    assert laser.ShutterLease == 0.0
    laser.OpenShutter()  # taken over: held by the manual lease from now on
    assert laser.State() == ON and laser.ShutterLease > 500
    laser.CloseShutter()
    assert not sim_ok.shutter_open and laser.State() == ON and laser.ShutterLease == 0.0


def test_the_server_closes_the_shutter_when_its_lease_is_not_renewed(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    for bad in (math.nan, 0.0, -1.0, 0.1, 1e9, math.inf):
        with pytest.raises(tango.DevFailed, match="lease"):
            laser.OpenShutterWithLease(bad)
    assert not sim_ok.shutter_open
    with pytest.raises(tango.DevFailed, match="No shutter lease"):
        laser.RenewShutterLease(5.0)  # nothing to renew: a renewal never opens
    assert not sim_ok.shutter_open
    laser.OpenShutterWithLease(2.0)
    assert sim_ok.shutter_open and 0 < laser.ShutterLease <= 2.0
    opened = time.monotonic()
    while time.monotonic() - opened < 3.0:  # renewed past the first lease's end: stays open
        # early, with 1.5 s to spare: a renewal delayed by a loaded machine still comes in time
        wait_until(lambda: laser.ShutterLease <= 1.5, 3, interval=0.05, what="the lease to run down a little")
        renewed = time.monotonic()  # before the call: the server's lease ends 2 s after this, or later
        assert laser.RenewShutterLease(2.0) == 2.0
        assert sim_ok.shutter_open  # checked well before the renewed lease can end
    wait_until(lambda: not sim_ok.shutter_open, 10, interval=0.05, what="the server to close the shutter")
    assert time.monotonic() - renewed >= 2.0  # closed after the lease, never before it
    wait_until(lambda: "lease expired" in laser.Status() and laser.State() == ON, 3,
               what="Status to say why the shutter closed")
    with pytest.raises(tango.DevFailed, match="No shutter lease"):
        laser.RenewShutterLease(1.0)  # the owner comes back too late: the shutter stays closed
    assert not sim_ok.shutter_open


def test_interlock_gives_alarm_then_clears(laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    laser.OpenShutter()
    sim_ok.open_interlock()
    wait_state(laser, ALARM)
    wait_until(lambda: "Interlock open" in laser.Status(), 3, what="the interlock in Status")
    assert "310" in laser.Status()
    assert not laser.Emission and not laser.Shutter
    with pytest.raises(tango.DevFailed, match="interlock"):
        laser.OpenShutter()
    with pytest.raises(tango.DevFailed, match="interlock"):
        laser.On()
    assert laser.ErrorCount > 0 and "interlock" in laser.LastError
    sim_ok.close_interlock()
    # still ALARM: emission was lost; On restarts it (or Off acknowledges)
    wait_until(lambda: laser.State() == ALARM and "without an Off" in laser.Status(), 5,
               what="ALARM for the lost emission")
    laser.On()
    assert laser.State() == ON


# ---------------------------------------------------------------------- link loss and Init
def test_link_loss_gives_fault_then_recovers_with_the_real_state(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    laser.OpenShutter()
    sim_ok.unplug()
    wait_state(laser, FAULT)
    assert "reconnecting automatically" in laser.Status() and not laser.CommunicationOk
    assert sim_ok.shutter_open  # cannot be closed while the link is down
    sim_ok.front_panel_tune(1000)  # somebody tunes while the server is blind
    sim_ok.plug()
    wait_until(lambda: laser.CommunicationOk, 15, what="reconnection")
    assert laser.WavelengthSetpoint == 1000.0  # re-read, not assumed
    wait_until(lambda: not sim_ok.shutter_open, 3, what="the server to close the shutter it had opened")
    wait_until(lambda: not laser.Shutter, 3, what="Shutter to read back closed")
    wait_state(laser, ON)
    assert laser.Emission and abs(laser.Wavelength - 1000) <= 0.5


def test_init_closes_the_shutter_opened_by_this_server(laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    emitting(laser, sim_ok)
    laser.OpenShutter()
    laser.Init()
    assert not sim_ok.shutter_open
    wait_until(lambda: laser.CommunicationOk, 10, what="reconnection after Init")
    wait_state(laser, ON)  # emission is left as it was: Init is not Off
    assert not laser.Shutter


def test_service_settings_are_never_written(laser: tango.DeviceProxy, sim: MaiTaiSimulator) -> None:
    sets = {raw.decode().split(" ")[0].upper() for _, raw in sim.log if not raw.endswith(b"?")}
    assert sets <= {"ON", "OFF", "SHUTTER", "WAVELENGTH", "TIMER:WATCHDOG"}, sets
    assert "TIMER:WATCHDOG" in sets  # written (0 = disabled) at every connection


# ---------------------------------------------------------------------- USB link settings, EmissionBit, stop
def test_usb_link_emission_bit_and_server_stop_closes_the_shutter() -> None:
    sim = MaiTaiSimulator(reply_delay_s=0.005, start_warm=True, shutter_lag_s=0.2, emission_bit=3)
    props = {"SerialURL": SIMULATOR_URL, "BaudRate": 115200, "FlowControl": "none", "EmissionBit": 3,
             "PollPeriodMs": 100, "TimeoutS": 0.5, "WatchdogS": 30}
    with served({MaiTai: {DEVICE: props}}, simulator=sim, ready=in_state(OFF)) as server:
        proxy = server.only
        proxy.On()
        assert proxy.Emission and proxy.StatusByte & 0b1000 and proxy.State() == ON
        proxy.OpenShutter()
        assert sim.shutter_open
        assert b"TIMER:WATCHDOG 30" in {raw.upper() for _, raw in sim.log}
    assert not sim.shutter_open  # the server closed what it opened when it stopped
    assert sim.emission


# ---------------------------------------------------------------------- the client's side (macros, experiment)
def test_shutter_lease_client_holds_the_light_past_its_lease_and_closes_it(
        laser: tango.DeviceProxy, sim_ok: MaiTaiSimulator) -> None:
    """deviceservers.MaiTai.lease against the real server: its thread renews a lease shorter than
    the hold, the server vouches for it (macro lease), and close() ends it; a renewal refused
    (the shutter closed by somebody else) is a lost lease that check() reports."""
    from deviceservers.MaiTai.lease import LeaseLost, ShutterLease

    emitting(laser, sim_ok)

    def connect(_: str) -> tango.DeviceProxy:  # the test context's device has no database name: copy
        proxy = tango.DeviceProxy(laser)
        proxy.set_timeout_millis(10000)
        return proxy

    hold = ShutterLease("laser", owner="test", lease_s=1.0, renew_every_s=0.25, connect=connect)
    hold.open()
    opened = time.monotonic()
    assert sim_ok.shutter_open and "macro lease" in laser.Status()
    wait_until(lambda: time.monotonic() - opened > 2.5, 5, what="2.5 s: past the 1 s lease, renewed")
    assert sim_ok.shutter_open and laser.ShutterLease > 0
    hold.check()
    hold.close()
    assert not sim_ok.shutter_open and laser.ShutterLease == 0.0

    hold = ShutterLease("laser", owner="test", lease_s=1.0, renew_every_s=0.25, connect=connect)
    hold.open()
    laser.CloseShutter()  # somebody else closes it: the next renewal is refused
    wait_until(lambda: hold.lost, 5, what="the refused renewal to be kept")
    with pytest.raises(LeaseLost, match="No shutter lease"):
        hold.check()
    hold.release()
    assert not sim_ok.shutter_open
