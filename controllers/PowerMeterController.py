"""Sardana counter/timer controller for the Newport 1830-C power meter: averaged power.

``ct 0.5`` must average 0.5 s of samples taken *after* the count started (after the motors of a
scan point arrived), not return one reading, and never a reading from before the start.

Two sources, chosen per acquisition:

- ``ring``: when the meter streams (``Streaming`` = True), every sample is in the shared-memory
  ring ``<meter device with dots>.power`` (datawriter.ring); the average is over the ring rows whose
  timestamp falls in the count window (the ring stays open when streaming stops, so the
  device's ``Streaming`` decides, and a ring that brings nothing falls back to Tango);
- ``tango``: otherwise, the meter's ``Measure`` command, called back to back: each call sends
  ``D?`` at once (ahead of the server's polls), so every reading begins after the start and the
  count waits only for the meter's own reading time, never for its next poll (``PollPeriodMs``,
  which cost ~400 ms per scan point). The readings are averaged until the one whose end is
  nearest the window's end; a window shorter than one reading takes that one reading.

The axis attributes ``Samples`` and ``Source`` tell, after each count, how many samples were
averaged and from where. Readings the meter answers with text (SAT, OVER, ERR, UNDER) are skipped; if none is valid
the count fails with the reason.

The axis attribute ``TangoDevice`` (memorized: the Pool restores it) names the meter; an axis
that has none memorized gets the lab's ``meter`` role (``tango_db.roles``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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
    NotMemorized,
    Type,
)

from tango_db.proxies import device_proxy
from tango_db.roles import device_or_empty as role_default
from tangodaq_controllers._acquisition import LatencyTracker, WindowThread, describe

TIMEOUT_MS = 2000
NO_NUMBER = "InstrumentRefused"  # Measure's reason when the meter answers text (SAT, OVER, ERR, UNDER)
FRESH_WAIT_MAX_S = 5.0  # longest wait for a first reading after the window, beyond the count time
DEFAULT_LATENCY_S = 0.05  # latency_time before any count measured it
MARGIN_S = 0.03  # beyond the slowest recent count: the Pool's own bookkeeping after the read, jitter
RING_GRACE_S = 1.0  # a streaming meter writes a sample every ~10 ms: none a second after the window = stopped


def _new_proxy(device: str) -> tango.DeviceProxy:
    return device_proxy(device, TIMEOUT_MS)


def default_stream(device: str) -> str:
    """The ring stream the meter's server writes: ``b12/meter/1`` -> ``b12.meter.1.power``."""
    return device.strip("/").replace("/", ".") + ".power"




