"""The ESP300 driver against the simulator, command by command, through a real SerialLink."""

from __future__ import annotations

import time

import pytest

from deviceservers.common import protocol_sim
from deviceservers.common.serial_link import LinkSettings, LinkTimeout, SerialLink, wait_connected
from deviceservers.common.tcp_server import SimulatorServer
from deviceservers.Esp300 import driver
from deviceservers.Esp300.simulator import Esp300Simulator
from tests.waiting import wait_until

URL = "sim://esp300?reply_delay_s=0&char_time_s=0"


def _settings(url: str) -> LinkSettings:
    return LinkSettings(url=url, baudrate=19200, flow_control="rtscts", timeout_s=0.2,
                        write_terminator=b"\r", read_terminator=b"\r\n", retries=0)


@pytest.fixture
def link():
    lk = SerialLink(_settings(URL))
    lk.start()
    assert wait_connected(lk, 5)
    yield lk
    lk.close()


@pytest.fixture
def sim(link) -> Esp300Simulator:
    return protocol_sim.get_simulator(URL)  # type: ignore[return-value]


def fast(link: SerialLink, axis: int) -> None:
    """A quick stage (VU/AU raised first) so long travels take a fraction of a second."""
    link.run(lambda p: driver.execute(p, axis, f"{axis}VU100", f"{axis}AU2000"))
    link.run(lambda p: driver.set_velocity(p, axis, 100.0))
    link.run(lambda p: driver.set_acceleration(p, axis, 2000.0))


def done(link: SerialLink, axis: int) -> bool:
    return link.run(lambda p: driver.motion_done(p, axis))


def test_identity_firmware_units(link):
    assert link.run(driver.firmware) == "ESP300 Version 3.04 07/27/01"
    assert link.run(lambda p: driver.stage_identity(p, 1)) == "TS50DC.5, SN1263"
    assert link.run(lambda p: driver.unit(p, 1)) == "mm"
    assert link.run(lambda p: driver.unit_code(p, 2)) == 2


def test_absolute_and_relative_moves(link, sim):
    assert link.run(lambda p: driver.move_absolute(p, 1, 1.0)) == []
    assert not done(link, 1)
    assert link.run(lambda p: driver.target_position(p, 1)) == pytest.approx(1.0)
    wait_until(lambda: done(link, 1), 5)
    assert link.run(lambda p: driver.position(p, 1)) == pytest.approx(1.0)
    link.run(lambda p: driver.move_relative(p, 1, -0.25))
    wait_until(lambda: done(link, 1), 5)
    assert link.run(lambda p: driver.position(p, 1)) == pytest.approx(0.75)
    assert sim.position(1) == pytest.approx(0.75)


def test_trapezoid_duration_follows_velocity_and_acceleration(link):
    link.run(lambda p: driver.set_velocity(p, 1, 4.0))
    link.run(lambda p: driver.set_acceleration(p, 1, 40.0))
    assert link.run(lambda p: driver.deceleration(p, 1)) == pytest.approx(40.0)  # AG set with AC
    t0 = time.monotonic()
    link.run(lambda p: driver.move_absolute(p, 1, 2.0))  # 0.1 s ramps + 0.4 s cruise
    wait_until(lambda: done(link, 1), 5, interval=0.005)
    assert 0.45 < time.monotonic() - t0 < 0.9  # at half the velocity it would take ~1.05 s


def test_velocity_acceleration_limits_errors(link):
    assert link.run(lambda p: driver.velocity(p, 1)) == pytest.approx(2.0)
    assert link.run(lambda p: driver.max_velocity(p, 1)) == pytest.approx(5.0)
    with pytest.raises(driver.Esp300Error, match="MAXIMUM VELOCITY EXCEEDED") as exc:
        link.run(lambda p: driver.set_velocity(p, 1, 9.0))
    assert exc.value.code == 110
    with pytest.raises(driver.Esp300Error, match="MAXIMUM ACCELERATION EXCEEDED"):
        link.run(lambda p: driver.set_acceleration(p, 1, 500.0))
    assert link.run(lambda p: driver.max_acceleration(p, 1)) == pytest.approx(50.0)
    assert link.run(lambda p: driver.velocity(p, 1)) == pytest.approx(2.0)


