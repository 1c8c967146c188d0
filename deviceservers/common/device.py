"""The base Tango device: Parameters become attributes, changes become events.

A concrete device (``Newport1830C``, ``Esp300``...) only says which component to build and adds
its commands. Everything else is here, once:

* the serial properties every instrument has (``SerialURL``, ``BaudRate``, ``FlowControl``,
  ``TimeoutS``, ``PollPeriodMs``) with per-class defaults (``DEFAULT_BAUD_RATE``...);
* one dynamic attribute per Parameter, with type, unit, format, limits, description, enum labels
  and access taken from the Parameter;
* change events pushed whenever a Parameter changes, whatever changed it; archive events with
  detection (``archive_rel_change``/``archive_abs_change``/``archive_period`` in the attribute
  configuration, so an HDB++ archiver stores real changes, not every noisy poll, and Jive can
  tune them);
* change events for State, Status and the health attributes, so no client falls back to polling;
* State/Status derived by the component (FAULT while the link is down, back by itself);
* reads served from the Parameter cache: a Tango read never waits on the serial line;
* health attributes ``CommunicationOk``, ``ErrorCount``, ``LastError``;
* Python logging forwarded to the Tango log streams;
* errors turned into DevFailed with a reason a client can switch on and a message a person can
  act on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import tango
from tango import AttrQuality, AttrWriteType, DevState
from tango.server import Device, attribute, device_property

from . import fault_log
from .capabilities import ParameterComponent
from .component import Component, DeviceState
from .events import EventPusher
from .parameter import Parameter, ParameterError, Quality, Reading
from .serial_link import InstrumentError, LinkDown, LinkError, LinkSettings, LinkTimeout
from .stack_dump import enable_stack_dumps

F = TypeVar("F", bound=Callable[..., Any])

_QUALITY = {
    Quality.VALID: AttrQuality.ATTR_VALID,
    Quality.INVALID: AttrQuality.ATTR_INVALID,
    Quality.ALARM: AttrQuality.ATTR_ALARM,
    Quality.CHANGING: AttrQuality.ATTR_CHANGING,
    Quality.WARNING: AttrQuality.ATTR_WARNING,
}

_DEFAULTS: dict[type, Any] = {float: 0.0, int: 0, bool: False, str: ""}

#: health attributes with change events, pushed by the device's health watch when they change
HEALTH_ATTRIBUTES = ("CommunicationOk", "ErrorCount", "LastError")
HEALTH_WATCH_S = 0.5

#: archive-event criteria of a scalar numeric attribute without its own (Tango attribute
#: properties, as strings): a float archives on a 1 % change, an integer on any step, and every
#: numeric attribute at least once per ``archive_period`` while it is pushed (an archiver's
#: keep-alive). The database's values, set in Jive or by HDB++'s configurator, override these.
ARCHIVE_PERIOD_MS = "60000"
ARCHIVE_DEFAULTS: dict[type, dict[str, str]] = {
    float: {"archive_rel_change": "1", "archive_period": ARCHIVE_PERIOD_MS},
    int: {"archive_abs_change": "1", "archive_period": ARCHIVE_PERIOD_MS},
}
def archive_criteria(p: Parameter[Any]) -> dict[str, str] | None:
    """The archive-event criteria of ``p``'s attribute, or None when it has no archive events.

    A Parameter declares its own where its reading is noisy (``archive_abs_change``,
    ``archive_rel_change``, ``archive_period``: the 1830-C's Power, the camera's Temperature);
    other numeric scalars get the type's default. Booleans, strings and enums archive on every
    change (nothing to tune); arrays (images, traces) are not for an archiver and have no archive
    events. They become the attribute's configuration, which Jive and HDB++'s configurator show
    and may change (the database's values then win).
    """
    if p.shape is not None:
        return None
    if p.choices is not None or p.dtype not in ARCHIVE_DEFAULTS:
        return {}
    own = {key: str(getattr(p, key)) for key in ("archive_abs_change", "archive_rel_change", "archive_period")
           if getattr(p, key) is not None}
    if own:
        return {"archive_period": ARCHIVE_PERIOD_MS} | own
    return dict(ARCHIVE_DEFAULTS[p.dtype])


def raise_devfailed(exc: BaseException, origin: str) -> None:
    """Re-raise ``exc`` as a DevFailed whose reason says what kind of failure it was."""
    if isinstance(exc, tango.DevFailed):
        raise exc
    if isinstance(exc, ParameterError):
        reason = "ValueRefused"
    elif isinstance(exc, LinkDown):
        reason = "CommunicationLost"
    elif isinstance(exc, LinkTimeout):
        reason = "CommunicationTimeout"
    elif isinstance(exc, LinkError):
        reason = "CommunicationFailed"
    elif isinstance(exc, InstrumentError):
        reason = "InstrumentRefused"
    elif isinstance(exc, ValueError | TypeError):
        reason = "ValueRefused"
    elif isinstance(exc, RuntimeError):
        reason = "NotAllowed"
    else:
        reason = "UnexpectedError"
    tango.Except.throw_exception(reason, str(exc) or type(exc).__name__, origin)


def tango_errors(fn: F) -> F:
    """Decorator for commands: component exceptions become clear DevFailed errors."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            fault_log.refused(self, fn.__name__, exc)  # the server's fault history
            raise_devfailed(exc, f"{type(self).__name__}.{fn.__name__}")

    return wrapper  # type: ignore[return-value]


class TangoLogHandler(logging.Handler):
    """Sends Python log records of a component to its device's Tango log streams."""

    def __init__(self, device: Device) -> None:
        super().__init__()
        self._device = device

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            dev = self._device
            if record.levelno >= logging.ERROR:
                dev.error_stream(msg)
            elif record.levelno >= logging.WARNING:
                dev.warn_stream(msg)
            elif record.levelno >= logging.INFO:
                dev.info_stream(msg)
            else:
                dev.debug_stream(msg)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


def _tango_type(p: Parameter[Any]) -> Any:
    if p.choices is not None:
        return tango.CmdArgType.DevEnum
    if p.shape is not None:
        return p.dtype  # a numpy dtype such as np.uint16
    if p.int64:
        return np.int64
    return {float: float, int: np.int32, bool: bool, str: str}[p.dtype]


def _database() -> tango.Database | None:
    """The database this server runs with (a file database under DeviceTestContext), or None."""
    try:
        return tango.Util.instance().get_database()
    except (tango.DevFailed, RuntimeError):
        return None


def _parse_memorized(p: Parameter[Any], text: str) -> Any:
    """A memorized value (text in the database) as the Parameter's type."""
    if p.dtype is bool:
        if text.strip().lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"memorized value {text!r} is not true/false")
        return text.strip().lower() in ("true", "1")
    if p.dtype is int:
        return int(float(text))
    if p.dtype is float:
        return float(text)
    return text


