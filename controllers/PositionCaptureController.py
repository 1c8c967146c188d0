"""Software position capture: a counter/timer channel whose value is where a motor really was.

Sardana's continuous scans (``ascanct``, ``meshct``) write *theoretical* motor positions (the
trajectory's, see their warning "Motor positions ... contains theoretical values"). A channel of
this controller in the measurement group (the lab's ``mg_continuous``: ``hwp_pos``, ``pol_pos``...)
records, for each trigger window, the position the instrument itself reported, interpolated at
the window's middle:

- during the window and after it, the device's position attribute is read (served from the
  device's cache: no serial I/O); each reading carries the time the server published it, when
  the instrument answered (the ELL14's ``gp`` every 25 ms during a move, the ESP300's ``TP?``
  every 50 ms);
- the value is the linear interpolation between the last report before the middle and the first
  after it (a move at constant speed, as in a continuous scan);
- a motor that is not moving (its position's quality is not CHANGING) is where it reports.

``latency_time`` (the measurement group's LatencyTime) is how long after a window the value was
known, as with the power channel, so the scan spaces its triggers to let every point be captured.

Axis attributes (memorized): ``TangoDevice`` (default: the lab's role named like the element
without ``_pos``: ``hwp_pos`` -> the ``hwp`` role) and ``PositionAttribute`` (``Position``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import tango
from sardana import State
from sardana.pool.controller import (
    Access,
    CounterTimerController,
    DataAccess,
    DefaultValue,
    Description,
    Memorize,
    Memorized,
    Type,
)

from tango_db.proxies import device_proxy
from tango_db.roles import lab_roles
from tangodaq_controllers._acquisition import LatencyTracker, WindowThread

TIMEOUT_MS = 2000
READ_EVERY_S = 0.01  # a moving device reports every 25-50 ms; its cached attribute is read this often
WAIT_AFTER_S = 1.0  # longest wait for a report after the window's middle (a stalled poll)
DEFAULT_LATENCY_S = 0.03
MARGIN_S = 0.03  # beyond the slowest recent capture: the Pool's own bookkeeping after the read, jitter


class Capture(WindowThread):
    """One window of one axis: the reported position at the window's middle, in its own thread."""

    def __init__(self, proxy: tango.DeviceProxy, device: str, attribute: str, integ_time: float) -> None:
        super().__init__(device, integ_time, what="capture", context=f"cannot read {attribute}: ")
        self.proxy, self.attribute = proxy, attribute
        self.value = math.nan

    def acquire(self) -> None:
        middle = self.t0 + self.integ_time / 2
        before: tuple[float, float] | None = None
        while not self._stop.is_set():
            da = self.proxy.read_attribute(self.attribute)
            if da.value is None or da.quality == tango.AttrQuality.ATTR_INVALID:
                raise RuntimeError(f"{self.attribute} has no valid value")
            t, v = da.time.totime(), float(da.value)
            if da.quality != tango.AttrQuality.ATTR_CHANGING:
                now = time.time()
                if now >= middle:
                    self.value = v  # not moving: it is where it says
                    return
                self._stop.wait(middle - now)  # still: one more look at the middle, nothing between
                continue
            if t <= middle:
                before = (t, v)
            elif before is not None:
                (t1, v1) = before
                self.value = v1 + (v - v1) * (middle - t1) / (t - t1) if t > t1 else v
                return
            else:
                self.value = v  # the first report is already past the middle (a late start)
                return
            if time.time() > middle + WAIT_AFTER_S:
                raise RuntimeError(f"no {self.attribute} report within {WAIT_AFTER_S:g} s after the window")
            self._stop.wait(READ_EVERY_S)


