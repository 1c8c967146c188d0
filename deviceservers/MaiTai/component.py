"""The Mai Tai as Parameters, with the safe start/stop procedures of a class-4 laser.

Why everything is confirmed by reading back: the laser is silent on set commands, ignores them
in LOCAL mode or with the key switch off, refuses some with an error only visible in
``*STB?``/``SYSTem:ERR?``, and reports the shutter's old state for about a second. A device that
trusted its writes would show a closed shutter that is open. So:

* ``Wavelength`` reads the *actual* wavelength (``READ:WAV?``); a write sets the target, is
  confirmed by ``WAV?`` at once, and ``Tuning`` is true from the moment the command is sent (the
  laser tunes while its confirmation is read) until the actual wavelength is within
  ``tolerance_nm`` of ``WAV?`` (derived from readback, so front-panel tuning shows as well);
* shutter and emission changes are waited for on polled readback with a deadline
  (``SHUTTER_CONFIRM_S``, ``EMISSION_CONFIRM_S``): the request thread blocks at most that long,
  because a client that asked to open the shutter wants to know whether it is open; a command
  the laser does not follow is reported (DISABLE: LOCAL/key switch; ALARM: interlock), never
  hidden; a late follow clears the report by itself;
* the component remembers whether *this server* opened the shutter and closes it at shutdown,
  at Init, and when the link comes back after a loss (it cannot while the link is down).

Light only while someone who asked for it is alive (docs/laser-safety.md has the whole story):

* every opening is held by a **lease** that this server enforces in its poll loop: when it
  expires the server closes the shutter. ``OpenShutterWithLease(s)`` takes a short lease that its
  owner (a macro) renews with ``RenewShutterLease(s)`` from a thread that lives exactly as long as
  the macro; ``OpenShutter``/``Shutter = True`` (a person at a GUI or itango) takes the longer
  ``manual_lease_s`` lease, renewed by opening again. A renewal never reopens a closed shutter
  and never revives an expired lease. Enforcement runs after every poll, even one whose reads
  failed, and treats an open shutter of ours that nobody holds (an opening confirmed too late, a
  close ignored in LOCAL) as an ended lease;
* the laser's own serial watchdog (``TIMer:WATChdog``, ``watchdog_s``) switches the pump off when
  this server stops sending (server dead, link dead): the case a lease cannot cover;
* at the first connection of a server run, an open shutter has no living owner: it is closed;
* emission that stops without an Off (key switch, watchdog, front panel) and an open interlock
  are ALARM, and the server closes an open shutter then (re-sending SHUTter 0 until the laser
  follows: with the key off it ignores set commands until the key is back); ``On`` is refused
  while the shutter is open, so emission never starts into an open shutter;
* LOCAL (front panel) is found by polling: the only evidence the laser gives is a set command
  without effect, so every ``REMOTE_PROBE_S`` the server writes the watchdog alternately as
  ``watchdog_s`` and ``watchdog_s + 1`` s and reads it back (harmless either way); a probe
  ignored is DISABLE with the reason, the next probe followed clears it. With the watchdog
  disabled (0) there is nothing harmless to write, and LOCAL shows only when a command is ignored;
* a shutter found open that this server did not open (front panel, another program on the
  line) is ALARM "opened outside tangodaq" until it is closed or taken over with OpenShutter.

The service settings (``PLASer:POWer``, ``PLASer:PCURrent``, ``MODE``) are never written: the
driver has no function for them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from deviceservers.common.component import Component, DeviceState
from deviceservers.common.parameter import Parameter
from deviceservers.common.serial_link import InstrumentError, LinkSettings, Port

from . import driver

T = TypeVar("T")

SHUTTER_CONFIRM_S = 2.0  # the shutter reports its old state for ~1 s; below Tango's 3 s client time-out
EMISSION_CONFIRM_S = 1.5  # *STB? shows emission (or the warm-up starts) within this after ON
READBACK_INTERVAL_S = 0.1  # between two readbacks while confirming (the link adds its own delay)
NOMINAL_WARMUP_S = 120.0  # used for the time-left estimate until the warm-up rate is measured
TUNING_POLL_S = 0.01  # pause between two READ:WAV? while tuning (leaves the link to waiting requests)
SLOW_EVERY = 5  # humidity, pump power and warm-up (when complete) every N polls
TUNING_TIMEOUT_BASE_S = 30.0  # a tuning that takes longer than this plus ...
TUNING_MIN_RATE_NM_S = 2.0  # ... the distance at this rate is reported as stalled
MIN_LEASE_S = 0.5  # shorter than a poll or two: the server could close before the owner can renew
MAX_LEASE_S = 3600.0  # nobody is vouched for longer than an hour without renewing
DEFAULT_MANUAL_LEASE_S = 600.0  # OpenShutter from a GUI/itango: renewed by opening again
SAFETY_CLOSE_RESEND_S = 1.0  # SHUTter 0 re-sent this often until the laser follows (key off, LOCAL)
REMOTE_PROBE_S = 2.0  # LOCAL is found within about this (plus a poll period)


class MaiTaiComponent(Component):
    label = "Mai Tai laser"

    def __init__(
        self,
        settings: LinkSettings,
        poll_period_s: float = 0.5,
        logger: logging.Logger | None = None,
        *,
        emission_bit: int = driver.STB_EMISSION_DEFAULT,
        watchdog_s: float = 0.0,
        tolerance_nm: float = 0.5,
        manual_lease_s: float = DEFAULT_MANUAL_LEASE_S,
    ) -> None:
        if not 0 <= emission_bit <= 7:
            raise ValueError(f"EmissionBit must be 0..7 (a bit of *STB?), not {emission_bit}")
        if watchdog_s < 0:
            raise ValueError(f"WatchdogS must be >= 0 (0 disables the watchdog), not {watchdog_s}")
        if not tolerance_nm > 0:
            raise ValueError(f"WavelengthToleranceNm must be > 0, not {tolerance_nm}")
        if not MIN_LEASE_S <= manual_lease_s <= MAX_LEASE_S:
            raise ValueError(f"ManualShutterLeaseS must be within {MIN_LEASE_S:g}..{MAX_LEASE_S:g} s, "
                             f"not {manual_lease_s}")
        super().__init__(settings, poll_period_s, logger)
        self.emission_bit = emission_bit
        self.watchdog_s = watchdog_s
        self.tolerance_nm = tolerance_nm
        self.manual_lease_s = manual_lease_s
        self._lock = threading.RLock()
        self._lease_until: float | None = None  # monotonic; None: nobody holds the shutter open
        self._lease_kind = ""  # "macro lease" / "manual lease", for Status
        self._must_close = ""  # why the server is closing the shutter (re-sent until it is closed)
        self._close_sent_at = 0.0
        self._close_logged = ""
        self._closed_note = ""  # the last safety closure, in Status until the next opening
        self._connected_once = False  # the first connection of a server run closes an ownerless shutter
        self._probe_index = 0  # which of (watchdog_s, watchdog_s + 1) the next LOCAL probe writes
        self._probe_at = 0.0
        self._polls = 0
        self._full_read_at = 0.0  # monotonic time of the last full poll round (see _tuning_poll_due)
        self._stb: driver.StatusByte | None = None
        self._system_error = ""  # last device-specific error text (interlock, internal fault)
        self._not_following: dict[str, str] = {}  # what the laser ignored -> message (DISABLE)
        self._shutter_request: tuple[bool, float, bool] | None = None  # (open, deadline, a real change)
        self._opened_by_us = False
        self._emission_expected = False  # we switched it on and have not switched it off
        self._emission_confirmed_at = 0.0  # monotonic time our last On was confirmed
        self._emission_asked_at = 0.0  # monotonic time the last *STB? published was sent
        self._emission_lost = ""
        self._warmup_origin: tuple[float, float] | None = None  # (monotonic, percent) first seen warming
        self._tuning_since: tuple[float, float] | None = None  # (monotonic, distance nm)
        self._target_sent: float | None = None  # WAVelength n sent, WAVelength? not read back yet
        # per value ("stb" for the status byte): when the query behind the last published one was
        # sent (monotonic, link thread), so that an older reading never overwrites a newer one
        self._asked_at: dict[str, float] = {}
        self._tuning_stalled = ""
        self.limits_version = 0  # bumped when WAV:MIN?/MAX? change: the device updates Tango's config
        self._confirm_wait = threading.Event()  # never set: an interruptible pause between readbacks

        self.wavelength = self.add(Parameter(
            "Wavelength", float, unit="nm", fmt="%.1f", writable=True, writer=self._write_wavelength,
            publish_on_write=False,
            description="Read: the actual wavelength (READ:WAV?). Write: the target; the laser tunes in whole nm "
                        "within its own range (WAV:MIN?/MAX?), State is MOVING and Tuning true until it arrives"))
        self.wavelength_setpoint = self.add(Parameter(
            "WavelengthSetpoint", float, unit="nm", fmt="%.0f",
            description="The commanded wavelength as the laser reports it (WAV?)"))
        self.tuning = self.add(Parameter(
            "Tuning", bool, description="True while the actual wavelength is farther than WavelengthToleranceNm "
                                        "from the setpoint"))
        self.power = self.add(Parameter(
            "Power", float, unit="W", fmt="%.3f", archive_rel_change=5,  # jitters by a few per mille each poll
            description="Output power (READ:POW?); 0 without emission"))
        self.pump_power = self.add(Parameter(
            "PumpPower", float, unit="W", fmt="%.2f", archive_rel_change=5,
            description="Actual pump laser power (READ:PLAS:POW?)"))
        self.warmup = self.add(Parameter(
            "WarmupPercent", float, unit="%", fmt="%.2f", minimum=0, maximum=100,
            description="Diode warm-up (READ:PCTW?); On is possible only at 100 %"))
        self.humidity = self.add(Parameter(
            "Humidity", float, unit="%", fmt="%.2f", archive_abs_change=1,  # the last digit moves
            description="Relative humidity inside the laser head (READ:HUM?)"))
        self.shutter = self.add(Parameter(
            "Shutter", bool, writable=True, writer=self._write_shutter, publish_on_write=False,
            description="True when the shutter is open, as SHUTter? confirms. Writing waits up to 2 s for the "
                        "confirmation and fails if the laser does not follow (LOCAL, key switch, interlock)"))
        self.emission = self.add(Parameter(
            "Emission", bool, description="True when *STB? says emission is possible (bit EmissionBit)"))
        self.status_byte = self.add(Parameter(
            "StatusByte", int, description="Raw *STB?: 0 command error, 1 execution error, 5 system error "
                                           "(interlock open or internal fault), 6 emission (EmissionBit), 7 any error"))
        self.identity = self.add(Parameter("Identity", str, description="*IDN? of the laser"))
        self.shutter_lease = self.add(Parameter(
            "ShutterLease", float, unit="s", fmt="%.1f",
            description="Seconds left before this server closes the shutter unless its owner renews the lease "
                        "(RenewShutterLease, or OpenShutter again); 0 when nobody holds the shutter open"))

    # ------------------------------------------------------------------ link
    def on_connect(self, port: Port) -> None:
        """After every (re)connection: identify, then re-read the real state; assume nothing."""
        identity = driver.identify(port)
        lo, hi = driver.read_wavelength_limits(port)
        if (lo, hi) != (self.wavelength.minimum, self.wavelength.maximum):
            self.wavelength.set_limits(lo, hi)
            self.limits_version += 1
        driver.set_watchdog(port, self.watchdog_s)  # 0 (default) keeps it disabled
        self._probe_index = 0
        first = not self._connected_once
        self._connected_once = True
        shutter_open = driver.read_shutter(port)
        with self._lock:
            reason = ""
            if self._opened_by_us:
                # We opened it, then lost the link: nobody can vouch for the beam. Close it.
                reason = "the link to the laser was lost while this server held the shutter open"
            elif first and shutter_open:
                # A new server run: whoever opened it (a server that died, a program that crashed)
                # holds no lease here. Nobody alive has asked for this light.
                reason = "the shutter was open when this server started and nobody holds a lease on it"
            if reason:
                driver.set_shutter(port, False)
                now = time.monotonic()
                self._shutter_request = (False, now + SHUTTER_CONFIRM_S, True)
                self._opened_by_us = True  # until SHUTter? confirms the close: ours to close, not "outside"
                self._lease_until = None
                self._must_close = reason
                self._close_sent_at = now
                self.log.warning("%s: closed the shutter: %s", self.label, reason)
        values = self._read_steps(port, self._round_steps(slow=True))
        # Published here, in the link thread, only because no request can be waiting on the link
        # yet (it is not up until this hook returns). Everywhere else, link-thread functions only
        # read: publishing pushes Tango events, which wait for the device lock, which a command
        # waiting on the link may hold.
        self.identity.publish(identity)
        self._publish(values)

    def poll(self) -> None:
        """Read, then enforce the lease and probe for LOCAL, even when the reads failed.

        A reply that keeps failing (garbled, refused) must not suspend the lease: the polls'
        queries keep feeding the laser's watchdog, so nothing else would ever close the shutter.
        Enforcement then works on the last shutter state read, and SHUTter 0 needs no reply."""
        self._polls += 1
        try:
            if self._tuning_poll_due():
                # end of tuning = READ:WAV? at the setpoint: asked alone, back to back, so a scan's
                # wavelength point ends one query (not a five-query round) after the laser arrives
                values = self._run_steps([("READ:WAVelength? (tuning)", self._read_tuning)])
            else:
                values = self._run_steps(self._round_steps(slow=self._polls % SLOW_EVERY == 0))
                self._full_read_at = time.monotonic()
            self._publish(values)
        finally:
            try:
                self._enforce_shutter()
            finally:
                self._probe_remote()

    # ------------------------------------------------------------------ safety (poll thread)
    def _enforce_shutter(self) -> None:
        """Close the shutter when its lease expired or the laser became unsafe; re-send until closed.

        Runs in the poll thread after every round, so a lease is enforced within a poll period
        and a laser that ignores SHUTter 0 (key off, LOCAL) is asked again every
        SAFETY_CLOSE_RESEND_S until it follows."""
        now = time.monotonic()
        stb = self._stb
        with self._lock:
            shutter = self.shutter.value
            if shutter and self._lease_until is not None and now >= self._lease_until:
                self._lease_until = None
                self._must_close = (f"its lease expired at {time.strftime('%H:%M:%S')} without being renewed "
                                    f"(the owner of the {self._lease_kind} is gone or stuck)")
            elif shutter and stb is not None and stb.system_error and not self._must_close:
                self._must_close = "the interlock is open (or an internal fault, *STB? bit 5)"
            elif shutter and self._emission_lost and not self._must_close:
                self._must_close = "emission stopped without an Off from this server"
            elif shutter and self._opened_by_us and self._lease_until is None and not self._must_close:
                # Ours, open, and nobody holds it: an opening confirmed only after its OpenShutter
                # had failed (the lease was dropped then), or a CloseShutter/Off the laser ignored
                # (LOCAL, key off) whose lease is gone. Either way the lease has ended: close it.
                request = self._shutter_request
                if request is None or now > request[1]:  # a close still within its confirmation time is not
                    self._must_close = (
                        f"it opened at {time.strftime('%H:%M:%S')}, after its OpenShutter had been reported failed "
                        f"(not confirmed within {SHUTTER_CONFIRM_S:.0f} s), so its lease had ended and nobody holds it"
                        if request is None or request[0] else
                        "a close (CloseShutter or Off) was not followed by the laser (LOCAL or key switch off) and its "
                        "lease has ended: nobody holds the shutter open")
            if not self._must_close:
                return
            pending_open = self._shutter_request is not None and self._shutter_request[0]
            if shutter is False and not pending_open:
                self._closed_note = f"Shutter closed by this server at {time.strftime('%H:%M:%S')}: {self._must_close}. "
                self.log.warning("%s: %s", self.label, self._closed_note.strip())
                self._must_close = self._close_logged = ""
                self._close_sent_at = 0.0
                return
            if now - self._close_sent_at < SAFETY_CLOSE_RESEND_S:
                return
            first = self._close_logged != self._must_close
            self._close_logged = self._must_close
            self._close_sent_at = now
            self._lease_until = None
            self._opened_by_us = True  # closing it is our business now: not "opened outside"
            self._shutter_request = (False, now + SHUTTER_CONFIRM_S, True)
            reason = self._must_close
        if first:
            self.log.warning("%s: closing the shutter: %s", self.label, reason)
        self.run(lambda port: driver.set_shutter(port, False), description="SHUTter 0 (safety)")
        self.request_poll()

    def _probe_remote(self) -> None:
        """LOCAL/key-off detection by polling: write the watchdog, read it back.

        The laser says nothing about LOCAL; a set command without effect is the only evidence.
        The watchdog is the one setting that can be changed harmlessly: it alternates between
        ``watchdog_s`` and ``watchdog_s + 1`` (either keeps the pump fed while we poll)."""
        if self.watchdog_s <= 0:
            return
        now = time.monotonic()
        if now - self._probe_at < REMOTE_PROBE_S:
            return
        self._probe_at = now
        value = float(round(self.watchdog_s)) + self._probe_index % 2

        def probe(port: Port) -> float:
            driver.set_watchdog(port, value)
            return driver.read_watchdog(port)

        readback = self.run(probe, idempotent=True, description=f"TIMer:WATChdog {value:.0f} (REMOTE probe)")
        with self._lock:
            if abs(readback - value) < 0.5:
                self._probe_index += 1
                if self._not_following:
                    self.log.info("%s: the laser follows commands again (REMOTE)", self.label)
                self._not_following.clear()
            elif "remote" not in self._not_following:
                self._not_following["remote"] = self._ignored_message(
                    f"TIMer:WATChdog {value:.0f}", f"TIMer:WATChdog? still says {readback:.0f}")
                self.log.warning("%s: %s", self.label, self._not_following["remote"])

    def refresh_all(self) -> None:
        """Read and publish everything now (after On, so power and pump power are current)."""
        self._publish(self._run_steps(self._round_steps(slow=True)))

    Step = tuple[str, Callable[[Port], dict[str, Any]]]  # (what, link-thread function: reads, never publishes)

    def _round_steps(self, slow: bool) -> list[Step]:
        """A poll round, one query per step: status byte, setpoint, actual wavelength, shutter,
        power (and warm-up while warming); with ``slow``, warm-up, humidity and pump power too."""
        steps: list[MaiTaiComponent.Step] = [
            ("*STB?", self._read_status),
            ("WAVelength?", lambda port: {"WavelengthSetpoint": driver.read_wavelength_setpoint(port)}),
            ("READ:WAVelength?", lambda port: {"Wavelength": driver.read_wavelength(port)}),
            ("SHUTter?", lambda port: {"Shutter": driver.read_shutter(port)}),
            ("READ:POWer?", lambda port: {"Power": driver.read_power(port)}),
        ]
        if slow or (self.warmup.value or 0.0) < 100.0:
            steps.append(("READ:PCTWarmedup?", lambda port: {"WarmupPercent": driver.read_warmup_percent(port)}))
        if slow:
            steps += [("READ:HUMidity?", lambda port: {"Humidity": driver.read_humidity(port)}),
                      ("READ:PLASer:POWer?", lambda port: {"PumpPower": driver.read_pump_power(port)})]
        return steps

    def _read_status(self, port: Port) -> dict[str, Any]:
        asked = time.monotonic()  # in the link thread, as the query goes out (see _publish_status)
        stb = driver.read_status_byte(port, self.emission_bit)
        return {"stb": (stb, asked), "errors": driver.drain_errors(port) if stb.any_error else []}

    @staticmethod
    def _read_steps(port: Port, steps: list[Step]) -> dict[str, Any]:
        """Link thread, in one go (on_connect: nothing else can be waiting yet): read, never
        publish. The values carry when each was asked, as from :meth:`_run_steps`."""
        values: dict[str, Any] = {}
        asked_at: dict[str, float] = {}
        for _what, step in steps:
            asked = time.monotonic()
            read = step(port)
            values.update(read)
            asked_at.update(dict.fromkeys((k for k in read if k != "errors"), asked))
        values["_asked"] = asked_at
        return values

    def _run_steps(self, steps: list[Step]) -> dict[str, Any]:
        """A round from the poll thread, one link request per query.

        Why not one request for the round: a command (a wavelength write, a shutter close) would
        wait behind the whole round, five to eight replies of up to ~0.1 s each; this way it
        waits for one. The values carry when each query was sent (``"_asked"``, taken in the link
        thread) and are published together afterwards, except those a command read back more
        recently meanwhile (see :meth:`_publish`)."""
        values: dict[str, Any] = {"_asked": {}}
        try:
            for step in steps:
                read = self.run(lambda port, step=step: self._read_steps(port, [step]), idempotent=True,
                                description=step[0])
                values["_asked"].update(read.pop("_asked"))
                values.update(read)
        except Exception:
            # The round is lost, but the errors its *STB? drained from the laser's queue are gone
            # from the laser: an interlock's own words must not go with the round.
            self._note_errors(values.get("errors", []))
            raise
        return values

    @property
    def fast_poll_period_s(self) -> float:
        """Pause between polls while busy: while tuning, READ:WAV? is asked nearly back to back
        (the query's own reply time is the pace); a shutter confirmation polls as other devices do."""
        tuning = getattr(self, "tuning", None)  # None while the base class initialises
        return min(TUNING_POLL_S, self._fast_poll_period_s) if tuning and tuning.value else self._fast_poll_period_s

    @fast_poll_period_s.setter
    def fast_poll_period_s(self, value: float) -> None:
        self._fast_poll_period_s = value

    def _tuning_poll_due(self) -> bool:
        """While tuning, polls read only the actual wavelength, except one full round (status
        byte, shutter, power: what the safety checks work on) every poll period, as when idle."""
        with self._lock:
            safety_pending = self._shutter_request is not None or bool(self._must_close)
        # a shutter being confirmed or closed for safety is followed at every poll, tuning or not
        return (bool(self.tuning.value) and not safety_pending
                and time.monotonic() - self._full_read_at < self.poll_period_s)

    @staticmethod
    def _read_tuning(port: Port) -> dict[str, Any]:
        return {"Wavelength": driver.read_wavelength(port)}

    def _publish(self, values: dict[str, Any]) -> None:
        """Publish a round's values, except those a command read back more recently meanwhile
        (a round's queries interleave with commands: its shutter state read just before an
        OpenShutter was confirmed must not undo the confirmation)."""
        asked_at = values.pop("_asked", {})
        errors = values.pop("errors", [])
        with self._lock:  # compared and published together: a read-back cannot land in between
            for name, asked in asked_at.items():
                if asked < self._asked_at.get(name, -math.inf):
                    values.pop(name, None)
                else:
                    self._asked_at[name] = asked
            stb = values.pop("stb", None)
            if stb is not None:
                self._publish_status(*stb)
            for name, value in values.items():
                self.parameters[name].publish(value)
        self._note_errors(errors)
        self._derive()

    def _publish_status(self, stb: driver.StatusByte, asked: float) -> None:
        """``asked``: monotonic time the *STB? was sent (in the link thread), so that a reading
        older than an On's confirmation is never taken for emission lost after it."""
        self._stb = stb
        self._emission_asked_at = asked
        self.status_byte.publish(stb.raw)
        self.emission.publish(stb.emission)

    def _note_errors(self, errors: list[driver.LaserError]) -> None:
        for err in errors:
            self.record_error(f"the laser reports {err}")
            if err.code > 0:
                self._system_error = str(err)

    def _derive(self) -> None:
        """Tuning, shutter ownership, pending confirmations: from the values just read."""
        now = time.monotonic()
        with self._lock:  # Tuning derived and published under the lock a wavelength write takes too
            # a target sent but not confirmed yet counts (see _write_wavelength)
            target = self._target_sent if self._target_sent is not None else self.wavelength_setpoint.value
            actual = self.wavelength.value
            tuning = actual is not None and target is not None and abs(actual - target) > self.tolerance_nm
            self.tuning.publish(tuning)
            if tuning and self._tuning_since is None:
                self._tuning_since = (now, abs(actual - target))
            if not tuning:
                self._tuning_since = None
                self._tuning_stalled = ""
            elif self._tuning_since is not None:
                t0, distance = self._tuning_since
                if now - t0 > TUNING_TIMEOUT_BASE_S + distance / TUNING_MIN_RATE_NM_S:
                    self._tuning_stalled = (
                        f"Tuning stalled: the laser is at {actual:.0f} nm, {now - t0:.0f} s after it was asked for "
                        f"{target:.0f} nm. Check the laser (front panel, error log), then set Wavelength again.")
            self._check_shutter_request(now)
            emission = bool(self.emission.value)
            if emission:
                self._emission_lost = ""
            elif self._emission_expected and self._emission_asked_at >= self._emission_confirmed_at:
                # (a poll's *STB? sent before the On was confirmed says nothing about after it)
                self._emission_expected = False
                self._emission_lost = (f"Emission stopped at {time.strftime('%H:%M:%S')} without an Off from this "
                                       "server (key switch off, serial watchdog, interlock or front panel). ")
                self.log.warning("%s: %s", self.label, self._emission_lost)
            pct = self.warmup.value
            if pct is not None and 0 < pct < 100:
                if self._warmup_origin is None:
                    self._warmup_origin = (now, pct)
            else:
                self._warmup_origin = None
            lease_left = 0.0 if self._lease_until is None else max(0.0, self._lease_until - now)
        self.shutter_lease.publish(round(lease_left, 1))

    def _check_shutter_request(self, now: float) -> None:
        shutter = self.shutter.value
        request = self._shutter_request
        if request is not None and shutter is not None:
            wanted, deadline, change = request
            if shutter == wanted:
                self._shutter_request = None
                if change:
                    self._not_following.clear()  # the laser follows commands again: it is in REMOTE
            elif now > deadline and "shutter" not in self._not_following:
                self._not_following["shutter"] = self._ignored_message(
                    "SHUTter " + str(int(wanted)), f"SHUTter? still says {int(shutter)}")
        pending_open = self._shutter_request is not None and self._shutter_request[0]
        if shutter is False and not pending_open:
            self._opened_by_us = False  # closed (by us, the panel or the interlock): no longer ours
            self._lease_until = None  # and nobody holds it any more: a renewal cannot reopen it

    @staticmethod
    def _ignored_message(command: str, evidence: str) -> str:
        return (f"The laser ignored {command} ({evidence}): the front panel is in LOCAL mode or the key switch is "
                f"off. Switch the laser to REMOTE (key on), then repeat the command.")

    # ------------------------------------------------------------------ confirmation helpers
    def _read(self, fn: Callable[[Port], T], description: str) -> T:
        return self.run(fn, idempotent=True, description=description)

    def _wait_for(self, read: Callable[[], T], done: Callable[[T], bool], deadline: float) -> tuple[bool, T]:
        """Read back until ``done(value)`` or the deadline; bounded, interleaves with polling."""
        while True:
            value = read()
            if done(value):
                return True, value
            if time.monotonic() >= deadline:
                return False, value
            self._confirm_wait.wait(READBACK_INTERVAL_S)

    def _read_now(self, name: str, fn: Callable[[Port], T], description: str) -> T:
        """A command's read-back of the value ``name``: read now and publish it, unless a poll
        round has meanwhile published a reading asked later (see _publish). Returns what was read."""
        asked, value = self._read(lambda port: (time.monotonic(), fn(port)), description)
        with self._lock:
            if asked >= self._asked_at.get(name, -math.inf):
                self._asked_at[name] = asked
                self.parameters[name].publish(value)
        return value

    def _read_shutter_now(self) -> bool:
        return self._read_now("Shutter", driver.read_shutter, "SHUTter?")

    def _read_status_now(self) -> driver.StatusByte:
        asked, stb = self._read(lambda port: (time.monotonic(), driver.read_status_byte(port, self.emission_bit)),
                                "*STB?")
        with self._lock:
            if asked >= self._asked_at.get("stb", -math.inf):
                self._asked_at["stb"] = asked
                self._publish_status(stb, asked)
        return stb

    def _refusal(self, command: str) -> str:
        """Why the laser did not follow ``command``: its own errors, or the interlock, or ''."""
        stb = self._read_status_now()
        errors = self._read(driver.drain_errors, "SYSTem:ERR?") if stb.any_error else []
        self._note_errors(errors)
        if stb.system_error:
            return (f"the interlock is open or the laser has an internal fault (*STB? bit 5"
                    f"{': ' + self._system_error if self._system_error else ''}). Close the interlock, then retry")
        if errors:
            return "the laser refused it: " + "; ".join(str(e) for e in errors)
        return ""

    # ------------------------------------------------------------------ shutter
    def _write_shutter(self, open_: bool) -> None:
        if open_:
            self.open_shutter()
        else:
            self.close_shutter()

    def _command_shutter(self, open_: bool, deadline: float, *, drop_lease: bool = False) -> bool:
        """Send SHUTter 0|1 and wait for SHUTter? to agree, at most until ``deadline``.

        ``drop_lease`` ends the lease together with registering the request (one lock), so the
        poll thread never sees our open shutter with no lease and no request (an ended lease)."""
        command = f"SHUTter {int(open_)}"
        with self._lock:
            if drop_lease:
                self._lease_until = None  # from the request on: a renewal cannot keep it open
            if open_:
                self._opened_by_us = True  # from the moment we ask: a late opening is ours too
            change = self.shutter.value is not open_  # following a no-op proves nothing about REMOTE
            self._shutter_request = (open_, deadline, change)
        self.run(lambda port: driver.set_shutter(port, open_), description=command)
        self.request_poll()
        ok, _ = self._wait_for(self._read_shutter_now, lambda v: v == open_, deadline)
        with self._lock:
            if ok and change:
                self._not_following.clear()
            self._check_shutter_request(time.monotonic())
        return ok

    def _shutter_failure(self, open_: bool) -> str:
        command = f"SHUTter {int(open_)}"
        reason = self._refusal(command)
        what = "open" if open_ else "close"
        if reason:
            return f"The shutter did not {what} within {SHUTTER_CONFIRM_S:.0f} s: {reason}."
        msg = self._ignored_message(command, f"SHUTter? still says {int(not open_)} after {SHUTTER_CONFIRM_S:.0f} s")
        with self._lock:
            self._not_following["shutter"] = msg
        self.update_state()
        return msg

    @staticmethod
    def check_lease(seconds: float) -> float:
        if not MIN_LEASE_S <= seconds <= MAX_LEASE_S:  # NaN fails both comparisons
            raise ValueError(f"a shutter lease is {MIN_LEASE_S:g} to {MAX_LEASE_S:g} s, not {seconds}")
        return float(seconds)

    def open_shutter(self, lease_s: float | None = None) -> None:
        """SHUTter 1 held by a lease, confirmed by SHUTter? within SHUTTER_CONFIRM_S, else a clear error.

        ``lease_s`` None is a person's opening (GUI, itango, ``Shutter = True``): the manual
        lease, renewed by opening again. Opening a shutter that is already open renews its lease,
        and takes over one opened outside tangodaq."""
        lease = self.check_lease(self.manual_lease_s if lease_s is None else lease_s)
        kind = "manual lease (OpenShutter)" if lease_s is None else "macro lease (OpenShutterWithLease)"
        with self._lock:
            closing = self._must_close
        if closing:
            raise RuntimeError(f"OpenShutter refused: this server is closing the shutter because {closing}. "
                               "Wait for State to leave ALARM, then open it again.")
        stb = self._read_status_now()
        if stb.system_error:
            raise RuntimeError(f"OpenShutter refused: {self._refusal('SHUTter 1')}.")
        with self._lock:
            # before the command: the poll thread must never see an opening without its lease
            self._lease_until = time.monotonic() + lease
            self._lease_kind = kind
            self._closed_note = ""
        if not self._command_shutter(True, time.monotonic() + SHUTTER_CONFIRM_S):
            with self._lock:
                # No lease from now on: the request stays pending, and an opening that follows it
                # late is ours with no lease, which the poll thread closes (_enforce_shutter).
                self._lease_until = None
            failure = self._shutter_failure(True)
            self._derive()  # ShutterLease 0 at once, not a countdown of a lease that is gone
            raise RuntimeError(failure)
        with self._lock:  # the lease runs from the moment the shutter is confirmed open
            self._lease_until = time.monotonic() + lease
        self.log.info("%s: shutter open, held by a %s of %.1f s", self.label, kind, lease)
        self._derive()
        self.update_state()

    def renew_lease(self, seconds: float) -> float:
        """The lease ends ``seconds`` from now; refused (never reopening) when nobody holds the shutter."""
        seconds = self.check_lease(seconds)
        with self._lock:
            now = time.monotonic()
            until = self._lease_until
            if until is not None and now >= until and self.shutter.value and not self._must_close:
                # Expired, and the poll thread has not closed it yet: a late renewal must not
                # revive a lease the server has already stopped honouring. Close it now.
                self._lease_until = None
                self._must_close = (f"its lease expired at {time.strftime('%H:%M:%S')}, {now - until:.1f} s before "
                                    f"a renewal arrived (the owner of the {self._lease_kind} is late or stuck)")
                late = now - until
            else:
                late = None
        if late is not None:
            self.log.warning("%s: renewal refused: the %s expired %.1f s earlier; closing the shutter",
                             self.label, self._lease_kind, late)
            self.request_poll()
            self.update_state()
            raise RuntimeError(f"Shutter lease expired {late:.1f} s before this renewal: the shutter is being closed. "
                               "A renewal never revives an expired lease: open the shutter again "
                               "(OpenShutterWithLease) once it is closed, if the light is still wanted.")
        with self._lock:
            if self._lease_until is None or not self.shutter.value or self._must_close:
                note = self._closed_note or "the shutter is closed"
                raise RuntimeError(f"No shutter lease to renew: {note.strip()} A renewal never reopens the "
                                   "shutter: open it again (OpenShutterWithLease) if the light is still wanted.")
            self._lease_until = time.monotonic() + seconds
        self._derive()
        return seconds

    def close_shutter(self) -> None:
        if not self._command_shutter(False, time.monotonic() + SHUTTER_CONFIRM_S, drop_lease=True):
            raise RuntimeError(self._shutter_failure(False))
        self._derive()
        self.update_state()

    def shutter_open(self) -> bool:
        return bool(self.shutter.value)

    # ------------------------------------------------------------------ emission
    def warmup_time_left_s(self, pct: float) -> float:
        """Seconds to 100 %, from the measured warm-up rate (nominal ~2 min until measured)."""
        rate = 100.0 / NOMINAL_WARMUP_S
        with self._lock:
            origin = self._warmup_origin
        if origin is not None:
            t0, p0 = origin
            elapsed = time.monotonic() - t0
            if elapsed > 0.5 and pct > p0:
                rate = (pct - p0) / elapsed
        return max(0.0, (100.0 - pct) / rate)

    def on(self) -> None:
        """Start emission at 100 % warm-up; at 0 % start the warm-up; refuse in between.

        ``ON`` does not open the shutter. At 0 % the laser begins ~2 min of diode stabilisation
        and the device shows INIT with the percentage; run On again at 100 %.
        """
        stb = self._read_status_now()
        if stb.system_error:
            raise RuntimeError(f"On refused: {self._refusal('ON')}, then run On.")
        if stb.emission:
            return
        if self._read_shutter_now():
            raise RuntimeError("On refused: the shutter is open, and emission never starts into an open shutter. "
                               "Close it (CloseShutter), run On, then open it when the light is wanted.")
        pct = self._read_now("WarmupPercent", driver.read_warmup_percent, "READ:PCTW?")
        self._derive()
        if 0 < pct < 100:
            raise RuntimeError(f"On refused: warm-up is at {pct:.0f} %: On is possible at 100 %, in about "
                               f"{self.warmup_time_left_s(pct):.0f} s.")
        deadline = time.monotonic() + EMISSION_CONFIRM_S
        self.run(driver.emission_on, description="ON")
        if pct <= 0:
            ok, _ = self._wait_for(lambda: self._read(driver.read_warmup_percent, "READ:PCTW?"),
                                   lambda v: v > 0, deadline)
            what = "start the warm-up (READ:PCTW? stays at 0 %)"
        else:
            ok, _ = self._wait_for(lambda: self._read_status_now().emission, bool, deadline)
            what = f"start emission (*STB? bit {self.emission_bit} stays 0)"
        if ok:
            with self._lock:
                self._not_following.clear()
                # from now on, emission read off (by a *STB? sent after this) is a loss: ALARM, and
                # the shutter closes (see _enforce_shutter)
                self._emission_expected = pct > 0
                self._emission_confirmed_at = time.monotonic()
            self.request_poll()
            self.refresh_all()
            self.update_state()
            return
        with self._lock:
            self._emission_expected = False
        reason = self._refusal("ON")
        if reason:
            raise RuntimeError(f"ON did not {what}: {reason}.")
        msg = self._ignored_message("ON", what.split("(", 1)[1].rstrip(")"))
        with self._lock:
            self._not_following["emission"] = msg
        self.update_state()
        raise RuntimeError(msg)

    def off(self) -> None:
        """Safe stop: close the shutter and confirm, then OFF (sent even if the shutter did not
        confirm, because no emission is the safer state), then confirm emission is off."""
        problems = []
        if not self._command_shutter(False, time.monotonic() + SHUTTER_CONFIRM_S, drop_lease=True):
            problems.append(self._shutter_failure(False))
        with self._lock:
            self._emission_expected = False
            self._emission_lost = ""  # Off acknowledges an emission stop nobody asked for
        was_on = bool(self.emission.value)
        self.run(driver.emission_off, description="OFF")
        ok, _ = self._wait_for(lambda: not self._read_status_now().emission, bool,
                               time.monotonic() + EMISSION_CONFIRM_S / 3)
        if not ok:
            msg = self._ignored_message("OFF", f"*STB? bit {self.emission_bit} still set")
            with self._lock:
                self._not_following["emission"] = msg
            problems.append(msg)
        elif was_on and not problems:
            with self._lock:
                self._not_following.clear()
        self.request_poll()
        self.update_state()
        if problems:
            raise RuntimeError(" ".join(problems))

    # ------------------------------------------------------------------ wavelength
    def _write_wavelength(self, nm: float) -> None:
        """WAVelength n (validated against the laser's own range), confirmed at once by WAV?."""
        if self.wavelength.minimum is None:
            raise RuntimeError("The tuning range is not known yet (no connection to the laser): retry when "
                               "State is no longer FAULT.")
        previous = self.wavelength_setpoint.value
        sent = self.run(lambda port: driver.set_wavelength(port, nm), description=f"WAVelength {nm:.0f}")
        # The laser tunes from the moment it has the command, not from its confirmation (one more
        # reply): MOVING now, so that a client sees the move start when it starts, and the polls
        # meanwhile derive Tuning from the target just sent, not from the setpoint read before it.
        with self._lock:
            self._target_sent = float(sent)
            actual = self.wavelength.value
            if actual is not None and abs(actual - sent) > self.tolerance_nm:
                self._tuning_since = (time.monotonic(), abs(actual - sent))
                self.tuning.publish(True)
        self.update_state()
        try:
            setpoint = self._read_now("WavelengthSetpoint", driver.read_wavelength_setpoint, "WAVelength?")
        except Exception:
            self._end_write()  # not confirmed: Tuning as the last setpoint read says, until the next poll
            raise
        self._end_write()
        if abs(setpoint - sent) > 0.5:
            reason = self._refusal(f"WAVelength {sent}")
            if reason:
                raise InstrumentError(f"WAVelength {sent} not accepted: {reason}.")
            msg = self._ignored_message(f"WAVelength {sent}", f"WAVelength? still says {setpoint:.0f} nm")
            with self._lock:
                self._not_following["wavelength"] = msg
            self.update_state()
            raise RuntimeError(msg)
        if previous is None or abs(previous - sent) > 0.5:
            with self._lock:
                self._not_following.clear()
        self.request_poll()

    def _end_write(self) -> None:
        """The write's confirmation is in (or failed): Tuning from the laser's setpoint again,
        with the stall timer restarted from what the laser reports (a refused write leaves the
        laser tuning, if at all, to its own setpoint)."""
        with self._lock:
            self._target_sent = None
            self._tuning_since = None
        self._derive()
        self.update_state()

    def set_wavelength(self, nm: float) -> None:
        """Start tuning and return at once (MOVING until READ:WAV? reaches it)."""
        self.wavelength.set(nm)
        self.update_state()

    def is_moving(self) -> bool:
        return bool(self.tuning.value)

    def stop_tuning(self) -> None:
        """Stop where the laser is: the target becomes the actual wavelength (whole nm).

        Not named ``stop``: that is the component's lifecycle stop (release the link).
        """
        actual = self._read_now("Wavelength", driver.read_wavelength, "READ:WAVelength?")
        self.set_wavelength(round(actual))

    def is_busy(self) -> bool:
        with self._lock:
            return bool(self.tuning.value) or self._shutter_request is not None

    # ------------------------------------------------------------------ shutdown
    def on_shutdown(self) -> None:
        """Server stop and Init: close the shutter if this server opened it."""
        with self._lock:
            ours = self._opened_by_us
        if not ours:
            return
        if self._command_shutter(False, time.monotonic() + SHUTTER_CONFIRM_S):
            self.log.info("%s: closed the shutter this server had opened", self.label)
        else:
            self.log.error("%s: sent SHUTter 0 at shutdown but SHUTter? did not confirm it", self.label)

    # ------------------------------------------------------------------ state
    def evaluate_state(self) -> tuple[DeviceState, str]:
        """ALARM (what is unsafe or was lost) before DISABLE (LOCAL) before the normal states."""
        stb = self._stb
        now = time.monotonic()
        with self._lock:
            not_following = list(self._not_following.values())
            stalled = self._tuning_stalled
            lost = self._emission_lost
            closing = self._must_close
            note = self._closed_note
            pending_open = self._shutter_request is not None and self._shutter_request[0]
            outside = bool(self.shutter.value) and not self._opened_by_us and not pending_open
            lease = None if self._lease_until is None else max(0.0, self._lease_until - now)
            kind = self._lease_kind
        local = (" " + " ".join(not_following)) if not_following else ""
        closing_text = (f" The server is closing the shutter because {closing} (SHUTter 0 re-sent every "
                        f"{SAFETY_CLOSE_RESEND_S:.0f} s until SHUTter? confirms).") if closing and self.shutter.value else ""
        if stb is not None and stb.system_error:
            detail = f": {self._system_error}" if self._system_error else ""
            return DeviceState.ALARM, (
                f"Interlock open or internal fault (*STB? bit 5{detail}). Emission is stopped and the shutter "
                f"closed.{closing_text} Close the interlock (or call service for an internal fault), then run On.")
        if lost:
            return DeviceState.ALARM, (
                f"{lost}{note}{closing_text.strip()} Turn the key switch on (or check the front panel), then run On "
                f"to restart emission or Off to acknowledge.{local}").replace("  ", " ")
        if outside:
            return DeviceState.ALARM, (
                "Shutter opened outside tangodaq (front panel or another program on the serial line): nobody here "
                "holds a lease on it. Close it (CloseShutter), or take it over with OpenShutter (then it is held by a "
                f"lease like any opening).{local}")
        if closing_text:
            return DeviceState.ALARM, closing_text.strip() + local
        if stalled:
            return DeviceState.ALARM, stalled
        if not_following:
            return DeviceState.DISABLE, note + " ".join(not_following)
        # no countdown here: Status (and its events) would change every poll; ShutterLease has it
        held = f" (held by a {kind}: see ShutterLease)" if self.shutter.value and lease is not None else ""
        shutter = ("open" if self.shutter.value else "closed") + held
        actual, target = self.wavelength.value, self.wavelength_setpoint.value
        if self.tuning.value and actual is not None and target is not None:
            return DeviceState.MOVING, f"{note}Tuning: at {actual:.0f} nm, going to {target:.0f} nm; shutter {shutter}."
        pct = self.warmup.value
        if pct is not None and 0 < pct < 100:
            return DeviceState.INIT, (f"{note}Warming up: {pct:.0f} %, about {self.warmup_time_left_s(pct):.0f} s "
                                      "left. On is possible at 100 %.")
        if self.emission.value:
            power = self.power.value
            return DeviceState.ON, (f"{note}Emission on at {actual:.0f} nm, {power or 0.0:.3f} W; shutter {shutter}.")
        if pct is not None and pct <= 0:
            return DeviceState.OFF, (f"{note}The laser is cold (warm-up 0 %): run On to start the ~2 min warm-up, "
                                     "then On again at 100 % to start emission.")
        return DeviceState.OFF, f"{note}Emission off, warmed up; shutter {shutter}. Run On to start emission."
