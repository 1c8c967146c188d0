"""Newport ESP300 protocol: bytes in, typed values out. No Tango, no threads.

Every function takes the link's :class:`~deviceservers.common.serial_link.Port` and runs in the
link's worker thread. The controller never answers a set command and never answers a bad
command either, so every command that can fail is followed by draining the error queue with
``TB?`` until ``0, <time>, NO ERROR DETECTED``; the codes found become :class:`Esp300Error`
with the manual's message. The queue is shared by the three axes: errors of *other* axes (a
limit switch hit by a move started earlier) are handed back to the caller instead of being
blamed on this command, so the component can route them to the axis they belong to.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from deviceservers.common.serial_link import InstrumentError, Port, ProtocolError

AXES = (1, 2, 3)
HOME_MODES = {
    0: "go to position 0",
    1: "home switch and index",
    2: "home switch only",
    3: "positive limit switch",
    4: "negative limit switch",
    5: "positive limit and index",
    6: "negative limit and index",
}
#: SN? code -> unit symbol shown as the Tango unit
UNITS = {0: "counts", 1: "steps", 2: "mm", 3: "um", 4: "in", 5: "mil", 6: "uin", 7: "deg", 8: "grad",
         9: "rad", 10: "mrad", 11: "urad"}

GENERAL_ERRORS = {
    1: "PCI COMMUNICATION TIME-OUT",
    2: "RS-232 COMMUNICATION TIME-OUT",
    4: "EMERGENCY STOP ACTIVATED",
    6: "COMMAND DOES NOT EXIST",
    7: "PARAMETER OUT OF RANGE",
    8: "CABLE INTERLOCK ERROR",
    9: "AXIS NUMBER OUT OF RANGE",
    27: "COMMAND NOT ALLOWED",
    37: "AXIS NUMBER MISSING",
    38: "COMMAND PARAMETER MISSING",
}
AXIS_ERRORS = {
    0: "MOTOR TYPE NOT DEFINED",
    1: "PARAMETER OUT OF RANGE",
    2: "AMPLIFIER FAULT DETECTED",
    3: "FOLLOWING ERROR THRESHOLD EXCEEDED",
    4: "POSITIVE HARDWARE LIMIT DETECTED",
    5: "NEGATIVE HARDWARE LIMIT DETECTED",
    6: "POSITIVE SOFTWARE LIMIT DETECTED",
    7: "NEGATIVE SOFTWARE LIMIT DETECTED",
    8: "MOTOR / STAGE NOT CONNECTED",
    9: "FEEDBACK SIGNAL FAULT DETECTED",
    10: "MAXIMUM VELOCITY EXCEEDED",
    11: "MAXIMUM ACCELERATION EXCEEDED",
    13: "MOTOR NOT ENABLED",
    20: "HOMING ABORTED",
    24: "SPEED OUT OF RANGE",
    26: "PARAMETER CHANGE NOT ALLOWED",
}
HARDWARE_LIMIT_REASONS = (4, 5)
SOFTWARE_LIMIT_REASONS = (6, 7)
MAX_DRAIN = 12  # the queue holds 10; a few more reads cover errors queued meanwhile


@dataclass(frozen=True)
class ControllerError:
    """One entry of the error queue: ``code, timestamp, MESSAGE``."""

    code: int
    timestamp: int
    message: str

    @property
    def axis(self) -> int:
        """1-3 for axis errors (3-digit codes), 0 for general ones."""
        return self.code // 100 if self.code >= 100 else 0

    @property
    def reason(self) -> int:
        return self.code % 100 if self.code >= 100 else self.code

    @property
    def is_limit(self) -> bool:
        return self.axis > 0 and self.reason in HARDWARE_LIMIT_REASONS + SOFTWARE_LIMIT_REASONS

    def describe(self) -> str:
        where = f"axis {self.axis}" if self.axis else "controller"
        return f"{where}: {self.message} (error {self.code})"


class Esp300Error(InstrumentError):
    """The controller refused a command. ``errors`` concern the command; ``others`` are other
    axes' errors found in the same drain (to be routed, not blamed)."""

    def __init__(self, command: str, errors: list[ControllerError], others: list[ControllerError] | None = None):
        text = "; ".join(e.describe() for e in errors)
        super().__init__(f"the ESP300 refused {command!r}: {text}", code=errors[0].code)
        self.command = command
        self.errors = errors
        self.others = others or []


def message_for(code: int) -> str:
    """The manual's text for an error code (used when the controller's text is missing)."""
    if code >= 100:
        return AXIS_ERRORS.get(code % 100, f"UNKNOWN AXIS ERROR {code % 100}")
    return GENERAL_ERRORS.get(code, f"UNKNOWN ERROR {code}")


