"""The Mai Tai component without Tango, on the in-process ``sim://`` link."""

from __future__ import annotations

import logging
import math
import threading
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
    comp.set_wavelength(1000)
    assert comp.is_moving() and comp.state == DeviceState.MOVING
    assert comp.wavelength.value != 1000.0  # read = actual, never the target pasted in
    wait_until(lambda: not comp.is_moving(), 3, what="tuning to finish")
    assert abs(comp.wavelength.value - 1000) <= 0.5 and comp.state == DeviceState.OFF


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
def started(url: str, poll_period_s: float = 0.05, **kwargs) -> tuple[MaiTaiComponent, MaiTaiSimulator]:
    """A component on its own simulator (``url`` unique per test: simulators are per URL)."""
    sim = protocol_sim.get_simulator(url)
    assert isinstance(sim, MaiTaiSimulator)
    comp = MaiTaiComponent(LinkSettings(url=url, flow_control="xonxoff", timeout_s=0.3), poll_period_s=poll_period_s,
                           **kwargs)
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
    comp, sim = started(URL + "&seed=103", watchdog_s=2)
    request.addfinalizer(comp.stop)
    assert sim.watchdog_s in (2.0, 3.0)  # the REMOTE probe alternates 2 and 3 s
    comp.on()
    comp.open_shutter()
    assert sim.emission and sim.shutter_open
    sim.unplug()  # the line (or the server) is gone: no command reaches the laser any more
    # Not before the watchdog: the last command came at most a poll (and a few link replies) ago,
    # so 2 s is left; a test thread stalled by load for that long is not a product failure.
    assert sim.emission
    # Then: after the watchdog (2-3 s), bounded generously so that a loaded machine does not fail it.
    wait_until(lambda: not sim.emission, 15, interval=0.05, what="the laser's watchdog to switch the pump off")
    sim.plug()
    wait_until(lambda: comp.communication_ok, 5, what="reconnected")
    wait_until(lambda: not sim.shutter_open, 3, what="the shutter closed after the link came back")
    wait_until(lambda: comp.state == DeviceState.ALARM and "without an Off" in comp.status, 3,
               what="ALARM for the emission nobody stopped")
    comp.on()
    assert comp.state == DeviceState.ON and sim.emission and not sim.shutter_open


# ---------------------------------------------------------------------- a shutter of ours that nobody holds is closed
def test_an_opening_confirmed_after_open_shutter_failed_is_closed_as_an_ended_lease(request) -> None:
    """The laser follows SHUTter 1 only after the 2 s confirmation: OpenShutter has failed and
    dropped its lease, so the late opening has no owner and the server closes it."""
    comp, sim = started(URL.replace("shutter_lag_s=0.1", "shutter_lag_s=2.6") + "&seed=104")
    request.addfinalizer(comp.stop)
    with pytest.raises(RuntimeError, match="did not open|ignored SHUTter 1"):
        comp.open_shutter(5.0)
    assert comp.shutter_lease.value == 0.0
    wait_until(lambda: sim.shutter_open, 5, interval=0.02, what="the laser to open the shutter late")
    sim.shutter_lag_s = 0.1  # the close need not be as slow
    wait_until(lambda: not sim.shutter_open, 10, interval=0.02, what="the server to close the late opening")
    wait_until(lambda: "closed by this server" in comp.status and "OpenShutter had been reported failed" in comp.status,
               5, what="Status to say why it closed")


def test_a_close_ignored_in_local_is_repeated_until_local_ends(request) -> None:
    comp, sim = started(URL + "&seed=105")
    request.addfinalizer(comp.stop)
    comp.open_shutter()
    sim.set_local_mode(True)
    with pytest.raises(RuntimeError, match="LOCAL"):
        comp.close_shutter()
    assert sim.shutter_open
    wait_until(lambda: comp.state == DeviceState.ALARM and "was not followed" in comp.status, 5,
               what="ALARM: the server is closing a shutter nobody holds")
    sim.set_local_mode(False)  # the front panel back in REMOTE: the re-sent SHUTter 0 is followed
    wait_until(lambda: not sim.shutter_open, 10, interval=0.02, what="the server to close the shutter after LOCAL")
    wait_until(lambda: "closed by this server" in comp.status and comp.state == DeviceState.OFF, 5,
               what="OFF, and Status saying why it closed")


