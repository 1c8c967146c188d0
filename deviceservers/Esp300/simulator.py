"""A Newport ESP300 three-axis motion controller, byte for byte.

What it does as the real controller does (user's manual, INSTRUMENTS.md):

* commands ``<axis><CMD>[value]`` end with CR; only queries answer, one line ending CR LF;
  several commands may be joined with ``;``;
* a bad command gets **no reply**: the controller queues an error (code, timestamp, message)
  that the host reads with ``TB?`` (or the code alone with ``TE?``), oldest first, until
  ``0, <time>, NO ERROR DETECTED``. Axis errors are ``axis * 100 + reason`` (113 = axis 1
  MOTOR NOT ENABLED), general errors are below 100 (6 = COMMAND DOES NOT EXIST);
* motion is a trapezoidal profile from ``VA`` (velocity), ``AC`` (acceleration) and ``AG``
  (deceleration), computed lazily from the monotonic clock; a new ``PA``/``PR`` during a move
  replans from the present position and speed;
* ``xxST`` decelerates with ``AG``; ``AB`` (emergency stop, no axis) stops every axis at once
  without deceleration and switches every motor off, queuing error 4 EMERGENCY STOP ACTIVATED;
* software limits ``SL``/``SR`` refuse targets outside them (x07 below, x06 above) before any
  motion; the stage's travel ends at hardware limit switches: running into one stops the axis
  there and queues x04 (+) or x05 (-);
* ``MD?`` answers 1 whenever no trajectory runs: with the motor off, after ``AB`` and after a
  limit stop as well, so "motion done" never means "arrived at the target" by itself;
* ``MF`` with the axis moving drops the servo at once (the motion ends where it is); moves and
  homing with the motor off are refused (x13, x20 for ``OR``);
* ``ORm`` home search modes 0-6 (0 go to position 0, 1/2 home switch, 3/4 +/- limit, 5/6 limit
  then index); the position found becomes 0; ``ST``/``AB``/``MF`` during homing queue x20;
* ``TS`` answers the status byte as one ASCII character (bit 6 always set so it prints): bits
  0-2 axis 1-3 moving, bit 4 motor power on (any axis);
* reply latency: ``reply_delay_s`` of processing plus the line time at 19200 baud
  (``char_time_s`` per character), both configurable (0 in tests).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from deviceservers.common.simulator import SimConnection, Simulator

from . import driver

FIRMWARE = "ESP300 Version 3.04 07/27/01"

# The manual's error messages, in one place (the driver's table): code 0 is what TB? says when
# the queue is empty.
GENERAL_ERRORS = {0: "NO ERROR DETECTED", **driver.GENERAL_ERRORS}
AXIS_ERRORS = driver.AXIS_ERRORS

#: SN unit code -> size of one unit in millimetres (linear units the simulated stages accept)
UNIT_MM = {2: 1.0, 3: 1e-3, 4: 25.4, 5: 25.4e-3, 6: 25.4e-6}
ERROR_QUEUE_SIZE = 10

_COMMAND = re.compile(r"^(\d*)([A-Za-z]{2})(\??)(.*)$")


@dataclass
class _Segment:
    """Constant acceleration for ``duration`` seconds (the pieces of a trapezoid)."""

    duration: float
    accel: float


@dataclass
class AxisState:
    """One axis and its stage. Lengths are kept in millimetres of travel, times in seconds."""

    number: int
    model: str
    serial: str
    travel_mm: float = 50.0  # hardware limit switches at +/- travel/2 of the physical stage
    home_switch_mm: float = 0.0  # physical position of the home switch
    physical_mm: float = 0.0  # where the carriage is (when no trajectory runs)
    offset_mm: float = 0.0  # controller position = physical - offset (DH, homing)
    unit: int = 2
    velocity: float = 2.0  # VA, mm/s
    max_velocity: float = 5.0  # VU
    acceleration: float = 10.0  # AC, mm/s^2
    deceleration: float = 10.0  # AG
    max_acceleration: float = 50.0  # AU
    left_limit: float = -25.0  # SL, controller coordinates, mm
    right_limit: float = 25.0  # SR
    motor_on: bool = True
    # trajectory: start time, start position and speed, segments, exact end position
    t0: float = 0.0
    p0: float = 0.0
    v0: float = 0.0
    segments: list[_Segment] = field(default_factory=list)
    end_mm: float = 0.0
    limit_stop: int = 0  # +1/-1: the trajectory ends on that hardware limit switch
    homing: bool = False
    home_after: bool = False  # define the end of this trajectory as position 0

    @property
    def hw_low(self) -> float:
        return -self.travel_mm / 2

    @property
    def hw_high(self) -> float:
        return self.travel_mm / 2


class Esp300Simulator(Simulator):
    """Three axes behind one RS-232 port. See the module docstring."""

    input_terminators = (b"\r\n", b"\r", b"\n")
    reply_terminator = b"\r\n"

    def __init__(self, reply_delay_s: float = 0.004, char_time_s: float = 10 / 19200, seed: int | None = None) -> None:
        super().__init__(reply_delay_s=reply_delay_s, seed=seed)
        self.char_time_s = char_time_s
        self.boot = time.monotonic()
        self.axes = {
            1: AxisState(1, "TS50DC.5", "SN1263"),
            2: AxisState(2, "TS50DC.5", "SN1264"),
            3: AxisState(3, "TS50DC.5", "SN1308"),
        }
        self.errors: list[tuple[int, int]] = []  # (code, timestamp)

    # ------------------------------------------------------------------ errors
    def push_error(self, code: int, now: float) -> None:
        self.errors.append((code, int((now - self.boot) * 1000) % 10**7))
        if len(self.errors) > ERROR_QUEUE_SIZE:
            del self.errors[0]

    @staticmethod
    def message(code: int) -> str:
        if code >= 100:
            return AXIS_ERRORS.get(code % 100, "UNKNOWN ERROR")
        return GENERAL_ERRORS.get(code, "UNKNOWN ERROR")

    # ------------------------------------------------------------------ physics
    def _eval(self, ax: AxisState, now: float) -> tuple[float, float, bool]:
        """(physical position mm, speed mm/s, moving) at ``now``, finishing a trajectory that ended."""
        if not ax.segments:
            return ax.physical_mm, 0.0, False
        t = now - ax.t0
        p, v = ax.p0, ax.v0
        for seg in ax.segments:
            if t <= seg.duration:
                return p + v * t + 0.5 * seg.accel * t * t, v + seg.accel * t, True
            p += v * seg.duration + 0.5 * seg.accel * seg.duration**2
            v += seg.accel * seg.duration
            t -= seg.duration
        self._finish(ax, now)
        return ax.physical_mm, 0.0, False

    def _finish(self, ax: AxisState, now: float) -> None:
        """The trajectory is over: land exactly on its end and say why it ended."""
        ax.physical_mm = ax.end_mm
        ax.segments = []
        if ax.limit_stop:
            self.push_error(ax.number * 100 + (4 if ax.limit_stop > 0 else 5), now)
            ax.limit_stop = 0
        if ax.home_after:
            ax.offset_mm = ax.physical_mm  # the switch found is the new zero
        ax.homing = ax.home_after = False

    def _plan(self, p: float, v: float, target: float, vmax: float, a: float, d: float) -> tuple[list[_Segment], float]:
        """Segments that bring (p, v) to rest at ``target``: reverse if needed, then a trapezoid."""
        segs: list[_Segment] = []
        dist = target - p
        if v != 0.0 and (math.copysign(1, v) != math.copysign(1, dist) or v * v / (2 * d) > abs(dist)):
            # Moving away or too fast to stop in time: brake to rest first.
            t = abs(v) / d
            acc = -math.copysign(d, v)
            segs.append(_Segment(t, acc))
            p += v * t + 0.5 * acc * t * t
            v = 0.0
            dist = target - p
        if abs(dist) < 1e-12:
            return segs, target
        s = math.copysign(1, dist)
        u = abs(v)
        if u > vmax:  # the velocity was lowered under way: slow down to it first
            t = (u - vmax) / d
            segs.append(_Segment(t, -s * d))
            dist -= s * (u * t - 0.5 * d * t * t)
            u = vmax
        span = abs(dist)
        peak = math.sqrt((span + u * u / (2 * a)) / (1 / (2 * a) + 1 / (2 * d)))
        peak = max(peak, u)
        if peak > vmax:
            peak = vmax
        t_acc = (peak - u) / a
        d_acc = (peak * peak - u * u) / (2 * a)
        d_dec = peak * peak / (2 * d)
        cruise = max(0.0, span - d_acc - d_dec)
        segs.append(_Segment(t_acc, s * a))
        if cruise > 0:
            segs.append(_Segment(cruise / peak, 0.0))
        segs.append(_Segment(peak / d, -s * d))
        return segs, target

    def _start(self, ax: AxisState, physical_target: float, now: float, *, home: bool = False) -> None:
        """Plan a move from the present state to ``physical_target`` (clipped by the limit switches)."""
        p, v, _ = self._eval(ax, now)
        end = physical_target
        ax.limit_stop = 0
        if end > ax.hw_high:
            end, ax.limit_stop = ax.hw_high, 1
        elif end < ax.hw_low:
            end, ax.limit_stop = ax.hw_low, -1
        segs, end = self._plan(p, v, end, ax.velocity, ax.acceleration, ax.deceleration)
        if ax.limit_stop:
            # The switch stops the carriage abruptly: the trajectory is cut where it reaches it,
            # so drop the final deceleration and arrive there at speed.
            segs = self._cut_at(p, v, segs, end)
        ax.t0, ax.p0, ax.v0, ax.segments, ax.end_mm = now, p, v, segs, end
        ax.physical_mm = p
        ax.home_after = home
        ax.homing = home
        if not segs:
            self._finish(ax, now)

    @staticmethod
    def _cut_at(p: float, v: float, segs: list[_Segment], limit: float) -> list[_Segment]:
        out: list[_Segment] = []
        for seg in segs:
            a, dur = seg.accel, seg.duration
            end_p = p + v * dur + 0.5 * a * dur * dur
            if (end_p - limit) * (p - limit) <= 0 and abs(end_p - limit) < abs(p - limit) + 1e-15:
                # solve p + v t + a t^2 / 2 = limit for the first t in [0, dur]
                if abs(a) < 1e-15:
                    t = (limit - p) / v if v else dur
                else:
                    disc = max(0.0, v * v - 2 * a * (p - limit))
                    roots = [(-v + r) / a for r in (math.sqrt(disc), -math.sqrt(disc))]
                    valid = [r for r in roots if -1e-12 <= r <= dur + 1e-12]
                    t = min(valid) if valid else dur
                out.append(_Segment(max(0.0, t), a))
                return out
            out.append(seg)
            p, v = end_p, v + a * dur
        return out

    def _halt(self, ax: AxisState, now: float, *, decelerate: bool) -> None:
        """ST (decelerate with AG) or AB/MF (stop where it is)."""
        p, v, moving = self._eval(ax, now)
        if not moving:
            return
        if ax.homing:
            self.push_error(ax.number * 100 + 20, now)
        ax.homing = ax.home_after = False
        ax.limit_stop = 0
        if decelerate and v != 0.0:
            t = abs(v) / ax.deceleration
            acc = -math.copysign(ax.deceleration, v)
            ax.t0, ax.p0, ax.v0 = now, p, v
            ax.segments = [_Segment(t, acc)]
            ax.end_mm = p + v * t + 0.5 * acc * t * t
        else:
            ax.segments = []
            ax.physical_mm = p

    def position(self, axis: int, now: float | None = None) -> float:
        """Controller position of ``axis`` in its units (for tests and the bench)."""
        ax = self.axes[axis]
        phys, _, _ = self._eval(ax, time.monotonic() if now is None else now)
        return (phys - ax.offset_mm) / UNIT_MM[ax.unit]

    def is_moving(self, axis: int) -> bool:
        with self._cond:
            return self._eval(self.axes[axis], time.monotonic())[2]

    # ------------------------------------------------------------------ protocol
    def reply(self, conn: SimConnection, text: str | bytes, delay: float | None = None, *, terminate: bool = True) -> None:
        if delay is None:
            n = len(text) + (len(self.reply_terminator) if terminate else 0)
            delay = self.reply_delay_s + n * self.char_time_s
        super().reply(conn, text, delay, terminate=terminate)

    def handle(self, command: str, now: float) -> str | None:
        replies = [r for r in (self._one(part.strip(), now) for part in command.split(";") if part.strip())
                   if r is not None]
        return "\r\n".join(replies) if replies else None

    def _one(self, command: str, now: float) -> str | None:
        m = _COMMAND.match(command)
        if m is None:
            self.push_error(6, now)
            return None
        axis_text, name, query, arg = m.group(1), m.group(2).upper(), m.group(3) == "?", m.group(4).strip()
        if name in ("VE", "TB", "TE") and query and not axis_text:
            return self._controller_query(name, now)
        if name == "TS" and not axis_text and not query:
            return self._status_byte(now)
        if name == "AB" and not axis_text and not query:
            for ax in self.axes.values():
                self._halt(ax, now, decelerate=False)
                ax.motor_on = False
            self.push_error(4, now)
            return None
        if name not in _AXIS_COMMANDS:
            self.push_error(6, now)
            return None
        if not axis_text:
            self.push_error(37, now)
            return None
        axis = int(axis_text)
        if axis not in self.axes:
            self.push_error(9, now)
            return None
        ax = self.axes[axis]
        if query or (name == "TP" and not arg):  # the manual's `xxTP` reads the position too
            return self._axis_query(ax, name, now)
        return self._axis_set(ax, name, arg, now)

    def _controller_query(self, name: str, now: float) -> str:
        if name == "VE":
            return FIRMWARE
        code, stamp = self.errors.pop(0) if self.errors else (0, int((now - self.boot) * 1000) % 10**7)
        if name == "TE":
            return str(code)
        return f"{code}, {stamp}, {self.message(code)}"

    def _status_byte(self, now: float) -> str:
        bits = 0x40
        for n, ax in self.axes.items():
            if self._eval(ax, now)[2]:
                bits |= 1 << (n - 1)
        if any(ax.motor_on for ax in self.axes.values()):
            bits |= 0x10
        return chr(bits)

    def _axis_query(self, ax: AxisState, name: str, now: float) -> str | None:
        unit = UNIT_MM[ax.unit]
        phys, _, moving = self._eval(ax, now)
        values = {
            "TP": lambda: f"{(phys - ax.offset_mm) / unit:.6f}",
            "DP": lambda: f"{((ax.end_mm if moving else phys) - ax.offset_mm) / unit:.6f}",
            "MD": lambda: "0" if moving else "1",
            "MO": lambda: "1" if ax.motor_on else "0",
            "VA": lambda: f"{ax.velocity / unit:.6g}",
            "VU": lambda: f"{ax.max_velocity / unit:.6g}",
            "AC": lambda: f"{ax.acceleration / unit:.6g}",
            "AG": lambda: f"{ax.deceleration / unit:.6g}",
            "AU": lambda: f"{ax.max_acceleration / unit:.6g}",
            "SL": lambda: f"{ax.left_limit / unit:.6g}",
            "SR": lambda: f"{ax.right_limit / unit:.6g}",
            "SN": lambda: str(ax.unit),
            "ID": lambda: f"{ax.model}, {ax.serial}",
        }
        fn = values.get(name)
        if fn is None:
            self.push_error(6, now)
            return None
        return fn()

    def _axis_set(self, ax: AxisState, name: str, arg: str, now: float) -> None:
        base = ax.number * 100
        unit = UNIT_MM[ax.unit]
        no_arg = ("ST", "MO", "MF")
        optional_arg = ("OR", "DH")
        value: float | None = None
        if name in no_arg:
            if arg:
                self.push_error(7, now)
                return None
        elif arg:
            try:
                value = float(arg)
            except ValueError:
                self.push_error(7, now)
                return None
            if not math.isfinite(value):
                self.push_error(7, now)
                return None
        elif name not in optional_arg:
            self.push_error(38, now)
            return None
        _, _, moving = self._eval(ax, now)

        if name == "ST":
            self._halt(ax, now, decelerate=True)
        elif name == "MO":
            ax.motor_on = True
        elif name == "MF":
            self._halt(ax, now, decelerate=False)
            ax.motor_on = False
        elif name in ("PA", "PR"):
            assert value is not None
            if not ax.motor_on:
                self.push_error(base + 13, now)
                return None
            if name == "PA":
                target = value * unit
            else:
                current = (ax.end_mm if moving else ax.physical_mm) - ax.offset_mm
                target = current + value * unit
            if target > ax.right_limit + 1e-9:
                self.push_error(base + 6, now)
                return None
            if target < ax.left_limit - 1e-9:
                self.push_error(base + 7, now)
                return None
            phys_now = self._eval(ax, now)[0]
            if phys_now >= ax.hw_high - 1e-9 and target + ax.offset_mm > phys_now:
                self.push_error(base + 4, now)  # standing on the + switch: only away from it
                return None
            if phys_now <= ax.hw_low + 1e-9 and target + ax.offset_mm < phys_now:
                self.push_error(base + 5, now)
                return None
            self._start(ax, target + ax.offset_mm, now)
        elif name == "OR":
            mode = 0 if value is None else value
            if mode != int(mode) or not 0 <= mode <= 6:
                self.push_error(base + 1, now)
                return None
            if not ax.motor_on:
                self.push_error(base + 20, now)
                return None
            mode = int(mode)
            if mode == 0:
                goal = ax.offset_mm  # position 0 of the present coordinates
            elif mode in (1, 2):
                goal = ax.home_switch_mm
            elif mode in (3, 5):
                goal = ax.hw_high
            else:
                goal = ax.hw_low
            self._start(ax, goal, now, home=True)
        elif name == "DH":
            if moving:
                self.push_error(base + 26, now)
                return None
            ax.offset_mm = ax.physical_mm - (value or 0.0) * unit
        elif name == "VA":
            assert value is not None
            if value <= 0:
                self.push_error(base + 1, now)
            elif value * unit > ax.max_velocity + 1e-12:
                self.push_error(base + 10, now)
            else:
                ax.velocity = value * unit
        elif name == "VU":
            assert value is not None
            if value <= 0:
                self.push_error(base + 1, now)
            else:
                ax.max_velocity = value * unit
                ax.velocity = min(ax.velocity, ax.max_velocity)
        elif name in ("AC", "AG"):
            assert value is not None
            if value <= 0:
                self.push_error(base + 1, now)
            elif value * unit > ax.max_acceleration + 1e-12:
                self.push_error(base + 11, now)
            elif name == "AC":
                ax.acceleration = value * unit
            else:
                ax.deceleration = value * unit
        elif name == "AU":
            assert value is not None
            if value <= 0:
                self.push_error(base + 1, now)
            else:
                ax.max_acceleration = value * unit
        elif name in ("SL", "SR"):
            assert value is not None
            v = value * unit
            if (name == "SL" and v >= ax.right_limit) or (name == "SR" and v <= ax.left_limit):
                self.push_error(base + 1, now)
            elif name == "SL":
                ax.left_limit = v
            else:
                ax.right_limit = v
        elif name == "SN":
            assert value is not None
            if moving:
                self.push_error(base + 26, now)
            elif int(value) != value or int(value) not in UNIT_MM:
                self.push_error(base + 1, now)
            else:
                ax.unit = int(value)
        else:  # a query-only command used as a set (TP, MD, ID...)
            self.push_error(6, now)
        return None


#: commands that take an axis number
_AXIS_COMMANDS = frozenset(
    "PA PR TP DP MD MO MF VA VU AC AG AU ST OR DH SL SR SN ID".split()
)
