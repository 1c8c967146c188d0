"""Thorlabs Elliptec ELL14 protocol: bytes in, typed values out. No Tango, no threads.

The ELL14 sits on an RS-485 style multidrop bus (9600 8N1, no handshake) shared by up to 16
mounts, each answering to one hex digit ``0``-``F``. Host commands are ``<addr><2 lowercase
letters>[data]`` with **no terminator** (the mount frames them by length); replies are
``<addr><2 UPPERCASE letters><data>\\r\\n``. Numbers are uppercase hex; positions are 8 hex digits
in 32-bit two's complement.

Why every read here checks the address, the reply code and the data length: on a shared bus a
late ``PO`` of mount 2 (the end of its move) can arrive while the host waits for mount 3, and a
half-received packet or line noise must never be taken for an answer. :func:`exchange` hands
every well-formed line that is not the awaited answer to a :class:`Dispatcher` (the bus,
:mod:`deviceservers.Ell14.bus`) and silently drops malformed ones.

Moves (``ma``, ``mr``, ``ho``, ``fw``, ``bw``, and the ``cm`` cleaning cycle) only *start* here
(:func:`send_move`): the mount answers when it arrives, seconds later, with ``PO<position>`` or
``GS<error>``; :func:`wait_move_done` waits for that in scripts and tests. A move is never
resent after a time-out, because the mount may already be moving and would move twice.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

from deviceservers.common.serial_link import GarbledReply, InstrumentError, LinkTimeout, Port, ProtocolError

ADDRESSES = "0123456789ABCDEF"
ELL14_MOTOR_TYPE = 0x0E
#: ELL14 pulses per revolution, as its ``IN`` reply reports (``00023000``); for reference only:
#: the driver always takes the figure from ``IN`` (one document says 136 533, which is wrong).
ELL14_PULSES_PER_REVOLUTION = 143_360
#: speed of an ELL14 at 100 % velocity, degrees per second (datasheet figure, used for estimates)
FULL_SPEED_DEG_S = 430.0

#: host commands and the length of their data field (the mount frames the stream with this)
COMMAND_DATA_LENGTH: dict[str, int] = {
    "in": 0, "gs": 0, "gp": 0, "ma": 8, "mr": 8, "ho": 1, "st": 0, "fw": 0, "bw": 0,
    "gj": 0, "sj": 8, "go": 0, "so": 8, "gv": 0, "sv": 2, "us": 0, "ca": 1,
    "i1": 0, "i2": 0, "s1": 0, "s2": 0, "om": 0, "cm": 0,
}
#: reply codes and their allowed data lengths
REPLY_DATA_LENGTHS: dict[str, tuple[int, ...]] = {
    "PO": (8,), "GS": (2,), "GJ": (8,), "HO": (8,), "GV": (2,), "IN": (30, 33),
}
#: commands that move the motor: never retried, answered only when the motion ends
MOVE_COMMANDS = frozenset({"ma", "mr", "ho", "fw", "bw", "cm", "om", "s1", "s2"})

STATUS_OK = 0x00
STATUS_MECHANICAL_TIMEOUT = 0x02
STATUS_COMMAND_ERROR = 0x03
STATUS_VALUE_OUT_OF_RANGE = 0x04
STATUS_BUSY = 0x09

STATUS_MESSAGES: dict[int, str] = {
    0x00: "OK",
    0x01: "communication time-out",
    0x02: "mechanical time-out",
    0x03: "command error or not supported",
    0x04: "value out of range",
    0x05: "module isolated",
    0x06: "module out of isolation",
    0x07: "initialisation error",
    0x08: "thermal error",
    0x09: "busy (moving)",
    0x0A: "sensor error",
    0x0B: "motor error",
    0x0C: "out of range",
    0x0D: "over-current",
}

_LINE = re.compile(r"^([0-9A-F])([A-Z][A-Z0-9])([0-9A-F]*)$")



class Dispatcher(Protocol):
    """Who gets the lines a request did not ask for (see :mod:`deviceservers.Ell14.bus`)."""

    def route(self, reply: Reply) -> None:
        """A well-formed line that is not the awaited answer: another mount's, or a late one."""

    def answered(self, reply: Reply, command: str) -> None:
        """The awaited answer to ``command`` (a ``gs`` answer can end a move)."""

    def expect_late(self, address: str, codes: tuple[str, ...]) -> None:
        """A request timed out: its answer may still come and must then not be taken for news."""


def status_message(code: int) -> str:
    """``0x02`` -> ``"mechanical time-out"``; unknown codes are named as such."""
    return STATUS_MESSAGES.get(code, f"unknown status code {code:02X}")