class PositionCaptureController(CounterTimerController):
    """The reported position of a lab motor device at each acquisition window's middle."""

    gender = "CounterTimer"
    model = "tangodaq position capture"
    organization = "tangodaq"

    axis_attributes = {
        "TangoDevice": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized, DefaultValue: "",
            Description: "the moved device (default: the lab's role named like the element without _pos)",
        },
        "PositionAttribute": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized, DefaultValue: "Position",
            Description: "the device's position attribute: Position, or Wavelength for the laser",
        },
    }

    def __init__(self, inst: str, props: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(inst, props, *args, **kwargs)
        self.devices: dict[int, str] = {}
        self.attributes: dict[int, str] = {}
        self.captures: dict[int, Capture] = {}
        self.proxies: dict[str, tango.DeviceProxy] = {}
        self.integ_time = 1.0
        self._to_start: list[int] = []
        self._latency = LatencyTracker(DEFAULT_LATENCY_S, MARGIN_S)

    def _element_name(self, axis: int) -> str:
        try:
            return str(self._getPoolController().get_element(axis=axis).name)
        except Exception:  # noqa: BLE001 - outside a Pool, or not registered yet
            return ""

    def GetAxisAttributes(self, axis: int) -> dict:
        attrs = super().GetAxisAttributes(axis)
        name = self._element_name(axis).removesuffix("_pos")
        attrs["TangoDevice"][DefaultValue] = lab_roles().get(name, "") if name else ""
        return attrs

    def AddDevice(self, axis: int) -> None:
        self.devices[axis], self.attributes[axis] = "", "Position"

    def DeleteDevice(self, axis: int) -> None:
        self.devices.pop(axis, None)
        capture = self.captures.pop(axis, None)
        if capture is not None:
            capture.stop()

    def GetAxisExtraPar(self, axis: int, name: str) -> Any:
        return {"tangodevice": self.devices, "positionattribute": self.attributes}[name.lower()][axis]

    def SetAxisExtraPar(self, axis: int, name: str, value: Any) -> None:
        key = name.lower()
        if key == "tangodevice":
            self.devices[axis] = str(value).strip()
        elif key == "positionattribute":
            self.attributes[axis] = str(value).strip() or "Position"
        else:
            raise KeyError(name)

    def GetCtrlPar(self, parameter: str) -> Any:
        """``latency_time``: how long after a window the last captures knew their value."""
        if parameter.lower() == "latency_time":
            return self._latency.latency_s()
        return super().GetCtrlPar(parameter)

    def _proxy(self, device: str) -> tango.DeviceProxy:
        if not device:
            raise RuntimeError("no TangoDevice set for this channel (write its TangoDevice attribute)")
        proxy = self.proxies.get(device)
        if proxy is None:
            proxy = self.proxies[device] = device_proxy(device, TIMEOUT_MS)
        return proxy

    # ------------------------------------------------------------------ acquisition
    def LoadOne(self, axis: int, value: float, repetitions: int, latency: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"count time must be > 0 s, not {value}")
        if repetitions != 1:
            raise ValueError("position capture takes one window per start (software synchronisation)")
        self.integ_time = float(value)
        self._proxy(self.devices[axis])  # made now, not at the first trigger (a database round trip)

    def PreStartAll(self) -> None:
        self._to_start = []

    def StartOne(self, axis: int, value: float | None = None) -> None:
        self._to_start.append(axis)

    def StartAll(self) -> None:
        for axis in self._to_start:
            old = self.captures.get(axis)
            if old is not None:
                old.stop()
            device = self.devices[axis]
            capture = Capture(self._proxy(device), device, self.attributes[axis], self.integ_time)
            self.captures[axis] = capture
            capture.start()

    def StateOne(self, axis: int) -> tuple[Any, str]:
        capture = self.captures.get(axis)
        if capture is not None and capture.running():
            return State.Moving, f"capturing {self.devices[axis]} {self.attributes[axis]}"
        if capture is not None:
            if capture.error:
                return State.Fault, capture.error
        return State.On, f"{self.devices[axis] or 'no device'}: ready"

    def ReadOne(self, axis: int) -> float:
        capture = self.captures.get(axis)
        self._latency.note(capture)
        if capture is None:
            return math.nan
        if capture.error:
            raise RuntimeError(capture.error)
        return capture.value

    def StopOne(self, axis: int) -> None:
        capture = self.captures.get(axis)
        if capture is not None:
            capture.stop()

    def AbortOne(self, axis: int) -> None:
        self.StopOne(axis)
