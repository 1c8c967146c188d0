"""The ELL14 bus: one dispatcher per SerialURL per process, shared by the mounts on that bus.

Why a dispatcher: every mount on the bus talks on the same wire, and the end of a move (``PO``)
arrives whenever the mount gets there, in the middle of another mount's question. The bus reads
every line (inside the link's requests, see :func:`driver.exchange`), and:

* gives each request only the answer of *its* mount with the awaited code;
* routes every other well-formed line to the mailbox of its address (the component of that
  mount publishes it; a ``PO`` or a ``GS`` other than 09 ends that mount's move);
* remembers the requests that timed out, so that their late answers are recognised as such
  (a late ``PO`` of a position query is a position, not the end of a move);
* counts lines of addresses nobody here owns (another host on the bus, or noise).

It also keeps the supply limit: at most ``max_moving`` mounts (2: 1.2 A peak each) move at once.
A further move waits in a queue and is written to the wire when a running one ends, from the link
thread, so neither the Tango request thread nor the link worker ever waits for a free slot.
Moves are never retried: a move whose end is not heard of is abandoned and reported, not resent.

Devices with the same SerialURL in one process share one bus: :func:`acquire_bus`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from deviceservers.common.serial_link import (
    LinkDown,
    LinkHealth,
    LinkSettings,
    Port,
    SerialLink,
    acquire_link,
    release_link,
)
from deviceservers.common.shared import Shared

from . import driver
from .driver import Reply

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_MOVING = 2  # mounts moving at once on one supply (1.2 A peak each)

ReplyListener = Callable[[Reply, bool], None]  # (reply, late)


@dataclass(eq=False)
class MoveTicket:
    """One motion of one mount, from the request to its end."""

    address: str
    command: str
    data: str
    description: str
    on_done: Callable[[MoveTicket], None] | None = None
    state: str = "queued"  # queued -> starting (slot taken, write queued) -> moving -> done
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    position: int | None = None  # pulses, from the PO that ended it
    status: int | None = None  # the GS code that ended it
    error: BaseException | None = None
    cancelled: bool = False
    stop_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    write_future: Future[Any] | None = None

    @property
    def active(self) -> bool:
        return self.state != "done"


@dataclass
class _Mailbox:
    address: str
    listener: ReplyListener | None
    late: list[tuple[str, float]] = field(default_factory=list)  # (reply code, expiry)

    def take_late(self, code: str, now: float) -> bool:
        self.late = [(c, t) for c, t in self.late if t > now]
        for i, (c, _) in enumerate(self.late):
            if c == code:
                del self.late[i]
                return True
        return False


class Ell14Bus:
    """The shared state of one bus. See the module docstring."""

    def __init__(self, settings: LinkSettings, *, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self.log = logger or log
        self.link: SerialLink = acquire_link(settings, logger=self.log)
        self.link.drop_late_replies = False  # replies carry their mount's address: routed here, late or not
        self.max_moving = MAX_MOVING
        self.stray_lines = 0  # lines of addresses nobody in this process owns
        self.late_lines = 0  # late answers recognised as such
        self._lock = threading.RLock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._moving: dict[str, MoveTicket] = {}
        self._queue: deque[MoveTicket] = deque()
        self._remove_health = self.link.add_health_listener(self._on_health)

    # ------------------------------------------------------------------ mounts
    def register(self, address: str, listener: ReplyListener | None, max_moving: int = MAX_MOVING) -> None:
        address = driver.check_address(address)
        with self._lock:
            if address in self._mailboxes:
                raise ValueError(f"two devices use ELL14 address {address} on {self.settings.url}: "
                                 "give each mount its own Address")
            self._mailboxes[address] = _Mailbox(address, listener)
            self.max_moving = max(1, min(self.max_moving, max_moving))

    def unregister(self, address: str) -> None:
        with self._lock:
            self._mailboxes.pop(address, None)

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return sorted(self._mailboxes)

    def close(self) -> None:
        self._remove_health()
        self._fail_all(LinkDown(f"{self.settings.url}: bus closed"))
        release_link(self.link)

    # ------------------------------------------------------------------ Dispatcher protocol
    def route(self, reply: Reply) -> None:
        """A line nobody asked for (or asked for too long ago): to the mailbox of its address."""
        now = time.monotonic()
        with self._lock:
            mb = self._mailboxes.get(reply.address)
            if mb is None:
                self.stray_lines += 1
                self.log.debug("%s: line for address %s, which no device here owns: %s",
                               self.settings.url, reply.address, reply)
                return
            late = mb.take_late(reply.code, now)
            listener = mb.listener
        if late:
            self.late_lines += 1
        elif reply.code == "PO":
            self._finish(reply.address, position=reply.value)
        elif reply.code == "GS":
            self.note_status(reply.address, reply.status)
        if listener is not None:
            listener(reply, late)

    def answered(self, reply: Reply, command: str) -> None:
        """The answer a request waited for. A ``gs`` answer other than 09 ends a move."""
        if command == "gs":
            self.note_status(reply.address, reply.status)

    def expect_late(self, address: str, codes: tuple[str, ...]) -> None:
        expiry = time.monotonic() + max(2.0, 3 * self.settings.timeout_s)
        with self._lock:
            mb = self._mailboxes.get(address)
            if mb is not None:
                mb.late.extend((c, expiry) for c in codes)

    def note_status(self, address: str, status: int) -> None:
        """``gs`` left 09 (or a move answered ``GS``): the move of ``address`` has ended."""
        if status == driver.STATUS_BUSY:
            return
        error = None if status == driver.STATUS_OK else driver.Ell14Error(address, status, "move")
        self._finish(address, status=status, error=error)

    # ------------------------------------------------------------------ requests
    def call(self, port: Port, fn: Callable[[Port, Ell14Bus], T]) -> T:
        """Run ``fn(port, self)`` in the link thread (from a request or a connect hook)."""
        return fn(port, self)

    def run(self, fn: Callable[[Port, Ell14Bus], T], *, idempotent: bool = True, description: str = "",
            timeout: float | None = None) -> T:
        """Run ``fn(port, self)`` as one link request and wait for its result."""
        return self.link.run(lambda port: fn(port, self), idempotent=idempotent, description=description,
                             timeout=timeout)

    # ------------------------------------------------------------------ motion
    def start_move(self, address: str, command: str, data: str, description: str,
                   on_done: Callable[[MoveTicket], None] | None = None) -> MoveTicket:
        """Start a motion now, or queue it while ``max_moving`` mounts move. Returns at once."""
        address = driver.check_address(address)
        driver.command_bytes(address, command, data)  # refuse a malformed command here, not on the wire
        if not self.link.connected:
            raise LinkDown(f"{self.settings.url} is not connected: {self.link.health.down_reason}")
        ticket = MoveTicket(address, command, data, description, on_done)
        with self._lock:
            current = self.ticket(address)
            if current is not None:
                raise RuntimeError(f"ELL14 mount {address} is already {_doing(current)}: "
                                   "wait for the end of that move or Stop it first")
            if len(self._moving) < self.max_moving:
                ticket.state = "starting"
                self._moving[address] = ticket
                start = True
            else:
                self._queue.append(ticket)
                start = False
        if start:
            self._dispatch(ticket)
        else:
            self.log.info("%s: mount %s: %s queued: %d mounts already moving on this bus", self.settings.url,
                          address, description, self.max_moving)
        return ticket

    def ticket(self, address: str) -> MoveTicket | None:
        """The active (queued, starting or moving) motion of ``address``, if any."""
        with self._lock:
            t = self._moving.get(address)
            if t is not None:
                return t
            for q in self._queue:
                if q.address == address:
                    return q
            return None

    def moving_addresses(self) -> list[str]:
        with self._lock:
            return sorted(self._moving)

    def queued_addresses(self) -> list[str]:
        with self._lock:
            return [t.address for t in self._queue]

    def stop(self, address: str) -> None:
        """Stop ``address`` now: drop its queued move, write ``st`` ahead of every queued request."""
        address = driver.check_address(address)
        cancelled: MoveTicket | None = None
        with self._lock:
            for q in list(self._queue):
                if q.address == address:
                    self._queue.remove(q)
                    cancelled = q
            t = self._moving.get(address)
            if t is not None:
                t.stop_requested = True  # a stopped home has not homed
            if t is not None and t.state == "starting":
                if t.write_future is not None and t.write_future.cancel():
                    del self._moving[address]
                    cancelled = t
        if cancelled is not None:
            cancelled.cancelled = True
            self._complete(cancelled)
            self._start_waiting()
        self.link.send_urgent(driver.stop_bytes(address), terminate=False)

    def abandon(self, address: str, reason: str) -> None:
        """Give up waiting for the end of a move (never resent: the mount may be moving)."""
        self._finish(address, error=TimeoutError(reason))

    # ------------------------------------------------------------------ internals
    def _dispatch(self, ticket: MoveTicket) -> None:
        def write(port: Port) -> None:
            driver.send_move(port, ticket.address, ticket.command, ticket.data)
            with self._lock:
                ticket.state = "moving"
                ticket.started = time.monotonic()
            if ticket.stop_requested:  # Stop arrived while this write waited in the queue
                port.write(driver.stop_bytes(ticket.address), terminate=False)

        fut = self.link.submit(write, idempotent=False, description=f"mount {ticket.address}: {ticket.description}")
        ticket.write_future = fut

        def written(f: Future[Any]) -> None:
            try:
                exc = f.exception()
            except CancelledError:
                return  # cancelled by stop(), which completed the ticket
            if exc is not None:
                self._finish(ticket.address, error=exc, ticket=ticket)

        fut.add_done_callback(written)

    def _finish(self, address: str, *, position: int | None = None, status: int | None = None,
                error: BaseException | None = None, ticket: MoveTicket | None = None) -> None:
        with self._lock:
            t = self._moving.get(address)
            if t is None or (ticket is not None and t is not ticket):
                return
            if ticket is None and t.state != "moving":
                return  # a line from before this move was written
            del self._moving[address]
            t.position, t.status, t.error = position, status, error
        self._complete(t)
        self._start_waiting()

    def _complete(self, t: MoveTicket) -> None:
        with self._lock:
            t.state = "done"
            t.finished = time.monotonic()
        t.done.set()
        if t.on_done is not None:
            try:
                t.on_done(t)
            except Exception:  # noqa: BLE001 - a listener must not break the bus
                self.log.exception("end-of-move listener failed")

    def _start_waiting(self) -> None:
        starting: list[MoveTicket] = []
        with self._lock:
            while self._queue and len(self._moving) < self.max_moving:
                t = self._queue.popleft()
                t.state = "starting"
                self._moving[t.address] = t
                starting.append(t)
        for t in starting:
            self.log.info("%s: mount %s: %s starts (a slot is free)", self.settings.url, t.address, t.description)
            self._dispatch(t)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            tickets = list(self._moving.values()) + list(self._queue)
            self._moving.clear()
            self._queue.clear()
            for mb in self._mailboxes.values():
                mb.late.clear()
        for t in tickets:
            t.error = exc
            self._complete(t)

    def _on_health(self, health: LinkHealth) -> None:
        if not health.connected:
            self._fail_all(LinkDown(f"{self.settings.url}: link lost during the move: {health.down_reason}"))


def _doing(t: MoveTicket) -> str:
    return "waiting for a free slot to " + t.description if t.state == "queued" else t.description


# ---------------------------------------------------------------------- shared buses
_buses: Shared[Ell14Bus] = Shared()


def acquire_bus(settings: LinkSettings, *, logger: logging.Logger | None = None) -> Ell14Bus:
    """The process's bus for ``settings.url`` (created on first use). Pair with :func:`release_bus`."""

    def join(bus: Ell14Bus) -> None:
        if bus.settings != settings:
            raise ValueError(f"{settings.url} is already open with other settings: every mount of one bus "
                             "needs the same BaudRate, FlowControl and TimeoutS")

    bus, _ = _buses.acquire(settings.url, lambda: Ell14Bus(settings, logger=logger), join)
    return bus


def release_bus(bus: Ell14Bus) -> None:
    if _buses.release(bus.settings.url, bus):
        bus.close()