def test_software_limits(link):
    link.run(lambda p: driver.set_soft_limit_low(p, 1, -5.0))
    link.run(lambda p: driver.set_soft_limit_high(p, 1, 5.0))
    assert link.run(lambda p: driver.soft_limits(p, 1)) == (-5.0, 5.0)
    with pytest.raises(driver.Esp300Error, match="POSITIVE SOFTWARE LIMIT") as exc:
        link.run(lambda p: driver.move_absolute(p, 1, 6.0))
    assert exc.value.errors[0].is_limit and exc.value.code == 106
    with pytest.raises(driver.Esp300Error, match="NEGATIVE SOFTWARE LIMIT"):
        link.run(lambda p: driver.move_absolute(p, 1, -6.0))
    assert done(link, 1)


def test_hardware_limit_stops_the_axis_and_queues_the_error(link, sim):
    link.run(lambda p: driver.set_soft_limit_high(p, 3, 40.0))
    fast(link, 3)
    link.run(lambda p: driver.move_absolute(p, 3, 30.0))
    wait_until(lambda: done(link, 3), 15)
    assert link.run(lambda p: driver.position(p, 3)) == pytest.approx(25.0)
    errors = link.run(driver.drain_errors)
    assert [(e.code, e.message, e.axis) for e in errors] == [(304, "POSITIVE HARDWARE LIMIT DETECTED", 3)]
    with pytest.raises(driver.Esp300Error, match="POSITIVE HARDWARE LIMIT"):
        link.run(lambda p: driver.move_absolute(p, 3, 26.0))  # further into the switch
    link.run(lambda p: driver.move_absolute(p, 3, 24.0))  # away from it is fine


def test_stop_decelerates_and_abort_kills_power(link, sim):
    link.run(lambda p: driver.move_absolute(p, 1, 20.0))
    wait_until(lambda: sim.position(1) > 0.5, 5)
    link.run(lambda p: driver.stop(p, 1))
    wait_until(lambda: done(link, 1), 5)
    stopped = link.run(lambda p: driver.position(p, 1))
    assert 0.5 < stopped < 20.0
    link.run(lambda p: driver.move_absolute(p, 2, 10.0))
    errors = link.run(driver.abort)
    assert [(e.code, e.message) for e in errors] == [(4, "EMERGENCY STOP ACTIVATED")]
    assert done(link, 2)  # MD? = 1 after an abort: no trajectory, not "arrived"
    assert link.run(lambda p: driver.position(p, 2)) < 10.0
    assert not link.run(lambda p: driver.motor_on(p, 2))


def test_motor_power_and_motion_done_with_motor_off(link):
    link.run(lambda p: driver.set_motor(p, 2, False))
    assert not link.run(lambda p: driver.motor_on(p, 2))
    assert done(link, 2)
    with pytest.raises(driver.Esp300Error, match="MOTOR NOT ENABLED") as exc:
        link.run(lambda p: driver.move_absolute(p, 2, 1.0))
    assert exc.value.code == 213
    with pytest.raises(driver.Esp300Error, match="HOMING ABORTED"):
        link.run(lambda p: driver.home(p, 2, 1))
    link.run(lambda p: driver.set_motor(p, 2, True))
    assert link.run(lambda p: driver.motor_on(p, 2))


def test_status_byte(link):
    status = link.run(driver.status_byte)
    assert status & 0x10 and driver.moving_axes(status) == set()
    link.run(lambda p: driver.move_absolute(p, 2, 3.0))
    assert driver.moving_axes(link.run(driver.status_byte)) == {2}


@pytest.mark.parametrize("mode, expected", [(1, 0.0), (3, 0.0), (4, 0.0), (0, 0.0)])
def test_homing_modes_define_zero(link, sim, mode, expected):
    fast(link, 1)
    link.run(lambda p: driver.move_absolute(p, 1, 2.0))
    wait_until(lambda: done(link, 1), 5)
    link.run(lambda p: driver.home(p, 1, mode))
    wait_until(lambda: done(link, 1), 15)
    assert link.run(lambda p: driver.position(p, 1)) == pytest.approx(expected, abs=1e-6)
    physical = {0: 0.0, 1: 0.0, 3: 25.0, 4: -25.0}[mode]
    assert sim.axes[1].physical_mm == pytest.approx(physical)
    assert link.run(driver.drain_errors) == []
    with pytest.raises(ValueError, match="home mode 7"):
        link.run(lambda p: driver.home(p, 1, 7))


