"""One ELL14 mount as Parameters, on a bus shared with the other mounts of the same SerialURL.

Why the mount tolerates a silent address at connection time instead of failing the link: the
link's connect hooks must all succeed before the link is declared up, and on a multidrop bus one
unpowered mount would otherwise take its neighbours down with it. A mount that does not answer
``in`` is FAULT with a Status naming its address, and is asked again every few seconds.

Moves are started through the bus (:mod:`deviceservers.Ell14.bus`), which keeps the two-moving
limit and hears the end of the move; this component only says what to do when it ends (publish
the position, ``Homed``, the move counter, an error). Meanwhile it listens to the bus between
``gp`` reads every 25 ms, so the end is heard when the mount's ``PO`` arrives, not at a poll.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from deviceservers.common.component import Component, DeviceState
from deviceservers.common.parameter import Parameter, ParameterError, Quality
from deviceservers.common.serial_link import (
    LinkDown,
    LinkError,
    LinkSettings,
    LinkTimeout,
    Port,
    ProtocolError,
)

from . import driver
from .bus import MAX_MOVING, Ell14Bus, MoveTicket, acquire_bus, release_bus
from .driver import Reply

SETTINGS_EVERY = 10  # re-read velocity, jog step and offset every N polls (the mount has jog buttons)
IDENTIFY_RETRY_S = 3.0  # ask a silent mount for its identity this often
SWEEP_EVERY_MOVES = 10_000  # the mechanics want a full-range cleaning sweep this often
CLEAN_MAX_S = 900.0  # a cleaning cycle takes minutes; give up waiting for its end after this
LISTEN_S = 0.02  # during a move the bus is listened to in slices this long (others' requests interleave)
# during a move, gp this often: position events, and the reports a continuous scan's position
# capture interpolates (a gp takes ~17 ms on a real 9600 baud bus); listened to in between
POSITION_EVERY_S = 0.025


class Ell14Component(Component):
    """One Thorlabs ELL14 rotation mount: ``Position`` moves it (``move_to``), ``stop_motion`` stops it."""

    def __init__(
        self,
        settings: LinkSettings,
        address: str,
        poll_period_s: float = 0.5,
        logger: logging.Logger | None = None,
        *,
        max_moving: int = MAX_MOVING,
        sweep_every_moves: int = SWEEP_EVERY_MOVES,
    ) -> None:
        self.address = driver.check_address(address)
        self.label = f"ELL14 mount {self.address}"
        super().__init__(settings, poll_period_s, logger)
        if max_moving < 1:
            raise ValueError(f"MaxMovingMounts must be at least 1, not {max_moving}")
        self.max_moving = max_moving
        self.sweep_every_moves = sweep_every_moves
        self.bus: Ell14Bus | None = None
        self.info: driver.DeviceInfo | None = None
        self.ppr = driver.ELL14_PULSES_PER_REVOLUTION  # replaced by the IN reply
        self._identify_error = "not asked yet"
        self._last_identify = 0.0
        self._polls = 0
        self._motor_status = driver.STATUS_OK
        self.move: MoveTicket | None = None
        # a move that ended without its final PO (stopped: the mount answers GS00 only) leaves
        # the last polled position stale; until a `gp` sent after the end answers, the mount
        # still counts as moving, so State ON always comes with the final Position
        self._settling_since: float | None = None
        self._move_error = ""  # the last move's failure, until a move succeeds
        self._target_deg: float | None = None
        self._last_status_poll = 0.0

        self.position = self.add(Parameter(
            "Position", float, unit="deg", fmt="%.3f", minimum=0.0, maximum=360.0, writable=True,
            writer=self.move_to, publish_on_write=False,
            description="Angle of the mount in degrees (0-360). Writing starts an absolute move and returns at "
            "once; State is MOVING until the mount reports its arrival. Home once before trusting absolute angles."))
        self.velocity = self.add(Parameter(
            "Velocity", int, unit="%", minimum=1, maximum=100, writable=True, writer=self._write_velocity,
            description="Motor speed in % of the maximum (~430 deg/s at 100 %)"))
        self.speed = self.add(Parameter(
            "Speed", float, unit="deg/s", fmt="%.1f", minimum=driver.FULL_SPEED_DEG_S / 100,
            maximum=driver.FULL_SPEED_DEG_S, writable=True, writer=self._write_speed, publish_on_write=False,
            description=f"Angular speed of moves in deg/s: Velocity % x {driver.FULL_SPEED_DEG_S:g} deg/s. Writing "
            "sets the nearest whole Velocity % (what the mount can do), so the speed read back may differ"))
        self.velocity.subscribe(self._on_velocity)
        self.home_offset = self.add(Parameter(
            "HomeOffset", float, unit="deg", fmt="%.3f", minimum=0.0, maximum=360.0, writable=True,
            writer=self._write_home_offset, publish_on_write=False,
            description="Angle of the home position relative to the mount's index mark; SaveUserData keeps it"))
        self.jog_step = self.add(Parameter(
            "JogStep", float, unit="deg", fmt="%.3f", minimum=0.01, maximum=360.0, writable=True,
            writer=self._write_jog_step, publish_on_write=False,
            description="Step of JogForward/JogBackward (and of the mount's jog buttons) in degrees"))
        self.pulses_per_revolution = self.add(Parameter(
            "PulsesPerRevolution", int, unit="pulses",
            description="Encoder pulses per turn, from the mount's IN reply (143360 for an ELL14)"))
        self.serial_number = self.add(Parameter("SerialNumber", str, description="Serial number from the IN reply"))
        self.firmware = self.add(Parameter(
            "Firmware", str, description="Firmware release (hex, as Thorlabs prints it), hardware release and year"))
        self.motor_status = self.add(Parameter(
            "MotorStatus", str,
            description="The mount's last gs status: code and meaning (00 OK, 02 mechanical time-out, 09 busy...)"))
        self.homed = self.add(Parameter(
            "Homed", bool, initial=False,
            description="True once the mount has been homed since this server started: absolute moves are "
            "unreliable before"))
        self.moves_since_sweep = self.add(Parameter(
            "MovesSinceSweep", int, initial=0, unit="moves",
            description=f"Moves since this server started or since the last CleanMechanics; the mechanics want a "
            f"cleaning sweep about every {sweep_every_moves} moves"))

    # ------------------------------------------------------------------ polling rate
    @property
    def fast_poll_period_s(self) -> float:
        """No pause between polls while a move runs: each poll then listens for its end (the
        mount's own ``PO``) for up to LISTEN_S, so the end is heard when the mount says it."""
        return 0.0 if self._move_running() and self.communication_ok else self._fast_poll_s

    @fast_poll_period_s.setter
    def fast_poll_period_s(self, value: float) -> None:
        self._fast_poll_s = value

    def _move_running(self) -> bool:
        t = self.move
        return t is not None and t.state == "moving"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.bus = acquire_bus(self.settings, logger=self.log)
        try:
            self.bus.register(self.address, self._on_reply, self.max_moving)
        except ValueError:
            release_bus(self.bus)
            self.bus = None
            raise
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.bus is not None:
            self.bus.unregister(self.address)
            release_bus(self.bus)
            self.bus = None

    def on_shutdown(self) -> None:
        """A server that stops leaves no mount moving."""
        if self.is_moving():
            self.stop_motion()

    # ------------------------------------------------------------------ link
    def _bus(self) -> Ell14Bus:
        if self.bus is None:
            raise LinkError(f"{self.label}: not started")
        return self.bus

    def on_connect(self, port: Port) -> None:
        """Identify the mount; a silent mount is reported, not fatal to the bus (see the module)."""
        self._identify(port)

    def _identify(self, port: Port) -> None:
        bus = self._bus()
        a = self.address
        self._last_identify = time.monotonic()
        try:
            info = driver.get_info(port, a, bus)
            if not info.is_ell14:
                raise ProtocolError(f"the mount at address {a} is motor type {info.motor_type:02X}, not an ELL14 (0E)")
            self.ppr = info.pulses_per_unit
            status = driver.get_status(port, a, bus)
            pulses = driver.get_position(port, a, bus)
            velocity = driver.get_velocity(port, a, bus)
            jog = driver.get_jog_step(port, a, bus)
            offset = driver.get_home_offset(port, a, bus)
        except (LinkTimeout, ProtocolError, driver.Ell14Error) as exc:
            self.info = None
            self._identify_error = str(exc)
            self.log.warning("%s: not identified: %s", self.label, exc)
            for p in self.parameters:
                p.invalidate()
            return
        self.info = info
        self._identify_error = ""
        self.serial_number.publish(info.serial_number)
        self.firmware.publish(info.firmware_text)
        self.pulses_per_revolution.publish(info.pulses_per_unit)
        self._publish_status(status)
        self._publish_position(pulses)
        self.velocity.publish(velocity)
        self.jog_step.publish(self._deg(jog))
        self.home_offset.publish(self._deg(offset))
        self.homed.publish(bool(self.homed.value))
        self.moves_since_sweep.publish(int(self.moves_since_sweep.value or 0))

    def poll(self) -> None:
        bus = self._bus()
        if self.info is None:
            if time.monotonic() - self._last_identify >= IDENTIFY_RETRY_S:
                # one attempt: a silent mount must not pile up time-outs on the shared link
                bus.link.run(self._identify, idempotent=False, description=f"{self.address}in")
            return
        a = self.address
        if self._move_running() and time.monotonic() - self._last_status_poll < POSITION_EVERY_S:
            bus.run(lambda port, b: driver.listen(port, b, LISTEN_S), description=f"{a} listen for the end of the move")
            self._watch_move()
            return
        self._polls += 1

        # during a move only gp (its gs says "busy", and the move's end comes as its PO)
        in_move = self._move_running()

        def status_and_position(port: Port, b: Ell14Bus) -> tuple[int | None, int]:
            return (None if in_move else driver.get_status(port, a, b)), driver.get_position(port, a, b)

        asked = self._last_status_poll = time.monotonic()
        status, pulses = bus.run(status_and_position, description=f"{a}gp" if in_move else f"{a}gs {a}gp")
        settled = self._settling_since is not None and asked >= self._settling_since and self.move is None
        if settled:
            self._settling_since = None
        if status is not None:
            self._publish_status(status)
        self._publish_position(pulses)
        if settled:
            self.update_state()
        if self._polls % SETTINGS_EVERY == 0 and not self.is_moving():
            def settings(port: Port, b: Ell14Bus) -> tuple[int, int, int]:
                return driver.get_velocity(port, a, b), driver.get_jog_step(port, a, b), driver.get_home_offset(port, a, b)

            velocity, jog, offset = bus.run(settings, description=f"{a}gv {a}gj {a}go")
            self.velocity.publish(velocity)
            self.jog_step.publish(self._deg(jog))
            self.home_offset.publish(self._deg(offset))
        self._watch_move()

    def _watch_move(self) -> None:
        """A move whose end never comes is abandoned and reported (never resent)."""
        t = self.move
        if t is None or t.state != "moving" or t.started is None:
            return
        limit = self._move_time_limit(t)
        if time.monotonic() - t.started > limit and self.bus is not None:
            self.bus.abandon(self.address, f"{t.description}: no end of move reported within {limit:.0f} s")

    def _move_time_limit(self, t: MoveTicket) -> float:
        if t.command == "cm":
            return CLEAN_MAX_S
        speed = driver.FULL_SPEED_DEG_S * max(1, int(self.velocity.value or 100)) / 100.0
        return 2 * 360.0 / speed + 10.0

    # ------------------------------------------------------------------ replies nobody asked for
    def _on_reply(self, reply: Reply, late: bool) -> None:
        """A line of this mount routed by the bus (end of a move, a late answer, a Stop's GS)."""
        if self.info is None:
            return
        if reply.code == "PO":
            self._publish_position(reply.value)
        elif reply.code == "GS":
            self._publish_status(reply.status)

    def _publish_status(self, code: int) -> None:
        self._motor_status = code
        self.motor_status.publish(driver.describe_status(code))

    def _publish_position(self, pulses: int) -> None:
        quality = Quality.CHANGING if self.is_moving() else Quality.VALID
        self.position.publish(self._deg(pulses), quality)

    def _deg(self, pulses: int) -> float:
        return round(driver.pulses_to_degrees(pulses, self.ppr), 6)

    def _pulses(self, degrees: float) -> int:
        return driver.degrees_to_pulses(degrees, self.ppr)

    # ------------------------------------------------------------------ settings
    def _require_identified(self) -> None:
        if self.info is None or not self.communication_ok:
            raise LinkDown(f"{self.label} is not reachable: {self._identify_error or self.status}")

    def _write_velocity(self, percent: int) -> None:
        self._require_identified()
        self._bus().run(lambda port, b: driver.set_velocity(port, self.address, percent, b),
                        description=f"{self.address}sv")

    def _on_velocity(self, r: Any) -> None:
        """Speed follows Velocity (the mount holds a percentage; Sardana wants deg/s)."""
        if r.value is None:
            self.speed.publish(None, r.quality)
        else:
            self.speed.publish(round(int(r.value) * driver.FULL_SPEED_DEG_S / 100.0, 3), r.quality)

    def _write_speed(self, deg_s: float) -> None:
        percent = min(100, max(1, round(deg_s * 100.0 / driver.FULL_SPEED_DEG_S)))
        self.velocity.set(percent)

    def _write_jog_step(self, degrees: float) -> None:
        self._require_identified()
        pulses = self._pulses(degrees)
        if pulses < 1:
            raise ParameterError(f"JogStep: {degrees} deg is less than one encoder pulse")
        self._bus().run(lambda port, b: driver.set_jog_step(port, self.address, pulses, b),
                        description=f"{self.address}sj")
        self.jog_step.publish(self._deg(pulses))  # what the mount holds: whole pulses

    def _write_home_offset(self, degrees: float) -> None:
        self._require_identified()
        pulses = self._pulses(degrees)
        self._bus().run(lambda port, b: driver.set_home_offset(port, self.address, pulses, b),
                        description=f"{self.address}so")
        self.home_offset.publish(self._deg(pulses))

    def save_user_data(self) -> None:
        """Store velocity, jog step and home offset in the mount so they survive a power cycle."""
        self._require_identified()
        self._bus().run(lambda port, b: driver.save_user_data(port, self.address, b), description=f"{self.address}us")

    # ------------------------------------------------------------------ motion
    def move_to(self, degrees: float) -> None:
        """Start an absolute move to ``degrees`` (0-360) and return at once (the Position writer)."""
        degrees = self.position.validate(degrees)
        self._start("ma", driver.encode_int32(self._pulses(degrees)), f"move to {degrees:.3f} deg", degrees)

    def move_relative(self, degrees: Any) -> None:
        """Start a move by ``degrees`` (-360..360; positive = anticlockwise as the mount counts)."""
        if isinstance(degrees, bool) or not isinstance(degrees, int | float):
            raise ParameterError(f"MoveRelative: expected a number of degrees, got {degrees!r}")
        if not -360.0 <= float(degrees) <= 360.0:
            raise ParameterError(f"MoveRelative: {degrees} deg is outside -360..360 deg (NaN is refused too)")
        pulses = self._pulses(float(degrees))
        self._start("mr", driver.encode_int32(pulses), f"move by {float(degrees):+.3f} deg", None)

    def home(self, direction: Any) -> None:
        """Home: 0 clockwise, 1 anticlockwise. Sets ``Homed`` when the mount arrives."""
        if isinstance(direction, bool) or direction not in (0, 1):
            raise ParameterError(f"Home: direction must be 0 (clockwise) or 1 (anticlockwise), not {direction!r}")
        cmd, data = driver.home_data(int(direction))
        self._start(cmd, data, f"home {'clockwise' if direction == 0 else 'anticlockwise'}", None)

    def jog(self, forward: bool) -> None:
        """Move by one JogStep forward or backward."""
        self._start("fw" if forward else "bw", "", f"jog {'forward' if forward else 'backward'} "
                    f"by {self.jog_step.value or 0:.3f} deg", None)

    def clean_mechanics(self) -> None:
        """Start the mount's cleaning cycle (``cm``): full-range sweeps for minutes. Stop ends it."""
        self._start("cm", "", "clean mechanics (full-range sweep)", None)

    def _start(self, command: str, data: str, description: str, target: float | None) -> None:
        self._require_identified()
        if self._motor_status == driver.STATUS_BUSY and self.move is None:
            raise RuntimeError(f"{self.label} reports busy (GS09): it is still moving from an earlier command "
                               "(another host, a jog button or a move from before a reconnection); Stop it or wait")
        ticket = self._bus().start_move(self.address, command, data, description, self._move_done)
        self.move = ticket
        self._target_deg = target
        if command != "cm":
            self.moves_since_sweep.publish(int(self.moves_since_sweep.value or 0) + 1)
        self.position.publish(self.position.value, Quality.CHANGING)
        self.update_state()
        self.request_poll()

    def _move_done(self, t: MoveTicket) -> None:
        """Called by the bus (link thread) when the move ended, failed or was cancelled."""
        if t.position is not None:
            self._publish_position(t.position)  # is_moving() still true here: publish VALID below
        if t.status is not None:
            self._publish_status(t.status)
        if self.move is t:
            self.move = None
        if t.error is None and not t.cancelled:
            self._move_error = ""
            if t.command == "ho" and not t.stop_requested:
                self.homed.publish(True)
            if t.command == "cm" and not t.stop_requested:
                self.moves_since_sweep.publish(0)
        elif isinstance(t.error, LinkError):
            self.record_error(f"{t.description}: {t.error}")
        elif t.error is not None:
            self._move_error = f"{t.description} failed: {t.error}"
            self.record_error(self._move_error)
        if t.position is None and not t.cancelled and t.error is None:
            self._settling_since = time.monotonic()  # stopped: see __init__, wait for a fresh `gp`
        value = self.position.value
        if value is not None:
            settling = self._settling_since is not None
            self.position.publish(value, Quality.CHANGING if settling else
                                  Quality.VALID if self.communication_ok else Quality.INVALID)
        self.update_state()
        self.request_poll()

    def stop_motion(self) -> None:
        """Stop now: ``st`` goes out ahead of every queued request; a queued move is dropped."""
        self._bus().stop(self.address)
        self.request_poll()

    # ------------------------------------------------------------------ motion state
    def is_moving(self) -> bool:
        t = self.move
        return (t is not None and t.active) or self._motor_status == driver.STATUS_BUSY or self._settling_since is not None

    def is_busy(self) -> bool:
        return self.is_moving()

    # ------------------------------------------------------------------ state
    def evaluate_state(self) -> tuple[DeviceState, str]:
        url = self.settings.url
        if self.info is None:
            return DeviceState.FAULT, (
                f"The ELL14 at address {self.address} on {url} does not answer ({self._identify_error}). "
                "Check its power and that the Address property matches the mount; asking again every "
                f"{IDENTIFY_RETRY_S:.0f} s.")
        here = self.position.value
        where = f"at {here:.3f} deg" if here is not None else "position unknown"
        t = self.move
        if t is not None and t.active:
            if t.state == "queued":
                others = ", ".join(self.bus.moving_addresses()) if self.bus else "?"
                return DeviceState.MOVING, (f"Waiting to {t.description}: mounts {others} are moving "
                                            f"and at most {self.max_moving} may move at once on one supply ({where})")
            return DeviceState.MOVING, f"{t.description[:1].upper()}{t.description[1:]}: {where}"
        if self._motor_status == driver.STATUS_BUSY:
            return DeviceState.MOVING, f"The mount reports busy (GS09): moving, {where}"
        if self._settling_since is not None:
            return DeviceState.MOVING, f"Stopped: reading the final position (last read {where})"
        if self._move_error:
            return DeviceState.ALARM, (f"{self._move_error}. Check that nothing blocks the mount, then Home it or run "
                                       "CleanMechanics; this clears with the next successful move.")
        if self._motor_status != driver.STATUS_OK:
            return DeviceState.ALARM, (f"The mount reports {driver.describe_status(self._motor_status)}; "
                                       "Home it, or power-cycle the bus if it persists.")
        notes = []
        if not self.homed.value:
            notes.append("Not homed since the server started: run Home before relying on absolute angles.")
        moves = int(self.moves_since_sweep.value or 0)
        if moves >= self.sweep_every_moves:
            notes.append(f"{moves} moves since the last cleaning sweep: run CleanMechanics when the beam allows.")
        return DeviceState.ON, " ".join([f"Idle {where}."] + notes)