def test_the_lease_is_enforced_while_every_reply_is_garbled(request) -> None:
    """Polls that keep failing still feed the laser's watchdog; they must still enforce the lease."""
    comp, sim = started(URL + "&seed=106")
    request.addfinalizer(comp.stop)
    request.addfinalizer(lambda: setattr(sim.faults, "garble_next", 0))
    comp.open_shutter(1.0)
    assert sim.shutter_open
    sim.faults.garble_next = 10**9  # every reply from now on is noise; set commands still work
    wait_until(lambda: not sim.shutter_open, 10, interval=0.02,
               what="the server to close the shutter when its lease expires, although every read fails")
    assert comp.communication_ok and comp.error_count > 0  # the link stayed up: the reads failed
    sim.faults.garble_next = 0
    wait_until(lambda: "lease expired" in comp.status and not comp.shutter.value, 5, what="Status to say why")


def test_a_renewal_after_expiry_but_before_the_next_poll_is_refused_and_the_shutter_closes(request) -> None:
    comp, sim = started(URL + "&seed=107", poll_period_s=5.0)  # the poll that would close it comes late
    request.addfinalizer(comp.stop)
    comp.open_shutter(0.5)
    expired_at = time.monotonic() + 0.5
    wait_until(lambda: time.monotonic() > expired_at + 0.1, 2, interval=0.01, what="the lease to expire")
    assert sim.shutter_open  # no poll yet: only the renewal can notice
    with pytest.raises(RuntimeError, match="lease expired .* the shutter is being closed"):
        comp.renew_lease(5.0)
    wait_until(lambda: not sim.shutter_open, 5, interval=0.02, what="the server to close the shutter")
    wait_until(lambda: "lease expired" in comp.status and "renewal arrived" in comp.status, 5,
               what="Status to say why it closed")
    with pytest.raises(RuntimeError, match="No shutter lease"):
        comp.renew_lease(5.0)


def test_while_tuning_the_polls_ask_the_actual_wavelength_alone_with_a_full_round_each_period(request) -> None:
    """A scan's wavelength point ends when READ:WAV? reaches the setpoint: while tuning, the polls
    ask that alone (one query, not a round of five), and still make one full round (status byte,
    shutter, power: the safety checks' input) per poll period."""
    url = "sim://maitai?reply_delay_s=0.01&start_warm=true&tuning_rate_nm_s=100&shutter_lag_s=0.1&seed=130"
    comp, sim = started(url, poll_period_s=0.3)
    request.addfinalizer(comp.stop)
    wait_until(lambda: comp.state == DeviceState.OFF, 5, what="OFF")
    sim.log.clear()
    comp.set_wavelength(900)  # 100 nm at 100 nm/s: about a second of tuning
    wait_until(lambda: not comp.is_moving(), 5, what="tuning to finish")
    queries = [raw.strip().upper() for _, raw in sim.log]
    actual, rounds = queries.count(b"READ:WAVELENGTH?"), queries.count(b"*STB?")
    tuning_s = sim.log[-1][0] - sim.log[0][0]
    assert abs(comp.wavelength.value - 900) <= 0.5
    assert rounds <= tuning_s / 0.3 + 2, (rounds, tuning_s, queries)  # one full round per period, not per poll
    assert actual >= 3 * rounds, (actual, rounds, queries)  # the actual wavelength asked in between


