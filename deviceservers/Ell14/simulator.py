"""A bus of Thorlabs ELL14 rotation mounts, byte for byte.

``sim://ell14?addresses=238&reply_delay_s=0`` is one RS-485 bus with mounts at addresses 2, 3
and 8 (the lab's wiring; write ``addresses=0,8`` when address 0 comes first). Other options:
``reply_delay_s``, ``full_speed_deg_s`` (430 at 100 %), ``settle_s``, ``clean_s``, ``in_chars``
(30, or 33 for the newer firmware's ``IN``), ``mechanical_timeout``, ``truncate_in``. What it does as the real bus does:

* host commands have no terminator: the stream is framed by length (address, two letters, the
  command's data length); a partial packet is dropped after a gap of more than 2 s; each mount
  answers only its own address, an absent address is silence;
* replies end with CR LF; ``in`` answers the logged ``IN`` replies of the lab's mounts (other
  addresses get made-up serial numbers of the same form);
* moves (``ma``, ``mr``, ``ho0|1``, ``fw``, ``bw``) run at ``full_speed_deg_s`` x velocity %;
  ``gs`` answers ``GS09`` while moving and ``gp`` the position of the moment; the mount answers
  ``PO<position>`` on arrival; ``st`` stops at once and answers ``GS00``;
* ``cm`` (clean mechanics) sweeps the full range for ``clean_s`` seconds, ``GS09`` meanwhile,
  ``GS00`` at the end; ``st`` ends it;
* errors: malformed data -> ``GS03``, an unknown command -> ``GS03``, a value out of range
  (velocity above 100 %, a jog step or offset beyond one turn) -> ``GS04``;
* injected faults besides the common ones (unplug, mute, garble...): ``mechanical_timeout``
  (addresses whose next move stalls halfway and answers ``GS02``) and ``truncate_in`` (the next
  N ``IN`` replies lose their last 10 characters).

Assumptions where the manual is silent (documented so nobody mistakes them for facts): positions
are reported modulo one turn (0 <= pulses < 143 360); an error status stays in ``gs`` until the
next motion command; a ``st`` ends a move without the ``PO`` (the move's answer is the ``GS00``).

Replies are queued by their due time, not their order: the ``PO`` of a move that ends in 2 s
must not hold back a ``gp`` answered now.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from deviceservers.common.simulator import SimConnection, Simulator

from .driver import (
    ADDRESSES,
    COMMAND_DATA_LENGTH,
    STATUS_BUSY,
    STATUS_COMMAND_ERROR,
    STATUS_MECHANICAL_TIMEOUT,
    STATUS_OK,
    STATUS_VALUE_OUT_OF_RANGE,
    encode_int32,
)

#: the logged ``IN`` replies of the lab's mounts (without the address and ``IN``)
LOGGED_INFO: dict[str, str] = {
    "2": "0E1140051720231701016800023000",
    "3": "0E1140028420211501016800023000",
    "8": "0E1140060920231701016800023000",
}
PACKET_GAP_S = 2.0  # a byte gap longer than this discards a partial packet


@dataclass
class Motion:
    """One motion of one mount, computed lazily from the clock."""

    start: float
    start_pulses: float
    end_pulses: float
    duration: float
    conn: SimConnection | None
    kind: str = "move"  # "move" or "clean"
    fails: bool = False  # stalls halfway with GS02
    reply_entry: tuple[float, bytes] | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    def pulses_at(self, now: float) -> float:
        if self.kind == "clean" or self.duration <= 0:
            return self.start_pulses if now < self.end else self.end_pulses
        f = min(1.0, max(0.0, (now - self.start) / self.duration))
        return self.start_pulses + (self.end_pulses - self.start_pulses) * f


@dataclass
class Mount:
    """One ELL14 on the bus."""

    address: str
    info: str
    pulses_per_rev: int
    position: float = 0.0  # pulses, when not moving
    velocity: int = 100  # %
    jog_step: int = 0
    home_offset: int = 0
    status: int = STATUS_OK
    motion: Motion | None = None
    saved: dict[str, int] = field(default_factory=dict)
    moves: int = 0


class Ell14BusSimulator(Simulator):
    """A bus of ELL14 mounts. See the module docstring for the URL options."""

    input_terminators = ()
    reply_terminator = b"\r\n"

    def __init__(
        self,
        addresses: str | int = "238",
        reply_delay_s: float = 0.015,
        full_speed_deg_s: float = 430.0,
        settle_s: float = 0.05,
        clean_s: float = 120.0,
        mechanical_timeout: str | int = "",
        truncate_in: int = 0,
        in_chars: int = 30,
        seed: int | None = None,
    ) -> None:
        super().__init__(reply_delay_s=reply_delay_s, seed=seed)
        # "238", or "0,8": the URL parser turns "08" into the number 8, so separate a leading 0
        addrs = str(addresses).upper().replace(",", "")
        if not addrs or any(a not in ADDRESSES for a in addrs) or len(set(addrs)) != len(addrs):
            raise ValueError(f"addresses must be distinct hex digits such as '238', not {addresses!r}")
        if in_chars not in (30, 33):
            raise ValueError(f"in_chars must be 30 or 33, not {in_chars}")
        self.full_speed_deg_s = float(full_speed_deg_s)
        self.settle_s = float(settle_s)
        self.clean_s = float(clean_s)
        self.truncate_in = int(truncate_in)
        self.mechanical_timeout: set[str] = set(str(mechanical_timeout).upper()) if mechanical_timeout != "" else set()
        self.mounts: dict[str, Mount] = {}
        for a in addrs:
            info = LOGGED_INFO.get(a, f"0E114{int(a, 16):05d}20231701016800023000")
            if in_chars == 33:
                info += "000"
            ppr = int(info[22:30], 16)
            self.mounts[a] = Mount(a, info, ppr, jog_step=ppr // 72)  # factory jog step 5 degrees
            self.mounts[a].saved = {"velocity": 100, "jog_step": ppr // 72, "home_offset": 0}
        self.max_moving_seen = 0  # the most mounts ever moving at once (the supply limit is 2)

    # ------------------------------------------------------------------ framing
    def on_bytes(self, conn: SimConnection, data: bytes, now: float) -> None:
        if conn.inbuf and now - conn.last_rx > PACKET_GAP_S:
            conn.inbuf.clear()  # the mounts dropped the partial packet
        conn.last_rx = now
        conn.inbuf += data
        buf = conn.inbuf
        while buf:
            if chr(buf[0]) not in ADDRESSES:
                del buf[0]  # not the start of a packet
                continue
            if len(buf) < 3:
                return
            try:
                cmd = buf[1:3].decode("ascii")
            except UnicodeDecodeError:
                cmd = "??"
            n = COMMAND_DATA_LENGTH.get(cmd, 0)
            if len(buf) < 3 + n:
                return
            packet = bytes(buf[: 3 + n])
            del buf[: 3 + n]
            self._record(packet, now)
            address = chr(packet[0])
            mount = self.mounts.get(address)
            if mount is None:
                continue  # nobody at this address: silence
            try:
                text = packet[3:].decode("ascii")
            except UnicodeDecodeError:
                text = "\x00"
            self._command(conn, mount, cmd, text, now)

    def handle(self, command: str, now: float) -> str | None:  # pragma: no cover - never called
        """Unused: the bus has no line terminator; :meth:`on_bytes` frames packets by length and
        answers through ``_command``. A stray line-based call answers nothing, as a mount would."""
        return None

    # ------------------------------------------------------------------ output
    def reply(self, conn: SimConnection, text: str | bytes, delay: float | None = None, *, terminate: bool = True
              ) -> tuple[float, bytes] | None:
        """Queue a reply by its due time (see the module docstring); returns the queued entry.

        Unlike one instrument on a line, mounts on a bus answer independently: a PO due in 2 s
        must not hold back another mount's answer due now, so replies are ordered by due time.
        """
        data = self.render_reply(text, terminate)
        if data is None:
            return None
        due = self.reply_due(delay)
        entry = (due, data)
        with self._cond:
            keys = [t for t, _ in conn.out]
            conn.out.insert(bisect.bisect_right(keys, due), entry)
            self._cond.notify_all()
        return entry

    def _answer(self, conn: SimConnection, mount: Mount, code: str, data: str) -> None:
        self.reply(conn, f"{mount.address}{code}{data}")

    def _status(self, conn: SimConnection, mount: Mount, code: int) -> None:
        self._answer(conn, mount, "GS", f"{code:02X}")

    # ------------------------------------------------------------------ physics
    def _update(self, mount: Mount, now: float) -> None:
        """Finish a motion whose time has come (lazily, when somebody looks)."""
        m = mount.motion
        if m is not None and now >= m.end:
            mount.position = m.end_pulses % mount.pulses_per_rev
            mount.status = STATUS_MECHANICAL_TIMEOUT if m.fails else STATUS_OK
            mount.motion = None

    def position_pulses(self, address: str, now: float | None = None) -> float:
        """Where mount ``address`` is now (pulses, not wrapped while moving)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            mount = self.mounts[address]
            self._update(mount, now)
            return mount.motion.pulses_at(now) if mount.motion else mount.position

    def position_degrees(self, address: str) -> float:
        mount = self.mounts[address]
        return (self.position_pulses(address) % mount.pulses_per_rev) * 360.0 / mount.pulses_per_rev

    def moving(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._cond:
            for mount in self.mounts.values():
                self._update(mount, now)
            return [a for a, m in self.mounts.items() if m.motion is not None]

    def _speed_pulses_s(self, mount: Mount) -> float:
        return self.full_speed_deg_s * max(mount.velocity, 1) / 100.0 * mount.pulses_per_rev / 360.0

    def _start_motion(self, conn: SimConnection, mount: Mount, target: float, now: float) -> None:
        start = mount.position
        duration = abs(target - start) / self._speed_pulses_s(mount) + self.settle_s
        fails = mount.address in self.mechanical_timeout
        if fails:
            self.mechanical_timeout.discard(mount.address)
            target = start + (target - start) / 2  # stalls halfway
        motion = Motion(now, start, target, duration, conn, fails=fails)
        mount.motion = motion
        mount.status = STATUS_BUSY
        mount.moves += 1
        if fails:
            reply = f"{mount.address}GS{STATUS_MECHANICAL_TIMEOUT:02X}"
        else:
            final = int(round(target)) % mount.pulses_per_rev
            reply = f"{mount.address}PO{encode_int32(final)}"
        motion.reply_entry = self.reply(conn, reply, delay=duration + self.reply_delay_s)
        self.max_moving_seen = max(self.max_moving_seen, len(self.moving(now)))

    def _stop(self, mount: Mount, now: float) -> None:
        m = mount.motion
        if m is None:
            return
        mount.position = (m.pulses_at(now) if m.kind == "move" else m.start_pulses) % mount.pulses_per_rev
        mount.motion = None
        mount.status = STATUS_OK
        if m.conn is not None and m.reply_entry is not None:
            with self._cond:
                try:
                    m.conn.out.remove(m.reply_entry)
                except ValueError:
                    pass  # already delivered

    # ------------------------------------------------------------------ protocol
    def _command(self, conn: SimConnection, mount: Mount, cmd: str, data: str, now: float) -> None:
        self._update(mount, now)
        if cmd not in COMMAND_DATA_LENGTH:
            self._status(conn, mount, STATUS_COMMAND_ERROR)
            return
        hex_ok = all(c in ADDRESSES for c in data)
        if not hex_ok:
            self._status(conn, mount, STATUS_COMMAND_ERROR)
            return
        ppr = mount.pulses_per_rev
        if cmd == "in":
            info = mount.info
            if self.truncate_in > 0:
                self.truncate_in -= 1
                info = info[:-10]
            self._answer(conn, mount, "IN", info)
        elif cmd == "gs":
            self._status(conn, mount, mount.status)
        elif cmd == "gp":
            pulses = int(round(mount.motion.pulses_at(now) if mount.motion else mount.position)) % ppr
            self._answer(conn, mount, "PO", encode_int32(pulses))
        elif cmd == "gv":
            self._answer(conn, mount, "GV", f"{mount.velocity:02X}")
        elif cmd == "sv":
            value = int(data, 16)
            if not 1 <= value <= 100:
                self._status(conn, mount, STATUS_VALUE_OUT_OF_RANGE)
                return
            mount.velocity = value
            self._status(conn, mount, STATUS_OK)
        elif cmd in ("gj", "go"):
            value = mount.jog_step if cmd == "gj" else mount.home_offset
            self._answer(conn, mount, "GJ" if cmd == "gj" else "HO", encode_int32(value))
        elif cmd in ("sj", "so"):
            value = _signed(data)
            if not 0 <= value <= ppr or (cmd == "sj" and value == 0):
                self._status(conn, mount, STATUS_VALUE_OUT_OF_RANGE)
                return
            setattr(mount, "jog_step" if cmd == "sj" else "home_offset", value)
            self._status(conn, mount, STATUS_OK)
        elif cmd == "us":
            mount.saved = {"velocity": mount.velocity, "jog_step": mount.jog_step, "home_offset": mount.home_offset}
            self._status(conn, mount, STATUS_OK)
        elif cmd == "st":
            self._stop(mount, now)
            self._status(conn, mount, STATUS_OK)
        elif cmd in ("ma", "mr", "ho", "fw", "bw"):
            self._move(conn, mount, cmd, data, now)
        elif cmd == "cm":
            if mount.motion is not None:
                self._status(conn, mount, STATUS_BUSY)
                return
            mount.motion = Motion(now, mount.position, mount.position, self.clean_s, conn, kind="clean")
            mount.status = STATUS_BUSY
            mount.moves += 1
            self._status(conn, mount, STATUS_BUSY)
            mount.motion.reply_entry = self.reply(conn, f"{mount.address}GS00", delay=self.clean_s + self.reply_delay_s)
            self.max_moving_seen = max(self.max_moving_seen, len(self.moving(now)))
        else:  # i1, i2, s1, s2, om, ca: not simulated
            self._status(conn, mount, STATUS_COMMAND_ERROR)

    def _move(self, conn: SimConnection, mount: Mount, cmd: str, data: str, now: float) -> None:
        ppr = mount.pulses_per_rev
        if mount.motion is not None:
            self._status(conn, mount, STATUS_BUSY)
            return
        here = mount.position
        if cmd == "ma":
            target = _signed(data)
            if not 0 <= target <= ppr:
                self._status(conn, mount, STATUS_VALUE_OUT_OF_RANGE)
                return
            dest = float(target)
        elif cmd == "mr":
            delta = _signed(data)
            if abs(delta) > ppr:
                self._status(conn, mount, STATUS_VALUE_OUT_OF_RANGE)
                return
            dest = here + delta
        elif cmd in ("fw", "bw"):
            dest = here + (mount.jog_step if cmd == "fw" else -mount.jog_step)
        else:  # ho0 clockwise (decreasing), ho1 anticlockwise (increasing), to the home offset
            if data not in ("0", "1"):
                self._status(conn, mount, STATUS_COMMAND_ERROR)
                return
            home = float(mount.home_offset)
            if data == "0":
                dest = here - ((here - home) % ppr)
            else:
                dest = here + ((home - here) % ppr)
        self._start_motion(conn, mount, dest, now)


def _signed(data: str) -> int:
    value = int(data, 16)
    return value - 2**32 if value >= 2**31 else value
