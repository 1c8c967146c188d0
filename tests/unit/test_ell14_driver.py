"""The ELL14 driver and bus dispatcher against the bus simulator, with the logged IN replies."""

from __future__ import annotations

import time

import pytest

from deviceservers.common import protocol_sim
from deviceservers.common.serial_link import (
    GarbledReply,
    LinkDown,
    LinkError,
    LinkSettings,
    LinkTimeout,
    ProtocolError,
    SerialLink,
    wait_connected,
)
from deviceservers.Ell14 import driver, simulator
from deviceservers.Ell14.bus import Ell14Bus, acquire_bus, release_bus
from deviceservers.Ell14.simulator import Ell14BusSimulator
from tests.waiting import wait_until

LOGGED = {
    "2": ("2IN0E1140051720231701016800023000", "11400517", 2023, "17"),
    "3": ("3IN0E1140028420211501016800023000", "11400284", 2021, "15"),
    "8": ("8IN0E1140060920231701016800023000", "11400609", 2023, "17"),
}
PPR = 143_360
URL = "sim://ell14?addresses=238&reply_delay_s=0&settle_s=0&full_speed_deg_s=1500"


def settings(url: str = URL, timeout_s: float = 0.3) -> LinkSettings:
    return LinkSettings(url=url, timeout_s=timeout_s, write_terminator=b"", read_terminator=b"\r\n",
                        retry_backoff_s=0.0)


@pytest.fixture
def bus():
    b = acquire_bus(settings())
    for a in "238":
        b.register(a, None)
    assert wait_connected(b.link, 5)
    yield b
    release_bus(b)


def sim_of(url: str = URL) -> Ell14BusSimulator:
    return protocol_sim.get_simulator(url)  # type: ignore[return-value]


# ---------------------------------------------------------------------- pure protocol
@pytest.mark.parametrize("address", ["2", "3", "8"])
def test_logged_in_replies_decode(address):
    line, serial, year, firmware = LOGGED[address]
    reply = driver.parse_reply(line.encode() + b"\r\n")
    assert reply is not None and reply.address == address and reply.code == "IN"
    info = driver.parse_info(reply.data)
    assert info.pulses_per_unit == PPR and info.serial_number == serial
    assert info.year == year and info.firmware == firmware and info.is_ell14 and info.travel == 360
    # the newer firmware's 33-character form: the same fields, three more characters kept aside
    long = driver.parse_info(reply.data + "0A1")
    assert long.pulses_per_unit == PPR and long.serial_number == serial and long.extra == "0A1"


@pytest.mark.parametrize("data", ["0E11400517202317010168000230", "0E114005172023170101680002300012", ""])
def test_in_reply_of_wrong_length_is_refused(data):
    with pytest.raises(ProtocolError, match="30 or 33"):
        driver.parse_info(data)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "00000000"), (1, "00000001"), (-1, "FFFFFFFF"), (PPR, "00023000"), (-PPR, "FFFDD000"),
     (2**31 - 1, "7FFFFFFF"), (-(2**31), "80000000")],
)
def test_two_complement_positions(value, text):
    assert driver.encode_int32(value) == text
    assert driver.decode_int32(text) == value


def test_degrees_and_pulses():
    assert driver.degrees_to_pulses(90, PPR) == 35_840
    assert driver.degrees_to_pulses(-45, PPR) == -17_920
    assert driver.pulses_to_degrees(35_840, PPR) == 90.0
    assert abs(driver.pulses_to_degrees(driver.degrees_to_pulses(12.345, PPR), PPR) - 12.345) < 360 / PPR
    with pytest.raises(ValueError):
        driver.degrees_to_pulses(float("nan"), PPR)
    with pytest.raises(ValueError):
        driver.encode_int32(2**31)


@pytest.mark.parametrize(
    "line",
    [b"", b"2PO0000", b"2po00000000", b"2PO0000000G", b"2PO000000001", b"2GS0", b"G2PO00000000",
     b"2IN0E11400517", b"2PO00003PO00001000", b"\xff\x003PO00001000", b"#@!?~", b"2PO 00000000"],
)
def test_malformed_lines_are_not_replies(line):
    assert driver.parse_reply(line) is None


def test_status_codes_are_decoded():
    assert driver.describe_status(0x02) == "02 mechanical time-out"
    assert driver.describe_status(0x09) == "09 busy (moving)"
    assert driver.describe_status(0x0D) == "0D over-current"
    assert "unknown" in driver.status_message(0x42)


