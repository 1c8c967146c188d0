"""The camera as Parameters, an acquisition thread and a monitor thread; no Tango, no Arrow.

Threads, and why there are two:

* the **acquisition thread** exists while acquiring: it polls the backend (always with a short
  time-out, so Stop is honoured within ~0.2 s and an external trigger that never comes cannot
  hang it), counts frame-number gaps as lost frames, hands every frame to the sink (the
  shared-memory ring) and keeps a reference to the newest one. It never publishes a Parameter,
  so it never waits for Tango clients;
* the **monitor thread** always runs: it reads the temperature (idle or acquiring), publishes the
  counters and the preview (``LastImage`` at most ``preview_max_fps`` times per second, binned by
  ``PreviewBinning``, its frame number and time in ``LastImageFrameNumber``/``LastImageTime``
  published just before it), derives the state, and re-opens the camera if it was not available.

Frames the backend cannot deliver (:class:`FrameLost`: undecodable metadata, a live-buffer slot
overwritten while it was read) are counted lost and the acquisition goes on. A camera that stops
answering (:class:`CameraConnectionLost`: cable pulled) is closed and FAULT says so; the monitor
re-opens it when it is back. Any exception from opening the camera is the camera's FAULT: the
server never dies of it.

Stuck acquisitions (no frame for far longer than a frame period in internal trigger mode) are
recovered by abort + re-open + restart, continuing the frame numbering so the ring stays
contiguous apart from the frames really lost. In external trigger modes a silence longer than
``trigger_timeout_s`` stops the acquisition and leaves the device in ALARM with a status that
says to check the trigger source.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from deviceservers.common.component import ComponentBase, DeviceState
from deviceservers.common.parameter import Parameter, ParameterError

from .backend import (
    EXTERNAL_TRIGGER_MODES,
    FAN_SPEEDS,
    PVCAM_EXPOSURE_MODES,
    SOFTWARE_TRIGGER_MODES,
    AcquisitionNotActive,
    AcquisitionRunning,
    CameraBackend,
    CameraConnectionLost,
    CameraError,
    FrameLost,
    FrameSink,
    FrameTimeout,
    Roi,
)

FrameSinkFactory = Callable[[int, int], FrameSink]
POLL_TIMEOUT_S = 0.2
MAX_SEQUENCE = 65535
REOPEN_PERIOD_S = 2.0
FPS_WINDOW = 32
PREVIEW_BINNINGS = (1, 2, 4, 8)
NO_FAN = "Not-available"


def bin_image(image: np.ndarray, binning: int) -> np.ndarray:
    """Mean of ``binning`` x ``binning`` pixel blocks (edge rows/columns that do not fill a block are
    dropped), as uint16: a preview that keeps the whole field of view with 1/binning² of the bytes."""
    if binning <= 1:
        return image
    h, w = (image.shape[0] // binning) * binning, (image.shape[1] // binning) * binning
    blocks = image[:h, :w].reshape(h // binning, binning, w // binning, binning)
    return (blocks.sum(axis=(1, 3), dtype=np.uint32) // (binning * binning)).astype(np.uint16)


def enum_label(name: str) -> str:
    """A camera's enum name as a Tango enum label: no spaces (PyTango clients build a Python
    IntEnum from the labels joined by spaces, so "Edge rising" would become two members)."""
    return "-".join(name.split())


class NullSink:
    """Discards frames (a component used without a ring, e.g. from a script)."""

    def write_frame(self, frame: np.ndarray, frame_number: int, timestamp_bof: float, timestamp_eof: float,
                    exposure_s: float) -> None:
        pass


class PvcamComponent(ComponentBase):
    """A PVCAM camera: settings as Parameters, acquisition into a frame sink, a rate-limited preview."""

    label = "PVCAM camera"

    def __init__(
        self,
        backend_factory: Callable[[], CameraBackend],
        sink_factory: FrameSinkFactory | None = None,
        *,
        preview_max_fps: float = 5.0,
        poll_period_s: float = 1.0,
        trigger_timeout_s: float = 10.0,
        buffer_frames: int = 32,
        stall_timeout_s: float = 2.0,
        reopen_period_s: float = REOPEN_PERIOD_S,
        logger: logging.Logger | None = None,
    ) -> None:
        if not preview_max_fps > 0:
            raise ValueError(f"PreviewMaxFps must be > 0, not {preview_max_fps}")
        if trigger_timeout_s < 0:
            raise ValueError(f"the trigger time-out must be >= 0 s (0 = wait forever), not {trigger_timeout_s}")
        super().__init__("Opening the camera", poll_period_s, logger or logging.getLogger("tangodaq.Pvcam"))
        self._backend_factory = backend_factory
        self._sink_factory = sink_factory or (lambda h, w: NullSink())
        self.preview_period_s = 1.0 / preview_max_fps
        self.trigger_timeout_s = trigger_timeout_s
        self.buffer_frames = buffer_frames
        self.stall_timeout_s = stall_timeout_s
        self.reopen_period_s = reopen_period_s
        self.backend: CameraBackend | None = None
        self._open_error = ""
        self._alarm = ""  # an acquisition that failed (cleared by the next start)
        self._sink_alarm = ""  # frames that cannot be stored (cleared when a ring can be made)
        self._next_temperature = 0.0  # monotonic time of the next temperature read
        self._next_open = 0.0  # ... and of the next attempt to open a camera that is not open
        self._was_acquiring = False
        self._acq_lock = threading.RLock()
        self._acq_thread: threading.Thread | None = None
        self._acq_stop = threading.Event()
        self._acq_desc = ""
        self._frames = 0
        self._lost = 0
        self._recoveries = 0
        self._fps = 0.0
        # (pixels, frame number, wall-clock EOF, sequence): one tuple, replaced in one assignment, so
        # the monitor never pairs an image with another frame's number
        self._latest: tuple[np.ndarray | None, int, float, int] = (None, 0, 0.0, 0)
        self._ended_by = ""  # why the last acquisition ended early (connection loss), for Status
        self._published_seq = 0
        self._last_preview = 0.0
        self._force_preview = False
        self._temperature_error = ""
        self._trigger_modes: dict[str, int] = dict(PVCAM_EXPOSURE_MODES)
        self._live_mode = False  # the running (or last) acquisition is continuous
        self._open_backend()
        self._declare_parameters()
        self._publish_settings()

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        b = self.backend
        exp_lo, exp_hi = b.exposure_limits_s if b else (1e-6, 3600.0)
        t_lo, t_hi = b.temperature_setpoint_limits if b else (-25.0, 25.0)
        fans = (b.fan_speeds or (NO_FAN,)) if b else FAN_SPEEDS
        if b is not None:
            self._trigger_modes = b.trigger_modes
        sensor = b.sensor_size if b else (2048, 2048)
        add = self.add
        self.exposure_time = add(Parameter(
            "ExposureTime", float, unit="s", fmt="%.6f", minimum=exp_lo, maximum=exp_hi, writable=True,
            writer=lambda v: self._camera().set_exposure(v),
            description="Exposure time of each frame; the frame period is exposure + readout time"))
        self.trigger_mode = add(Parameter(
            "TriggerMode", int, choices=[enum_label(n) for n in self._trigger_modes], writable=True,
            writer=lambda i: self._camera().set_trigger_mode(list(self._trigger_modes.values())[i]),
            description="PVCAM exposure mode: Internal runs freely; Software-first/-edge wait for SoftwareTrigger; "
                        "the others wait for the camera's trigger input"))
        self.port = add(Parameter(
            "ReadoutPort", int, minimum=0, writable=True, writer=self._write_port,
            description="Readout port (PVCAM port value; see ReadoutPortName and SpeedTable). Changing it "
                        "re-applies speed then gain"))
        self.speed = add(Parameter(
            "ReadoutSpeed", int, minimum=0, writable=True, writer=self._write_speed,
            description="Readout speed index within the port (see ReadoutSpeedName and SpeedTable)"))
        self.gain = add(Parameter(
            "Gain", int, minimum=1, writable=True, writer=self._write_gain,
            description="Gain index within the speed, from 1 (see GainName and SpeedTable)"))
        self.port_name = add(Parameter("ReadoutPortName", str, description="Name of the readout port"))
        self.speed_name = add(Parameter("ReadoutSpeedName", str, description="Name of the readout speed"))
        self.gain_name = add(Parameter("GainName", str, description="Name of the gain"))
        self.speed_table = add(Parameter(
            "SpeedTable", str, description="The camera's ports, speeds and gains as JSON "
            "(port value, speed index, pixel time in ns, gain index, bit depth)"))
        self.bit_depth = add(Parameter("BitDepth", int, unit="bit", description="Bit depth of the pixels with the current gain"))
        self.binning = add(Parameter(
            "Binning", int, minimum=1, writable=True, writer=self._write_binning,
            description="Symmetric binning factor, one of the camera's binnings; must divide the ROI width and height"))
        self.roi = add(Parameter(
            "Roi", np.int32, shape=(4,), writable=True, writer=self._write_roi,
            description="Region of interest in unbinned sensor pixels: x, y, width, height"))
        self.sensor_width = add(Parameter("SensorWidth", int, unit="px", initial=sensor[0], description="Sensor width in pixels"))
        self.sensor_height = add(Parameter("SensorHeight", int, unit="px", initial=sensor[1], description="Sensor height in pixels"))
        self.readout_time = add(Parameter(
            "ReadoutTime", float, unit="s", fmt="%.6f", description="Time to read one frame with the current ROI and speed"))
        self.temperature = add(Parameter("Temperature", float, unit="degC", fmt="%.2f", archive_abs_change=0.5,
                                         description="Sensor temperature"))
        self.temperature_setpoint = add(Parameter(
            "TemperatureSetpoint", float, unit="degC", fmt="%.2f", minimum=t_lo, maximum=t_hi, writable=True,
            writer=lambda v: self._camera().set_temperature_setpoint(v),
            description="Sensor temperature the cooler regulates to"))
        self.fan_speed = add(Parameter(
            "FanSpeed", int, choices=[enum_label(n) for n in fans], writable=True, writer=self._write_fan,
            description="Cooling fan speed; Off needs liquid cooling to hold low temperatures "
                        f"({NO_FAN} on a camera without fan control)"))
        self.nb_frames = add(Parameter(
            "NbFrames", int, minimum=0, maximum=2**31 - 1, writable=True, initial=0,
            description="Frames per StartAcquisition; 0 = continuous (live) until StopAcquisition"))
        self.live = add(Parameter(
            "Live", bool, writable=True, writer=self._write_live, initial=False, local=True, memorized=True,
            description="True while a live (continuous) acquisition runs; write True to start one, False to stop. "
                        "Memorized, also when started by StartAcquisition with NbFrames 0: live acquisition resumes "
                        "after a server restart (ALARM if it cannot)"))
        self.frames_acquired = add(Parameter("FramesAcquired", int, initial=0,
                                             description="Frames received in the current or last acquisition"))
        self.frames_lost = add(Parameter("FramesLost", int, initial=0, description=(
            "Frames lost in the current or last acquisition (gaps in the camera's frame numbers: consumer too slow, "
            "link errors, frames that could not be read). Without frame metadata, frames lost between camera and "
            "host cannot be counted: Status says so")))
        self.frame_rate = add(Parameter("FrameRate", float, unit="Hz", fmt="%.2f", initial=0.0,
                                        description="Frame rate from the camera's timestamps over the last frames"))
        self.preview_binning = add(Parameter(
            "PreviewBinning", int, unit="px", minimum=1, maximum=max(PREVIEW_BINNINGS), writable=True, initial=1,
            local=True, memorized=True, writer=self._write_preview_binning,
            description="LastImage shows the mean of PreviewBinning x PreviewBinning pixel blocks (1, 2, 4 or 8): the "
                        "whole field of view in fewer bytes, so a full-frame preview keeps up with a fast camera. "
                        "Frames in the ring are never binned by it"))
        self.last_image_frame_number = add(Parameter(
            "LastImageFrameNumber", int, initial=0, polled=False,
            description="Frame number of the image in LastImage; its change event is pushed just before LastImage's"))
        self.last_image_time = add(Parameter(
            "LastImageTime", float, unit="s", fmt="%.6f", initial=0.0, polled=False,
            description="End of exposure of the image in LastImage, seconds since 1970 (camera clock); pushed just "
                        "before LastImage"))
        self.last_image = add(Parameter(
            "LastImage", np.uint16, shape=(2048, 2048), polled=False,
            description="Preview of the newest frame, binned by PreviewBinning, pushed as change events at most "
                        "PreviewMaxFps times per second (never twice the same frame); every frame is in the "
                        "shared-memory ring"))

    def _write_preview_binning(self, binning: int) -> None:
        if binning not in PREVIEW_BINNINGS:
            raise ParameterError(f"PreviewBinning: {binning} is not one of {', '.join(map(str, PREVIEW_BINNINGS))}")
        self._force_preview = True  # show the next frame (or the last one again) at the new binning

    def _write_fan(self, value: int) -> None:
        b = self._camera()
        if not b.fan_speeds:
            raise ParameterError(f"FanSpeed: camera {b.name} has no fan speed control")
        b.set_fan_speed(value)

    def _write_live(self, on: bool) -> None:
        if on:
            if self.acquiring:
                if self._live_mode:
                    return
                raise AcquisitionRunning("a sequence is running: StopAcquisition first, then Live = True")
            self.start_acquisition(0)
        else:
            self.stop_acquisition()

    def _camera(self) -> CameraBackend:
        if self.backend is None:
            raise CameraError(f"the camera is not available: {self._open_error}")
        return self.backend

    def _publish_settings(self) -> None:
        b = self.backend
        if b is None:
            self.parameters.invalidate_all()
            return
        self.exposure_time.publish(b.get_exposure())
        values = list(self._trigger_modes.values())
        mode = b.get_trigger_mode()
        if mode in values:
            self.trigger_mode.publish(values.index(mode))
        self._publish_readout()
        self.binning.publish(b.get_binning())
        self.roi.publish(np.array(b.get_roi().as_tuple(), dtype=np.int32))
        self.readout_time.publish(b.readout_time_s())
        self.temperature_setpoint.publish(b.get_temperature_setpoint())
        self.fan_speed.publish(b.get_fan_speed())
        self._read_temperature(b)
        self.speed_table.publish(json.dumps([
            {"port": p.value, "name": p.name, "speeds": [
                {"index": s.index, "name": s.name, "pixel_time_ns": s.pixel_time_ns,
                 "gains": [{"index": g.index, "name": g.name, "bit_depth": g.bit_depth} for g in s.gains]}
                for s in p.speeds]}
            for p in b.speed_table]))

    def _publish_readout(self) -> None:
        b = self._camera()
        port, speed, gain = b.get_readout()
        p = {x.value: x for x in b.speed_table}[port]
        s = p.speed(speed)
        self.port.publish(port)
        self.speed.publish(speed)
        self.gain.publish(gain)
        self.port_name.publish(p.name)
        self.speed_name.publish(s.name)
        self.gain_name.publish(s.gain(gain).name)
        self.bit_depth.publish(b.bit_depth())
        self.readout_time.publish(b.readout_time_s())

    # ------------------------------------------------------------------ writers (validate, then apply)
    def _apply_readout(self, port: int, speed: int | None, gain: int | None) -> None:
        """Port, then speed, then gain: keep the current speed/gain when the new port or speed
        offers them, else take the first one offered."""
        b = self._camera()
        ports = {p.value: p for p in b.speed_table}
        if port not in ports:
            raise ParameterError(f"ReadoutPort: {port} is not one of "
                                 f"{', '.join(f'{p.value}={p.name}' for p in b.speed_table)}")
        cur_port, cur_speed, cur_gain = b.get_readout()
        speeds = ports[port].speeds
        if speed is None:
            speed = cur_speed if cur_speed < len(speeds) else 0
        try:
            sp = ports[port].speed(speed)
        except ValueError as exc:
            raise ParameterError(f"ReadoutSpeed: {exc}") from exc
        if gain is None:
            gain = cur_gain if any(g.index == cur_gain for g in sp.gains) else sp.gains[0].index
        try:
            sp.gain(gain)
        except ValueError as exc:
            raise ParameterError(f"Gain: {exc}") from exc
        b.set_readout(port, speed, gain)

    def _write_port(self, port: int) -> None:
        self._apply_readout(port, None, None)
        self._after_readout_change()

    def _write_speed(self, speed: int) -> None:
        self._apply_readout(self._camera().get_readout()[0], speed, None)
        self._after_readout_change()

    def _write_gain(self, gain: int) -> None:
        port, speed, _ = self._camera().get_readout()
        self._apply_readout(port, speed, gain)
        self._after_readout_change()

    def _after_readout_change(self) -> None:
        # the other members of the cascade change with the one written: publish them now (the
        # Parameter being written then commits the same value, which sends no second event)
        self._publish_readout()

    def _write_binning(self, binning: int) -> None:
        b = self._camera()
        try:
            b.set_binning(binning)
        except AcquisitionRunning:
            raise
        except ValueError as exc:
            raise ParameterError(f"Binning: {exc}") from exc

    def _write_roi(self, value: Any) -> None:
        try:
            values = [int(v) for v in np.asarray(value).ravel()]
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"Roi: expected 4 integers x, y, width, height, got {value!r}") from exc
        if len(values) != 4:
            raise ParameterError(f"Roi: expected 4 integers x, y, width, height, got {len(values)} values")
        b = self._camera()
        try:
            b.set_roi(Roi(*values))
        except AcquisitionRunning:
            raise
        except ValueError as exc:
            raise ParameterError(f"Roi: {exc}") from exc
        self.readout_time.publish(b.readout_time_s())

    # ------------------------------------------------------------------ lifecycle
    def _open_backend(self) -> bool:
        try:
            backend = self._backend_factory()
            backend.open()
        except CameraError as exc:
            self._open_error = str(exc)
            self.backend = None
            return False
        except Exception as exc:  # noqa: BLE001 - an SDK surprise is the camera's error, never the server's death
            self.log.exception("%s: opening the camera failed", self.label)
            self._open_error = f"opening the camera failed unexpectedly ({type(exc).__name__}: {exc})"
            self.backend = None
            return False
        self.backend = backend
        self._open_error = ""
        return True

    def start(self) -> None:
        super().start()
        self.update_state()

    def stop(self) -> None:
        try:
            self.stop_acquisition()
        except CameraError as exc:
            self.log.error("%s: acquisition did not stop at shutdown: %s", self.label, exc)
        super().stop()
        if self.backend is not None:
            self.backend.close()

    # ------------------------------------------------------------------ health
    @property
    def communication_ok(self) -> bool:
        return self.backend is not None

    # ------------------------------------------------------------------ acquisition
    @property
    def acquiring(self) -> bool:
        t = self._acq_thread
        return t is not None and t.is_alive()

    def snap(self) -> None:
        """One frame (a 1-frame sequence), whatever NbFrames says. Returns at once."""
        self.start_acquisition(1)

    def prepare_acquisition(self) -> None:
        """Make the frame sink (the ring) for the current ROI and binning now, as a frame
        grabber allocates its buffers before it is armed (Lima's ``prepareAcq``): the first
        frame of the next acquisition then does not wait for it (~0.15 s for 256 MiB, which
        made a continuous scan's first window overrun its trigger period), and a ring that does
        not fit is refused before a scan moves anything. Nothing to do while acquiring: the
        running acquisition's ring is the one for the current shape."""
        with self._acq_lock:
            b = self._camera()
            if self.acquiring:
                return
            self._make_sink(b)
        self.update_state()

    def _make_sink(self, b: CameraBackend) -> FrameSink:
        """The sink for the camera's current frame shape (kept by the factory while the shape is
        unchanged); a sink that cannot be made is an ALARM that refuses acquisitions, cleared
        by the next one that can be made."""
        h, w = b.frame_shape()
        try:
            sink = self._sink_factory(h, w)
        except Exception as exc:  # noqa: BLE001 - the sink's own errors (the ring) say what to change
            # Nothing is acquired that could not be kept; ALARM until an acquisition can store
            # its frames again (the next start that finds room clears it)
            self._sink_alarm = f"Frames cannot be stored, acquisition refused: {exc}"
            self.record_error(self._sink_alarm)
            self.update_state()
            raise CameraError(self._sink_alarm) from exc
        self._sink_alarm = ""  # only the ring's: a preparation leaves an acquisition's failure shown
        return sink

    def start_acquisition(self, nb_frames: int | None = None) -> None:
        with self._acq_lock:
            b = self._camera()
            if self.acquiring:
                raise AcquisitionRunning("an acquisition is already running: StopAcquisition first")
            n = int(self.nb_frames.value or 0) if nb_frames is None else nb_frames
            sink = self._make_sink(b)
            self._alarm = ""  # the last acquisition's failure: this one starts afresh
            self._ended_by = ""
            self._frames = self._lost = 0
            self._fps = 0.0
            self._acq_stop.clear()
            self._start_backend(b, n)
            self._acq_desc = "live (continuous)" if n == 0 else f"sequence of {n} frame{'s' if n != 1 else ''}"
            self._live_mode = n == 0
            self._acq_thread = threading.Thread(
                target=self._acquire, args=(b, sink, n), name="pvcam acquisition", daemon=True)
            self._acq_thread.start()
        self.frames_acquired.publish(0)
        self.frames_lost.publish(0)
        self.frame_rate.publish(0.0)
        self.live.publish(self._live_mode)
        self.update_state()

    def _start_backend(self, b: CameraBackend, remaining: int) -> None:
        if remaining == 0 or remaining > MAX_SEQUENCE:
            b.start_live(self.buffer_frames)
        else:
            b.start_sequence(remaining)
        self._wall0 = time.time()

    def stop_acquisition(self) -> None:
        self._acq_stop.set()
        b = self.backend
        if b is not None and b.acquiring:
            b.stop()  # wakes a poll in progress
        t = self._acq_thread
        if t is not None and t is not threading.current_thread():
            t.join(5)
        # the thread's own last publish may have run while it was still alive: say it now
        self.live.publish(self._live_mode and self.acquiring)
        self.update_state()

    def software_trigger(self) -> None:
        b = self._camera()
        if not self.acquiring:
            raise AcquisitionNotActive("SoftwareTrigger refused: no acquisition is running; StartAcquisition first")
        mode = b.get_trigger_mode()
        if mode not in SOFTWARE_TRIGGER_MODES:
            name = {v: enum_label(k) for k, v in self._trigger_modes.items()}.get(mode, str(mode))
            raise CameraError(f"SoftwareTrigger refused: TriggerMode is {name}; set a software trigger mode first")
        b.software_trigger()

    def _acquire(self, b: CameraBackend, sink: FrameSink, nb_frames: int) -> None:
        base = 0  # frame numbers continue across recoveries
        last_nr = 0
        last_frame = time.monotonic()
        eofs: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)
        mode = b.get_trigger_mode()
        period = b.get_exposure() + b.readout_time_s()
        try:
            while not self._acq_stop.is_set() and (nb_frames == 0 or self._frames + self._lost < nb_frames):
                try:
                    frame = b.poll_frame(POLL_TIMEOUT_S)
                except FrameTimeout:
                    waited = time.monotonic() - last_frame
                    if mode in EXTERNAL_TRIGGER_MODES:
                        if self.trigger_timeout_s and waited > self.trigger_timeout_s:
                            name = {v: enum_label(k) for k, v in self._trigger_modes.items()}.get(mode, str(mode))
                            self._alarm = (
                                f"External trigger time-out: no frame for {waited:.1f} s in trigger mode {name} "
                                f"after {self._frames} frame(s); acquisition stopped. Check the trigger source and "
                                "cable, or use TriggerMode Internal.")
                            self.record_error(self._alarm)
                            break
                    elif mode not in SOFTWARE_TRIGGER_MODES and waited > max(self.stall_timeout_s, 5 * period + 1):
                        self.record_error(f"acquisition stuck: no frame for {waited:.1f} s; aborting and re-opening "
                                          "the camera")
                        try:
                            b.recover()
                        except CameraError as exc:
                            raise CameraConnectionLost(f"the stuck camera could not be re-opened: {exc}") from exc
                        self._recoveries += 1
                        base += last_nr
                        last_nr = 0
                        remaining = 0 if nb_frames == 0 else nb_frames - self._frames - self._lost
                        self._start_backend(b, remaining)
                        last_frame = time.monotonic()
                    continue
                except AcquisitionNotActive:
                    break
                except FrameLost as exc:  # it took the next number(s): count it, go on
                    self._lost += exc.count
                    last_nr += exc.count
                    self.log.debug("%s: %s", self.label, exc)
                    continue
                last_frame = time.monotonic()
                gap = frame.frame_number - last_nr - 1
                if gap > 0:
                    self._lost += gap
                last_nr = frame.frame_number
                eofs.append(frame.timestamp_eof_s)
                eof_wall = self._wall0 + frame.timestamp_eof_s
                try:
                    sink.write_frame(frame.pixels, base + frame.frame_number, self._wall0 + frame.timestamp_bof_s,
                                     eof_wall, frame.exposure_s)
                except Exception as exc:  # noqa: BLE001 - a ring problem must not end the acquisition
                    self.record_error(f"frame {base + frame.frame_number} not written to the ring: {exc}")
                self._frames += 1
                if len(eofs) >= 2 and eofs[-1] > eofs[0]:
                    self._fps = (len(eofs) - 1) / (eofs[-1] - eofs[0])
                self._latest = (frame.pixels, base + frame.frame_number, eof_wall, self._latest[3] + 1)
        except CameraConnectionLost as exc:
            self._connection_lost(b, exc)
        except CameraError as exc:
            self._alarm = f"Acquisition failed: {exc}. Run Init to re-open the camera."
            self.record_error(self._alarm)
        except Exception as exc:  # noqa: BLE001 - the thread must report, never die silently
            self.log.exception("acquisition thread failed")
            self._alarm = f"Acquisition failed unexpectedly: {exc!r}. Run Init."
            self.record_error(self._alarm)
        finally:
            try:
                if b.acquiring and self.backend is b:
                    b.stop()
            except CameraError as exc:
                self.record_error(f"the acquisition did not stop cleanly: {exc}")
            self.request_poll()

    def _connection_lost(self, b: CameraBackend, exc: CameraError) -> None:
        """The camera stopped answering mid-acquisition: close it; FAULT until the monitor re-opens it."""
        when = time.strftime("%H:%M:%S")
        self._ended_by = f"the camera connection was lost at {when} ({exc})"
        self.record_error(f"acquisition ended: {self._ended_by}")
        self._open_error = "not re-opened yet"
        self.backend = None
        try:
            b.close()
        except Exception as close_exc:  # noqa: BLE001 - a vanished camera may not close cleanly
            self.log.warning("%s: closing the lost camera: %s", self.label, close_exc)
        self.request_poll()

    # ------------------------------------------------------------------ monitor
    def poll_once(self) -> float:
        """One monitor pass: re-open a camera that is not open (every ``reopen_period_s``), else
        the temperature (every ``poll_period_s``), the readout time after an acquisition, and the
        progress and preview (at the preview's cadence while acquiring)."""
        now = time.monotonic()
        if self.backend is None:
            if now >= self._next_open:
                self._next_open = now + self.reopen_period_s
                if self._open_backend():
                    self.log.info("%s: camera %s opened", self.label, self.backend.name if self.backend else "")
                    try:
                        self._publish_settings()
                    except CameraError as exc:
                        self.record_error(f"reading the settings failed: {exc}")
            self.update_state()
            return 0.5
        acquiring = self.acquiring
        if self._was_acquiring and not acquiring:  # the camera computed the readout time at set-up
            try:
                self.readout_time.publish(self.backend.readout_time_s())
            except CameraError as exc:
                self.record_error(f"reading the readout time failed: {exc}")
        self._was_acquiring = acquiring
        if now >= self._next_temperature:
            self._next_temperature = now + self.poll_period_s
            self._read_temperature(self.backend)
        self._publish_progress(force=not acquiring)  # the last frame of an acquisition at once
        self.update_state()
        if acquiring:  # wake at the next preview deadline, not one period after this pass
            wait = max(0.002, self._last_preview + self.preview_period_s - time.monotonic())
        else:
            wait = min(self.poll_period_s, 0.5)
        return min(wait, max(0.01, self._next_temperature - time.monotonic()))

    def _read_temperature(self, b: CameraBackend) -> None:
        """Publish the sensor temperature; a failure marks it INVALID and is recorded once (not at
        every poll: a camera without a temperature sensor would fill the log)."""
        try:
            self.temperature.publish(b.temperature())
            self._temperature_error = ""
        except CameraError as exc:
            self.temperature.invalidate()
            if str(exc) != self._temperature_error:
                self._temperature_error = str(exc)
                self.record_error(f"temperature read failed: {exc}")

    def _publish_progress(self, force: bool = False) -> None:
        # the preview first: a client that sees the new frame count finds the new image too
        now = time.monotonic()
        image, number, eof_wall, seq = self._latest  # read once: the acquisition thread replaces it whole
        rebin = self._force_preview and image is not None
        if rebin or (seq != self._published_seq
                     and (force or now - self._last_preview >= self.preview_period_s)):
            self._force_preview = False
            self._published_seq = seq
            # on a fixed cadence (no drift from the time each pass takes), never bunched after a pause
            self._last_preview = max(self._last_preview + self.preview_period_s, now - self.preview_period_s / 2)
            if image is not None:
                image = bin_image(image, int(self.preview_binning.value or 1))
            # number and time first: a client pairs LastImage with the number received just before it
            self.last_image_frame_number.publish(number, force=True)
            self.last_image_time.publish(eof_wall, force=True)
            self.last_image.publish(image, force=True)
        self.frames_acquired.publish(self._frames)
        self.frames_lost.publish(self._lost)
        self.live.publish(self._live_mode and self.acquiring)
        self.frame_rate.publish(round(self._fps, 3))

    # ------------------------------------------------------------------ state
    def evaluate_state(self) -> tuple[DeviceState, str]:
        b = self.backend  # once: the acquisition thread drops it when the connection is lost
        if b is None:
            lost = f"{self._ended_by}; re-opening: " if self._ended_by else ""
            return DeviceState.FAULT, (
                f"Camera not available: {lost}{self._open_error}. Retrying every {self.reopen_period_s:g} s; "
                "check the cable, the power and the CameraName and Backend properties.")
        uncounted = "" if b.counts_driver_losses else (
            "; frames lost between camera and host cannot be counted (this camera gives no frame metadata): "
            "FramesLost counts only frames the server could not take in time")
        if self.acquiring:
            lost = f", {self._lost} lost" if self._lost else ""
            return DeviceState.RUNNING, f"Acquiring {self._acq_desc}{lost}{uncounted}"
        if self._sink_alarm or self._alarm:
            return DeviceState.ALARM, self._sink_alarm or self._alarm
        lost = f" ({self._lost} lost)" if self._lost else ""
        ended = f"; ended early: {self._ended_by}; start it again when ready" if self._ended_by else ""
        return DeviceState.ON, f"Idle; last acquisition: {self._frames} frame(s){lost}{ended}{uncounted}"