def check_axis(axis: int) -> None:
    if axis not in AXES:
        raise ValueError(f"axis {axis} does not exist: the ESP300 has axes 1, 2 and 3")


def format_number(value: float) -> str:
    """A value as the controller reads it (no exponent, trailing zeros trimmed)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ---------------------------------------------------------------------- low level
def query(port: Port, command: str, timeout: float | None = None) -> str:
    """Write a query and return its reply line (a bad query gets no reply: LinkTimeout)."""
    return port.query(command, timeout)


def query_float(port: Port, command: str) -> float:
    reply = query(port, command)
    try:
        return float(reply)
    except ValueError as exc:
        raise ProtocolError(f"{command} answered {reply!r}, expected a number") from exc


def query_int(port: Port, command: str) -> int:
    value = query_float(port, command)
    if value != int(value):
        raise ProtocolError(f"{command} answered {value}, expected an integer")
    return int(value)


def parse_error(reply: str) -> ControllerError:
    """Parse a ``TB?`` reply: ``113, 451322, MOTOR NOT ENABLED``."""
    parts = [p.strip() for p in reply.split(",", 2)]
    try:
        code = int(parts[0])
        stamp = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError as exc:
        raise ProtocolError(f"TB? answered {reply!r}, expected 'code, timestamp, message'") from exc
    text = parts[2] if len(parts) > 2 and parts[2] else message_for(code)
    return ControllerError(code, stamp, text)


def read_error(port: Port) -> ControllerError:
    """Take the oldest error from the queue (code 0 when it is empty)."""
    return parse_error(query(port, "TB?"))


def read_error_code(port: Port) -> int:
    """``TE?``: the oldest error code only (also removes it from the queue)."""
    return query_int(port, "TE?")


def drain_errors(port: Port) -> list[ControllerError]:
    """Read ``TB?`` until the queue is empty; return what was in it, oldest first."""
    errors: list[ControllerError] = []
    for _ in range(MAX_DRAIN):
        err = read_error(port)
        if err.code == 0:
            return errors
        errors.append(err)
    return errors


def check_errors(port: Port) -> list[ControllerError]:
    """The error queue after a command, quickly: ``TE?`` (the code alone, 3 characters back when
    the queue is empty) and, only if it held an error, ``TB?`` for the rest.

    Why not ``TB?`` at once: its empty answer ``0, <time>, NO ERROR DETECTED`` is ~30 characters,
    ~16 ms at 19200 baud, on every move; ``TE?`` proves the same "accepted" in ~2 ms. The first
    error's text is then the manual's (its time stamp is not read)."""
    code = read_error_code(port)
    if code == 0:
        return []
    return [ControllerError(code, 0, message_for(code))] + drain_errors(port)


def execute(port: Port, axis: int, *commands: str) -> list[ControllerError]:
    """Send set command(s), then drain the error queue.

    Raises :class:`Esp300Error` with the errors of ``axis`` and the general ones; returns the
    other axes' errors (found in the shared queue) for the caller to route.
    """
    for command in commands:
        port.write(command)
    errors = drain_errors(port)
    mine = [e for e in errors if e.axis in (0, axis)]
    others = [e for e in errors if e.axis not in (0, axis)]
    if mine:
        raise Esp300Error(";".join(commands), mine, others)
    return others


# ---------------------------------------------------------------------- controller
def firmware(port: Port) -> str:
    """``VE?``, e.g. ``ESP300 Version 3.04 07/27/01``; proves an ESP300 is there."""
    reply = query(port, "VE?")
    if "ESP" not in reply.upper():
        raise ProtocolError(f"VE? answered {reply!r}: this is not an ESP300")
    return reply


def status_byte(port: Port) -> int:
    """``TS``: one ASCII character; bits 0-2 axis 1-3 moving, bit 4 motor power on."""
    reply = query(port, "TS")
    if len(reply) != 1:
        raise ProtocolError(f"TS answered {reply!r}, expected one status character")
    return ord(reply)


def moving_axes(status: int) -> set[int]:
    return {axis for axis in AXES if status & (1 << (axis - 1))}


def abort_command() -> str:
    """``AB``: emergency stop of every axis, motors off. Sent with ``send_urgent``."""
    return "AB"


def abort(port: Port) -> list[ControllerError]:
    """Abort through the queue (tests); the device uses :func:`abort_command` urgently."""
    port.write(abort_command())
    return drain_errors(port)


# ---------------------------------------------------------------------- axis: motion
def move_absolute(port: Port, axis: int, target: float) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}PA{format_number(target)}")


def move_relative(port: Port, axis: int, delta: float) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}PR{format_number(delta)}")


def stop_command(axis: int) -> str:
    """``xxST``: decelerate this axis to rest (sent with ``send_urgent``)."""
    check_axis(axis)
    return f"{axis}ST"


def stop(port: Port, axis: int) -> list[ControllerError]:
    return execute(port, axis, stop_command(axis))


def home(port: Port, axis: int, mode: int) -> list[ControllerError]:
    check_axis(axis)
    if mode not in HOME_MODES:
        raise ValueError(f"home mode {mode} does not exist: " + ", ".join(f"{k} {v}" for k, v in HOME_MODES.items()))
    return execute(port, axis, f"{axis}OR{mode}")


def define_position(port: Port, axis: int, value: float) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}DH{format_number(value)}")


def position(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}TP?")


def target_position(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}DP?")


def motion_done(port: Port, axis: int) -> bool:
    """``MD?``: True (1) when no trajectory runs. Also True with the motor off or after an
    abort or a limit stop: it does not mean the axis reached its target."""
    reply = query(port, f"{axis}MD?")
    if reply not in ("0", "1"):
        raise ProtocolError(f"{axis}MD? answered {reply!r}, expected 0 or 1")
    return reply == "1"


# ---------------------------------------------------------------------- axis: settings
def motor_on(port: Port, axis: int) -> bool:
    reply = query(port, f"{axis}MO?")
    if reply not in ("0", "1"):
        raise ProtocolError(f"{axis}MO? answered {reply!r}, expected 0 or 1")
    return reply == "1"


def set_motor(port: Port, axis: int, on: bool) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}{'MO' if on else 'MF'}")


def velocity(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}VA?")


def max_velocity(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}VU?")


def set_velocity(port: Port, axis: int, value: float) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}VA{format_number(value)}")


def acceleration(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}AC?")


def deceleration(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}AG?")


def max_acceleration(port: Port, axis: int) -> float:
    return query_float(port, f"{axis}AU?")


def set_acceleration(port: Port, axis: int, value: float) -> list[ControllerError]:
    """Set acceleration *and* deceleration: setting AC alone would leave the stored AG."""
    check_axis(axis)
    v = format_number(value)
    return execute(port, axis, f"{axis}AC{v}", f"{axis}AG{v}")


def soft_limits(port: Port, axis: int) -> tuple[float, float]:
    return query_float(port, f"{axis}SL?"), query_float(port, f"{axis}SR?")


def set_soft_limit_low(port: Port, axis: int, value: float) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}SL{format_number(value)}")


def set_soft_limit_high(port: Port, axis: int, value: float) -> list[ControllerError]:
    check_axis(axis)
    return execute(port, axis, f"{axis}SR{format_number(value)}")


def unit_code(port: Port, axis: int) -> int:
    code = query_int(port, f"{axis}SN?")
    if code not in UNITS:
        raise ProtocolError(f"{axis}SN? answered {code}, not a unit code 0-11")
    return code


def unit(port: Port, axis: int) -> str:
    """The axis unit as a symbol (``mm``), from ``SN?``."""
    return UNITS[unit_code(port, axis)]


#: unit symbol -> millimetres per unit (the linear units; a stage's travel is known in mm)
MM_PER_UNIT = {"mm": 1.0, "um": 1e-3, "in": 25.4, "mil": 25.4e-3, "uin": 25.4e-6}

#: Newport linear stage families whose model name carries the travel in mm right after the
#: family letters (TS50DC.5 = 50 mm, ILS100CC = 100 mm, M-UTS150PP = 150 mm, VP-25XA = 25 mm).
#: Rotation stages (URS, RV, SR) carry a diameter there, not a travel: deliberately absent.
_LINEAR_FAMILIES = re.compile(r"^(?:M-)?(TS|ILS|UTS|IMS|GTS|XMS|VP-|LTA|MFA-|TRA)(\d+(?:\.\d+)?)", re.IGNORECASE)


def stage_travel_mm(identity: str) -> float | None:
    """The full travel in mm of the stage named by ``ID?`` (``TS50DC.5, SN1263`` -> 50), or None
    for a stage this table does not know (then the controller's soft limits bound the travel).

    ESP-compatible stages are centred: the controller's factory travel limits are +/- half the
    travel around the home position (what ``SL?``/``SR?`` report at power-up)."""
    model = identity.split(",")[0].strip()
    m = _LINEAR_FAMILIES.match(model)
    if m is None:
        return None
    travel = float(m.group(2))
    return travel if travel > 0 else None


def stage_identity(port: Port, axis: int) -> str:
    """``ID?``: stage model and serial number, e.g. ``TS50DC.5, SN1263``."""
    return query(port, f"{axis}ID?")