def test_commands_are_framed_without_terminator():
    assert driver.command_bytes("2", "ma", "00008C00") == b"2ma00008C00"
    assert driver.command_bytes("a", "gs") == b"Ags"
    for bad in [("G", "gs", ""), ("2", "ma", "8C00"), ("2", "zz", "")]:
        with pytest.raises(ValueError):
            driver.command_bytes(*bad)


# ---------------------------------------------------------------------- simulator framing
def read_all(conn, wait: float = 0.05) -> bytes:
    out = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        out += conn.read(4096, 0.01)
    return out


def test_simulator_frames_by_length_and_answers_only_its_address():
    sim = Ell14BusSimulator(addresses="238", reply_delay_s=0)
    conn = sim.connect()
    conn.write(b"2g")
    conn.write(b"s3gp5gs8")  # a packet split across writes, two more, one for nobody
    conn.write(b"gv")
    assert read_all(conn) == b"2GS00\r\n3PO00000000\r\n8GV64\r\n"
    conn.write(b"2xx")
    assert read_all(conn) == b"2GS03\r\n"  # unknown command
    conn.write(b"2svZZ2sv00")
    assert read_all(conn) == b"2GS03\r\n2GS04\r\n"  # not hex; value out of range


def test_simulator_drops_a_partial_packet_after_a_gap(monkeypatch):
    monkeypatch.setattr(simulator, "PACKET_GAP_S", 0.05)  # the real bus waits 2 s
    sim = Ell14BusSimulator(addresses="23", reply_delay_s=0)
    conn = sim.connect()
    conn.write(b"2i")
    time.sleep(0.1)  # the gap itself is what is tested
    conn.write(b"3gs")
    assert read_all(conn) == b"3GS00\r\n"


def test_simulator_addresses_option():
    assert list(Ell14BusSimulator(addresses=238).mounts) == ["2", "3", "8"]
    assert list(Ell14BusSimulator(addresses="0,8").mounts) == ["0", "8"]
    with pytest.raises(ValueError):
        Ell14BusSimulator(addresses="22")


# ---------------------------------------------------------------------- every command over the link
@pytest.mark.parametrize("address", ["2", "3", "8"])
def test_identity_from_the_logged_replies(bus, address):
    info = bus.run(lambda p, b: driver.get_info(p, address, b))
    assert info.pulses_per_unit == PPR and info.serial_number == LOGGED[address][1]


def test_settings_round_trip(bus):
    a = "3"
    bus.run(lambda p, b: driver.set_velocity(p, a, 55, b))
    assert bus.run(lambda p, b: driver.get_velocity(p, a, b)) == 55
    bus.run(lambda p, b: driver.set_jog_step(p, a, 3584, b))
    assert bus.run(lambda p, b: driver.get_jog_step(p, a, b)) == 3584
    bus.run(lambda p, b: driver.set_home_offset(p, a, 7168, b))
    assert bus.run(lambda p, b: driver.get_home_offset(p, a, b)) == 7168
    bus.run(lambda p, b: driver.save_user_data(p, a, b))
    assert sim_of().mounts[a].saved == {"velocity": 55, "jog_step": 3584, "home_offset": 7168}
    with pytest.raises(driver.Ell14Error, match="04 value out of range") as info:
        bus.run(lambda p, b: driver.set_velocity(p, a, 0, b))
    assert info.value.code == 4
    assert bus.run(lambda p, b: driver.get_velocity(p, a, b)) == 55  # refused value changed nothing


def move_and_wait(bus: Ell14Bus, address: str, command: str, data: str = "", timeout: float = 5.0) -> int:
    def go(port, b):
        driver.send_move(port, address, command, data)
        return driver.wait_move_done(port, address, timeout, b)

    return bus.run(go, idempotent=False, timeout=timeout + 2)


def test_moves_home_and_jog(bus):
    a = "2"
    assert move_and_wait(bus, a, *driver.move_absolute_data(35_840)) == 35_840
    assert move_and_wait(bus, a, *driver.move_relative_data(-17_920)) == 17_920
    bus.run(lambda p, b: driver.set_jog_step(p, a, 1000, b))
    assert move_and_wait(bus, a, "fw") == 18_920
    assert move_and_wait(bus, a, "bw") == 17_920
    assert move_and_wait(bus, a, *driver.home_data(1)) == 0
    assert move_and_wait(bus, a, *driver.move_relative_data(-1000)) == PPR - 1000  # reported modulo one turn
    assert move_and_wait(bus, a, *driver.home_data(0)) == 0
    assert [raw for _, raw in sim_of().log if raw[1:3] in (b"ma", b"mr", b"fw", b"bw", b"ho")] == [
        b"2ma00008C00", b"2mrFFFFBA00", b"2fw", b"2bw", b"2ho1", b"2mrFFFFFC18", b"2ho0"]