class ParameterDevice(Device):
    """Base of every device whose settings are the Parameters of a component, serial or not.

    It maps the component's Parameters to attributes and events and its state to State/Status.
    Subclasses implement :meth:`build_component`, returning a
    :class:`~deviceservers.common.capabilities.ParameterComponent` (a serial :class:`Component`,
    or e.g. the camera's component which has no serial link).
    """

    component: ParameterComponent

    @classmethod
    def run_server(cls, args=None, **kwargs):  # noqa: ANN001, ANN206 - pytango's signature
        """pytango's ``run_server``, with ``kill -USR1`` dumping the server's stacks to its log."""
        enable_stack_dumps()
        return super().run_server(args=args, **kwargs)

    # ------------------------------------------------------------------ to implement
    def build_component(self) -> ParameterComponent:
        """Build the component from the device properties; ValueError/TypeError = bad configuration."""
        raise TypeError(f"{type(self).__name__} must override build_component")  # pragma: no cover

    # ------------------------------------------------------------------ lifecycle
    def init_device(self) -> None:
        super().init_device()
        self._deleting = False
        self.set_state(DevState.INIT)
        self._unsubscribers: list[Callable[[], None]] = []
        self._log = logging.getLogger(f"tangodaq.{self.get_name()}")
        self._log.setLevel(logging.DEBUG)
        if not any(isinstance(h, TangoLogHandler) for h in self._log.handlers):
            self._log.addHandler(TangoLogHandler(self))
        for name in ("State", "Status", *HEALTH_ATTRIBUTES):
            self.set_change_event(name, True, False)
        self._events = EventPusher(self.get_name(), self._log)
        self._health_pushed: tuple[bool, int, str] | None = None
        try:
            self.component = self.build_component()
        except (ValueError, TypeError) as exc:
            self.set_state(DevState.FAULT)
            self.set_status(f"Bad configuration: {exc}. Fix the device property and run Init.")
            self.component = None
            return
        for p in self.component.parameters:
            self._unsubscribers.append(p.subscribe(self._on_parameter_change))
        self.component.add_state_listener(self._on_state_change)
        self._on_state_change(self.component.state, self.component.status)
        self.component.start()
        self._events.watch(self._push_health, HEALTH_WATCH_S)
        self._restore_memorized()

    def delete_device(self) -> None:
        # No more pushes from the component's threads: this thread holds the device lock while
        # the component stops (and makes the instrument safe), so a push from the poll thread
        # would block on that lock and the join of the poll thread would wait for it (~3 s).
        self._deleting = True
        if getattr(self, "_events", None) is not None:
            self._events.close()
        for unsub in getattr(self, "_unsubscribers", []):
            unsub()
        self._unsubscribers = []
        if getattr(self, "component", None) is not None:
            self.component.remove_state_listener(self._on_state_change)
            self.component.stop()
        super().delete_device()

    # ------------------------------------------------------------------ attributes from Parameters
    def initialize_dynamic_attributes(self) -> None:
        if self.component is None:
            return
        for p in self.component.parameters:
            self._add_parameter_attribute(p)

    def _add_parameter_attribute(self, p: Parameter[Any]) -> None:
        kwargs: dict[str, Any] = {
            "name": p.name,
            "dtype": _tango_type(p),
            "access": AttrWriteType.READ_WRITE if p.writable else AttrWriteType.READ,
            "doc": p.description,
            "fget": self._read_parameter,
        }
        if p.unit:
            kwargs["unit"] = p.unit
        if p.fmt:
            kwargs["format"] = p.fmt
        if p.choices is not None:
            kwargs["enum_labels"] = list(p.choices)
        elif p.dtype in (int, float) and p.shape is None:
            if p.minimum is not None:
                kwargs["min_value"] = p.minimum
            if p.maximum is not None:
                kwargs["max_value"] = p.maximum
        if p.shape is not None:
            if len(p.shape) == 1:
                kwargs["dformat"] = tango.AttrDataFormat.SPECTRUM
                kwargs["max_dim_x"] = p.shape[0]
            else:
                kwargs["dformat"] = tango.AttrDataFormat.IMAGE
                kwargs["max_dim_x"], kwargs["max_dim_y"] = p.shape[1], p.shape[0]
        if p.writable:
            kwargs["fset"] = self._write_parameter
            if p.memorized:
                # Tango keeps the client's last write in the database (attribute property
                # __value); _restore_memorized applies it at every start and Init.
                kwargs["memorized"] = True
        archive = archive_criteria(p)
        if archive:
            kwargs.update(archive)
        self.add_attribute(attribute(**kwargs))
        self.set_change_event(p.name, True, False)
        if archive is not None:
            # detection on: Tango passes an archive event only when the criteria are met
            self.set_archive_event(p.name, True, True)

    def _value_for_tango(self, p: Parameter[Any], value: Any) -> Any:
        if value is None:
            if p.shape is not None:
                return np.zeros((0,) * len(p.shape), dtype=p.dtype)
            return _DEFAULTS.get(p.dtype, 0)
        return value

    def _read_parameter(self, attr: tango.Attribute) -> Any:
        p = self.component.parameters[attr.get_name()]
        r = p.reading()
        if p.writable:
            setpoint = p.setpoint
            if setpoint is not None:
                # GUIs show the real set point (the last accepted one), never a refused write
                attr.set_write_value(setpoint)
        return self._value_for_tango(p, r.value), r.timestamp, _QUALITY[r.quality]

    def _write_parameter(self, attr: tango.WAttribute) -> None:
        p = self.component.parameters[attr.get_name()]
        value = attr.get_write_value()
        if isinstance(value, np.generic):
            value = value.item()
        try:
            self.write_parameter(p, value)
        except Exception as exc:  # noqa: BLE001
            fault_log.refused(self, f"write {p.name}={value!r}", exc)  # the server's fault history
            raise_devfailed(exc, f"{type(self).__name__}.write_{p.name}")
        if p.memorized:
            self._not_resumed(p.name, None)  # a client decided again: the restart is behind us

    # ------------------------------------------------------------------ memorized set points
    def remember(self, name: str, value: Any) -> None:
        """Record ``value`` as the memorized set point of attribute ``name``, as a client write
        would: for producers started by a command (StartAcquisition), so a restart resumes them."""
        db = _database()
        if db is None:
            return
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            db.put_device_attribute_property(self.get_name(), {name: {"__value": [text]}})
        except tango.DevFailed as exc:
            self._log.warning("could not memorize %s = %s: %s", name, text, exc.args[0].desc)

    def _restore_memorized(self) -> None:
        """Apply every memorized Parameter's last set point (start and Init). A producer that was
        running before the restart runs again; if it cannot, the device goes ALARM and says so."""
        memorized = [p for p in self.component.parameters if p.memorized and p.writable]
        db = _database() if memorized else None
        if db is None:
            return
        try:
            stored = db.get_device_attribute_property(self.get_name(), [p.name for p in memorized])
        except tango.DevFailed as exc:
            self._log.warning("memorized set points not read: %s", exc.args[0].desc)
            return
        for p in memorized:
            values = stored.get(p.name, {}).get("__value", [])
            if not values:
                continue
            text = values[0] if not isinstance(values, str) else values
            try:
                value = _parse_memorized(p, text)
                if value == p.value:
                    continue
                self.write_parameter(p, value)
            except Exception as exc:  # noqa: BLE001 - the device must start and say what failed
                self._not_resumed(p.name, f"{p.name} was {text} before the restart and could not be restored: {exc}. "
                                          f"Write {p.name} again")
                self._log.error("%s not restored after the restart: %s", p.name, exc)
            else:
                self._log.info("%s restored to %s after the restart (memorized)", p.name, text)

    def _not_resumed(self, name: str, message: str | None) -> None:
        mark = getattr(self.component, "set_not_resumed", None)
        if mark is not None:
            mark(name, message)

    def write_parameter(self, p: Parameter[Any], value: Any) -> None:
        """Hook for subclasses that must do more than ``p.set(value)`` on a write."""
        p.set(value)
        self.component.update_state()

    def _on_parameter_change(self, r: Reading[Any]) -> None:
        """Called in whatever thread changed the Parameter: queue the events, never block."""
        p = self.component.parameters[r.name]
        value = self._value_for_tango(p, r.value)
        quality = _QUALITY[r.quality]

        archived = p.shape is None

        def push() -> None:
            try:
                self.push_change_event(r.name, value, r.timestamp, quality)
                if archived:
                    self.push_archive_event(r.name, value, r.timestamp, quality)
            except tango.DevFailed as exc:  # attribute not created yet during start-up
                self._log.debug("event for %s not pushed: %s", r.name, exc.args[0].desc)

        self._events.submit(push)

    def _on_state_change(self, state: DeviceState, status: str) -> None:
        if getattr(self, "_deleting", False):
            return
        self.set_state(getattr(DevState, state.value))
        self.set_status(status)
        dev_state = getattr(DevState, state.value)

        def push() -> None:
            try:
                self.push_change_event("State", dev_state)
                self.push_change_event("Status", status)
            except tango.DevFailed:
                pass
            self._push_health()  # a state change usually comes with a health change

        self._events.submit(push)

    def _push_health(self) -> None:
        """Push change events for the health attributes that changed since the last push (run in
        the event thread: by the health watch and after each state change)."""
        component = getattr(self, "component", None)
        if component is None or getattr(self, "_deleting", False):
            return
        now = (bool(component.communication_ok), int(component.error_count), str(component.last_error))
        before, self._health_pushed = self._health_pushed, now
        for name, old, new in zip(HEALTH_ATTRIBUTES, before or (None,) * 3, now, strict=True):
            if old != new:
                try:
                    self.push_change_event(name, new)
                except tango.DevFailed as exc:
                    self._log.debug("event for %s not pushed: %s", name, exc.args[0].desc)

    # ------------------------------------------------------------------ state
    def dev_state(self) -> DevState:
        if self.component is None:
            return DevState.FAULT
        return getattr(DevState, self.component.state.value)

    def dev_status(self) -> str:
        if self.component is None:
            return self.get_status()
        return self.component.status

    # ------------------------------------------------------------------ health attributes
    @attribute(dtype=bool, doc="True while the link is up and the instrument answers")
    def CommunicationOk(self) -> bool:
        return self.component is not None and self.component.communication_ok

    @attribute(dtype=np.int32, doc="Communication and instrument errors since the server started")
    def ErrorCount(self) -> int:
        return 0 if self.component is None else self.component.error_count

    @attribute(dtype=str, doc="The last communication or instrument error, with its time")
    def LastError(self) -> str:
        return "" if self.component is None else self.component.last_error