def test_stop_during_homing_queues_homing_aborted(link):
    link.run(lambda p: driver.home(p, 1, 3))
    with pytest.raises(driver.Esp300Error, match="HOMING ABORTED"):
        link.run(lambda p: driver.stop(p, 1))


def test_define_position(link, sim):
    link.run(lambda p: driver.define_position(p, 1, 12.5))
    assert link.run(lambda p: driver.position(p, 1)) == pytest.approx(12.5)
    assert sim.axes[1].physical_mm == pytest.approx(0.0)


def test_bad_commands_get_no_reply_and_real_error_codes(link):
    def raw(cmd: str):
        return link.run(lambda p: (p.write(cmd), driver.drain_errors(p))[1])

    assert [(e.code, e.message) for e in raw("1XY5")] == [(6, "COMMAND DOES NOT EXIST")]
    assert [(e.code, e.message) for e in raw("PA5")] == [(37, "AXIS NUMBER MISSING")]
    assert [(e.code, e.message) for e in raw("4PA5")] == [(9, "AXIS NUMBER OUT OF RANGE")]
    assert [(e.code, e.message) for e in raw("1PA")] == [(38, "COMMAND PARAMETER MISSING")]
    assert [(e.code, e.message) for e in raw("1PAfoo")] == [(7, "PARAMETER OUT OF RANGE")]
    with pytest.raises(LinkTimeout):
        link.run(lambda p: driver.query(p, "4TP?"))  # no reply to a bad query
    assert link.run(driver.read_error_code) == 9
    assert link.run(driver.read_error).code == 0


def test_errors_of_other_axes_are_returned_not_blamed(link):
    link.run(lambda p: driver.set_motor(p, 3, False))
    link.run(lambda p: p.write("3PA1"))  # queues 313 for axis 3
    others = link.run(lambda p: driver.set_velocity(p, 1, 3.0))
    assert [e.code for e in others] == [313]


def test_error_queue_reply_format(link):
    link.run(lambda p: p.write("1ZZ"))
    reply = link.run(lambda p: driver.query(p, "TB?"))
    code, stamp, message = (s.strip() for s in reply.split(",", 2))
    assert code == "6" and stamp.isdigit() and message == "COMMAND DOES NOT EXIST"
    assert link.run(lambda p: driver.query(p, "TB?")).endswith("NO ERROR DETECTED")


def test_socket_path_and_reply_latency():
    sim = Esp300Simulator(reply_delay_s=0.02, char_time_s=10 / 19200)
    with SimulatorServer(sim) as server:
        lk = SerialLink(_settings(server.url))
        lk.start()
        try:
            assert wait_connected(lk, 5)
            t0 = time.monotonic()
            assert lk.run(driver.firmware).startswith("ESP300")
            elapsed = time.monotonic() - t0
            assert 0.02 + 29 * 10 / 19200 <= elapsed < 0.5
        finally:
            lk.close()


def test_format_number_refuses_nan():
    assert driver.format_number(1.5) == "1.5" and driver.format_number(-0.0) == "0"
    with pytest.raises(ValueError):
        driver.format_number(float("nan"))


def test_check_errors_reads_te_first_and_tb_only_for_more(link, sim):
    before = len(sim.log)
    assert link.run(driver.check_errors) == []
    assert [raw for _, raw in sim.log[before:]] == [b"TE?"]  # 3 characters back, not ~30
    link.run(lambda p: p.write("1PA99999"))  # beyond the soft limit: refused into the queue
    link.run(lambda p: p.write("1XY5"))  # a command that does not exist
    errors = link.run(driver.check_errors)
    assert [(e.code, e.message) for e in errors] == [(106, driver.message_for(106)), (6, "COMMAND DOES NOT EXIST")]
    assert link.run(driver.check_errors) == []