class Count(WindowThread):
    """One acquisition of one axis, run in its own thread."""

    def __init__(self, device: str, stream: str, integ_time: float,
                 proxy: Callable[[], tango.DeviceProxy] | None = None) -> None:
        super().__init__(device, integ_time, what="count")
        self._proxy = proxy or (lambda: _new_proxy(device))
        self.stream = stream
        self.samples: list[float] = []
        self.source = ""

    def value(self) -> float:
        return float(sum(self.samples) / len(self.samples)) if self.samples else math.nan

    # ------------------------------------------------------------------ the two sources
    def acquire(self) -> None:
        if not (self._streaming() and self._from_ring()):
            self._from_tango()

    def _streaming(self) -> bool:
        """Is the meter streaming now? Its ring stays open (producer alive) when it is not, so
        the ring alone cannot tell. A device without ``Streaming`` lets the ring decide."""
        try:
            return bool(self._proxy().read_attribute("Streaming").value)
        except tango.DevFailed:
            return True

    def _from_ring(self) -> bool:
        """Average the ring's samples of the window; False (use Tango) if none came: the meter
        stopped streaming."""
        try:
            from datawriter.ring import RingError, open_reader
        except ImportError:
            return False
        try:
            reader = open_reader(self.stream, start=self.t0)
        except RingError:
            return False
        with reader:
            if not reader.producer_alive():
                return False
            self.source = "ring"
            t_end_ns = int((self.t0 + self.integ_time) * 1e9)
            t0_ns = int(self.t0 * 1e9)
            deadline = self.t0 + self.integ_time + RING_GRACE_S
            while not self._stop.is_set() and time.time() < deadline:
                rec = reader.read_next()
                if rec is None:
                    reader.wait(0.05)
                    continue
                ts = rec.batch.column("timestamp").cast("int64").to_numpy()
                values = rec.batch.column("value").to_numpy(zero_copy_only=False)
                for t, v in zip(ts, values, strict=True):
                    if t0_ns <= t <= t_end_ns and math.isfinite(v):
                        self.samples.append(float(v))
                if len(ts) and ts[-1] > t_end_ns and self.samples:
                    break
                if len(ts) and ts[-1] > t_end_ns and not self.samples:  # window shorter than a sample
                    later = [float(v) for t, v in zip(ts, values, strict=True) if t > t_end_ns and math.isfinite(v)]
                    if later:
                        self.samples.append(later[0])
                        break
            if not self.samples and not self._stop.is_set():
                self.source = ""
                return False
            return True

    def _from_tango(self) -> None:
        """Readings asked for one after the other (the meter's ``Measure``), each begun after the
        start, until the window is covered: the count waits for the meter's own reading time,
        never for its next poll. A window shorter than one reading takes that one reading."""
        self.source = "tango"
        proxy = self._proxy()
        t_end = self.t0 + self.integ_time
        deadline = t_end + FRESH_WAIT_MAX_S
        refused = ""
        while not self._stop.is_set():
            asked = time.time()
            try:
                self.samples.append(float(proxy.command_inout("Measure")))
            except tango.DevFailed as exc:
                if exc.args and exc.args[0].reason != NO_NUMBER:
                    raise  # the link or the device: the count fails with it (see _run)
                refused = describe(exc)  # SAT/OVER/ERR/UNDER: skipped, as the meter says
            done = time.time()
            # stop at the reading whose end is nearest to the window's end
            if self.samples and done + (done - asked) / 2 >= t_end:
                return
            if done >= deadline:
                self.error = (f"{self.device}: no valid power reading within {self.integ_time + FRESH_WAIT_MAX_S:.1f} s "
                              f"of the start ({refused or proxy.status().strip()})")
                return