def describe_status(code: int) -> str:
    """The text shown as ``MotorStatus``: code and meaning, e.g. ``"02 mechanical time-out"``."""
    return f"{code:02X} {status_message(code)}"


class Ell14Error(InstrumentError):
    """A mount answered with an error status (``GS`` code other than 00 and 09)."""

    def __init__(self, address: str, code: int, context: str = "") -> None:
        what = f" to {context}" if context else ""
        super().__init__(f"ELL14 mount {address} answered{what}: {describe_status(code)}", code=code)
        self.address = address


# ---------------------------------------------------------------------- values
def check_address(address: str) -> str:
    """Return the address as one uppercase hex digit or raise ValueError."""
    a = str(address).strip().upper()
    if len(a) != 1 or a not in ADDRESSES:
        raise ValueError(f"ELL14 address must be one hex digit 0-F, not {address!r}")
    return a


def encode_int32(value: int) -> str:
    """8 uppercase hex digits, 32-bit two's complement (``-1`` -> ``FFFFFFFF``)."""
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"{value} does not fit in 32 bits")
    return f"{value & 0xFFFFFFFF:08X}"


def decode_int32(text: str) -> int:
    """Inverse of :func:`encode_int32`."""
    if len(text) != 8 or not all(c in ADDRESSES for c in text):
        raise ProtocolError(f"{text!r} is not 8 uppercase hex digits")
    value = int(text, 16)
    return value - 2**32 if value >= 2**31 else value


def degrees_to_pulses(degrees: float, pulses_per_revolution: int) -> int:
    if not math.isfinite(degrees):
        raise ValueError(f"{degrees} degrees is not a finite number")
    return int(round(degrees * pulses_per_revolution / 360.0))


def pulses_to_degrees(pulses: int, pulses_per_revolution: int) -> float:
    return pulses * 360.0 / pulses_per_revolution


def encode_velocity(percent: int) -> str:
    if not 0 <= percent <= 100:
        raise ValueError(f"velocity {percent} % is outside 0-100 %")
    return f"{percent:02X}"


# ---------------------------------------------------------------------- replies
@dataclass(frozen=True)
class Reply:
    """One well-formed line from a mount."""

    address: str
    code: str
    data: str

    @property
    def status(self) -> int:
        """The status code of a ``GS`` reply."""
        return int(self.data, 16)

    @property
    def value(self) -> int:
        """The signed 32-bit number of a ``PO``/``GJ``/``HO`` reply, or the byte of ``GV``."""
        if len(self.data) == 8:
            return decode_int32(self.data)
        return int(self.data, 16)

    def __str__(self) -> str:
        return f"{self.address}{self.code}{self.data}"


