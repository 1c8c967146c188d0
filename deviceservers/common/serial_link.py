"""One serial connection owned by one worker thread.

Every instrument is reached through a :class:`SerialLink`. The link:

* opens any pyserial URL with :func:`serial.serial_for_url`: ``/dev/serial/by-id/...``,
  ``socket://host:port`` (terminal servers), ``rfc2217://host:port`` and ``sim://<instrument>``
  (the in-process simulator, see :mod:`deviceservers.common.protocol_sim`);
* runs every request in its worker thread, one at a time, so queries never interleave;
* retries *idempotent* requests after a time-out or a garbled reply, with back-off; a request
  that moves something is never retried (the instrument may already be moving);
* has two ways to jump the line: ``priority=True`` puts a request at the head of the queue, and
  :meth:`SerialLink.send_urgent` writes at once from the caller's thread, even while the worker
  waits for a slow reply (Stop/Abort must reach the wire within milliseconds);
* declares the link down when the port disappears (noticed while idle too) or stops answering;
  a connection found closed before a request was written is re-made and the request sent once
  more (the instrument never saw it); fails requests at once
  while it is down (nothing piles up), and reconnects with exponential back-off; a connect hook
  (echo off, identify) must succeed before the link is declared up again;
* keeps health counters and tells listeners about every up/down transition.

Devices that share a URL in one process share one link: :func:`acquire_link`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import serial

from . import protocol_sim  # noqa: F401  (registers the sim:// scheme)
from .shared import Shared

T = TypeVar("T")
log = logging.getLogger(__name__)

FLOW_CONTROLS = ("none", "rtscts", "xonxoff")


class LinkError(Exception):
    """Base class of link failures."""


class LinkTimeout(LinkError):
    """The instrument did not answer in time."""


class LinkDown(LinkError):
    """The port is closed, vanished, or the instrument stopped answering."""


class ProtocolError(LinkError):
    """The reply could not be understood (garbled, truncated, wrong address)."""


class GarbledReply(ProtocolError):
    """A reply arrived but is not text the instrument sends (noise, wrong baud rate, a cable
    fault): reported with its bytes, never as a time-out, so nobody looks for a mute instrument."""


class IncompleteReply(LinkTimeout):
    """Bytes arrived but the reply's terminator never did (a truncated reply): a time-out that
    says what was received."""


class InstrumentError(Exception):
    """The instrument understood and refused (an error code it reported). Never retried."""

    def __init__(self, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LinkSettings:
    """How to talk to one port. Every field is a device property somewhere."""

    url: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    flow_control: str = "none"
    timeout_s: float = 1.0
    write_terminator: bytes = b"\n"
    read_terminator: bytes = b"\n"
    encoding: str = "ascii"
    retries: int = 2
    retry_backoff_s: float = 0.05
    timeouts_before_down: int = 3
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.flow_control not in FLOW_CONTROLS:
            raise ValueError(f"FlowControl must be one of {', '.join(FLOW_CONTROLS)}, not {self.flow_control!r}")
        if not self.url:
            raise ValueError("SerialURL is empty: set it to a pyserial URL such as /dev/serial/by-id/... "
                             "or socket://host:port or sim://<instrument>")
        if self.timeout_s <= 0:
            raise ValueError(f"TimeoutS must be positive, not {self.timeout_s}")


@dataclass
class LinkHealth:
    """Counters shown as the health attributes of every serial device."""

    connected: bool = False
    error_count: int = 0
    last_error: str = ""
    requests: int = 0
    timeouts: int = 0
    retries: int = 0
    reconnects: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    down_reason: str = "not connected yet"
    connect_failures: int = 0  # connection attempts that failed (0: the first is still under way)
    ever_connected: bool = False
    since: float = field(default_factory=time.time)


class Port:
    """What a request function sees: exclusive, buffered access to the open port.

    Only the worker thread (and :meth:`SerialLink.send_urgent` under the write lock) touch it.
    """

    def __init__(self, ser: serial.SerialBase, settings: LinkSettings, link: SerialLink) -> None:
        self._ser = ser
        self._settings = settings
        self._link = link
        self._buf = bytearray()
        self._current_timeout: float | None = None

    @property
    def settings(self) -> LinkSettings:
        return self._settings

    def write(self, data: bytes | str, *, terminate: bool = True) -> None:
        """Write a command, adding the write terminator unless ``terminate`` is false."""
        if isinstance(data, str):
            data = data.encode(self._settings.encoding)
        if terminate:
            data += self._settings.write_terminator
        self._link._write_raw(data)

    def _read_some(self, timeout: float) -> bytes:
        timeout = max(0.001, round(timeout, 3))
        if self._current_timeout != timeout:
            self._ser.timeout = timeout
            self._current_timeout = timeout
        try:
            waiting = self._ser.in_waiting
            chunk = self._ser.read(max(1, waiting))
        except (serial.SerialException, OSError) as exc:
            raise LinkDown(f"port lost while reading: {exc}") from exc
        self._link.health.bytes_in += len(chunk)
        return chunk

    def read_until(self, terminator: bytes | None = None, timeout: float | None = None) -> bytes:
        """Read up to and excluding ``terminator``; raise :class:`LinkTimeout` after ``timeout``."""
        term = terminator if terminator is not None else self._settings.read_terminator
        deadline = time.monotonic() + (timeout if timeout is not None else self._settings.timeout_s)
        while True:
            idx = self._buf.find(term)
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + len(term)]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                partial = bytes(self._buf)
                waited = timeout if timeout is not None else self._settings.timeout_s
                if partial:
                    raise IncompleteReply(f"incomplete reply {partial!r}: no terminator {term!r} within {waited:.3g} s")
                raise LinkTimeout(f"no reply within {waited:.3g} s")
            self._buf += self._read_some(remaining)

    def read_line(self, timeout: float | None = None) -> str:
        """One reply line, decoded and stripped of the read terminator and spaces."""
        raw = self.read_until(None, timeout)
        try:
            text = raw.decode(self._settings.encoding).strip()
        except UnicodeDecodeError as exc:
            raise GarbledReply(f"garbled reply {raw!r} (not {self._settings.encoding} text)") from exc
        if any(ord(c) < 32 and c != "\t" for c in text) or "\x7f" in text:
            raise GarbledReply(f"garbled reply {raw!r} (control characters)")
        return text

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout if timeout is not None else self._settings.timeout_s)
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"expected {n} bytes, got {len(self._buf)} in time")
            self._buf += self._read_some(remaining)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def discard_input(self) -> bytes:
        """Drop stale bytes (late replies to a timed-out request) and return them."""
        stale = bytes(self._buf)
        self._buf.clear()
        try:
            waiting = self._ser.in_waiting
            if waiting:
                stale += self._ser.read(waiting)
        except (serial.SerialException, OSError) as exc:
            raise LinkDown(f"port lost: {exc}") from exc
        return stale

    def check_open(self) -> None:
        """Raise :class:`LinkDown` if the port is gone, without waiting.

        Bytes that arrived unasked are kept for the next request to drop. An idle link calls
        this so that a connection the far end closed (a terminal server's idle time-out or
        "alive check", a server restarted) is noticed and re-made before the next request
        needs it, and the link is not shown as connected on a dead socket."""
        try:
            waiting = self._ser.in_waiting
            if waiting:
                self._buf += self._ser.read(waiting)
                del self._buf[:-4096]  # an instrument that chatters unasked does not fill memory
        except (serial.SerialException, OSError) as exc:
            raise LinkDown(f"port lost while idle: {exc}") from exc

    def query(self, command: str, timeout: float | None = None) -> str:
        """Write a command, read one reply line."""
        self.discard_input()
        self.write(command)
        return self.read_line(timeout)


@dataclass(order=True)
class _Request:
    priority: int
    seq: int
    fn: Callable[[Port], Any] = field(compare=False)
    idempotent: bool = field(compare=False, default=False)
    future: Future = field(compare=False, default_factory=Future)
    description: str = field(compare=False, default="")


HealthListener = Callable[[LinkHealth], None]
ConnectHook = Callable[[Port], None]


class SerialLink:
    """The worker thread that owns one port. See the module docstring."""

    def __init__(self, settings: LinkSettings, *, name: str | None = None, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self.name = name or settings.url
        self.log = logger or log
        self.health = LinkHealth()
        self._queue: queue.PriorityQueue[_Request] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._ser: serial.SerialBase | None = None
        self._port: Port | None = None
        self._write_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._connect_hooks: list[ConnectHook] = []
        self._health_listeners: list[HealthListener] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._consecutive_timeouts = 0
        self._late_replies_owed = 0  # requests that timed out whose replies may still come
        # False for a protocol whose replies say whom they answer (the ELL14's address): its user
        # routes late replies itself (deviceservers/Ell14/bus.py) instead of the link dropping them
        self.drop_late_replies = True
        self._ever_connected = False

    # ------------------------------------------------------------------ lifecycle
    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Run ``hook(port)`` after every (re)connection, before other requests. It must raise
        if the instrument is not the one expected or does not answer."""
        with self._state_lock:
            self._connect_hooks.append(hook)
            if self.connected:
                # Joining an already open shared link: run the hook as a normal request.
                self.submit(hook, idempotent=True, description="connect hook")

    def remove_connect_hook(self, hook: ConnectHook) -> None:
        with self._state_lock:
            if hook in self._connect_hooks:
                self._connect_hooks.remove(hook)

    def add_health_listener(self, listener: HealthListener) -> Callable[[], None]:
        with self._state_lock:
            self._health_listeners.append(listener)

        def remove() -> None:
            with self._state_lock:
                if listener in self._health_listeners:
                    self._health_listeners.remove(listener)

        return remove

    def remove_health_listener(self, listener: HealthListener) -> None:
        with self._state_lock:
            if listener in self._health_listeners:
                self._health_listeners.remove(listener)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"link {self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker, fail what is queued, close the port."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        self._close_port("link closed")
        self._fail_pending(LinkDown(f"{self.name}: link closed"))

    def reconnect(self) -> None:
        """Drop the port and reconnect at once (the device's Init)."""
        self.submit(lambda port: self._mark_down("reconnect requested"), description="reconnect")
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self.health.connected

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        fn: Callable[[Port], T],
        *,
        idempotent: bool = False,
        priority: bool = False,
        description: str = "",
    ) -> Future[T]:
        """Queue ``fn(port)`` to run in the worker thread; returns a Future."""
        req = _Request(0 if priority else 1, next(self._seq), fn, idempotent, Future(), description)
        if self._stop.is_set():
            req.future.set_exception(LinkDown(f"{self.name}: link closed"))
            return req.future
        if not self.connected:
            req.future.set_exception(LinkDown(f"{self.name} is not connected: {self.health.down_reason}"))
            return req.future
        self._queue.put(req)
        return req.future

    def run(
        self,
        fn: Callable[[Port], T],
        *,
        idempotent: bool = False,
        priority: bool = False,
        timeout: float | None = None,
        description: str = "",
    ) -> T:
        """Run ``fn(port)`` in the worker thread and wait for its result."""
        if self._thread is threading.current_thread():
            assert self._port is not None
            return fn(self._port)  # called from a request or hook: already exclusive
        fut = self.submit(fn, idempotent=idempotent, priority=priority, description=description)
        budget = timeout if timeout is not None else self._request_budget(idempotent)
        try:
            return fut.result(budget)
        except TimeoutError as exc:
            fut.cancel()
            raise LinkTimeout(f"{self.name}: {description or 'request'} not done within {budget:.1f} s") from exc

    def query(self, command: str, *, idempotent: bool = True, timeout: float | None = None) -> str:
        """Write ``command`` and return the reply line."""
        return self.run(lambda port: port.query(command, timeout), idempotent=idempotent, description=command)

    def send(self, command: str, *, priority: bool = False) -> None:
        """Write ``command``; no reply expected."""
        self.run(lambda port: port.write(command), priority=priority, description=command)

    def send_urgent(self, command: str | bytes, *, terminate: bool = True) -> None:
        """Write at once from the caller's thread, bypassing the queue (Stop, Abort).

        The worker may be waiting for a reply meanwhile; writes never interleave because both
        paths take the write lock.
        """
        if isinstance(command, str):
            command = command.encode(self.settings.encoding)
        if terminate:
            command += self.settings.write_terminator
        if self._ser is None:
            raise LinkDown(f"{self.name} is not connected: {self.health.down_reason}")
        self._write_raw(command)

    def _request_budget(self, idempotent: bool) -> float:
        tries = 1 + (self.settings.retries if idempotent else 0)
        waiting = max(1, self._queue.qsize() + 1)
        return max(5.0, self.settings.timeout_s * tries * 2 * waiting + 2.0)

    # ------------------------------------------------------------------ worker
    def _write_raw(self, data: bytes) -> None:
        with self._write_lock:
            ser = self._ser
            if ser is None:
                raise LinkDown(f"{self.name} is not connected: {self.health.down_reason}")
            try:
                ser.write(data)
                ser.flush()
            except (serial.SerialException, OSError) as exc:
                raise LinkDown(f"port lost while writing: {exc}") from exc
            self.health.bytes_out += len(data)

    def _run(self) -> None:
        backoff = self.settings.reconnect_min_s
        while not self._stop.is_set():
            if not self.connected:
                if self._try_connect():
                    backoff = self.settings.reconnect_min_s
                else:
                    self._fail_pending(LinkDown(f"{self.name} is not connected: {self.health.down_reason}"))
                    self._wake.wait(backoff)
                    self._wake.clear()
                    backoff = min(backoff * 2, self.settings.reconnect_max_s)
                continue
            try:
                req = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._check_idle_port()
                continue
            if req.future.cancelled() or not req.future.set_running_or_notify_cancel():
                continue
            self._execute(req)

    def _check_idle_port(self) -> None:
        if self._port is None or self._late_replies_owed:
            return  # late replies are read (and dropped) by the next request
        try:
            self._port.check_open()
        except LinkDown as exc:
            self._record_error(str(exc))
            self._mark_down(str(exc))

    def _call(self, req: _Request) -> Any:
        """Run one attempt of ``req`` on the open port.

        A connection found closed before any byte of the request was written (the far end
        closed it since the last request) is re-made once and the request sent on the new one:
        the instrument never saw it, so this is safe for requests that move things too."""
        sent_before = self.health.bytes_out
        try:
            if self._port is None:
                raise LinkDown(f"{self.name} is not connected: {self.health.down_reason}")
            if self._late_replies_owed:
                self._drop_late_replies(self._port)
            return req.fn(self._port)
        except LinkDown as exc:
            if self._port is None or self.health.bytes_out != sent_before:
                raise
            self.log.warning("%s: connection found closed before %s was sent (%s): reconnecting", self.name,
                             req.description or "a request", exc)
            self._close_port(str(exc))
            self._set_down(str(exc))  # listeners see the loss (values invalid) until it is re-made
            if not self._try_connect():
                raise LinkDown(f"{self.name} is not connected: {self.health.down_reason}") from exc
            return req.fn(self._port)

    def _execute(self, req: _Request) -> None:
        attempts = 1 + (self.settings.retries if req.idempotent else 0)
        self.health.requests += 1
        for attempt in range(attempts):
            try:
                result = self._call(req)
            except LinkDown as exc:
                self._record_error(str(exc))
                self._mark_down(str(exc))
                req.future.set_exception(exc)
                return
            except (LinkTimeout, ProtocolError) as exc:
                self._record_error(f"{req.description or 'request'}: {exc}")
                if isinstance(exc, LinkTimeout):
                    self.health.timeouts += 1
                    self._consecutive_timeouts += 1
                    self._late_replies_owed += self.drop_late_replies
                    if self._consecutive_timeouts >= self.settings.timeouts_before_down:
                        reason = f"instrument stopped answering ({self._consecutive_timeouts} time-outs in a row)"
                        self._mark_down(reason)
                        req.future.set_exception(LinkDown(f"{self.name}: {reason}"))
                        return
                if attempt + 1 < attempts:
                    self.health.retries += 1
                    time.sleep(self.settings.retry_backoff_s * (2**attempt))
                    continue
                req.future.set_exception(exc)
                return
            except BaseException as exc:  # instrument errors and bugs go to the caller
                if isinstance(exc, InstrumentError):
                    self._record_error(str(exc))
                req.future.set_exception(exc)
                return
            else:
                self._consecutive_timeouts = 0
                req.future.set_result(result)
                return

    def _drop_late_replies(self, port: Port) -> None:
        """Before the next request after a time-out: wait (up to one more time-out) for the
        replies of the requests that timed out, and drop them.

        Without this, a reply that comes after its time-out is read by the next request as its
        own, and every reply after it is one request late (a read-back of the Mai Tai's watchdog
        got the previous read-back: "the laser ignored TIMer:WATChdog", DISABLE with the laser in
        REMOTE). A serial line never reorders replies, so once as many lines as requests timed
        out have come, the line is in step again; a reply later than twice the time-out is lost."""
        owed, dropped = self._late_replies_owed, []
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            while self._late_replies_owed and time.monotonic() < deadline:
                dropped.append(port.read_until(None, max(0.001, deadline - time.monotonic())))
                self._late_replies_owed -= 1
        except LinkTimeout:
            pass  # not all came: the rest are taken as lost
        finally:
            self._late_replies_owed = 0
        stale = port.discard_input()
        if dropped or stale:
            self.log.info("%s: dropped %d late repl%s of %d timed-out request(s): %r", self.name, len(dropped),
                          "y" if len(dropped) == 1 else "ies", owed, dropped + ([stale] if stale else []))

    def _record_error(self, message: str) -> None:
        self.health.error_count += 1
        self.health.last_error = f"{time.strftime('%H:%M:%S')} {message}"
        self.log.warning("%s: %s", self.name, message)

    def _try_connect(self) -> bool:
        s = self.settings
        try:
            ser = serial.serial_for_url(
                s.url,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                rtscts=s.flow_control == "rtscts",
                xonxoff=s.flow_control == "xonxoff",
                timeout=s.timeout_s,
                write_timeout=max(1.0, s.timeout_s),
                exclusive=True if s.url.startswith("/") else None,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._set_down(f"cannot open {s.url}: {exc}")
            return False
        _disable_nagle(ser)
        with self._write_lock:
            self._ser = ser
            self._port = Port(ser, s, self)
        try:
            self._port.discard_input()
            ran: list[ConnectHook] = []
            while True:
                # A device may join while the hooks run: loop until every hook has run, and
                # declare the link up under the lock add_connect_hook takes, so a hook added
                # now is either run here or submitted by add_connect_hook, never forgotten.
                with self._state_lock:
                    pending = [h for h in self._connect_hooks if h not in ran]
                    if not pending:
                        self.health.connected = True
                        break
                for hook in pending:
                    ran.append(hook)
                    hook(self._port)
        except Exception as exc:  # noqa: BLE001 - any failure means: not the instrument we want
            self._close_port(f"connected to {s.url} but the instrument did not answer as expected: {exc}")
            self._set_down(f"connected to {s.url} but the instrument did not answer as expected: {exc}")
            return False
        self._consecutive_timeouts = 0
        self._late_replies_owed = 0  # the connection hooks (identify...) found the line in step
        if self._ever_connected:
            self.health.reconnects += 1
        self._ever_connected = True
        self.health.ever_connected = True
        self.health.down_reason = ""
        self.health.since = time.time()
        self.log.info("%s: connected", self.name)
        self._notify()
        return True

    def _mark_down(self, reason: str) -> None:
        self._close_port(reason)
        self._set_down(reason)
        self._fail_pending(LinkDown(f"{self.name} is not connected: {reason}"))

    def _set_down(self, reason: str) -> None:
        if not self._ever_connected:
            self.health.connect_failures += 1
        changed = self.health.connected or self.health.down_reason != reason or self.health.connect_failures == 1
        self.health.connected = False
        self.health.down_reason = reason
        if changed:
            self.health.last_error = f"{time.strftime('%H:%M:%S')} {reason}"
            self.log.warning("%s: link down: %s", self.name, reason)
            self._notify()

    def _close_port(self, reason: str) -> None:
        with self._write_lock:
            ser, self._ser, self._port = self._ser, None, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001
                pass

    def _fail_pending(self, exc: Exception) -> None:
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                return
            if not req.future.done():
                req.future.set_exception(exc)

    def _notify(self) -> None:
        with self._state_lock:
            listeners = list(self._health_listeners)
        for listener in listeners:
            try:
                listener(self.health)
            except Exception:  # noqa: BLE001
                self.log.exception("health listener failed")


def _disable_nagle(ser: serial.SerialBase) -> None:
    """TCP_NODELAY on socket:// and rfc2217:// ports (terminal servers).

    pyserial leaves Nagle's algorithm on: a short command written while an earlier short query
    is still unacknowledged waits until the instrument's (delayed) reply carries the ACK. On the
    ESP300 that held a Stop or a move back by a whole reply time (4-5 ms, up to the 40 ms
    delayed-ACK timer), which is exactly what the urgent lane exists to avoid.
    """
    import socket

    sock = getattr(ser, "_socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a Unix socket): nothing to disable
            pass


# ---------------------------------------------------------------------- shared links
_links: Shared[SerialLink] = Shared()


def acquire_link(
    settings: LinkSettings,
    *,
    logger: logging.Logger | None = None,
    connect_hook: ConnectHook | None = None,
    health_listener: HealthListener | None = None,
) -> SerialLink:
    """Return the process's link for ``settings.url``, creating and starting it if needed.

    Devices on one controller or bus share one link (the port can be opened only once).
    Every ``acquire_link`` must be paired with :func:`release_link`. ``connect_hook`` and
    ``health_listener`` are registered before a new link starts, so its first connection runs the
    hook (a hook added afterwards could find the link already up and run as a plain request).
    """

    def join(link: SerialLink) -> None:
        if link.settings != settings:
            diff = [
                f"{k}={getattr(settings, k)!r} (link has {getattr(link.settings, k)!r})"
                for k in settings.__dataclass_fields__
                if getattr(settings, k) != getattr(link.settings, k)
            ]
            raise ValueError(f"{settings.url} is already open with other settings: {', '.join(diff)}")
        if health_listener is not None:
            link.add_health_listener(health_listener)
        if connect_hook is not None:
            link.add_connect_hook(connect_hook)

    link, created = _links.acquire(settings.url, lambda: SerialLink(settings, logger=logger), join)
    if created:
        link.start()
    return link


def release_link(link: SerialLink) -> None:
    if _links.release(link.settings.url, link):
        link.close()


def wait_connected(link: SerialLink, timeout: float) -> bool:
    """Wait (on the health transition, not by polling) until the link is up."""
    ev = threading.Event()
    remove = link.add_health_listener(lambda h: ev.set() if h.connected else None)
    try:
        return link.connected or ev.wait(timeout)
    finally:
        remove()
