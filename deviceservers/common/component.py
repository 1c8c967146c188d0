"""Component manager: hardware access for one device, with no Tango in sight.

Modelled on ska-tango-base's component managers: the component owns the link (shared with the
other devices on the same port), the Parameters, a polling thread and the device state. The
Tango device only maps it to attributes, events and State/Status, so the same component can be
driven from a test, a script or another control system.

State is *derived*: subclasses implement :meth:`Component.evaluate_state` from the parameter
values, and the base class adds FAULT while the link is down. Nothing sets a state by hand, so
the state cannot drift from what the instrument reports.
"""

from __future__ import annotations

import abc
import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import fault_log
from .parameter import Parameter, ParameterSet, Quality
from .serial_link import (
    InstrumentError,
    LinkError,
    LinkHealth,
    LinkSettings,
    Port,
    SerialLink,
    acquire_link,
    release_link,
)


class DeviceState(enum.Enum):
    """The Tango states this suite uses, by the same names (no Tango import here)."""

    ON = "ON"
    OFF = "OFF"
    MOVING = "MOVING"
    RUNNING = "RUNNING"
    INIT = "INIT"
    ALARM = "ALARM"
    FAULT = "FAULT"
    DISABLE = "DISABLE"
    STANDBY = "STANDBY"
    UNKNOWN = "UNKNOWN"


StateListener = Callable[[DeviceState, str], None]