class PowerMeterController(CounterTimerController):
    """Averaged optical power (W) of a Newport1830C device over the count time."""

    gender = "CounterTimer"
    model = "tangodaq Newport 1830-C"
    organization = "tangodaq"

    axis_attributes = {
        "TangoDevice": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized,
            Description: "the Newport1830C device (default: the lab's meter role)",
        },
        "Stream": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized, DefaultValue: "",
            Description: "ring stream with the meter's samples (empty: <device with dots>.power)",
        },
        "Samples": {
            Type: int, Access: DataAccess.ReadOnly, Memorize: NotMemorized,
            Description: "number of samples averaged by the last count",
        },
        "Source": {
            Type: str, Access: DataAccess.ReadOnly, Memorize: NotMemorized,
            Description: "where the last count's samples came from: ring or tango",
        },
    }

    def __init__(self, inst: str, props: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(inst, props, *args, **kwargs)
        self.devices: dict[int, str] = {}
        self.streams: dict[int, str] = {}
        self.counts: dict[int, Count] = {}
        self.integ_time = 1.0
        self._to_start: list[int] = []
        # how long after their window's end the last counts' values were known: the latency a
        # continuous scan must leave between two triggers (the meter's reading time, the ring's
        # delivery), or its next trigger would find the channel still counting and be skipped
        self._latency = LatencyTracker(DEFAULT_LATENCY_S, MARGIN_S)
        # one proxy per meter and use, made once: a DeviceProxy costs a database round trip
        self._count_proxies: dict[str, tango.DeviceProxy] = {}
        self._state_proxies: dict[str, tango.DeviceProxy] = {}

    @staticmethod
    def _proxy(device: str, cache: dict[str, tango.DeviceProxy]) -> tango.DeviceProxy:
        proxy = cache.get(device)
        if proxy is None:
            proxy = cache[device] = _new_proxy(device)
        return proxy

    def GetAxisAttributes(self, axis: int) -> dict:
        """Sardana's axis attributes, with the meter's default taken from the lab's roles now."""
        attrs = super().GetAxisAttributes(axis)
        attrs["TangoDevice"][DefaultValue] = role_default("meter")
        return attrs

    def AddDevice(self, axis: int) -> None:
        self.devices[axis] = role_default("meter")
        self.streams[axis] = ""

    def DeleteDevice(self, axis: int) -> None:
        self.devices.pop(axis, None)
        count = self.counts.pop(axis, None)
        if count is not None:
            count.stop()

    def GetAxisExtraPar(self, axis: int, name: str) -> Any:
        name = name.lower()
        if name == "tangodevice":
            return self.devices[axis]
        if name == "stream":
            return self.streams[axis]
        count = self.counts.get(axis)
        if name == "samples":
            return len(count.samples) if count else 0
        if name == "source":
            return count.source if count else ""
        raise KeyError(name)

    def SetAxisExtraPar(self, axis: int, name: str, value: Any) -> None:
        name = name.lower()
        if name == "tangodevice":
            self.devices[axis] = str(value).strip()
        elif name == "stream":
            self.streams[axis] = str(value).strip()
        else:
            raise KeyError(name)

    # ------------------------------------------------------------------ controller parameters
    def GetCtrlPar(self, parameter: str) -> Any:
        """``latency_time``: the time a count needs after its window to know its value (the
        longest of the last counts', DEFAULT_LATENCY_S before any), plus the Pool's state loop.
        Continuous scans space their triggers by at least this (MeasurementGroup LatencyTime)."""
        if parameter.lower() == "latency_time":
            return self._latency.latency_s()
        return super().GetCtrlPar(parameter)

    # ------------------------------------------------------------------ acquisition
    def LoadOne(self, axis: int, value: float, repetitions: int, latency: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"count time must be > 0 s, not {value}")
        if repetitions != 1:
            raise ValueError("the power meter counts one point per start (software synchronisation)")
        self.integ_time = float(value)
        device = self.devices[axis]  # proxies made now, not at the first trigger (a database round trip)
        self._proxy(device, self._count_proxies)
        self._proxy(device, self._state_proxies)

    def PreStartAll(self) -> None:
        self._to_start = []

    def StartOne(self, axis: int, value: float | None = None) -> None:
        self._to_start.append(axis)

    def StartAll(self) -> None:
        for axis in self._to_start:
            old = self.counts.get(axis)
            if old is not None:
                old.stop()
            device = self.devices[axis]
            count = Count(device, self.streams[axis] or default_stream(device), self.integ_time,
                          proxy=lambda device=device: self._proxy(device, self._count_proxies))
            self.counts[axis] = count
            count.start()

    def StateOne(self, axis: int) -> tuple[Any, str]:
        count = self.counts.get(axis)
        if count is not None and count.running():
            return State.Moving, f"averaging {self.devices[axis]} Power over {count.integ_time:g} s"
        if count is not None and count.error:
            return State.Fault, count.error
        try:
            proxy = self._proxy(self.devices[axis], self._state_proxies)
            state = proxy.state()  # the device's cached state: no serial I/O
        except tango.DevFailed as exc:
            self._state_proxies.pop(self.devices[axis], None)
            return State.Fault, f"{self.devices[axis]}: {exc.args[0].desc.strip()}"
        if state in (tango.DevState.FAULT, tango.DevState.DISABLE):
            return State.Fault, f"{self.devices[axis]}: {proxy.status().strip()}"
        if state == tango.DevState.ALARM:
            return State.Alarm, f"{self.devices[axis]}: {proxy.status().strip()}"
        return State.On, f"{self.devices[axis]} ready"

    def ReadOne(self, axis: int) -> float:
        count = self.counts.get(axis)
        self._latency.note(count)
        if count is None:
            return math.nan
        if count.error and not count.samples:
            raise RuntimeError(count.error)
        return count.value()

    def StopOne(self, axis: int) -> None:
        count = self.counts.get(axis)
        if count is not None:
            count.stop()

    def AbortOne(self, axis: int) -> None:
        self.StopOne(axis)