def test_busy_while_moving_at_the_set_velocity_then_po():
    url = "sim://ell14?addresses=2&reply_delay_s=0&settle_s=0&full_speed_deg_s=400"
    b = acquire_bus(settings(url))
    b.register("2", None)
    try:
        assert wait_connected(b.link, 5)
        b.run(lambda p, bb: driver.set_velocity(p, "2", 50, bb))  # 200 deg/s: 90 deg take 0.45 s
        t0 = time.monotonic()
        b.run(lambda p, bb: driver.send_move(p, "2", *driver.move_absolute_data(35_840)), idempotent=False)
        assert b.run(lambda p, bb: driver.get_status(p, "2", bb)) == driver.STATUS_BUSY
        midway = b.run(lambda p, bb: driver.get_position(p, "2", bb))
        assert 0 <= midway < 35_840
        end = b.run(lambda p, bb: driver.wait_move_done(p, "2", 3, bb), idempotent=False)
        assert end == 35_840 and 0.4 < time.monotonic() - t0 < 1.5
        assert b.run(lambda p, bb: driver.get_status(p, "2", bb)) == driver.STATUS_OK
    finally:
        release_bus(b)


def test_stop_ends_a_move_early_and_clean_mechanics_reports_busy():
    url = "sim://ell14?addresses=2&reply_delay_s=0&full_speed_deg_s=40&clean_s=0.3"
    b = acquire_bus(settings(url))
    b.register("2", None)
    try:
        assert wait_connected(b.link, 5)
        b.run(lambda p, bb: driver.send_move(p, "2", *driver.move_absolute_data(PPR // 2)), idempotent=False)
        b.link.send_urgent(driver.stop_bytes("2"), terminate=False)
        end = b.run(lambda p, bb: driver.wait_move_done(p, "2", 2, bb), idempotent=False)
        assert end < PPR // 4  # stopped long before 180 deg
        assert b.run(lambda p, bb: driver.get_status(p, "2", bb)) == driver.STATUS_OK
        b.run(lambda p, bb: driver.send_move(p, "2", "cm"), idempotent=False)
        assert b.run(lambda p, bb: driver.get_status(p, "2", bb)) == driver.STATUS_BUSY
        wait_until(lambda: b.run(lambda p, bb: driver.get_status(p, "2", bb)) == driver.STATUS_OK, 3)
    finally:
        release_bus(b)


# ---------------------------------------------------------------------- injected faults
def test_mechanical_timeout_is_reported_as_gs02():
    url = "sim://ell14?addresses=23&reply_delay_s=0&mechanical_timeout=2"
    b = acquire_bus(settings(url))
    b.register("2", None)
    try:
        assert wait_connected(b.link, 5)
        with pytest.raises(driver.Ell14Error, match="02 mechanical time-out"):
            move_and_wait(b, "2", *driver.move_absolute_data(35_840))
        assert b.run(lambda p, bb: driver.get_status(p, "2", bb)) == driver.STATUS_MECHANICAL_TIMEOUT
        assert move_and_wait(b, "2", *driver.move_absolute_data(0)) == 0  # the next move works
    finally:
        release_bus(b)


def test_truncated_in_reply_is_never_decoded_and_the_query_is_retried():
    url = "sim://ell14?addresses=2&reply_delay_s=0&truncate_in=1"
    link = SerialLink(settings(url, timeout_s=0.2))
    link.start()
    try:
        assert wait_connected(link, 5)
        # the broken line is reported as garbled, with its bytes, not as a mute mount
        with pytest.raises(GarbledReply, match=r"garbled reply b'2IN"):
            link.run(lambda p: driver.get_info(p, "2"), idempotent=False)
        sim_of(url).truncate_in = 1
        info = link.run(lambda p: driver.get_info(p, "2"), idempotent=True)
        assert info.serial_number == "11400517" and link.health.retries == 1
    finally:
        link.close()


def test_a_move_is_never_resent():
    url = "sim://ell14?addresses=23&reply_delay_s=0"
    b = acquire_bus(settings(url, timeout_s=0.1))
    for a in "23":
        b.register(a, None)
    try:
        assert wait_connected(b.link, 5)
        sim = sim_of(url)
        sim.faults.mute = True  # the mount moves but its answers are lost
        ticket = b.start_move("2", *driver.move_absolute_data(35_840), "move to 90 deg")
        with pytest.raises(LinkError):
            b.run(lambda p, bb: driver.get_status(p, "2", bb))  # retried: it is a query
        assert sum(1 for _, raw in sim.log if raw == b"2gs") == 3
        # three silent answers in a row: the link is declared down and the move reported lost ...
        assert ticket.done.wait(2) and isinstance(ticket.error, LinkDown)
        sim.faults.mute = False
        assert wait_connected(b.link, 5)
        assert b.run(lambda p, bb: driver.get_position(p, "2", bb)) == 35_840
        # ... and never written again, neither by the retries nor by the reconnection
        assert sum(1 for _, raw in sim.log if raw.startswith(b"2ma")) == 1
    finally:
        release_bus(b)


def test_late_and_foreign_lines_are_not_taken_for_an_answer(bus):
    sim = sim_of()
    routed = []
    bus.unregister("2")
    bus.register("2", lambda r, late: routed.append((str(r), late)))
    conn = sim._connections[0]
    sim.faults.extra_delay_s = 0.5  # mount 2's answer comes after the 0.3 s time-out
    with pytest.raises(LinkTimeout):
        bus.link.run(lambda p: driver.get_position(p, "2", bus), idempotent=False)
    sim.faults.extra_delay_s = 0.0
    sim.reply(conn, b"\x00\xff~2PO00001000", delay=0.0)  # noise run into a packet
    sim.reply(conn, "9PO00001000", delay=0.0)  # an address nobody here owns
    wait_until(lambda: bus.run(lambda p, b: driver.get_position(p, "3", b)) == 0 and routed, 3)
    assert routed == [("2PO00000000", True)]  # the late answer, marked late; the noise dropped
    assert bus.stray_lines == 1 and bus.late_lines == 1


def test_end_of_move_arriving_during_another_mounts_query_goes_to_its_mailbox(bus):
    ends = []
    ticket = bus.start_move("2", *driver.move_absolute_data(3584), "move to 9 deg", lambda t: ends.append(t.position))
    # only mount 3 is asked: mount 2's PO arrives in the middle and must reach mount 2's mailbox
    wait_until(lambda: bus.run(lambda p, b: driver.get_position(p, "3", b)) == 0 and ends, 3)
    assert ends == [3584] and not ticket.active


def test_no_more_than_two_mounts_move_at_once():
    url = "sim://ell14?addresses=238&reply_delay_s=0&settle_s=0&full_speed_deg_s=300"
    b = acquire_bus(settings(url))
    for a in "238":
        b.register(a, None)
    try:
        assert wait_connected(b.link, 5)
        tickets = [b.start_move(a, *driver.move_absolute_data(PPR // 4), f"{a} to 90") for a in "238"]
        assert [t.state for t in tickets][2] == "queued" and b.queued_addresses() == ["8"]
        with pytest.raises(RuntimeError, match="already"):
            b.start_move("8", *driver.move_absolute_data(0), "again")

        def all_done() -> bool:
            for a in "238":
                b.run(lambda p, bb, a=a: driver.get_status(p, a, bb))
            return not any(t.active for t in tickets)

        wait_until(all_done, 5)
        sim = sim_of(url)
        assert sim.max_moving_seen == 2
        assert all(t.position == PPR // 4 and t.error is None for t in tickets)
        assert tickets[2].started >= min(tickets[0].finished, tickets[1].finished)
    finally:
        release_bus(b)


def test_stop_drops_a_queued_move():
    url = "sim://ell14?addresses=238&reply_delay_s=0&full_speed_deg_s=30"
    b = acquire_bus(settings(url))
    for a in "238":
        b.register(a, None)
    try:
        assert wait_connected(b.link, 5)
        tickets = [b.start_move(a, *driver.move_absolute_data(PPR // 4), f"{a} to 90") for a in "238"]
        b.stop("8")
        assert tickets[2].cancelled and not tickets[2].active
        for a in "23":
            b.stop(a)
        wait_until(lambda: not any(t.active for t in tickets[:2]) or
                   b.run(lambda p, bb: driver.get_status(p, "2", bb) + driver.get_status(p, "3", bb)) < 0, 3)
        assert not any(raw.startswith(b"8ma") for _, raw in sim_of(url).log)
    finally:
        release_bus(b)


def test_listen_hands_the_end_of_a_move_to_the_bus_when_it_comes(bus):
    """No request asks for the end of a move: listen() waits for the mount's PO and routes it."""
    ended = []
    bus.unregister("3")
    bus.register("3", lambda reply, late: ended.append((reply.code, reply.value, late)))
    ticket = bus.start_move("3", *driver.move_absolute_data(71_680), "move to 180 deg")
    assert not bus.run(lambda p, b: driver.listen(p, b, 0.0))  # nothing yet: returns after its timeout
    wait_until(lambda: bus.run(lambda p, b: driver.listen(p, b, 0.05)), 5, what="the PO")
    assert ticket.done.is_set() and ticket.position == 71_680
    assert ended == [("PO", 71_680, False)]