def test_a_status_read_before_on_was_confirmed_is_not_taken_for_emission_lost(request) -> None:
    """A poll's *STB? sent before ON, published after On was confirmed (its thread delayed, as a
    loaded server delays it), once disarmed the emission-loss watch: a later real loss (key switch
    off) then raised no ALARM and did not close the shutter. Found as a rare unit-tier failure."""
    comp, sim = started(URL + "&seed=131")
    request.addfinalizer(comp.stop)
    wait_until(lambda: comp.state == DeviceState.OFF, 5, what="OFF")
    test_thread = threading.current_thread()
    held, release, stale_published = threading.Event(), threading.Event(), threading.Event()
    publish = comp._publish

    def delayed_publish(values):  # the poll thread's publish of a reading taken while emission is off
        stb = values.get("stb")  # (StatusByte, time asked)
        reading = stb[0] if isinstance(stb, tuple) else stb
        if threading.current_thread() is not test_thread and reading is not None and not reading.emission \
                and not held.is_set():
            held.set()
            release.wait(10)
            publish(values)
            stale_published.set()
            return
        publish(values)

    comp._publish = delayed_publish
    wait_until(held.is_set, 5, what="a poll holding a reading of emission off")
    comp.on()  # sent while that reading is held: ON, confirmed by a *STB? of its own
    release.set()
    wait_until(stale_published.is_set, 5, what="the held reading published after On")
    wait_until(lambda: comp.state == DeviceState.ON, 3, what="ON")
    assert "Emission stopped" not in comp.status, comp.status
    comp.open_shutter()
    sim.set_key_switch(False)  # a real loss: the watch must still be armed
    wait_until(lambda: comp.state == DeviceState.ALARM and "without an Off" in comp.status, 3,
               what="ALARM for the emission nobody stopped")
    sim.set_key_switch(True)  # the laser ignored SHUTter 0 while the key was off; the server kept sending it
    wait_until(lambda: not sim.shutter_open, 5, what="the shutter closed once the laser follows commands")


def test_tuning_starts_when_the_command_is_sent_not_when_it_is_confirmed(request) -> None:
    """The laser tunes from WAVelength n on: Tuning (MOVING) is published before the write's
    confirmation (WAVelength?, one more reply) is even asked, and the polls in between never take
    the old setpoint for the target (no MOVING -> ON -> MOVING blip while the write waits)."""
    url = "sim://maitai?reply_delay_s=0.05&start_warm=true&tuning_rate_nm_s=100&shutter_lag_s=0.1&seed=131"
    comp, sim = started(url, poll_period_s=0.02)
    request.addfinalizer(comp.stop)
    wait_until(lambda: comp.state == DeviceState.OFF and not comp.is_moving(), 5, what="OFF, not tuning")
    seen: list[tuple[float, object]] = []
    request.addfinalizer(comp.tuning.subscribe(lambda r: seen.append((time.monotonic(), r.value))))
    confirm_asked: list[float] = []  # when the write asks its WAVelength? (polls ask it too: not the log)
    read = comp._read

    def recording_read(fn, description):  # noqa: ANN001, ANN202
        if description == "WAVelength?":
            confirm_asked.append(time.monotonic())
        return read(fn, description)

    comp._read = recording_read
    sim.log.clear()
    comp.set_wavelength(880)  # 80 nm at 100 nm/s: tuning outlasts the confirmation by far
    sent = next(t for t, raw in sim.log if raw.strip().upper() == b"WAVELENGTH 880")
    first_true = next(t for t, v in seen if v is True)
    assert len(confirm_asked) == 1 and sent <= first_true < confirm_asked[0], (sent, first_true, confirm_asked)
    assert comp.is_moving() and comp.state == DeviceState.MOVING
    wait_until(lambda: not comp.is_moving(), 5, what="tuning to finish")
    values = [v for _, v in seen]
    assert values[values.index(True):].count(False) == 1 and values[-1] is False, values  # one MOVING, one end


def test_a_wavelength_write_waits_for_one_query_of_a_poll_round_not_the_whole_round(request) -> None:
    """The poll's round (status byte, setpoint, wavelength, shutter, power) is one link request
    per query: a write that comes while the round's first query is answered goes out right after
    it, not after the five of them; and the round's setpoint, read before the write, does not
    overwrite the write's own read-back."""
    url = "sim://maitai?reply_delay_s=0.2&start_warm=true&tuning_rate_nm_s=100&shutter_lag_s=0.1&seed=132"
    comp, sim = started(url, poll_period_s=0.05)
    request.addfinalizer(comp.stop)
    wait_until(lambda: comp.state == DeviceState.OFF and not comp.is_moving(), 10, what="OFF, not tuning")
    writer: list[threading.Thread] = []

    def on_rx(_t: float, raw: bytes) -> None:  # the simulator's thread: start the write, do not wait for it
        if raw.strip().upper() == b"*STB?" and not writer:
            thread = threading.Thread(target=comp.set_wavelength, args=(810,), daemon=True)
            thread.start()  # before it is shown to the test's thread, which joins it as soon as it sees it
            writer.append(thread)

    sim.log.clear()
    sim.add_rx_listener(on_rx)
    wait_until(lambda: bool(writer), 10, what="a poll round to begin")
    writer[0].join(10)
    log = [raw.strip().upper() for _, raw in sim.log]
    start, sent = log.index(b"*STB?"), log.index(b"WAVELENGTH 810")
    assert sent - start <= 2, log[start : sent + 1]  # at most the round's next query slipped in first
    assert comp.wavelength_setpoint.value == 810.0
    wait_until(lambda: not comp.is_moving(), 5, what="tuning to finish")
    assert comp.wavelength_setpoint.value == 810.0 and abs(comp.wavelength.value - 810) <= 0.5


