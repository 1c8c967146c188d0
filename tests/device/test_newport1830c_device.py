"""The Newport1830C Tango device in its own process, talking to a simulator over TCP."""

from __future__ import annotations

import math
import os

import pytest
import tango

from deviceservers.Newport1830C.device import Newport1830C
from deviceservers.Newport1830C.simulator import Newport1830CSimulator
from tests.harness import SIMULATOR_URL, in_state, served
from tests.waiting import EventCollector, wait_state, wait_until

DEVICE = "test/nodb/newport1830c"
PROPERTIES = {"SerialURL": SIMULATOR_URL, "PollPeriodMs": 100, "TimeoutS": 0.5}


@pytest.fixture(scope="module")
def lab():
    sim = Newport1830CSimulator(reply_delay_s=0.0, reading_delay_s=0.005, noise=0.0, seed=3)
    with served({Newport1830C: {DEVICE: PROPERTIES}}, simulator=sim, ready=in_state(tango.DevState.ON)) as server:
        yield sim, server.only


@pytest.fixture(scope="module")
def meter(lab):
    return lab[1]


@pytest.fixture
def sim(lab, meter):
    """The simulator, reset to a sane state after each test."""
    sim, _ = lab
    yield sim
    sim.faults.mute = False
    sim.plug()
    sim.text_errors = False
    sim.incident_power_w = 1.234e-6
    sim.reading_delay_s = 0.005
    meter.Range = 0
    meter.Attenuator = False
    meter.Wavelength = 800
    wait_state(meter, tango.DevState.ON, 10)


def test_attributes_have_units_and_descriptions(meter, sim):
    for name, unit in [("Power", "W"), ("PowerDbm", "dBm"), ("Wavelength", "nm")]:
        cfg = meter.get_attribute_config(name)
        assert cfg.unit == unit and cfg.description
    assert list(meter.get_attribute_config("Range").enum_labels) == ["AUTO"] + [f"R{i}" for i in range(1, 9)]
    assert list(meter.get_attribute_config("Filter").enum_labels) == ["SLOW", "MEDIUM", "FAST"]
    assert meter.get_attribute_config("Wavelength").max_value == "1100"


def test_reads_the_simulated_power(meter, sim):
    power = wait_until(lambda: meter.Power, 5)
    assert math.isclose(power, 1.234e-6, rel_tol=1e-3)
    assert math.isclose(meter.PowerDbm, 10 * math.log10(1.234e-6 / 1e-3), abs_tol=0.01)
    assert meter.CommunicationOk and meter.ErrorCount == 0 and meter.StatusByte & 128


def test_write_every_writable_attribute(meter, sim):
    meter.Wavelength = 1064
    assert meter.Wavelength == 1064 and sim.wavelength_nm == 1064
    meter.Range = 5
    assert meter.Range == 5 and sim.range == 5
    meter.Filter = 0
    assert meter.Filter == 0 and sim.filter == 1
    meter.Attenuator = True
    assert meter.Attenuator and sim.attenuator
    meter.ZeroEnabled = False
    assert not meter.ZeroEnabled


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("Wavelength", 5000, "above the maximum"),
        ("Wavelength", float("nan"), "NaN"),
        ("Range", 9, "authorized"),
        ("Wavelength", "red", ""),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(meter, sim, attr, value, match):
    before = (sim.wavelength_nm, sim.range)
    with pytest.raises((tango.DevFailed, TypeError, ValueError)) as info:
        meter.write_attribute(attr, value)
    if match and isinstance(info.value, tango.DevFailed):
        assert match in info.value.args[0].desc
    assert (sim.wavelength_nm, sim.range) == before


def test_change_events_on_write_and_on_polled_change(meter, sim):
    with EventCollector(meter, "Wavelength") as wl, EventCollector(meter, "Power") as power:
        meter.Wavelength = 700
        wl.wait_for(lambda v: v == 700)
        meter.Wavelength = 800
        sim.incident_power_w = 3.0e-6  # the beam changed: polling must notice and push
        power.wait_for(lambda v: v is not None and math.isclose(v, 3.0e-6, rel_tol=1e-3))


