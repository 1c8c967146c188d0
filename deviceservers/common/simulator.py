"""Base of the byte-level instrument simulators.

A simulator is the instrument as bytes: it receives what the host writes and produces exactly
the bytes the real unit would send, with its delays, errors and quirks. Physics is computed
lazily from a monotonic clock (a stage's position is a function of the time since the move
started), so simulators need no threads of their own and stay deterministic under test.

A simulator can have several connections at once (an in-process ``sim://`` port and a TCP
client, or a test's second port); each connection has its own output buffer, and replies go to
the connection that asked. Fault injection (drop the link, stop answering, delay or garble
replies) lives here so every instrument gets it for free.
"""

from __future__ import annotations

import abc
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field


class SimConnectionLost(Exception):
    """Raised to a connection's reader when the simulated cable was pulled."""


@dataclass
class Faults:
    """Injected faults, switched from tests or the bench's control interface."""

    unplugged: bool = False  # connection refused / dropped: the port vanished
    mute: bool = False  # connected, but the instrument never answers
    extra_delay_s: float = 0.0  # added to every reply
    garble_next: int = 0  # garble this many upcoming replies
    truncate_next: int = 0  # cut this many upcoming replies in half (no terminator)


@dataclass
class SimConnection:
    """One open port on a simulator."""

    simulator: Simulator
    out: deque[tuple[float, bytes]] = field(default_factory=deque)
    closed: bool = False
    lost: bool = False
    inbuf: bytearray = field(default_factory=bytearray)
    last_rx: float = 0.0

    def write(self, data: bytes) -> None:
        if self.lost or self.closed:
            raise SimConnectionLost("simulated cable pulled")
        self.simulator.receive(self, data)

    def read(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` ready bytes, waiting at most ``timeout`` (None: forever)."""
        return self.simulator._read(self, size, timeout)

    def in_waiting(self) -> int:
        return self.simulator._ready_bytes(self)

    def reset_input(self) -> None:
        with self.simulator._cond:
            now = time.monotonic()
            while self.out and self.out[0][0] <= now:
                self.out.popleft()

    def close(self) -> None:
        self.closed = True
        self.simulator._detach(self)


class Simulator(abc.ABC):
    """Base class: line-based by default (override :meth:`on_bytes` for other framings)."""

    #: bytes that end a command from the host (any of them)
    input_terminators: tuple[bytes, ...] = (b"\r\n", b"\n", b"\r")
    #: what ends every reply
    reply_terminator: bytes = b"\r\n"
    encoding = "ascii"

    def __init__(self, reply_delay_s: float = 0.0, seed: int | None = None) -> None:
        self.reply_delay_s = reply_delay_s
        self.faults = Faults()
        self.rng = random.Random(seed)
        self._cond = threading.Condition(threading.RLock())
        self._connections: list[SimConnection] = []
        self.log: list[tuple[float, bytes]] = []  # every command received, for tests and benchmarks
        self.log_limit = 10000
        self._rx_listeners: list = []

    # ------------------------------------------------------------------ connections
    def connect(self) -> SimConnection:
        with self._cond:
            if self.faults.unplugged:
                raise SimConnectionLost(f"{type(self).__name__}: cable unplugged")
            conn = SimConnection(self)
            self._connections.append(conn)
            return conn

    def _detach(self, conn: SimConnection) -> None:
        with self._cond:
            if conn in self._connections:
                self._connections.remove(conn)
            self._cond.notify_all()

    def unplug(self) -> None:
        """Pull the cable: every open connection fails, new ones are refused."""
        with self._cond:
            self.faults.unplugged = True
            for conn in self._connections:
                conn.lost = True
            self._connections.clear()
            self._cond.notify_all()

    def plug(self) -> None:
        with self._cond:
            self.faults.unplugged = False

    @property
    def connection_count(self) -> int:
        """Connections this simulator holds (over TCP: accepted while plugged in)."""
        with self._cond:
            return len(self._connections)

    def add_rx_listener(self, fn) -> None:
        """``fn(timestamp, command_bytes)`` is called for every received command (benchmarks)."""
        self._rx_listeners.append(fn)

    # ------------------------------------------------------------------ input
    def receive(self, conn: SimConnection, data: bytes) -> None:
        with self._cond:
            now = time.monotonic()
            self.on_bytes(conn, data, now)

    def on_bytes(self, conn: SimConnection, data: bytes, now: float) -> None:
        """Split the stream into commands and answer each one."""
        conn.inbuf += data
        while True:
            cut = None
            for term in self.input_terminators:
                idx = conn.inbuf.find(term)
                if idx >= 0 and (cut is None or idx < cut[0] or (idx == cut[0] and len(term) > len(cut[1]))):
                    cut = (idx, term)
            if cut is None:
                return
            idx, term = cut
            raw = bytes(conn.inbuf[:idx])
            del conn.inbuf[: idx + len(term)]
            if not raw.strip():
                continue
            self._record(raw, now)
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            reply = self.handle(text.strip(), now)
            if reply is not None:
                self.reply(conn, reply)

    def _record(self, raw: bytes, now: float) -> None:
        self.log.append((now, raw))
        if len(self.log) > self.log_limit:
            del self.log[: len(self.log) - self.log_limit]
        for fn in self._rx_listeners:
            fn(now, raw)

    @abc.abstractmethod
    def handle(self, command: str, now: float) -> str | bytes | None:
        """Answer one command; ``None`` means the instrument stays silent."""

    # ------------------------------------------------------------------ output
    def reply(self, conn: SimConnection, text: str | bytes, delay: float | None = None, *, terminate: bool = True) -> None:
        """Queue a reply for ``conn`` after the reply delay (plus injected faults), in order:
        one instrument on one serial line never reorders its replies."""
        data = self.render_reply(text, terminate)
        if data is None:
            return
        with self._cond:
            conn.out.append((self.reply_due(delay), data))
            self._cond.notify_all()

    def render_reply(self, text: str | bytes, terminate: bool = True) -> bytes | None:
        """The bytes of a reply after the injected faults; None while the instrument is mute."""
        if self.faults.mute:
            return None
        data = text.encode(self.encoding) if isinstance(text, str) else bytes(text)
        if terminate:
            data += self.reply_terminator
        if self.faults.garble_next > 0:
            self.faults.garble_next -= 1
            # Line noise (a baud-rate mismatch, a bad cable) always carries bytes that are not
            # text; random printable characters alone would be a well-formed reply to the reader.
            noise = bytearray(self.rng.choice(b"#@!?\xff\x00~") for _ in range(max(3, len(data) - 2)))
            noise[self.rng.randrange(len(noise))] = 0xFF
            data = bytes(noise) + self.reply_terminator
        if self.faults.truncate_next > 0:
            self.faults.truncate_next -= 1
            data = data[: max(1, len(data) // 2)]
        return data

    def reply_due(self, delay: float | None = None) -> float:
        """When a reply queued now is on the wire: the reply delay plus any injected delay."""
        return time.monotonic() + (self.reply_delay_s if delay is None else delay) + self.faults.extra_delay_s

    def _ready_bytes(self, conn: SimConnection) -> int:
        with self._cond:
            now = time.monotonic()
            return sum(len(d) for t, d in conn.out if t <= now)

    def _read(self, conn: SimConnection, size: int, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if conn.lost:
                    raise SimConnectionLost("simulated cable pulled")
                now = time.monotonic()
                if conn.out and conn.out[0][0] <= now:
                    out = bytearray()
                    while conn.out and conn.out[0][0] <= now and len(out) < size:
                        t, chunk = conn.out.popleft()
                        take = size - len(out)
                        out += chunk[:take]
                        if len(chunk) > take:
                            conn.out.appendleft((t, chunk[take:]))
                    return bytes(out)
                wait = None if deadline is None else deadline - now
                if conn.out:
                    first = conn.out[0][0] - now
                    wait = first if wait is None else min(wait, first)
                if wait is not None and wait <= 0:
                    if deadline is not None and now >= deadline:
                        return b""
                    continue
                self._cond.wait(wait)
