"""Spectra-Physics Mai Tai protocol: bytes in, typed values out. No Tango, no threads.

Every function takes the link's :class:`~deviceservers.common.serial_link.Port`, so it runs in
the link's worker thread with exclusive access: queries never interleave (a reply can take 2 s or
more at 9600 baud, and the laser has no way to say which query a late reply answers).

The laser only talks when asked a query. Set commands (``ON``, ``SHUT 1``, ``WAV 800``) are
silent whether they were obeyed, refused (an error in ``*STB?``/``SYSTem:ERR?``) or ignored (front
panel in LOCAL, key switch off). That is why the component confirms every setting by reading
it back instead of trusting the write.

Never written here, on purpose: ``PLASer:POWer``, ``PLASer:PCURrent`` and ``MODE`` are service
settings of the pump laser. There is no function for them so nobody can call one by mistake.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from deviceservers.common.serial_link import Port, ProtocolError

#: *STB? bits per the manual (the emission bit differs between units: a device property)
STB_COMMAND_ERROR = 0
STB_EXECUTION_ERROR = 1
STB_SYSTEM_ERROR = 5
STB_EMISSION_DEFAULT = 6
STB_ANY_ERROR = 7

#: the error queue is drained until it says "no error", but never forever (a stuck reply)
MAX_ERRORS_PER_DRAIN = 20

_NUMBER_WITH_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*$")
_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*(?:,\s*"?(.*?)"?\s*)?$')


@dataclass(frozen=True)
class StatusByte:
    """The ``*STB?`` byte, decoded. ``emission_bit`` comes from the EmissionBit property."""

    raw: int
    emission_bit: int = STB_EMISSION_DEFAULT

    def _bit(self, n: int) -> bool:
        return bool(self.raw >> n & 1)

    @property
    def command_error(self) -> bool:
        return self._bit(STB_COMMAND_ERROR)

    @property
    def execution_error(self) -> bool:
        return self._bit(STB_EXECUTION_ERROR)

    @property
    def system_error(self) -> bool:
        """Open interlock or internal fault: the laser cannot emit until it is cleared."""
        return self._bit(STB_SYSTEM_ERROR)

    @property
    def emission(self) -> bool:
        return self._bit(self.emission_bit)

    @property
    def any_error(self) -> bool:
        return self._bit(STB_ANY_ERROR)

    def describe(self) -> str:
        names = []
        for bit, name in ((STB_COMMAND_ERROR, "command error"), (STB_EXECUTION_ERROR, "execution error"),
                          (STB_SYSTEM_ERROR, "system error (interlock open or internal fault)"),
                          (self.emission_bit, "emission"), (STB_ANY_ERROR, "error pending")):
            if self._bit(bit) and name not in names:
                names.append(name)
        return ", ".join(names) if names else "no flags"


@dataclass(frozen=True)
class LaserError:
    """One entry of the ``SYSTem:ERR?`` queue."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"error {self.code}: {self.text}" if self.text else f"error {self.code}"


# ---------------------------------------------------------------------- parsing
def parse_number(reply: str, unit: str = "") -> float:
    """``820nm`` -> 820.0, ``3.000W`` -> 3.0, ``100.00%`` -> 100.0.

    The unit suffix is checked when ``unit`` is given (case-insensitive; a bare number is
    accepted too, some firmware omits it), so a reply to another query is not taken for this one.
    """
    m = _NUMBER_WITH_UNIT.match(reply)
    if m is None:
        raise ProtocolError(f"expected a number{' in ' + unit if unit else ''}, got {reply!r}")
    suffix = m.group(2)
    if unit and suffix and suffix.lower() != unit.lower():
        raise ProtocolError(f"expected a value in {unit}, got {reply!r}")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise ProtocolError(f"not a finite number: {reply!r}")
    return value


def parse_error(reply: str) -> LaserError:
    """``-221,"Settings conflict"`` or ``0,"No error"`` (SCPI error queue format)."""
    m = _ERROR_REPLY.match(reply)
    if m is None:
        raise ProtocolError(f"SYSTem:ERR? answered {reply!r}, expected 'code,\"text\"'")
    return LaserError(int(m.group(1)), (m.group(2) or "").strip())


# ---------------------------------------------------------------------- primitives
def ask(port: Port, query: str, timeout: float | None = None) -> str:
    """Send one query and return its reply line (the link guarantees nothing interleaves)."""
    reply = port.query(query, timeout)
    if not reply:
        raise ProtocolError(f"{query} answered an empty line")
    return reply


def ask_number(port: Port, query: str, unit: str = "") -> float:
    return parse_number(ask(port, query), unit)


