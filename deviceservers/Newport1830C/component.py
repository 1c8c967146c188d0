"""The 1830-C as Parameters: what the device shows, polled through the shared link."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from deviceservers.common.component import Component, DeviceState
from deviceservers.common.parameter import Parameter, Quality
from deviceservers.common.serial_link import InstrumentError, LinkSettings, Port

from . import driver

SETTINGS_EVERY = 5  # re-read the settings every N polls: the front panel can change them
BURST_SECONDS = 0.02  # a streaming burst holds the link at most this long (and delays its samples in the ring)
BURST_SAMPLES = 5000

class MeterNoReading(InstrumentError):
    """The meter answered a reading with text (SAT, OVER, ERR, UNDER): no number to use."""


#: where streamed samples go: (timestamps s, watts, flags) -> None (the device's ring writer)
SampleSink = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


class Newport1830CComponent(Component):
    label = "1830-C power meter"

    def __init__(self, settings: LinkSettings, poll_period_s: float = 0.5, logger: logging.Logger | None = None) -> None:
        super().__init__(settings, poll_period_s, logger)
        self._polls = 0
        self._last_measure = -float("inf")  # monotonic time of the last Measure (polls yield to counts)
        self.power = self.add(Parameter(
            "Power", float, unit="W", fmt="%.4e", archive_rel_change=5,  # a reading's noise is a few per mille
            description="Optical power in watts; quality ALARM when saturated or over range, INVALID when the meter sends no number"))
        self.power_dbm = self.add(Parameter(
            "PowerDbm", float, unit="dBm", fmt="%.2f", archive_abs_change=0.2,
            description="Optical power in dBm, computed from the reading in watts"))
        self.wavelength = self.add(Parameter(
            "Wavelength", float, unit="nm", fmt="%.0f", minimum=driver.WAVELENGTH_MIN_NM, maximum=driver.WAVELENGTH_MAX_NM,
            writable=True, writer=self._write_wavelength,
            description="Wavelength the detector responsivity is corrected for; set it to the laser's wavelength"))
        self.range = self.add(Parameter(
            "Range", int, choices=driver.RANGES, writable=True, writer=lambda v: self._set(driver.set_range, v),
            description="Measurement range: AUTO or a manual range R1 (most sensitive) to R8"))
        self.filter = self.add(Parameter(
            "Filter", int, choices=driver.FILTERS, writable=True, writer=lambda v: self._set(driver.set_filter, v),
            description="Digital filter: SLOW averages 16 samples, MEDIUM 4, FAST none"))
        self.attenuator = self.add(Parameter(
            "Attenuator", bool, writable=True, writer=lambda v: self._set(driver.set_attenuator, v),
            description="True when the detector's attenuator is in (tell the meter so it corrects the reading)"))
        self.zero = self.add(Parameter(
            "ZeroEnabled", bool, writable=True, writer=lambda v: self._set(driver.set_zero, v),
            description="Zero offset subtraction on/off; the Zero command stores the current reading as zero"))
        self.status_byte = self.add(Parameter(
            "StatusByte", int, description="Raw Q? status byte: 1 parameter error, 2 command error, 4 saturated, "
            "8 over range, 16 message, 32 busy, 64 SRQ, 128 reading ready"))
        self.saturated = self.add(Parameter("Saturated", bool, description="The detector is saturated: the reading is not valid"))
        self.over_range = self.add(Parameter(
            "OverRange", bool, description="The reading exceeds the manual range: choose a higher range or AUTO"))
        self.streaming = self.add(Parameter(
            "Streaming", bool, writable=True, writer=self._write_streaming, initial=False, local=True, memorized=True,
            description="Sample continuously, as fast as the link allows, into the shared-memory ring "
            "<device>.power (recorded by the DataWriter); Power is then updated from the stream. Memorized: "
            "streaming resumes after a server restart (ALARM if it cannot); a lost link pauses it"))
        self.sample_rate = self.add(Parameter(
            "SampleRate", float, unit="Hz", fmt="%.1f", initial=0.0,
            description="Samples per second achieved while streaming (over the last second)"))
        self.sink: SampleSink | None = None
        self.samples_streamed = 0
        self._stream_thread: threading.Thread | None = None
        self._stream_stop = threading.Event()

    # ------------------------------------------------------------------ link
    def on_connect(self, port: Port) -> None:
        driver.connect(port)
        self._read_settings(port)
        self.publish_measurement(*self._read_measurement(port))  # ON only with a real reading

    def _set(self, fn: Any, value: Any) -> None:
        self.run(lambda port: fn(port, value), idempotent=True, description=f"{fn.__name__}({value})")

    def _write_wavelength(self, nm: float) -> None:
        self.run(lambda port: driver.set_wavelength(port, nm), idempotent=True, description=f"W{nm:.0f}")

    def _read_settings(self, port: Port) -> None:
        self.wavelength.publish(float(driver.read_wavelength(port)))
        self.range.publish(driver.read_range(port))
        self.filter.publish(driver.read_filter(port))
        self.attenuator.publish(driver.read_attenuator(port))
        self.zero.publish(driver.read_zero(port))

    def _read_measurement(self, port: Port) -> tuple[driver.PowerReading, driver.StatusByte]:
        reading = driver.read_power(port)
        status = driver.read_status(port)
        return reading, status

    def poll(self) -> None:
        if time.monotonic() - self._last_measure < self.poll_period_s:
            # A client is counting (Measure): its readings keep Power fresh, and a poll's D? (or
            # its settings reads, ~0.2 s at 9600 baud) in flight would make its next Measure wait
            # up to a reading longer. The poll resumes a period after the last Measure.
            return
        self._polls += 1
        if self._polls % SETTINGS_EVERY == 0:
            self.run(self._read_settings, idempotent=True, description="settings")
        if self.streaming.value:
            # The stream reads D? continuously; polling only adds the status byte.
            status = self.run(driver.read_status, idempotent=True, description="Q?")
            self.status_byte.publish(status.raw)
            self.saturated.publish(status.saturated)
            self.over_range.publish(status.over_range)
            return
        reading, status = self.run(self._read_measurement, idempotent=True, description="D? Q?")
        self.publish_measurement(reading, status)

    # ------------------------------------------------------------------ streaming
    def _write_streaming(self, on: bool) -> None:
        if on and self.sink is None:
            raise RuntimeError("streaming has nowhere to go: the device did not open its ring")
        if on and (self._stream_thread is None or not self._stream_thread.is_alive()):
            self._stream_stop.clear()
            self._stream_thread = threading.Thread(target=self._stream_loop, name="1830-C stream", daemon=True)
            self._stream_thread.start()
        elif not on:
            self._stream_stop.set()
            if self._stream_thread is not None and self._stream_thread is not threading.current_thread():
                self._stream_thread.join(2)
            self._stream_thread = None
            self.sample_rate.publish(0.0)

    def _stream_loop(self) -> None:
        window: deque[tuple[float, int]] = deque()
        last_rate = 0.0
        while not self._stream_stop.is_set() and not self._stop.is_set():
            if not self.communication_ok:
                self.sample_rate.publish(0.0)
                self._stream_stop.wait(0.2)  # the link reconnects by itself; streaming resumes
                continue
            try:
                ts, values, flags = self.run(
                    lambda port: driver.sample_burst(port, BURST_SAMPLES, BURST_SECONDS), description="stream burst")
            except Exception as exc:  # noqa: BLE001 - the stream survives link trouble
                self.log.debug("stream burst failed: %s", exc)
                continue
            if not ts:
                continue
            t = np.asarray(ts)
            v = np.asarray(values)
            f = np.asarray(flags, dtype=np.uint8)
            sink = self.sink
            if sink is not None:
                sink(t, v, f)
            self.samples_streamed += len(t)
            now = time.monotonic()
            window.append((now, len(t)))
            while window and now - window[0][0] > 1.0:
                window.popleft()
            if now - last_rate > 0.25 and len(window) > 1:
                span = window[-1][0] - window[0][0]
                rate = sum(n for _, n in list(window)[1:]) / span if span > 0 else 0.0
                self.sample_rate.publish(round(rate, 1))
                last_rate = now
            self._publish_last_sample(v[-1], int(f[-1]))

    def _publish_last_sample(self, watts: float, flags: int) -> None:
        if flags & driver.FLAG_INVALID:
            self.power.publish(None, Quality.INVALID)
            self.power_dbm.publish(None, Quality.INVALID)
            return
        alarm = self.saturated.value or self.over_range.value
        quality = Quality.ALARM if alarm else Quality.VALID
        self.power.publish(float(watts), quality)
        dbm = driver.watts_to_dbm(float(watts))
        self.power_dbm.publish(dbm, quality if dbm is not None else Quality.INVALID)

    def stop(self) -> None:
        self._stream_stop.set()
        if self._stream_thread is not None and self._stream_thread is not threading.current_thread():
            self._stream_thread.join(2)  # before the device closes the ring the thread writes to
        super().stop()

    def publish_measurement(self, reading: driver.PowerReading, status: driver.StatusByte) -> None:
        self.status_byte.publish(status.raw)
        self.saturated.publish(status.saturated or reading.text == "SAT")
        self.over_range.publish(status.over_range or reading.text == "OVER")
        if reading.watts is None:
            self.power.publish(None, Quality.INVALID)
            self.power_dbm.publish(None, Quality.INVALID)
            return
        quality = Quality.ALARM if (status.saturated or status.over_range) else Quality.VALID
        self.power.publish(reading.watts, quality)
        dbm = driver.watts_to_dbm(reading.watts)
        self.power_dbm.publish(dbm, quality if dbm is not None else Quality.INVALID)

    # ------------------------------------------------------------------ commands
    def measure(self) -> float:
        """One fresh reading, asked for now: ``D?`` then ``Q?`` ahead of the queued polls.

        Why: a count must not wait for the next poll (``PollPeriodMs``) nor take a reading from
        before it started; the meter's own reading time (0.25-0.5 s on a real 1830-C) is then the
        only floor. The reading is published like a polled one (Power, its events and the state).
        Raises :class:`MeterNoReading` when the meter answers text (SAT, OVER, ERR, UNDER)."""
        self._last_measure = time.monotonic()
        reading, status = self.run(self._read_measurement, idempotent=True, priority=True, description="D? Q? (Measure)")
        self._last_measure = time.monotonic()
        self.publish_measurement(reading, status)
        self.update_state()
        if reading.watts is None:
            raise MeterNoReading(f"the meter gave no number ({reading.text or 'no reading'}): {self.status}")
        return float(reading.watts)

    def store_reference(self) -> None:
        self.run(driver.store_reference, description="S")

    def zero_now(self) -> None:
        """Store the current reading as zero (block the beam first)."""
        self.run(lambda port: driver.set_zero(port, True), description="Z1")
        self.zero.publish(True)

    # ------------------------------------------------------------------ state
    def evaluate_state(self) -> tuple[DeviceState, str]:
        if self.saturated.value:
            return DeviceState.ALARM, ("The detector is saturated: the reading is not valid. Reduce the power "
                                       "or put the attenuator in (Attenuator = True).")
        if self.over_range.value:
            return DeviceState.ALARM, ("The reading is over the manual range: set Range to AUTO or a higher range.")
        if self.power.quality == Quality.INVALID and self.power.value is None and self._polls:
            return DeviceState.ALARM, "The meter sends no valid reading (ERR/UNDER): check the detector head."
        wl = self.wavelength.value
        if self.streaming.value:
            return DeviceState.RUNNING, (f"Streaming at {self.sample_rate.value or 0:.0f} samples/s into the ring, "
                                         f"{wl:.0f} nm, range {driver.RANGES[self.range.value or 0]}")
        return DeviceState.ON, f"Measuring at {wl:.0f} nm, range {driver.RANGES[self.range.value or 0]}" if wl else "Measuring"
