"""Faults injected at the virtual bench, seen through the running lab: garbled and slow replies,
a stalled mount. Devices report them, count them, never crash, and recover by themselves."""

from __future__ import annotations

import pytest
import tango

from deviceservers.bench.control import BenchClient
from deviceservers.bench.server import CONTROL_PORT_OFFSET
from tests.waiting import wait_until

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def bench(lab):
    with BenchClient(lab.port + CONTROL_PORT_OFFSET) as client:
        yield client


def test_garbled_replies_are_counted_and_the_meter_carries_on(lab, bench):
    pm = lab.proxy("lab/powermeter/1")
    wait_until(lambda: pm.State() == tango.DevState.ON, 20, what="meter ON")
    errors = pm.ErrorCount
    bench.call("garble", instrument="newport1830c", count=3)
    wait_until(lambda: pm.ErrorCount > errors, 20, what="the garbled replies counted")
    assert "garbled" in pm.LastError or "answered" in pm.LastError or "not in scientific" in pm.LastError, pm.LastError
    wait_until(lambda: pm.State() == tango.DevState.ON and pm.read_attribute("Power").quality
               == tango.AttrQuality.ATTR_VALID, 20, what="valid readings again")


def test_replies_slower_than_the_timeout_fault_then_recover(lab, bench):
    laser = lab.proxy("lab/maitai/1")
    before = laser.State()
    bench.call("delay", instrument="maitai", seconds=5.0)  # beyond the 3 s reply time-out
    try:
        wait_until(lambda: laser.State() == tango.DevState.FAULT, 60, what="laser FAULT on slow replies")
        assert "stopped answering" in laser.Status() or "did not answer" in laser.Status()
    finally:
        bench.call("delay", instrument="maitai", seconds=0.0)
    wait_until(lambda: laser.State() != tango.DevState.FAULT, 60, what="laser recovered")
    assert laser.CommunicationOk
    assert laser.State() in (before, tango.DevState.OFF, tango.DevState.ON, tango.DevState.INIT)


def test_stalled_mount_reports_the_mechanical_timeout_and_clears_on_the_next_move(lab, bench):
    pol = lab.proxy("lab/ell14/pol")
    wait_until(lambda: pol.State() == tango.DevState.ON, 20, what="pol ON")
    start = pol.Position
    bench.call("stall", address="3", on=True)
    try:
        pol.Position = (start + 90.0) % 360.0
        wait_until(lambda: pol.State() == tango.DevState.ALARM, 20, what="pol ALARM on a stalled move")
        assert "mechanical" in pol.Status().lower() or "02" in pol.MotorStatus
    finally:
        bench.call("stall", address="3", on=False)
    pol.Position = start
    wait_until(lambda: pol.State() == tango.DevState.ON, 20, what="pol ON after a good move")
    assert pol.Position == pytest.approx(start, abs=0.05)
    # the other mounts on the bus were never affected
    assert lab.proxy("lab/ell14/hwp").State() != tango.DevState.ALARM


def test_a_truncated_reply_does_not_crash_the_stage_server(lab, bench):
    x = lab.proxy("lab/esp300/x")
    bench.call("truncate", instrument="esp300", count=2)
    wait_until(lambda: x.State() in (tango.DevState.ON, tango.DevState.OFF), 30, what="axis x answering")
    x.ping()
    assert x.CommunicationOk or x.State() != tango.DevState.FAULT