def parse_reply(raw: bytes | str) -> Reply | None:
    """A line (without CR LF) -> :class:`Reply`, or None if it is not a well-formed ELL14 reply.

    Well formed: address digit, two uppercase letters, uppercase hex data of the length this
    code has. Anything else (noise, two packets run together, a truncated ``IN``) is None.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    m = _LINE.match(raw.strip("\r\n"))
    if m is None:
        return None
    address, code, data = m.groups()
    lengths = REPLY_DATA_LENGTHS.get(code)
    if lengths is not None and len(data) not in lengths:
        return None
    return Reply(address, code, data)


@dataclass(frozen=True)
class DeviceInfo:
    """The ``IN`` reply: what the mount says it is."""

    motor_type: int
    serial_number: str
    year: int
    firmware: str
    thread: str  # "0" metric, "1" imperial
    hardware: str
    travel: int  # degrees for a rotation mount (0x168 = 360)
    pulses_per_unit: int  # pulses per revolution for a rotation mount
    extra: str = ""  # the 3 characters newer firmware appends (kept, not interpreted)

    @property
    def is_ell14(self) -> bool:
        return self.motor_type == ELL14_MOTOR_TYPE

    @property
    def firmware_text(self) -> str:
        return f"{self.firmware} (hardware {self.hardware}, {self.year})"


def parse_info(data: str) -> DeviceInfo:
    """Decode the data of an ``IN`` reply (30 characters, or 33 from newer firmware).

    Fields: motor type (2 hex), serial (8), year (4), firmware (2), thread (1), hardware (1),
    travel (4 hex), pulses per unit (8 hex).
    """
    if len(data) not in REPLY_DATA_LENGTHS["IN"]:
        raise ProtocolError(f"IN reply has {len(data)} data characters, expected 30 or 33: {data!r}")
    if not all(c in ADDRESSES for c in data):
        raise ProtocolError(f"IN reply is not hex: {data!r}")
    try:
        year = int(data[10:14])
    except ValueError as exc:
        raise ProtocolError(f"IN reply year {data[10:14]!r} is not a year") from exc
    info = DeviceInfo(
        motor_type=int(data[0:2], 16),
        serial_number=data[2:10],
        year=year,
        firmware=data[14:16],
        thread=data[16],
        hardware=data[17],
        travel=int(data[18:22], 16),
        pulses_per_unit=int(data[22:30], 16),
        extra=data[30:],
    )
    if info.pulses_per_unit <= 0:
        raise ProtocolError(f"IN reply says {info.pulses_per_unit} pulses per unit: {data!r}")
    return info


# ---------------------------------------------------------------------- framing
def command_bytes(address: str, command: str, data: str = "") -> bytes:
    """``("2", "ma", "00005A00")`` -> ``b"2ma00005A00"``, checking the data length."""
    address = check_address(address)
    expected = COMMAND_DATA_LENGTH.get(command)
    if expected is None:
        raise ValueError(f"unknown ELL14 command {command!r}")
    if len(data) != expected:
        raise ValueError(f"ELL14 command {command!r} takes {expected} data characters, got {data!r}")
    return f"{address}{command}{data}".encode("ascii")


def read_reply(port: Port, timeout: float) -> Reply | None:
    """One line from the bus: a Reply, or None for a malformed line. Raises LinkTimeout."""
    raw = port.read_until(b"\n", timeout)
    return parse_reply(raw.rstrip(b"\r"))


def drain(port: Port, dispatcher: Dispatcher | None) -> None:
    """Hand every complete line already received to the dispatcher (late replies, ends of moves).

    A partial line stays in the port's buffer to be completed by the bytes still to come.
    """
    while True:
        try:
            reply = read_reply(port, 0.002)
        except LinkTimeout:
            return
        if reply is not None and dispatcher is not None:
            dispatcher.route(reply)


def listen(port: Port, dispatcher: Dispatcher | None, timeout: float) -> bool:
    """Wait up to ``timeout`` for a line nobody asked for (a mount's ``PO`` at the end of its
    move) and hand it, and any complete line after it, to the dispatcher. True if one came.

    Why: the mounts speak only when asked or when a move ends, and a line is read only inside a
    request; without a request that waits for it, the end of a move would be heard at the next
    poll (up to a poll period late)."""
    try:
        reply = read_reply(port, timeout)
    except LinkTimeout:
        return False
    if reply is not None and dispatcher is not None:
        dispatcher.route(reply)
    drain(port, dispatcher)
    return True


def exchange(
    port: Port,
    address: str,
    command: str,
    data: str = "",
    *,
    expect: tuple[str, ...],
    dispatcher: Dispatcher | None = None,
    timeout: float | None = None,
) -> Reply:
    """Send one command and return the reply of *this* mount with one of the ``expect`` codes.

    Lines of other mounts, and of this mount with other codes, go to ``dispatcher.route``. A
    ``GS`` error from this mount when ``GS`` is not expected is its refusal: routed, then raised
    as :class:`Ell14Error`. Raises LinkTimeout when the answer does not come in time (and tells
    the dispatcher to expect it late).
    """
    address = check_address(address)
    drain(port, dispatcher)
    port.write(command_bytes(address, command, data), terminate=False)
    budget = timeout if timeout is not None else port.settings.timeout_s
    deadline = time.monotonic() + budget
    garbled: list[bytes] = []  # malformed lines received meanwhile: the answer may be among them
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise LinkTimeout(f"no reply within {budget:.3g} s")
            raw = port.read_until(b"\n", remaining)
        except LinkTimeout as exc:
            if dispatcher is not None:
                dispatcher.expect_late(address, expect)
            if garbled:
                # Something answered, but not readably: say so with the bytes, not "no reply".
                raise GarbledReply(f"ELL14 mount {address}: garbled reply {garbled[-1]!r} to {command!r} "
                                   f"({len(garbled)} malformed line(s), no valid {'/'.join(expect)} reply "
                                   f"within {budget:.3g} s)") from exc
            raise LinkTimeout(f"ELL14 mount {address}: no {'/'.join(expect)} reply to {command!r}: {exc}") from exc
        reply = parse_reply(raw.rstrip(b"\r"))
        if reply is None:
            garbled.append(raw)
            continue  # noise or a broken packet: never an answer
        if reply.address == address and reply.code in expect:
            if dispatcher is not None:
                dispatcher.answered(reply, command)
            return reply
        if dispatcher is not None:
            dispatcher.route(reply)
        if (reply.address == address and reply.code == "GS" and "GS" not in expect
                and reply.status not in (STATUS_OK, STATUS_BUSY)):
            raise Ell14Error(address, reply.status, f"{command}{data}")


def check_ok(reply: Reply, context: str) -> None:
    """A ``GS`` acknowledgement must be 00."""
    if reply.status != STATUS_OK:
        raise Ell14Error(reply.address, reply.status, context)


# ---------------------------------------------------------------------- queries and settings
def get_info(port: Port, address: str, dispatcher: Dispatcher | None = None) -> DeviceInfo:
    reply = exchange(port, address, "in", expect=("IN",), dispatcher=dispatcher)
    return parse_info(reply.data)


def get_status(port: Port, address: str, dispatcher: Dispatcher | None = None) -> int:
    """The ``gs`` status code (09 while moving)."""
    return exchange(port, address, "gs", expect=("GS",), dispatcher=dispatcher).status


def get_position(port: Port, address: str, dispatcher: Dispatcher | None = None) -> int:
    """Position in pulses (signed)."""
    return exchange(port, address, "gp", expect=("PO",), dispatcher=dispatcher).value


def get_velocity(port: Port, address: str, dispatcher: Dispatcher | None = None) -> int:
    """Velocity in % of the maximum (``GV64`` = 100 %)."""
    return exchange(port, address, "gv", expect=("GV",), dispatcher=dispatcher).value


def set_velocity(port: Port, address: str, percent: int, dispatcher: Dispatcher | None = None) -> None:
    reply = exchange(port, address, "sv", encode_velocity(percent), expect=("GS",), dispatcher=dispatcher)
    check_ok(reply, f"set velocity {percent} %")


def get_jog_step(port: Port, address: str, dispatcher: Dispatcher | None = None) -> int:
    """Jog step in pulses."""
    return exchange(port, address, "gj", expect=("GJ",), dispatcher=dispatcher).value


def set_jog_step(port: Port, address: str, pulses: int, dispatcher: Dispatcher | None = None) -> None:
    reply = exchange(port, address, "sj", encode_int32(pulses), expect=("GS",), dispatcher=dispatcher)
    check_ok(reply, f"set jog step {pulses} pulses")


def get_home_offset(port: Port, address: str, dispatcher: Dispatcher | None = None) -> int:
    """Home offset in pulses."""
    return exchange(port, address, "go", expect=("HO",), dispatcher=dispatcher).value


def set_home_offset(port: Port, address: str, pulses: int, dispatcher: Dispatcher | None = None) -> None:
    reply = exchange(port, address, "so", encode_int32(pulses), expect=("GS",), dispatcher=dispatcher)
    check_ok(reply, f"set home offset {pulses} pulses")


def save_user_data(port: Port, address: str, dispatcher: Dispatcher | None = None) -> None:
    """``us``: store velocity, jog step and home offset in the mount's flash."""
    check_ok(exchange(port, address, "us", expect=("GS",), dispatcher=dispatcher), "save user data")