def test_over_range_gives_alarm_quality_and_state(meter, sim):
    meter.Range = 1
    wait_state(meter, tango.DevState.ALARM)
    assert "Range" in meter.Status()
    assert meter.read_attribute("Power").quality == tango.AttrQuality.ATTR_ALARM
    assert meter.OverRange
    sim.text_errors = True
    wait_until(lambda: meter.read_attribute("Power").quality == tango.AttrQuality.ATTR_INVALID, 5)


def test_saturation_then_attenuator(meter, sim):
    sim.incident_power_w = 0.05
    wait_state(meter, tango.DevState.ALARM)
    assert "saturated" in meter.Status() and meter.Saturated
    meter.Attenuator = True
    wait_state(meter, tango.DevState.ON)
    assert math.isclose(meter.Power, 0.05, rel_tol=1e-3)


def test_link_loss_fault_and_recovery_without_restart(meter, sim):
    with EventCollector(meter, "State") as states:
        sim.unplug()
        wait_state(meter, tango.DevState.FAULT, 10)
        status = meter.Status()
        assert "No communication" in status and "reconnecting automatically" in status
        assert meter.read_attribute("Power").quality == tango.AttrQuality.ATTR_INVALID
        assert not meter.CommunicationOk
        with pytest.raises(tango.DevFailed) as info:
            meter.Wavelength = 700
        assert info.value.args[0].reason == "CommunicationLost"
        sim.plug()
        wait_state(meter, tango.DevState.ON, 10)
        # the subscription's first event is the ON from before: the events must go through FAULT
        wait_until(lambda: tango.DevState.FAULT in states.values and states.values[-1] == tango.DevState.ON, 5,
                   what="State events FAULT, then ON")
    assert meter.CommunicationOk and meter.ErrorCount >= 1 and meter.LastError


def test_mute_instrument_goes_fault_and_recovers(meter, sim):
    sim.faults.mute = True
    wait_state(meter, tango.DevState.FAULT, 15)
    assert "stopped answering" in meter.Status() or "did not answer" in meter.Status()
    sim.faults.mute = False
    wait_state(meter, tango.DevState.ON, 15)


def test_commands(meter, sim):
    meter.StoreReference()
    assert math.isclose(sim.reference_w, 1.234e-6, rel_tol=1e-2)
    meter.Zero()
    assert sim.zero_on and meter.ZeroEnabled
    wait_until(lambda: abs(meter.Power) < 1e-9, 5)
    meter.ZeroEnabled = False


def test_init_reconnects(meter, sim):
    before = meter.ErrorCount
    meter.Init()
    wait_state(meter, tango.DevState.ON, 10)
    assert meter.ErrorCount >= 0 and before >= 0
    assert math.isclose(wait_until(lambda: meter.Power, 5), 1.234e-6, rel_tol=1e-3)


def test_streaming_fills_the_ring_and_reports_its_rate(meter, sim):
    import numpy as np

    import datawriter

    name = datawriter.stream_name(meter.dev_name(), "power")
    sim.reading_delay_s = 0.0  # as fast as the link allows (the real meter needs ~0.5 s a reading)
    meter.Streaming = True
    try:
        wait_state(meter, tango.DevState.RUNNING)
        rate = wait_until(lambda: meter.SampleRate > 200 and meter.SampleRate, 10, what="SampleRate above 200 Hz")
        reader = datawriter.open_reader(name, start="oldest")
        wait_until(lambda: reader.backlog > 3, 10, what="records in the ring")
        rows = []
        while (rec := reader.read_next()) is not None and len(rows) < 20:
            rows.append(rec.batch)
        ts = np.concatenate([b.column("timestamp").cast("int64").to_numpy() for b in rows])
        values = np.concatenate([b.column("value").to_numpy() for b in rows])
        flags = np.concatenate([b.column("flags").to_numpy() for b in rows])
        assert np.all(np.diff(ts) > 0), "samples out of order"
        assert np.allclose(values, 1.234e-6, rtol=1e-2) and not flags.any()
        assert reader.lost == 0
        assert datawriter.stream_info(name)["description"]["units"]["value"] == "W"
        assert "samples/s" in meter.Status() and rate > 200
    finally:
        meter.Streaming = False
    wait_state(meter, tango.DevState.ON)
    assert meter.SampleRate == 0.0