class InstrumentDevice(ParameterDevice):
    """Base of the serial instrument devices. Subclasses implement :meth:`create_component`."""

    DEFAULT_BAUD_RATE: ClassVar[int] = 9600
    DEFAULT_FLOW_CONTROL: ClassVar[str] = "none"
    DEFAULT_TIMEOUT_S: ClassVar[float] = 1.0
    DEFAULT_POLL_PERIOD_MS: ClassVar[int] = 500
    WRITE_TERMINATOR: ClassVar[bytes] = b"\n"
    READ_TERMINATOR: ClassVar[bytes] = b"\n"

    SerialURL = device_property(
        dtype=str,
        default_value="",
        doc="Any pyserial URL: /dev/serial/by-id/..., socket://host:port, rfc2217://host:port, sim://<instrument>",
    )
    BaudRate = device_property(dtype=int, default_value=0, doc="Baud rate; 0 means the instrument's default")
    FlowControl = device_property(dtype=str, default_value="", doc="none, rtscts or xonxoff; empty means the instrument's default")
    TimeoutS = device_property(dtype=float, default_value=0.0, doc="Reply time-out in seconds; 0 means the instrument's default")
    PollPeriodMs = device_property(dtype=int, default_value=0, doc="Polling period in ms; 0 means the instrument's default")

    component: Component

    # ------------------------------------------------------------------ to implement
    def create_component(self, settings: LinkSettings, poll_period_s: float, logger: logging.Logger) -> Component:
        raise TypeError(f"{type(self).__name__} must override create_component")  # pragma: no cover

    # ------------------------------------------------------------------ settings
    def link_settings(self) -> LinkSettings:
        return LinkSettings(
            url=self.SerialURL,
            baudrate=self.BaudRate or self.DEFAULT_BAUD_RATE,
            flow_control=(self.FlowControl or self.DEFAULT_FLOW_CONTROL).lower(),
            timeout_s=self.TimeoutS or self.DEFAULT_TIMEOUT_S,
            write_terminator=self.WRITE_TERMINATOR,
            read_terminator=self.READ_TERMINATOR,
        )

    def build_component(self) -> Component:
        settings = self.link_settings()
        poll_s = (self.PollPeriodMs or self.DEFAULT_POLL_PERIOD_MS) / 1000.0
        return self.create_component(settings, poll_s, self._log)
