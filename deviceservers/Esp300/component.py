"""One ESP300 axis as Parameters, on the link it shares with the controller's other axes.

Why the pieces are as they are:

* the three axes of a controller share one port, one request queue and one error queue. A
  ``TB?`` drain done for axis 1 can find axis 2's limit error: :class:`Controller` (one per
  SerialURL in this process) routes every error to the axis it belongs to;
* ``MD?`` = 1 only says no trajectory runs (also true with the motor off, after ``AB`` or a
  limit stop), so the state comes from MotorOn, the latched limit alarm and MD? together;
* a move is one queued request (``PA`` then the ``TB?`` drain) at the head of the queue; the
  write returns as soon as the controller accepted it, and polling speeds up until MD? says done;
* Stop and Abort are written with ``send_urgent`` from the caller's thread, so they reach the
  wire even while the worker waits for a reply; the error drain and refresh follow through the
  queue;
* a poll round is one link request per axis (MD?, TP?, and every few rounds the settings), so
  the axes' polls interleave fairly and a move waits for at most one of them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deviceservers.common.component import Component, DeviceState
from deviceservers.common.parameter import Parameter, ParameterError, Quality
from deviceservers.common.serial_link import LinkDown, LinkSettings, Port
from deviceservers.common.shared import Shared

from . import driver

SETTINGS_EVERY = 6  # re-read motor power, velocity, acceleration, limits every N poll periods (idle)
# During a move MD? is asked almost back to back (one small request each, so the other axes and a
# write interleave): the end of the move is known when the controller says it, not at a poll tick.
# The 2 ms pause is about one MD? exchange on the wire at 19200 baud; without it a simulator that
# answers at once (device tests) makes three axes spin both cores.
FAST_POLL_S = 0.002
POSITION_EVERY_S = 0.05  # during a move: TP? and position events at 20 Hz


class Controller:
    """What the axes of one ESP300 share in this process: each other, to route errors."""

    def __init__(self) -> None:
        self.axes: dict[int, Esp300AxisComponent] = {}
        self.lock = threading.Lock()

    def route(self, errors: list[driver.ControllerError], log: logging.Logger) -> None:
        for err in errors:
            with self.lock:
                target = self.axes.get(err.axis)
            if target is not None:
                target.deliver_errors([err])
            else:
                log.warning("ESP300 reported %s for an axis no device serves", err.describe())

    def siblings(self) -> list[Esp300AxisComponent]:
        with self.lock:
            return list(self.axes.values())


_controllers: Shared[Controller] = Shared()  # the axes of one ESP300 (one SerialURL) in this process


@dataclass
class _Snapshot:
    """What one poll request read, in the link thread."""

    move_seq: int
    done: bool
    position: float | None  # None: not read this round (during a move, TP? is read less often)
    errors: list[driver.ControllerError] = field(default_factory=list)
    settings: dict[str, Any] | None = None


class Esp300AxisComponent(Component):
    """One axis (1-3) of an ESP300."""

    def __init__(self, settings: LinkSettings, axis: int, poll_period_s: float = 0.5,
                 logger: logging.Logger | None = None) -> None:
        if axis not in driver.AXES:
            raise ValueError(f"Axis must be 1, 2 or 3 (an ESP300 has three axes), not {axis}")
        super().__init__(settings, poll_period_s, logger)
        self.axis = axis
        self.label = f"ESP300 axis {axis}"
        self.fast_poll_period_s = min(FAST_POLL_S, poll_period_s)
        self.controller: Controller | None = None
        self._polls = 0
        self._moving = False
        self._homing = False
        self._alarm = ""  # why the axis stopped at a limit, until a new move is accepted
        self._move_seq = 0  # bumped in the link thread by every motion command
        self._settings_due = True
        self._last_settings = 0.0
        self._last_position = 0.0
        self._drain_due = False
        self._stopped_by = ""
        self._claiming = False  # a move was written urgently: its errors are being collected
        # The stage's travel in axis units (from the stage model ID? reports): no soft limit and
        # no defined position may lie beyond it. None until the first connection.
        self.travel: tuple[float, float] | None = None
        self.travel_source = ""
        self._unclaimed: list[driver.ControllerError] = []

        self.position = self.add(Parameter(
            "Position", float, fmt="%.6f", writable=True, writer=self._write_position, publish_on_write=False,
            description="Actual position (TP?) in the controller's unit; writing starts an absolute move (PA) "
                        "and returns at once. Quality CHANGING while the axis moves. Limits follow the soft limits."))
        self.velocity = self.add(Parameter(
            "Velocity", float, fmt="%.4f", writable=True, validator=_positive("Velocity"),
            writer=lambda v: self._set(driver.set_velocity, v, "VA"),
            description="Move velocity (VA), per second; at most the stage's maximum velocity (VU)"))
        self.acceleration = self.add(Parameter(
            "Acceleration", float, fmt="%.4f", writable=True, validator=_positive("Acceleration"),
            writer=lambda v: self._set(driver.set_acceleration, v, "AC/AG"),
            description="Acceleration and deceleration (AC and AG set together), per second squared"))
        self.soft_limit_low = self.add(Parameter(
            "SoftLimitLow", float, fmt="%.4f", writable=True, validator=self._check_low,
            writer=lambda v: self._set(driver.set_soft_limit_low, v, "SL"),
            description="Left software travel limit (SL): the controller refuses targets below it"))
        self.soft_limit_high = self.add(Parameter(
            "SoftLimitHigh", float, fmt="%.4f", writable=True, validator=self._check_high,
            writer=lambda v: self._set(driver.set_soft_limit_high, v, "SR"),
            description="Right software travel limit (SR): the controller refuses targets above it"))
        self.motor_on = self.add(Parameter(
            "MotorOn", bool, writable=True, writer=lambda v: self._set(driver.set_motor, v, "MO/MF"),
            description="Motor power (MO/MF). Off: the axis cannot move and the device is OFF"))
        self.stage_model = self.add(Parameter(
            "StageModel", str, description="Stage model and serial number reported by the controller (ID?)"))
        self.firmware = self.add(Parameter("Firmware", str, description="Controller firmware (VE?)"))
        self.unit = self.add(Parameter("Unit", str, description="Position unit of this axis (SN?): mm, um, deg..."))
        for p in (self.soft_limit_low, self.soft_limit_high):
            p.subscribe(lambda _r: self._sync_position_limits())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        def claim_axis(controller: Controller) -> None:
            with controller.lock:
                if self.axis in controller.axes:
                    raise ValueError(f"axis {self.axis} of {self.settings.url} is already served by another device")
                controller.axes[self.axis] = self

        self.controller, _ = _controllers.acquire(self.settings.url, Controller, claim_axis)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.controller is not None:
            with self.controller.lock:
                if self.controller.axes.get(self.axis) is self:
                    del self.controller.axes[self.axis]
            _controllers.release(self.settings.url, self.controller)
            self.controller = None

    def on_connect(self, port: Port) -> None:
        self.firmware.publish(driver.firmware(port))
        self.stage_model.publish(driver.stage_identity(port, self.axis))
        unit = driver.unit(port, self.axis)
        for p in (self.position, self.soft_limit_low, self.soft_limit_high):
            p.unit = unit
        self.velocity.unit, self.acceleration.unit = f"{unit}/s", f"{unit}/s2"
        self.unit.publish(unit)
        self._learn_travel(port, unit)
        stale = driver.drain_errors(port)
        for err in stale:  # history from before we connected: tell, but do not alarm
            if err.axis in (0, self.axis):
                self.record_error(f"error queued before connection: {err.describe()}")
        others = [e for e in stale if e.axis not in (0, self.axis)]
        if others and self.controller is not None:
            self.controller.route(others, self.log)
        self._publish_settings(self._read_settings(port))
        done = driver.motion_done(port, self.axis)
        self._moving = not done
        # The set point survives a server restart: it is the controller's own target (DP?), so a
        # move started before the restart shows where it goes, never "None".
        self.position.restore_setpoint(driver.target_position(port, self.axis))
        self._publish_position(driver.position(port, self.axis))

    def _learn_travel(self, port: Port, unit: str) -> None:
        """Find the stage's travel (link thread) and pull soft limits beyond it back inside.

        From the stage model when it is a known linear stage (centred on home, as the ESP300
        sets SL/SR at power-up); otherwise the soft limits found at the first connection (they
        can then be narrowed, never widened: nothing else tells how far the stage goes)."""
        travel_mm = driver.stage_travel_mm(self.stage_model.value or "")
        per_unit = driver.MM_PER_UNIT.get(unit)
        low, high = driver.soft_limits(port, self.axis)
        if travel_mm is not None and per_unit is not None:
            half = travel_mm / 2 / per_unit
            self.travel = (-half, half)
            self.travel_source = f"{self.stage_model.value}: {travel_mm:g} mm of travel"
        elif self.travel is None:
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"stage {self.stage_model.value!r} unknown and soft limits {low}..{high} unusable: "
                                 "cannot tell the stage's travel")
            self.travel = (low, high)
            self.travel_source = f"soft limits found at connection (stage {self.stage_model.value!r} not in the table)"
            self.log.warning("%s: %s; soft limits can be narrowed, not widened", self.label, self.travel_source)
        lo, hi = self.travel
        fixes = []
        if not lo <= low <= hi:
            fixes.append(f"{self.axis}SL{driver.format_number(lo)}")
        if not lo <= high <= hi:
            fixes.append(f"{self.axis}SR{driver.format_number(hi)}")
        if fixes:
            # Limits beyond the stage let a move run into the hardware limit switch: a safety
            # correction, made and told about, not a silent change.
            driver.execute(port, self.axis, *fixes)
            self.record_error(f"soft limits {low:g}..{high:g} {unit} were beyond the stage's travel "
                              f"({self.travel_source}); set to {' '.join(fixes)}")

    def on_shutdown(self) -> None:
        """Leave nothing running: a moving axis is stopped (decelerating)."""
        if self._moving and self.link is not None:
            self.link.send_urgent(driver.stop_command(self.axis))

    # ------------------------------------------------------------------ polling
    def is_busy(self) -> bool:
        # polls back to back while moving: never while the link is down (nothing to ask, no spin)
        return self._moving and self.communication_ok

    def poll(self) -> None:
        """One round: ``MD?`` (and ``TP?``) in one small request; the settings, when due, in a
        second one. Small requests keep a move's write from waiting behind a long poll."""
        now = time.monotonic()
        moving = self._moving
        full = self._settings_due or (not moving and now - self._last_settings >= SETTINGS_EVERY * self.poll_period_s)
        with_position = not moving or now - self._last_position >= POSITION_EVERY_S
        snap = self.run(lambda port: self._read_axis(port, full, with_position), idempotent=True,
                        description=f"{self.axis}MD? {self.axis}TP?")
        if snap.position is not None:
            self._last_position = now
        self._apply(snap)
        if full:
            self._settings_due = False
            self._last_settings = now
            settings = self.run(self._read_settings, idempotent=True, description=f"{self.axis} settings")
            self._publish_settings(settings)

    def _read_axis(self, port: Port, full: bool, with_position: bool = True) -> _Snapshot:
        """Runs in the link thread: one request per axis and round. During a move only ``MD?``
        (the instrument's own word on the end of the motion), ``TP?`` every POSITION_EVERY_S and
        at the end."""
        seq = self._move_seq
        done = driver.motion_done(port, self.axis)
        snap = _Snapshot(seq, done, driver.position(port, self.axis) if (with_position or done) else None)
        if self._drain_due or (done and self._moving) or full:
            # why did it stop (limit?), or what did Stop/Abort leave in the queue
            self._drain_due = False
            errors = driver.check_errors(port)  # TE? first: an empty queue costs 3 characters
            others = [e for e in errors if e.axis not in (0, self.axis)]
            if others and self.controller is not None:
                self.controller.route(others, self.log)  # now, so a move being checked claims its own
            snap.errors = [e for e in errors if e.axis in (0, self.axis)]
            if self._claiming:
                self._unclaimed.extend(snap.errors)
                snap.errors = []
        return snap

    def _read_settings(self, port: Port) -> dict[str, Any]:
        low, high = driver.soft_limits(port, self.axis)
        return {
            "max_velocity": driver.max_velocity(port, self.axis),
            "max_acceleration": driver.max_acceleration(port, self.axis),
            "velocity": driver.velocity(port, self.axis),
            "acceleration": driver.acceleration(port, self.axis),
            "low": low,
            "high": high,
            "motor": driver.motor_on(port, self.axis),
        }

    def _apply(self, snap: _Snapshot) -> None:
        mine = [e for e in snap.errors if e.axis in (0, self.axis)]
        others = [e for e in snap.errors if e.axis not in (0, self.axis)]
        if others and self.controller is not None:
            self.controller.route(others, self.log)
        if mine:
            self.deliver_errors(mine)
        if snap.settings is not None:
            self._publish_settings(snap.settings)
        if snap.move_seq == self._move_seq:  # no motion command went out after this read
            self._moving = not snap.done
            if snap.done:
                self._homing = False
        if snap.position is not None:  # read whenever MD? said done: the final position
            self._publish_position(snap.position)

    def _publish_settings(self, s: dict[str, Any]) -> None:
        self.velocity.set_limits(None, s["max_velocity"])
        self.acceleration.set_limits(None, s["max_acceleration"])
        self.velocity.publish(s["velocity"])
        self.acceleration.publish(s["acceleration"])
        self.soft_limit_low.publish(s["low"])
        self.soft_limit_high.publish(s["high"])
        self.motor_on.publish(s["motor"])
        if not s["motor"]:
            self._moving = False

    def _publish_position(self, value: float) -> None:
        if self._moving:
            quality = Quality.CHANGING
        elif self._alarm:
            quality = Quality.ALARM
        else:
            quality = Quality.VALID
        self.position.publish(value, quality)

    def _sync_position_limits(self) -> None:
        self.position.set_limits(self.soft_limit_low.value, self.soft_limit_high.value)

    # ------------------------------------------------------------------ errors
    def deliver_errors(self, errors: list[driver.ControllerError]) -> None:
        """Errors of this axis found by any drain (also another axis's): count them, and latch a
        limit as the alarm reason. While a move's errors are being collected they go to it instead."""
        if self._claiming:
            self._unclaimed.extend(errors)
            return
        for err in errors:
            self.record_error(err.describe())
            if err.is_limit:
                self._alarm = self._limit_reason(err)
            elif err.code == 4:
                self._stopped_by = "an emergency stop (Abort) switched the motors off"
        self.update_state()

    def _limit_reason(self, err: driver.ControllerError) -> str:
        what = {4: "hit the positive hardware limit switch", 5: "hit the negative hardware limit switch",
                6: "refused a target above the positive software limit",
                7: "refused a target below the negative software limit"}[err.reason]
        return f"Axis {self.axis} {what} ({err.message}, error {err.code})"

    def _execute(self, fn: Callable[[Port], list[driver.ControllerError]], description: str, *,
                 priority: bool = False, before: Callable[[], None] | None = None) -> None:
        """Run a command request; route other axes' errors; latch limit errors; re-raise refusals."""

        def request(port: Port) -> list[driver.ControllerError]:
            if before is not None:
                before()
            return fn(port)

        try:
            others = self.run(request, priority=priority, description=description)
        except driver.Esp300Error as exc:
            if exc.others and self.controller is not None:
                self.controller.route(exc.others, self.log)
            for err in exc.errors:
                if err.is_limit:
                    self._alarm = self._limit_reason(err)
            self.update_state()
            raise
        if others and self.controller is not None:
            self.controller.route(others, self.log)

    def _set(self, fn: Callable[..., list[driver.ControllerError]], value: Any, what: str) -> None:
        self._execute(lambda port: fn(port, self.axis, value), f"{self.axis}{what} {value}")
        self._settings_due = True

    # ------------------------------------------------------------------ validation
    def _check_travel(self, name: str, value: float) -> None:
        if self.travel is None:
            raise ParameterError(f"{name}: the stage's travel is not known yet (not connected): try again")
        lo, hi = self.travel
        if not lo <= value <= hi:
            unit = self.unit.value or ""
            raise ParameterError(f"{name} {value:g} {unit} is beyond the stage's travel {lo:g}..{hi:g} {unit} "
                                 f"({self.travel_source})")

    def _check_low(self, value: float) -> None:
        self._check_travel("SoftLimitLow", value)
        high = self.soft_limit_high.value
        if high is not None and value >= high:
            raise ParameterError(f"SoftLimitLow {value} must be below SoftLimitHigh {high}")

    def _check_high(self, value: float) -> None:
        self._check_travel("SoftLimitHigh", value)
        low = self.soft_limit_low.value
        if low is not None and value <= low:
            raise ParameterError(f"SoftLimitHigh {value} must be above SoftLimitLow {low}")

    def _require_motor(self, action: str) -> None:
        if self.motor_on.value is False:
            raise RuntimeError(f"axis {self.axis} cannot {action}: its motor is off (set MotorOn = True first)")

    # ------------------------------------------------------------------ motion
    def _bump(self) -> None:
        self._move_seq += 1

    def _started(self) -> None:
        self._alarm = ""
        self._stopped_by = ""
        self._moving = True
        self._publish_position(self.position.value if self.position.value is not None else math.nan)
        self.update_state()
        self.request_poll()

    def _write_position(self, target: float) -> None:
        self._require_motor("move")
        self._urgent_move(f"{self.axis}PA{driver.format_number(target)}")

    def _urgent_move(self, command: str) -> None:
        """Write a move at once (not behind a poll in progress), then check the error queue.

        Safe to interleave: PA/PR get no reply, so a query the worker is waiting on still gets
        its own answer. Errors drained meanwhile by any poll are claimed for this move.
        """
        self._unclaimed = []
        self._claiming = True
        try:
            self._bump()
            self._urgent(command)
            self._execute(self._collect_move_errors(command), f"{command} (TB?)", priority=True)
        finally:
            self._claiming = False
        self._started()

    def _collect_move_errors(self, command: str) -> Callable[[Port], list[driver.ControllerError]]:
        def collect(port: Port) -> list[driver.ControllerError]:
            errors = driver.check_errors(port)
            errors = self._unclaimed + errors
            self._unclaimed = []
            mine = [e for e in errors if e.axis in (0, self.axis)]
            others = [e for e in errors if e.axis not in (0, self.axis)]
            if mine:
                raise driver.Esp300Error(command, mine, others)
            return others

        return collect

    def move_relative(self, delta: float) -> None:
        if not isinstance(delta, int | float) or isinstance(delta, bool) or not math.isfinite(delta):
            raise ParameterError(f"MoveRelative: {delta!r} is not a finite number")
        self._require_motor("move")
        base = self.position.setpoint if self._moving and self.position.setpoint is not None else self.position.value
        if base is None:
            raise RuntimeError(f"axis {self.axis}: position unknown, cannot move relative")
        target = base + delta
        try:
            self.position.validate(target)
        except ParameterError as exc:
            raise ParameterError(f"MoveRelative {delta}: the target {target} would be outside the soft limits "
                                 f"({exc})") from exc
        self._urgent_move(f"{self.axis}PR{driver.format_number(delta)}")

    def home(self, mode: int) -> None:
        if mode not in driver.HOME_MODES:
            raise ParameterError(f"Home mode {mode} does not exist; modes: "
                                 + ", ".join(f"{k} = {v}" for k, v in driver.HOME_MODES.items()))
        self._require_motor("home")
        self._execute(lambda port: driver.home(port, self.axis, mode), f"{self.axis}OR{mode}",
                      priority=True, before=self._bump)
        self._homing = True
        self._started()

    def define_position(self, value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ParameterError(f"DefinePosition: {value!r} is not a finite number")
        if self._moving:
            raise RuntimeError(f"axis {self.axis} is moving: stop it before defining its position")
        self._check_travel("DefinePosition", value)
        low, high = self.soft_limit_low.value, self.soft_limit_high.value
        if low is not None and high is not None and not low <= value <= high:
            unit = self.unit.value or ""
            raise ParameterError(f"DefinePosition {value:g} {unit} is outside SoftLimitLow..SoftLimitHigh "
                                 f"({low:g}..{high:g} {unit}): the axis would stand where it may not be")
        self._execute(lambda port: driver.define_position(port, self.axis, value), f"{self.axis}DH{value}")
        self._publish_position(self.run(lambda port: driver.position(port, self.axis), idempotent=True,
                                        description=f"{self.axis}TP?"))

    def stop_motion(self) -> None:
        """``xxST`` at once from the caller's thread (not queued), then drain and refresh."""
        self._urgent(driver.stop_command(self.axis))
        self._stopped_by = "Stop"
        self._drain_due = True
        self.request_poll()

    def abort(self) -> None:
        """``AB`` (all axes, motors off) at once from the caller's thread, then every axis refreshes."""
        self._urgent(driver.abort_command())
        self._drain_due = True
        for comp in self.controller.siblings() if self.controller else [self]:
            # Known at once: the Status must say why the motors are off from the first OFF on,
            # not only after the error queue has been drained.
            comp._stopped_by = "an emergency stop (Abort) switched the motors off"
            comp._settings_due = True
            comp.request_poll()

    def _urgent(self, command: str) -> None:
        link = self.link
        if link is None or not link.connected:
            reason = link.health.down_reason if link is not None else "not started"
            raise LinkDown(f"{self.label}: cannot send {command}, the link is down: {reason}")
        link.send_urgent(command)

    def is_moving(self) -> bool:
        return self._moving

    # ------------------------------------------------------------------ state
    def evaluate_state(self) -> tuple[DeviceState, str]:
        unit = self.unit.value or ""
        if self.motor_on.value is False:
            why = f" ({self._stopped_by})" if self._stopped_by.startswith("an emergency") else ""
            return DeviceState.OFF, (f"Axis {self.axis} motor is off{why}: the axis holds no position and cannot "
                                     "move. Set MotorOn = True to power it.")
        if self._moving:
            if self._homing:
                return DeviceState.MOVING, f"Axis {self.axis} is homing"
            target = self.position.setpoint
            where = f"to {target:g} {unit}".rstrip() if target is not None else "(target not known yet)"
            return DeviceState.MOVING, f"Axis {self.axis} is moving {where}"
        if self._alarm:
            return DeviceState.ALARM, (f"{self._alarm}. Move back inside SoftLimitLow..SoftLimitHigh "
                                       "(a new accepted move clears this alarm).")
        return DeviceState.ON, f"Axis {self.axis} ({self.stage_model.value or 'stage not identified'}) is idle"


def _positive(name: str) -> Callable[[float], None]:
    def check(value: float) -> None:
        if value <= 0:
            raise ParameterError(f"{name} must be positive, not {value}")

    return check