def send(port: Port, command: str) -> None:
    """A silent set command. Whether it was obeyed is found out by reading back."""
    port.discard_input()
    port.write(command)


# ---------------------------------------------------------------------- identity and status
def identify(port: Port) -> str:
    """``*IDN?``; raises ProtocolError unless the instrument says it is a Mai Tai."""
    idn = ask(port, "*IDN?")
    if "maitai" not in idn.replace(" ", "").replace("-", "").lower():
        raise ProtocolError(f"*IDN? answered {idn!r}: this is not a Spectra-Physics Mai Tai")
    return idn


def read_status_byte(port: Port, emission_bit: int = STB_EMISSION_DEFAULT) -> StatusByte:
    raw = parse_number(ask(port, "*STB?"))
    if raw != int(raw) or not 0 <= raw <= 255:
        raise ProtocolError(f"*STB? answered {raw}, expected 0..255")
    return StatusByte(int(raw), emission_bit)


def read_error(port: Port) -> LaserError:
    return parse_error(ask(port, "SYSTem:ERR?"))


def drain_errors(port: Port) -> list[LaserError]:
    """Read ``SYSTem:ERR?`` until the queue is empty (code 0); the queued errors, oldest first."""
    errors: list[LaserError] = []
    for _ in range(MAX_ERRORS_PER_DRAIN):
        err = read_error(port)
        if err.code == 0:
            break
        errors.append(err)
    return errors


def read_warmup_percent(port: Port) -> float:
    return ask_number(port, "READ:PCTWarmedup?", "%")


def read_humidity(port: Port) -> float:
    return ask_number(port, "READ:HUMidity?", "%")


def read_mode(port: Port) -> str:
    """``MODE?``: pump control mode, ``PPOW``/``POW`` (power) or ``PCUR``/``CUR`` (current). Read only."""
    return ask(port, "MODE?").upper()


# ---------------------------------------------------------------------- wavelength
def read_wavelength_setpoint(port: Port) -> float:
    """``WAVelength?``: the commanded wavelength (not where the laser is while it tunes)."""
    return ask_number(port, "WAVelength?", "nm")


def read_wavelength(port: Port) -> float:
    """``READ:WAVelength?``: the actual wavelength, lagging the setpoint while tuning."""
    return ask_number(port, "READ:WAVelength?", "nm")


def read_wavelength_limits(port: Port) -> tuple[float, float]:
    lo = ask_number(port, "WAVelength:MIN?", "nm")
    hi = ask_number(port, "WAVelength:MAX?", "nm")
    if not lo < hi:
        raise ProtocolError(f"tuning range {lo}-{hi} nm makes no sense")
    return lo, hi


def set_wavelength(port: Port, nm: float) -> int:
    """``WAVelength n``; the laser tunes in whole nanometres, so ``nm`` is rounded. Returns n."""
    value = int(round(nm))
    send(port, f"WAVelength {value}")
    return value


# ---------------------------------------------------------------------- power
def read_power(port: Port) -> float:
    """``READ:POWer?``: output power in W (0 without emission)."""
    return ask_number(port, "READ:POWer?", "W")


def read_pump_power(port: Port) -> float:
    """``READ:PLASer:POWer?``: the pump laser's actual power in W."""
    return ask_number(port, "READ:PLASer:POWer?", "W")


def read_pump_power_setting(port: Port) -> float:
    """``PLASer:POWer?``: the pump power setting (a service setting: read, never written)."""
    return ask_number(port, "PLASer:POWer?", "W")


# ---------------------------------------------------------------------- emission and shutter
def emission_on(port: Port) -> None:
    """``ON``: at 100 % warm-up starts emission; at 0 % starts the warm-up; else an error."""
    send(port, "ON")


def emission_off(port: Port) -> None:
    """``OFF``. Does not close the shutter: close it first (see the component's Off)."""
    send(port, "OFF")


def set_shutter(port: Port, open_: bool) -> None:
    send(port, f"SHUTter {int(open_)}")


def read_shutter(port: Port) -> bool:
    """``SHUTter?``; can still report the old state for ~1 s after ``SHUTter 0|1``."""
    value = parse_number(ask(port, "SHUTter?"))
    if value not in (0, 1):
        raise ProtocolError(f"SHUTter? answered {value}, expected 0 or 1")
    return bool(value)


# ---------------------------------------------------------------------- watchdog
def set_watchdog(port: Port, seconds: float) -> None:
    """``TIMer:WATChdog n``: pump off after n s without a valid command; 0 disables."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"watchdog time must be >= 0 s, not {seconds}")
    send(port, f"TIMer:WATChdog {int(round(seconds))}")


def read_watchdog(port: Port) -> float:
    return ask_number(port, "TIMer:WATChdog?", "s")