def test_a_poll_reading_older_than_a_commands_read_back_is_never_published(laser) -> None:
    """A poll round's queries interleave with commands, and the round publishes its values after
    its last query: its SHUTter? answered just before an OpenShutter was confirmed arrives after
    the confirmation. It must not undo it: the shutter shown closed, and the opening no longer
    this server's (so not closed at its stop, and the next poll taking the open shutter for one
    opened outside tangodaq)."""
    comp, sim = laser
    stale = comp._run_steps(comp._round_steps(slow=True))  # a whole round, slow queries too, read while closed
    assert stale["Shutter"] is False and {"Shutter", "stb", "WavelengthSetpoint", "Humidity"} <= set(stale["_asked"])
    stale_asked = stale["_asked"]["Shutter"]
    comp.open_shutter()
    assert comp.shutter.value is True and sim.shutter_open
    comp._publish(stale)  # the round's answers, published after the confirmation
    assert comp.shutter.value is True
    fresh = comp._run_steps(comp._round_steps(slow=False))
    assert fresh["_asked"]["Shutter"] > stale_asked
    comp._publish(fresh)  # a round asked after the confirmation is published
    assert comp.shutter.value is True
    comp.stop()  # the server's stop closes the shutter it opened: still ours
    assert not sim.shutter_open


def test_a_wavelength_write_the_laser_ignores_leaves_no_move_behind(laser) -> None:
    """Tuning goes true as WAVelength n is sent; when the read-back shows the laser ignored it
    (front panel in LOCAL), the write fails and Tuning and State are back at once, not at the
    next poll: nothing waits for a move that never started."""
    comp, sim = laser
    sim.set_local_mode(True)
    sim.log.clear()
    with pytest.raises(RuntimeError, match="ignored WAVelength 900"):
        comp.set_wavelength(900)
    assert any(raw.strip().upper() == b"WAVELENGTH 900" for _, raw in sim.log)  # it was sent, then ignored
    assert not comp.is_moving() and comp.state != DeviceState.MOVING
    assert comp.wavelength_setpoint.value == 800.0


def test_errors_a_round_drained_are_reported_even_when_a_later_query_of_it_fails(request, caplog) -> None:
    """*STB? shows an error, the round drains SYSTem:ERR? (the laser forgets them then), and a
    later query of the same round gets no answer: the round is lost, the laser's error text is not."""
    url = "sim://maitai?reply_delay_s=0&start_warm=true&tuning_rate_nm_s=300&shutter_lag_s=0.1&seed=133"
    comp, sim = started(url, poll_period_s=0.05)
    request.addfinalizer(comp.stop)
    wait_until(lambda: comp.state == DeviceState.OFF, 5, what="OFF")
    answer = sim.handle
    silent = {"drained": False, "left": 1 + comp.link.settings.retries}  # every try of the step

    def handle(command: str, now: float):  # noqa: ANN202 - the simulator's own signature
        text = command.strip().upper()
        if text.startswith("SYST"):
            silent["drained"] = True
        elif silent["drained"] and silent["left"] > 0 and text == "WAVELENGTH?":
            silent["left"] -= 1
            return None  # no answer, to every retry: this round fails after its errors were drained
        return answer(command, now)

    sim.handle = handle
    with caplog.at_level(logging.WARNING):
        sim.open_interlock()
        wait_until(lambda: silent["left"] == 0, 10, what="the round after the drain to lose a query")
        wait_until(lambda: any("the laser reports" in r.getMessage() and "nterlock" in r.getMessage()
                               for r in caplog.records), 5, what="the interlock error reported")
    assert not sim.errors  # drained: only the report above still has it
    wait_until(lambda: comp.communication_ok and comp.state != DeviceState.FAULT, 5, what="recovered")