class StateReporter:
    """State and Status with listeners, for any component (serial or not, e.g. the camera).

    Subclasses derive (state, status) from what they know and hand it to :meth:`_set_state`;
    listeners (the Tango device) hear only real changes.
    """

    log: logging.Logger

    def __init__(self, state: DeviceState, status: str) -> None:
        self._state = state
        self._status = status
        self._derived = (state, status)
        self._state_lock = threading.RLock()
        self._state_listeners: list[StateListener] = []
        self._not_resumed: dict[str, str] = {}

    def set_not_resumed(self, name: str, message: str | None) -> None:
        """Say that setting ``name`` (a producer) did not come back after a restart (ALARM until
        a client writes it again), or, with None, that it is settled."""
        with self._state_lock:
            if message is None:
                if self._not_resumed.pop(name, None) is None:
                    return
            else:
                self._not_resumed[name] = message
            state, status = self._derived
        self._set_state(state, status)

    @property
    def state(self) -> DeviceState:
        with self._state_lock:
            return self._state

    @property
    def status(self) -> str:
        with self._state_lock:
            return self._status

    def add_state_listener(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop telling ``listener`` (a device re-initialised that keeps its component)."""
        if listener in self._state_listeners:
            self._state_listeners.remove(listener)

    def _set_state(self, state: DeviceState, status: str) -> None:
        with self._state_lock:
            self._derived = (state, status)
            if self._not_resumed and state not in (DeviceState.FAULT, DeviceState.INIT):
                # A producer that ran before the restart and does not now is an alarm, whatever
                # else the device is doing: data that someone expects is not being taken.
                state = DeviceState.ALARM
                status = " ".join(f"{m}." for m in self._not_resumed.values()) + f" {status}"
            if (state, status) == (self._state, self._status):
                return
            old_state, self._state, self._status = self._state, state, status
        fault_log.state_changed(getattr(self, "log", None), old_state, state, status)  # the fault history
        for listener in list(self._state_listeners):
            try:
                listener(state, status)
            except Exception:  # noqa: BLE001 - one bad listener must not silence the others
                self.log.exception("state listener failed")


class ComponentBase(StateReporter, abc.ABC):
    """What every component has, whatever reaches its hardware (a serial link, a camera SDK):
    Parameters, health counters, one monitor thread, and a state derived from what it knows.

    Subclasses declare Parameters in ``__init__`` (through :meth:`add`) and implement:

    * :meth:`poll_once` — one pass of the monitor thread; returns the seconds until the next pass
      (None: ``poll_period_s``); :meth:`request_poll` makes the next pass come at once;
    * :meth:`evaluate_state` — (state, status) from what the component knows;
    * ``communication_ok`` — whether the hardware answers now.

    :meth:`start` starts the monitor thread and :meth:`stop` ends it; a subclass that opens
    something (a link, a camera) does so around them. An exception of a pass is counted and
    logged, and the monitor goes on: it must survive anything the hardware does.
    """

    #: name used in messages ("power meter", "ESP300 axis 1")
    label = "instrument"

    def __init__(self, status: str, poll_period_s: float, logger: logging.Logger | None = None) -> None:
        super().__init__(DeviceState.INIT, status)
        self.log = logger or logging.getLogger(f"tangodaq.{type(self).__name__}")
        self.parameters = ParameterSet()
        self.poll_period_s = poll_period_s
        self._stop = threading.Event()
        self._poll_now = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._error_count = 0
        self._last_error = ""

    # ------------------------------------------------------------------ declaration
    def add(self, parameter: Parameter[Any]) -> Parameter[Any]:
        return self.parameters.add(parameter)

    def __getitem__(self, name: str) -> Parameter[Any]:
        return self.parameters[name]

    # ------------------------------------------------------------------ monitor thread
    def start(self) -> None:
        """Start the monitor thread. Returns at once."""
        self._stop.clear()
        self._poll_thread = threading.Thread(target=self._poll_loop, name=f"poll {self.label}", daemon=True)
        self._poll_thread.start()

    def stop(self) -> None:
        """End the monitor thread (its pass in progress finishes first)."""
        self._stop.set()
        self._poll_now.set()
        if self._poll_thread is not None and self._poll_thread is not threading.current_thread():
            self._poll_thread.join(5)

    @abc.abstractmethod
    def poll_once(self) -> float | None:
        """One pass of the monitor thread; the seconds until the next (None: ``poll_period_s``)."""

    def request_poll(self) -> None:
        """The next pass now instead of at its time (after a move starts, a frame arrived)."""
        self._poll_now.set()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the monitor must survive anything
                self.record_error(f"monitoring failed: {exc!r}")
                self.log.exception("%s: monitor pass failed", self.label)
                wait = None
            self._poll_now.wait(self.poll_period_s if wait is None else max(0.0, wait))
            self._poll_now.clear()

    # ------------------------------------------------------------------ health
    @property
    @abc.abstractmethod
    def communication_ok(self) -> bool:
        """Whether the component reaches its hardware (or its library) now."""

    @property
    def error_count(self) -> int:
        return self._error_count

    @property
    def last_error(self) -> str:
        return self._last_error

    def record_error(self, message: str) -> None:
        """Count an error (an instrument's error code, a failed read) and log it."""
        self._error_count += 1
        self._last_error = f"{time.strftime('%H:%M:%S')} {message}"
        self.log.warning("%s: %s", self.label, message)

    # ------------------------------------------------------------------ state
    def evaluate_state(self) -> tuple[DeviceState, str]:
        return DeviceState.ON, f"{self.label} is connected and idle"

    def update_state(self) -> None:
        """Derive the state again now (after a command or a published value)."""
        try:
            state, status = self.evaluate_state()
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the monitor
            self.log.exception("evaluate_state failed")
            state, status = DeviceState.UNKNOWN, f"cannot evaluate the state: {exc}"
        self._set_state(state, status)


class Component(ComponentBase):
    """Base of every serial instrument's component.

    Subclasses declare Parameters in ``__init__`` (through :meth:`add`), and override:

    * :meth:`on_connect` — runs in the link thread after every (re)connection (echo off,
      identify, read the instrument's real state); must raise if the instrument is wrong;
    * :meth:`poll` — one polling round (default: refresh every polled Parameter);
    * :meth:`evaluate_state` — (state, status) from the parameters;
    * :meth:`on_shutdown` — make the instrument safe when the server stops.
    """

    def __init__(self, settings: LinkSettings, poll_period_s: float = 0.5, logger: logging.Logger | None = None) -> None:
        super().__init__(f"Connecting to {settings.url}", poll_period_s, logger)
        self.settings = settings
        self.link: SerialLink | None = None
        self._ready = False  # on_connect completed since the last link loss
        self._hook_error = ""  # why on_connect failed on a link that stayed open (joined a shared link)
        self.fast_poll_period_s = min(0.1, poll_period_s)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Acquire the (possibly shared) link and start polling. Returns at once."""
        # Hook and listener registered before a new link starts: its first connection runs the hook.
        self.link = acquire_link(
            self.settings, logger=self.log, connect_hook=self._connect_hook, health_listener=self._on_health
        )
        super().start()
        if not self.link.connected:
            self._refresh_state()

    def stop(self) -> None:
        """Make the instrument safe (if reachable), stop polling, release the link."""
        if self.link is not None and self.link.connected:
            try:
                self.on_shutdown()
            except Exception as exc:  # noqa: BLE001 - shutdown must go on
                self.log.error("%s: could not make the instrument safe at shutdown: %s", self.label, exc)
        super().stop()
        if self.link is not None:
            self.link.remove_connect_hook(self._connect_hook)
            self.link.remove_health_listener(self._on_health)
            release_link(self.link)
            self.link = None

    def reconnect(self) -> None:
        if self.link is not None:
            self.link.reconnect()

    # ------------------------------------------------------------------ hooks
    def on_connect(self, port: Port) -> None:
        """Called in the link thread after each connection. Default: nothing to do."""

    def poll(self) -> None:
        """One polling round in the poll thread (the reads themselves run in the link thread)."""
        for p in self.parameters:
            if p.polled:
                p.refresh()

    def on_shutdown(self) -> None:
        """Make the instrument safe before the link is released."""

    def is_busy(self) -> bool:
        """True while something moves or settles: the poll loop then polls faster."""
        return False

    # ------------------------------------------------------------------ link I/O helpers
    def run(self, fn: Callable[[Port], Any], *, idempotent: bool = False, priority: bool = False,
            description: str = "") -> Any:
        if self.link is None:
            raise LinkError(f"{self.label}: not started")
        return self.link.run(fn, idempotent=idempotent, priority=priority, description=description)

    def query(self, command: str, *, idempotent: bool = True) -> str:
        if self.link is None:
            raise LinkError(f"{self.label}: not started")
        return self.link.query(command, idempotent=idempotent)

    # ------------------------------------------------------------------ health
    @property
    def communication_ok(self) -> bool:
        return self.link is not None and self.link.connected and self._ready

    @property
    def error_count(self) -> int:
        """The link's errors and the instrument's (:meth:`record_error`)."""
        return (self.link.health.error_count if self.link else 0) + self._error_count

    @property
    def last_error(self) -> str:
        link_err = self.link.health.last_error if self.link else ""
        return self._last_error if self._last_error > link_err else link_err

    # ------------------------------------------------------------------ state
    def _refresh_state(self) -> None:
        link = self.link
        if link is not None and not link.health.ever_connected and not link.health.connect_failures:
            # The first connection is still under way: INIT, not a FAULT nobody can act on yet.
            state, status = DeviceState.INIT, f"Connecting to the {self.label} on {self.settings.url}"
        elif link is not None and link.connected and not self._ready and not self._hook_error:
            # Joined a shared link that is up: this device's own first exchange is under way.
            state, status = DeviceState.INIT, f"Connecting to the {self.label} on {self.settings.url}"
        elif link is None or not link.connected or not self._ready:
            reason = (link.health.down_reason if link is not None else "not started") or self._hook_error or "no answer yet"
            state = DeviceState.FAULT
            status = (
                f"No communication with the {self.label} on {self.settings.url}: {reason}. "
                "Check the cable, the power and the SerialURL property; reconnecting automatically."
            )
        else:
            super().update_state()  # the instrument's own state
            return
        self._set_state(state, status)

    def update_state(self) -> None:
        """Re-derive the state now (after a command or a published value): FAULT while the link
        is down, else the instrument's :meth:`evaluate_state`."""
        self._refresh_state()

    # ------------------------------------------------------------------ internals
    def _connect_hook(self, port: Port) -> None:
        """``on_connect`` at every (re)connection. When this component joined a link that was
        already open (another device on the bus, or the link connected before the hook was added)
        the hook runs as a plain request and a failure does not take the link down: the state is
        refreshed here (FAULT with the reason, never a silent INIT) and the poll loop retries."""
        self._ready = False
        try:
            self.on_connect(port)
        except Exception as exc:
            self._hook_error = str(exc) or type(exc).__name__
            self._refresh_state()
            raise
        self._hook_error = ""
        self._ready = True

    def _on_health(self, health: LinkHealth) -> None:
        if not health.connected:
            self._ready = False
            self.parameters.invalidate_all()
        else:
            self._poll_now.set()
        self._refresh_state()

    def poll_once(self) -> float:
        """One monitor pass: ask the connect hook again where it failed on an open link, else poll
        while the instrument is ready; faster while it is busy (moving, settling)."""
        if self.link is not None and self.link.connected and not self._ready and self._hook_error:
            try:  # the instrument did not answer the connect hook on an open link: ask again
                self.link.submit(self._connect_hook, idempotent=True, description="connect hook").result()
            except Exception as exc:  # noqa: BLE001 - reported through the state (see _connect_hook)
                self.log.debug("%s: connect hook failed again: %s", self.label, exc)
            else:
                self._refresh_state()
        elif self.link is not None and self.link.connected and self._ready:
            try:
                self.poll()
            except InstrumentError as exc:
                self.record_error(str(exc))
            except LinkError as exc:
                self.log.debug("%s: poll failed: %s", self.label, exc)
            except Exception as exc:  # noqa: BLE001 - polling must survive anything
                self.record_error(f"poll failed: {exc!r}")
                self.log.exception("poll failed")
            self._refresh_state()
        return self.fast_poll_period_s if self.is_busy() else self.poll_period_s


def publish_all(params: ParameterSet, values: dict[str, Any], quality: Quality = Quality.VALID) -> None:
    """Publish several readings at once (one reply that carries many values)."""
    for name, value in values.items():
        params[name].publish(value, quality)
