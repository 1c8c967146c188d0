"""Reactive instrument parameters.

A :class:`Parameter` is one instrument setting or reading: a typed value with a unit, limits or
enum choices, validation, an optional hardware writer and reader, and change listeners. Drivers
own Parameters and know nothing of Tango; the device layer turns each one into an attribute and
forwards every change as an event, whatever caused it (a client write, polling, the instrument).

Why values are committed only after the hardware write succeeds: a client that reads back a
setting must see what the instrument holds, never what somebody hoped it would hold.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Quality(enum.Enum):
    """Quality of a value, mirroring Tango's AttrQuality without importing Tango."""

    VALID = "VALID"
    INVALID = "INVALID"
    ALARM = "ALARM"
    CHANGING = "CHANGING"
    WARNING = "WARNING"


class ParameterError(ValueError):
    """A value was refused by validation (type, range, NaN, choice, read-only)."""


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A snapshot handed to listeners: value, wall-clock timestamp and quality."""

    name: str
    value: T | None
    timestamp: float
    quality: Quality


Listener = Callable[[Reading[Any]], None]


class Parameter(Generic[T]):
    """A typed observable value with validation and optional hardware access.

    ``dtype`` is one of ``float``, ``int``, ``bool``, ``str``; with ``choices`` the parameter is
    an enum whose value is the *index* into ``choices`` (as Tango DevEnum). Array parameters
    (``shape`` given) hold numpy arrays and skip scalar validation.
    """

    def __init__(
        self,
        name: str,
        dtype: type,
        *,
        unit: str = "",
        description: str = "",
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Sequence[str] | None = None,
        writable: bool = False,
        writer: Callable[[T], None] | None = None,
        reader: Callable[[], T] | None = None,
        validator: Callable[[T], None] | None = None,
        fmt: str | None = None,
        polled: bool = True,
        shape: tuple[int, ...] | None = None,
        initial: T | None = None,
        publish_on_write: bool = True,
        local: bool = False,
        memorized: bool = False,
        archive_abs_change: float | None = None,
        archive_rel_change: float | None = None,
        archive_period_ms: int | None = None,
        int64: bool = False,
    ) -> None:
        if choices is not None and dtype is not int:
            raise TypeError(f"{name}: an enum parameter holds an int index into its choices")
        if int64 and (dtype is not int or choices is not None):
            raise TypeError(f"{name}: int64 is for integer counters")
        self.name = name
        self.dtype = dtype
        # A counter that passes 2**31 in a day's work (bytes written): a 64-bit attribute.
        self.int64 = int64
        # When an archiver (HDB++) stores this reading: on a change of at least abs/rel (percent),
        # and at least every period while it changes; None = the Tango layer's default for the
        # type (deviceservers.common.device.archive_criteria). A noisy reading sets its own.
        self.archive_abs_change = archive_abs_change
        self.archive_rel_change = archive_rel_change
        self.archive_period = archive_period_ms
        self.unit = unit
        self.description = description
        self.choices: tuple[str, ...] | None = tuple(choices) if choices is not None else None
        self.writable = writable
        self.fmt = fmt
        self.polled = polled and reader is not None
        self.shape = shape
        self._minimum = minimum
        self._maximum = maximum
        self._writer = writer
        self._reader = reader
        self._validator = validator
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._value: T | None = initial
        self._timestamp = time.time()
        self._quality = Quality.VALID if initial is not None else Quality.INVALID
        self._setpoint: T | None = None
        # False for setpoint-style parameters (a stage position, a laser wavelength): a write
        # records the setpoint and commands the hardware, but the value shown stays the measured
        # one, published by polling; the target never masquerades as the actual value.
        self.publish_on_write = publish_on_write
        # The value lives in the server, not in the instrument (is the stream running?): a lost
        # link does not make it untrustworthy, so it is never invalidated with the others.
        self.local = local
        # The set point survives a server restart (a Tango memorized attribute, re-applied at
        # start): producers (a meter's stream, a camera's live mode) come back as they were.
        self.memorized = memorized

    # ----------------------------------------------------------------- description
    @property
    def minimum(self) -> float | None:
        return self._minimum

    @property
    def maximum(self) -> float | None:
        return self._maximum

    def set_limits(self, minimum: float | None, maximum: float | None) -> None:
        """Change the limits at run time (e.g. a laser reports its own tuning range)."""
        with self._lock:
            self._minimum, self._maximum = minimum, maximum

    @property
    def is_array(self) -> bool:
        return self.shape is not None

    # ----------------------------------------------------------------- state
    @property
    def value(self) -> T | None:
        with self._lock:
            return self._value

    @property
    def quality(self) -> Quality:
        with self._lock:
            return self._quality

    @property
    def timestamp(self) -> float:
        with self._lock:
            return self._timestamp

    @property
    def setpoint(self) -> T | None:
        """The last value a client asked for (may differ from ``value`` while it settles)."""
        with self._lock:
            return self._setpoint

    def reading(self) -> Reading[T]:
        with self._lock:
            return Reading(self.name, self._value, self._timestamp, self._quality)

    # ----------------------------------------------------------------- validation
    def validate(self, value: Any) -> T:
        """Return ``value`` coerced to the parameter's type, or raise :class:`ParameterError`."""
        if self.is_array:
            return value
        dtype = self.dtype
        if dtype is bool:
            if isinstance(value, bool):
                coerced: Any = value
            elif isinstance(value, int | float) and value in (0, 1):
                coerced = bool(value)
            else:
                raise ParameterError(f"{self.name}: expected true/false, got {value!r}")
        elif dtype is int:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ParameterError(f"{self.name}: expected an integer, got {value!r}")
            if isinstance(value, str) and self.choices is not None and value in self.choices:
                value = self.choices.index(value)
            try:
                coerced = int(value)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ParameterError(f"{self.name}: expected an integer, got {value!r}") from exc
            if isinstance(value, float) and value != coerced:
                raise ParameterError(f"{self.name}: expected an integer, got {value!r}")
        elif dtype is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                try:
                    value = float(value)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ParameterError(f"{self.name}: expected a number, got {_short(value)}") from exc
            try:
                coerced = float(value)
            except OverflowError as exc:  # an int too large for a double
                raise ParameterError(f"{self.name}: {_short(value)} is too large") from exc
            if not math.isfinite(coerced):
                raise ParameterError(f"{self.name}: {coerced} is not a finite number")
        elif dtype is str:
            if not isinstance(value, str):
                raise ParameterError(f"{self.name}: expected text, got {value!r}")
            coerced = value
        else:
            coerced = dtype(value)
        if self.choices is not None and not 0 <= coerced < len(self.choices):
            raise ParameterError(
                f"{self.name}: {coerced} is not one of {', '.join(f'{i}={c}' for i, c in enumerate(self.choices))}"
            )
        with self._lock:
            lo, hi = self._minimum, self._maximum
        unit = f" {self.unit}" if self.unit else ""
        if lo is not None and coerced < lo:
            raise ParameterError(f"{self.name}: {coerced}{unit} is below the minimum {lo}{unit}")
        if hi is not None and coerced > hi:
            raise ParameterError(f"{self.name}: {coerced}{unit} is above the maximum {hi}{unit}")
        if self._validator is not None:
            self._validator(coerced)
        return coerced

    # ----------------------------------------------------------------- writes and reads
    def set(self, value: Any) -> T:
        """A client write: validate, write to the hardware, then commit and notify.

        If the hardware write raises, nothing is committed and the error propagates.
        """
        if not self.writable:
            raise ParameterError(f"{self.name} is read-only")
        coerced = self.validate(value)
        with self._write_lock:
            with self._lock:
                previous = self._setpoint
                self._setpoint = coerced
            if self._writer is not None:
                try:
                    self._writer(coerced)
                except BaseException:
                    # Refused by the instrument (or the link failed): the set point stays the
                    # last accepted one, never the refused value, whatever the device.
                    with self._lock:
                        if self._setpoint is coerced:  # no newer write or publish meanwhile
                            self._setpoint = previous
                    raise
            if self.publish_on_write:
                self.publish(coerced)
        return coerced

    def restore_setpoint(self, value: T | None) -> None:
        """Take the set point from the instrument without writing it (after a server restart, the
        target a moving stage reports), so the set point shown is never unknown while it is known."""
        with self._lock:
            self._setpoint = value

    def refresh(self) -> T | None:
        """Read from the hardware (in the caller's thread) and publish the result."""
        if self._reader is None:
            return self.value
        value = self._reader()
        self.publish(value)
        return value

    def publish(self, value: T | None, quality: Quality = Quality.VALID, *, force: bool = False) -> None:
        """The driver's way to update the value (read-only parameters included).

        Listeners are called only when value or quality changed, unless ``force``.
        """
        now = time.time()
        with self._lock:
            changed = force or quality != self._quality or not _same(self._value, value)
            self._value = value
            if self.writable and self.publish_on_write and value is not None and quality is not Quality.INVALID:
                # A setting's set point is what the instrument holds (the front panel may have
                # changed it); only setpoint-style values (positions) keep the client's target.
                self._setpoint = value
            self._quality = quality
            self._timestamp = now
            if not changed:
                return
            listeners = list(self._listeners)
            reading = Reading(self.name, value, now, quality)
        for listener in listeners:
            listener(reading)

    def invalidate(self) -> None:
        """Mark the value as not trustworthy (link down) without forgetting it."""
        self.publish(self.value, Quality.INVALID)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(reading)`` on every change; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def __repr__(self) -> str:
        return f"Parameter({self.name}={self._value!r} {self.unit}, {self._quality.name})"


def _short(value: Any, limit: int = 80) -> str:
    """A refused value as shown in an error: its repr, cut (a megabyte string stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        import numpy as np

        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return False  # arrays are always new data (frames, previews)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


class ParameterSet:
    """An ordered collection of parameters, addressable by name."""

    def __init__(self) -> None:
        self._params: dict[str, Parameter[Any]] = {}

    def add(self, parameter: Parameter[T]) -> Parameter[T]:
        if parameter.name in self._params:
            raise ValueError(f"duplicate parameter {parameter.name}")
        self._params[parameter.name] = parameter
        return parameter

    def __getitem__(self, name: str) -> Parameter[Any]:
        return self._params[name]

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def __iter__(self):
        return iter(self._params.values())

    def __len__(self) -> int:
        return len(self._params)

    def names(self) -> list[str]:
        return list(self._params)

    def invalidate_all(self) -> None:
        """The link is down: every value read from the instrument is stale (local ones are not)."""
        for p in self._params.values():
            if not p.local:
                p.invalidate()