# ---------------------------------------------------------------------- motion
def move_absolute_data(pulses: int) -> tuple[str, str]:
    return "ma", encode_int32(pulses)


def move_relative_data(pulses: int) -> tuple[str, str]:
    return "mr", encode_int32(pulses)


def home_data(direction: int) -> tuple[str, str]:
    """``ho0`` clockwise, ``ho1`` anticlockwise."""
    if direction not in (0, 1):
        raise ValueError(f"home direction must be 0 (clockwise) or 1 (anticlockwise), not {direction!r}")
    return "ho", str(direction)


def send_move(port: Port, address: str, command: str, data: str = "") -> None:
    """Write a motion command and return at once; the answer comes when the motion ends."""
    if command not in MOVE_COMMANDS:
        raise ValueError(f"{command!r} is not a motion command")
    port.write(command_bytes(address, command, data), terminate=False)


def stop_bytes(address: str) -> bytes:
    """``st``: stop the motion (the mount answers ``GS00``)."""
    return command_bytes(address, "st")


def wait_move_done(port: Port, address: str, timeout: float, dispatcher: Dispatcher | None = None) -> int:
    """Wait for the end of a motion: the position in pulses from ``PO``.

    A ``GS`` other than 09 also ends it: 00 (stopped) returns the position read with ``gp``,
    an error raises :class:`Ell14Error`. Other mounts' lines go to the dispatcher.
    """
    address = check_address(address)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LinkTimeout(f"ELL14 mount {address}: motion not finished within {timeout:.3g} s")
        reply = read_reply(port, remaining)
        if reply is None:
            continue
        if reply.address == address and reply.code == "PO":
            return reply.value
        if reply.address == address and reply.code == "GS" and reply.status != STATUS_BUSY:
            if reply.status != STATUS_OK:
                raise Ell14Error(address, reply.status, "move")
            return get_position(port, address, dispatcher)
        if dispatcher is not None:
            dispatcher.route(reply)
