"""Newport 1830-C protocol: bytes in, typed values out. No Tango, no threads.

Every function takes the link's :class:`~deviceservers.common.serial_link.Port`, so it runs in
the link's worker thread with exclusive access. Set commands are silent on this meter: the
driver checks the status byte afterwards and reads the setting back, because a refused value is
otherwise indistinguishable from an accepted one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from deviceservers.common.serial_link import InstrumentError, Port, ProtocolError

RANGES = ("AUTO", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8")
FILTERS = ("SLOW", "MEDIUM", "FAST")  # F1, F2, F3: 16-sample average, 4-sample, none
UNITS = {1: "W", 2: "dB", 3: "dBm", 4: "REL"}
WAVELENGTH_MIN_NM = 300
WAVELENGTH_MAX_NM = 1100

STATUS_BITS = {
    1: "parameter error",
    2: "command error",
    4: "saturated",
    8: "over range",
    16: "message available",
    32: "busy",
    64: "SRQ",
    128: "reading ready",
}

_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[Ee][+-]?\d+$")
_TEXT_READINGS = {"ERR": "the meter reports an error", "OVER": "over range", "UNDER": "under range",
                  "SAT": "detector saturated"}


@dataclass(frozen=True)
class StatusByte:
    """The ``Q?`` status byte, decoded."""

    raw: int

    @property
    def parameter_error(self) -> bool:
        return bool(self.raw & 1)

    @property
    def command_error(self) -> bool:
        return bool(self.raw & 2)

    @property
    def saturated(self) -> bool:
        return bool(self.raw & 4)

    @property
    def over_range(self) -> bool:
        return bool(self.raw & 8)

    @property
    def busy(self) -> bool:
        return bool(self.raw & 32)

    @property
    def reading_ready(self) -> bool:
        return bool(self.raw & 128)

    def describe(self) -> str:
        names = [name for bit, name in STATUS_BITS.items() if self.raw & bit]
        return ", ".join(names) if names else "no flags"


@dataclass(frozen=True)
class PowerReading:
    """One ``D?`` reading. ``watts`` is None when the meter sent text (OVER, SAT...)."""

    watts: float | None
    text: str = ""

    @property
    def valid(self) -> bool:
        return self.watts is not None


def is_scientific(reply: str) -> bool:
    return bool(_SCI.match(reply.strip()))


def parse_power(reply: str) -> PowerReading:
    """Parse a ``D?`` reply in watts. Raises ProtocolError on anything else but the known words."""
    text = reply.strip().upper()
    if text in _TEXT_READINGS:
        return PowerReading(None, text)
    if not _SCI.match(text):
        raise ProtocolError(f"reading {reply!r} is not in scientific notation (watts)")
    return PowerReading(float(text))


def watts_to_dbm(watts: float | None) -> float | None:
    if watts is None or watts <= 0 or not math.isfinite(watts):
        return None
    return 10.0 * math.log10(watts / 1e-3)


def ask(port: Port, command: str, timeout: float | None = None) -> str:
    """Send a query and return its reply, skipping the echo if the meter still echoes."""
    port.discard_input()
    port.write(command)
    reply = port.read_line(timeout)
    if reply.upper() == command.upper():
        reply = port.read_line(timeout)
    return reply


def ask_int(port: Port, command: str, lo: int, hi: int) -> int:
    reply = ask(port, command)
    try:
        value = int(reply)
    except ValueError as exc:
        raise ProtocolError(f"{command} answered {reply!r}, expected an integer") from exc
    if not lo <= value <= hi:
        raise ProtocolError(f"{command} answered {value}, expected {lo}..{hi}")
    return value


def read_status(port: Port) -> StatusByte:
    return StatusByte(ask_int(port, "Q?", 0, 255))


def send(port: Port, command: str) -> None:
    """Send a silent set command, then make sure the meter did not flag it as an error."""
    port.discard_input()
    port.write(command)
    status = read_status(port)
    if status.parameter_error or status.command_error:
        port.write("CS")  # clear, or every later check would fail too
        kind = "value out of range" if status.parameter_error else "unknown command"
        raise InstrumentError(f"the 1830-C refused {command!r}: {kind}", code=status.raw & 3)


def connect(port: Port) -> None:
    """Echo off, watts, clear status; proves the meter answers.

    The echo of ``E0`` itself may arrive late, so the first status query is tried again
    before the meter is declared mute or wrong.
    """
    port.write("E0")
    drain(port)
    for attempt in range(3):
        try:
            read_status(port)
            break
        except ProtocolError:
            if attempt == 2:
                raise
    port.write("CS")
    send(port, "U1")


def drain(port: Port, quiet_s: float = 0.1) -> None:
    """Read and drop whatever the meter still sends (echoes) until it has been quiet ``quiet_s``."""
    from deviceservers.common.serial_link import LinkTimeout

    port.discard_input()
    for _ in range(100):
        try:
            port.read_until(b"\n", quiet_s)
        except LinkTimeout:
            port.discard_input()
            return


def read_power(port: Port) -> PowerReading:
    """``D?`` in watts; if the front panel switched units, re-assert ``U1`` and read again."""
    reply = ask(port, "D?")
    text = reply.strip().upper()
    if text not in _TEXT_READINGS and not is_scientific(text):
        try:
            float(text)
        except ValueError as exc:
            raise ProtocolError(f"D? answered {reply!r}") from exc
        port.write("U1")  # somebody pressed UNITS on the front panel
        reply = ask(port, "D?")
    return parse_power(reply)


def set_wavelength(port: Port, nm: float) -> int:
    value = int(round(nm))
    if not WAVELENGTH_MIN_NM <= value <= WAVELENGTH_MAX_NM:
        raise InstrumentError(f"wavelength {nm} nm is outside {WAVELENGTH_MIN_NM}-{WAVELENGTH_MAX_NM} nm")
    send(port, f"W{value:04d}")
    readback = read_wavelength(port)
    if readback != value:
        raise InstrumentError(f"wavelength set to {value} nm but the meter reads back {readback} nm")
    return value


def read_wavelength(port: Port) -> int:
    return ask_int(port, "W?", WAVELENGTH_MIN_NM, WAVELENGTH_MAX_NM)


def set_range(port: Port, index: int) -> None:
    if not 0 <= index <= 8:
        raise InstrumentError(f"range {index} does not exist: 0 (AUTO) or 1-8")
    send(port, f"R{index}")


def read_range(port: Port) -> int:
    return ask_int(port, "R?", 0, 8)


def set_filter(port: Port, index: int) -> None:
    """``index`` 0..2 = SLOW, MEDIUM, FAST = F1..F3."""
    send(port, f"F{index + 1}")


def read_filter(port: Port) -> int:
    return ask_int(port, "F?", 1, 3) - 1


def set_attenuator(port: Port, on: bool) -> None:
    send(port, f"A{int(on)}")


def read_attenuator(port: Port) -> bool:
    return bool(ask_int(port, "A?", 0, 1))


def set_zero(port: Port, on: bool) -> None:
    send(port, f"Z{int(on)}")


def read_zero(port: Port) -> bool:
    return bool(ask_int(port, "Z?", 0, 1))


def read_units(port: Port) -> int:
    return ask_int(port, "U?", 1, 4)


def store_reference(port: Port) -> None:
    send(port, "S")


def set_beeper(port: Port, on: bool) -> None:
    send(port, f"B{int(on)}")


def set_hold(port: Port, hold: bool) -> None:
    send(port, "G0" if hold else "G1")


def set_backlight(port: Port, level: int) -> None:
    send(port, f"K{level}")


def set_lockout(port: Port, locked: bool) -> None:
    send(port, f"L{int(locked)}")


def clear_status(port: Port) -> None:
    port.write("CS")


#: per-sample flags in a stream (a text reply instead of a number)
FLAG_INVALID = 1
FLAG_SATURATED = 2
FLAG_OVER_RANGE = 4
_TEXT_FLAGS = {"ERR": FLAG_INVALID, "UNDER": FLAG_INVALID, "SAT": FLAG_INVALID | FLAG_SATURATED,
               "OVER": FLAG_INVALID | FLAG_OVER_RANGE}


def sample_burst(port: Port, max_samples: int, max_seconds: float) -> tuple[list[float], list[float], list[int]]:
    """Read ``D?`` back to back for up to ``max_samples`` or ``max_seconds``.

    Returns (timestamps in s: when each reading was asked for, watts, flags); a text reading
    becomes NaN with its flag set, so a stream never silently drops or invents a sample. Bounded
    in time so other requests on the link (settings, status) get their turn between bursts.
    """
    import time

    ts: list[float] = []
    values: list[float] = []
    flags: list[int] = []
    deadline = time.monotonic() + max_seconds
    while len(ts) < max_samples and time.monotonic() < deadline:
        # The meter takes the reading when it receives D?; the reply comes up to ~0.5 s later.
        # Stamp the query time, or a sample measured during a move would look like one taken
        # after it (a scan's count window starts when the motors arrive).
        asked = time.time()
        reading = read_power(port)
        ts.append(asked)
        if reading.watts is None:
            values.append(math.nan)
            flags.append(_TEXT_FLAGS.get(reading.text, FLAG_INVALID))
        else:
            values.append(reading.watts)
            flags.append(0)
    return ts, values, flags