def test_front_panel_change_shows_in_value_and_set_point(meter, sim):
    meter.Filter = 0
    sim.filter = 2  # somebody pressed FILTER on the meter: MEDIUM
    wait_until(lambda: meter.read_attribute("Filter").value == 1, 10, what="Filter re-read from the meter")
    assert meter.read_attribute("Filter").w_value == 1  # a GUI's write widget shows the real setting


def test_streaming_stays_valid_through_a_comm_fault(meter, sim):
    """Issue 17: after a comm fault Streaming stayed INVALID although streaming had resumed."""
    sim.reading_delay_s = 0.0
    meter.Streaming = True
    try:
        wait_state(meter, tango.DevState.RUNNING)
        sim.unplug()
        wait_state(meter, tango.DevState.FAULT, 10)
        sim.plug()
        wait_state(meter, tango.DevState.RUNNING, 15)
        wait_until(lambda: meter.SampleRate > 0, 10, what="samples streamed again")
        streaming = meter.read_attribute("Streaming")
        assert streaming.value is True and streaming.quality == tango.AttrQuality.ATTR_VALID
    finally:
        meter.Streaming = False
    wait_state(meter, tango.DevState.ON)


def test_streaming_resumes_after_a_server_restart(tmp_path):
    """Issue 17: after its server restarted the meter did not stream again and nothing said so."""
    sim = Newport1830CSimulator(reply_delay_s=0.0, reading_delay_s=0.0, noise=0.0, seed=4)
    db = str(tmp_path / "tango.db")
    name = f"test/pmrestart/{os.getpid()}"  # its own ring, not the module meter's
    with served({Newport1830C: {name: PROPERTIES}}, simulator=sim, db=db, ready=in_state(tango.DevState.ON)) as run:
        meter = run.only
        meter.Streaming = True
        wait_state(meter, tango.DevState.RUNNING)
    # the server again, on the same database (Streaming memorized there) and the same meter
    with served({Newport1830C: {name: PROPERTIES}}, simulator=sim, db=db, ready=None) as run:
        meter = run.only
        wait_state(meter, tango.DevState.RUNNING, 15)
        assert meter.Streaming is True
        wait_until(lambda: meter.SampleRate > 0, 10, what="samples streamed after the restart")
        meter.Streaming = False
        wait_state(meter, tango.DevState.ON)


def test_measure_takes_a_fresh_reading_at_once(meter, sim):
    """A count asks for a reading: it gets one measured after its request, not the last poll's."""
    import time

    sim.reading_delay_s = 0.2  # a poll's reading is on its way: Measure still goes first and waits for its own
    sim.incident_power_w = 2.5e-6
    asked = time.time()
    watts = meter.Measure()
    took = time.time() - asked
    assert math.isclose(watts, 2.5e-6, rel_tol=1e-3)
    power = meter.read_attribute("Power")
    assert power.time.totime() >= asked and math.isclose(power.value, watts)  # published like a poll
    assert 0.2 <= took < 0.2 + 0.2 + 0.3, f"{took:.3f} s: one reading (maybe behind one poll's), no poll period"


def test_measure_refuses_a_text_reading_with_the_reason(meter, sim):
    sim.text_errors = True
    sim.incident_power_w = 0.05  # saturates: the meter answers SAT
    with pytest.raises(tango.DevFailed) as info:
        meter.Measure()
    assert info.value.args[0].reason == "InstrumentRefused" and "SAT" in info.value.args[0].desc
