"""A simulated Photometrics Prime BSI, behaving as PyVCAM reports the real one.

What is modelled, and why:

* geometry: 2048x2048 sensor, ROI and binning validated as the device must validate them;
* the speed table (ports -> speeds -> gains, each with bit depth and pixel time): changing the
  port resets speed and gain, as PVCAM does, so the cascade order matters here as on the camera;
* timing: a rolling-shutter readout takes ``rows x line time`` (line time from the pixel time),
  frames follow each other every ``exposure + readout``: the frame rate follows exposure and ROI
  height (full frame at 5 ns/pixel: ~43 fps at 0 exposure; a 512-row ROI: ~170 fps);
* trigger modes with the SDK values: Internal runs freely, Software-first waits for one
  software trigger, Software-edge makes one frame per trigger, and the external modes wait for
  triggers on a cable that the simulation never receives (``poll_frame`` times out);
* the live circular buffer: a consumer slower than the camera loses the oldest frames, which
  shows as frame-number gaps, exactly the field problem the device must count;
* temperature converging exponentially to the setpoint (floor set by the fan speed);
* pixels: an offset of ~100 ADU with read and shot noise, a frame counter in the first two
  pixels, and the beam spot given by the virtual bench's ``scene`` callable;
* ``free_run``: frames as fast as the host can make them (benchmarks), no losses;
* :meth:`SimulatedPrimeBsi.inject_stuck_acquisition`: the camera stops delivering and stays busy
  until ``abort`` + re-open, as after a process killed mid-acquisition.

Frames are cheap and their noise is a real camera's, so compressed recordings of them have the
compression ratios a real camera gives (``benchmarks/bench_frames.py``): a noise pool (offset
plus read noise, ``uint16``) and a pool of unit normal deviates (for the shot noise) are generated
once per process; each frame is a copy of a randomly placed slice of the first, and the spot,
with its shot noise scaled from a randomly placed slice of the second, is added in its window
only. Two RNG calls per frame, never one per pixel. Measured on the 2-core development VM, per
full 2048x2048 frame: 0.9 ms with the lab's spot (sigma 12 px), 3.7 ms with a sigma 150 px beam,
8.9 ms with a beam filling the sensor (sigma 250 px): 100 fps and more in every case.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np

from .backend import (
    EXT_TRIG_INTERNAL,
    EXT_TRIG_SOFTWARE_EDGE,
    EXT_TRIG_SOFTWARE_FIRST,
    EXTERNAL_TRIGGER_MODES,
    FAN_SPEEDS,
    PVCAM_EXPOSURE_MODES,
    AcquisitionNotActive,
    AcquisitionRunning,
    CameraBackend,
    CameraError,
    Frame,
    FrameTimeout,
    Gain,
    ReadoutPort,
    Roi,
    Speed,
    validate_binning,
    validate_roi,
)

#: ``scene(t) -> (spot_x_px, spot_y_px, sigma_px, peak_adu)`` in unbinned sensor pixels, or None.
Scene = Callable[[float], "tuple[float, float, float, float] | None"]

SENSOR_WIDTH = 2048
SENSOR_HEIGHT = 2048
PIXEL_SIZE_UM = 6.5
OFFSET_ADU = 100
READ_NOISE_ADU = 1.6
#: Line time = pixel time x this factor (2048 columns read by the column ADCs plus overhead):
#: 5 ns/pixel gives 11.3 us per row, 23 ms per full frame, ~43 fps as on a real Prime BSI.
LINE_TIME_PER_PIXEL_TIME = 2200
PRIME_BSI_SPEED_TABLE: tuple[ReadoutPort, ...] = (
    ReadoutPort(0, "Sensitivity", (
        Speed(0, "5 ns/pixel", 5, (Gain(1, "Full well", 11), Gain(2, "Balanced", 11), Gain(3, "Sensitivity", 11))),
        Speed(1, "10 ns/pixel", 10, (Gain(1, "Default", 16), Gain(2, "Full well", 12), Gain(3, "Balanced", 12),
                                     Gain(4, "Sensitivity", 12))),
    )),
    ReadoutPort(1, "Speed", (
        Speed(0, "5 ns/pixel", 5, (Gain(1, "Full well", 8), Gain(2, "Sensitivity", 8))),
    )),
)
PRIME_BSI_BINNINGS: tuple[tuple[int, int], ...] = ((1, 1), (2, 2))
EXPOSURE_LIMITS_S = (1e-6, 3600.0)
TEMPERATURE_SETPOINT_LIMITS = (-25.0, 25.0)
#: Lowest temperature the cooler holds at each fan speed (High, Medium, Low, Off).
FAN_FLOOR_C = (-25.0, -23.0, -20.0, -5.0)
AMBIENT_C = 25.0
COUNTER_PIXELS = 2  # frame number in pixels (0, 0) (low 16 bits) and (0, 1) (high 16 bits)

_pool_lock = threading.Lock()
_pools: dict[str, np.ndarray] = {}
POOL_SLACK = 1 << 16
SPOT_BLOCK_PIXELS = 1 << 17  # spot rendered in blocks of rows of this many pixels (512 KiB of float32)


def noise_pool() -> np.ndarray:
    """Offset + read noise for one full frame plus slack, generated once per process (~0.2 s)."""
    with _pool_lock:
        pool = _pools.get("dark")
        if pool is None:
            rng = np.random.default_rng(20240611)
            n = SENSOR_WIDTH * SENSOR_HEIGHT + POOL_SLACK
            noise = rng.normal(OFFSET_ADU, READ_NOISE_ADU, n).round()
            pool = np.clip(noise, 0, 65535).astype(np.uint16)
            _pools["dark"] = pool
        return pool


def _normal_pool() -> np.ndarray:
    """Unit normal deviates (float32) for the shot noise of a spot as large as the sensor plus
    slack, generated once per process on first use (~0.15 s): a spot's noise is a randomly placed
    slice of it, scaled by the square root of the signal."""
    with _pool_lock:
        normal = _pools.get("normal")
        if normal is None:
            rng = np.random.default_rng(20240612)
            normal = rng.standard_normal(SENSOR_WIDTH * SENSOR_HEIGHT + POOL_SLACK, dtype=np.float32)
            _pools["normal"] = normal
        return normal


class SimulatedPrimeBsi(CameraBackend):
    """The sim backend (see the module docstring for what it models)."""

    def __init__(
        self,
        name: str = "pvcamUSB_0",
        *,
        scene: Scene | None = None,
        free_run: bool = False,
        cooling_time_constant_s: float = 20.0,
        seed: int | None = None,
    ) -> None:
        self._name = name
        self.scene = scene
        self.free_run = free_run
        self.cooling_time_constant_s = cooling_time_constant_s
        self._rng = np.random.default_rng(seed)
        self._cond = threading.Condition(threading.RLock())
        self._open = False
        self._stuck = False
        # settings (what the camera holds)
        self._exposure_s = 0.01
        self._trigger_mode = EXT_TRIG_INTERNAL
        self._port, self._speed, self._gain = 0, 0, 1
        self._binning = 1
        self._roi = Roi(0, 0, SENSOR_WIDTH, SENSOR_HEIGHT)
        self._fan = 0
        self._setpoint = -20.0
        # thermal state: temperature T0 at time t0, relaxing towards the target
        self._t_temp0 = time.monotonic()
        self._temp0 = AMBIENT_C
        # acquisition state
        self._mode: str | None = None  # "live", "sequence" or None
        self._t0 = 0.0
        self._wall0 = 0.0
        self._nb_frames = 0
        self._buffer_frames = 0
        self._delivered = 0
        self._triggers: list[float] = []
        self._acq_exposure = 0.0
        self._acq_readout = 0.0
        self._acq_shape = (SENSOR_HEIGHT, SENSOR_WIDTH)
        self._acq_roi = self._roi
        self._acq_binning = 1
        self._acq_bit_depth = 11
        self._acq_trigger = EXT_TRIG_INTERNAL
        self._ahead: tuple[float, int, np.ndarray] | None = None  # a frame rendered while it exposes (poll_frame)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        with self._cond:
            if self._stuck:
                raise CameraError(f"{self._name}: camera busy (a previous acquisition was not aborted)")
            self._open = True
        noise_pool()

    def close(self) -> None:
        with self._cond:
            if not self._stuck:
                self._end_acquisition()
            self._open = False

    def recover(self) -> None:
        """``abort`` clears a stuck acquisition, then close and re-open; settings persist (the
        sim keeps them in the camera, as re-applying would)."""
        with self._cond:
            self._stuck = False
            self._end_acquisition()
            self._open = False
        self.open()
        with self._cond:
            self.set_readout(self._port, self._speed, self._gain)

    def inject_stuck_acquisition(self) -> None:
        """Fault injection: the running acquisition stops delivering, the camera stays busy."""
        with self._cond:
            self._stuck = True
            self._cond.notify_all()

    def _require_open(self) -> None:
        if not self._open:
            raise CameraError(f"{self._name}: camera is not open")

    def _require_idle(self, what: str) -> None:
        self._require_open()
        if self._mode is not None:
            raise AcquisitionRunning(f"cannot change {what} while acquiring: stop the acquisition first")

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return self._name

    @property
    def sensor_size(self) -> tuple[int, int]:
        return (SENSOR_WIDTH, SENSOR_HEIGHT)

    @property
    def speed_table(self) -> tuple[ReadoutPort, ...]:
        return PRIME_BSI_SPEED_TABLE

    @property
    def trigger_modes(self) -> dict[str, int]:
        return dict(PVCAM_EXPOSURE_MODES)

    @property
    def binnings(self) -> tuple[tuple[int, int], ...]:
        return PRIME_BSI_BINNINGS

    @property
    def fan_speeds(self) -> tuple[str, ...]:
        return FAN_SPEEDS

    @property
    def exposure_limits_s(self) -> tuple[float, float]:
        return EXPOSURE_LIMITS_S

    @property
    def temperature_setpoint_limits(self) -> tuple[float, float]:
        return TEMPERATURE_SETPOINT_LIMITS

    # ------------------------------------------------------------------ settings
    def get_exposure(self) -> float:
        return self._exposure_s

    def set_exposure(self, seconds: float) -> None:
        lo, hi = EXPOSURE_LIMITS_S
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and lo <= seconds <= hi):
            raise ValueError(f"exposure time {seconds!r} s is outside {lo:g} .. {hi:g} s")
        with self._cond:
            self._require_idle("the exposure time")
            self._exposure_s = float(seconds)

    def get_trigger_mode(self) -> int:
        return self._trigger_mode

    def set_trigger_mode(self, value: int) -> None:
        if value not in PVCAM_EXPOSURE_MODES.values():
            raise ValueError(f"exposure mode {value} is not one of {PVCAM_EXPOSURE_MODES}")
        with self._cond:
            self._require_idle("the trigger mode")
            self._trigger_mode = value

    def get_readout(self) -> tuple[int, int, int]:
        return (self._port, self._speed, self._gain)

    def set_readout(self, port: int, speed: int, gain: int) -> None:
        ports = {p.value: p for p in PRIME_BSI_SPEED_TABLE}
        if port not in ports:
            raise ValueError(f"readout port {port} does not exist; choose one of "
                             f"{', '.join(f'{p.value}={p.name}' for p in PRIME_BSI_SPEED_TABLE)}")
        ports[port].speed(speed).gain(gain)  # validates the whole cascade first
        with self._cond:
            self._require_idle("the readout port, speed or gain")
            # PVCAM: a new port resets speed to 0 and gain to the first; then speed, then gain
            self._port, self._speed, self._gain = port, 0, ports[port].speeds[0].gains[0].index
            self._speed = speed
            self._gain = gain

    def get_binning(self) -> int:
        return self._binning

    def set_binning(self, binning: int) -> None:
        with self._cond:
            self._require_idle("the binning")
            self._binning = validate_binning(binning, PRIME_BSI_BINNINGS, self._roi)

    def get_roi(self) -> Roi:
        return self._roi

    def set_roi(self, roi: Roi) -> None:
        with self._cond:
            self._require_idle("the ROI")
            self._roi = validate_roi(roi, self.sensor_size, self._binning)

    def get_fan_speed(self) -> int:
        return self._fan

    def set_fan_speed(self, value: int) -> None:
        if value not in range(len(FAN_SPEEDS)):
            raise ValueError(f"fan speed {value} is not one of {', '.join(f'{i}={n}' for i, n in enumerate(FAN_SPEEDS))}")
        with self._cond:
            self._require_open()
            self._retarget_temperature()
            self._fan = value

    def get_temperature_setpoint(self) -> float:
        return self._setpoint

    def set_temperature_setpoint(self, celsius: float) -> None:
        lo, hi = TEMPERATURE_SETPOINT_LIMITS
        if not (isinstance(celsius, int | float) and math.isfinite(celsius) and lo <= celsius <= hi):
            raise ValueError(f"temperature setpoint {celsius!r} degC is outside {lo:g} .. {hi:g} degC")
        with self._cond:
            self._require_open()
            self._retarget_temperature()
            self._setpoint = round(float(celsius), 2)  # PVCAM holds hundredths of a degree

    def _temperature_target(self) -> float:
        return max(self._setpoint, FAN_FLOOR_C[self._fan])

    def _temperature_at(self, t: float) -> float:
        tau = max(self.cooling_time_constant_s, 1e-6)
        target = self._temperature_target()
        return target + (self._temp0 - target) * math.exp(-(t - self._t_temp0) / tau)

    def _retarget_temperature(self) -> None:
        now = time.monotonic()
        self._temp0 = self._temperature_at(now)
        self._t_temp0 = now

    def temperature(self) -> float:
        with self._cond:
            self._require_open()
            return round(self._temperature_at(time.monotonic()), 2)

    def bit_depth(self) -> int:
        port = {p.value: p for p in PRIME_BSI_SPEED_TABLE}[self._port]
        return port.speed(self._speed).gain(self._gain).bit_depth

    def line_time_s(self) -> float:
        port = {p.value: p for p in PRIME_BSI_SPEED_TABLE}[self._port]
        return port.speed(self._speed).pixel_time_ns * 1e-9 * LINE_TIME_PER_PIXEL_TIME

    def readout_time_s(self) -> float:
        return self._roi.height * self.line_time_s()

    # ------------------------------------------------------------------ acquisition
    @property
    def acquiring(self) -> bool:
        return self._mode is not None

    def start_live(self, buffer_frames: int) -> None:
        if buffer_frames < 2:
            raise ValueError(f"a live circular buffer needs at least 2 frames, not {buffer_frames}")
        self._start("live", 0, buffer_frames)

    def start_sequence(self, nb_frames: int) -> None:
        if not 1 <= nb_frames <= 65535:
            raise ValueError(f"a sequence has 1 to 65535 frames, not {nb_frames}")
        self._start("sequence", nb_frames, nb_frames)

    def _start(self, mode: str, nb_frames: int, buffer_frames: int) -> None:
        with self._cond:
            self._require_open()
            if self._stuck:
                raise CameraError(f"{self._name}: camera busy (acquisition stuck): abort and re-open the camera")
            if self._mode is not None:
                raise AcquisitionRunning("an acquisition is already running: stop it first")
            self._mode = mode
            self._nb_frames = nb_frames
            self._buffer_frames = buffer_frames
            self._delivered = 0
            self._triggers = []
            self._acq_exposure = self._exposure_s
            self._acq_readout = self.readout_time_s()
            self._acq_roi = self._roi
            self._acq_binning = self._binning
            self._acq_shape = (self._roi.height // self._binning, self._roi.width // self._binning)
            self._acq_bit_depth = self.bit_depth()
            self._acq_trigger = self._trigger_mode
            self._t0 = time.monotonic()
            self._wall0 = time.time()
            self._ahead = None

    def stop(self) -> None:
        with self._cond:
            if self._stuck:
                return  # a stuck camera ignores finish; only abort + re-open (recover) helps
            self._end_acquisition()

    def _end_acquisition(self) -> None:
        self._mode = None
        self._cond.notify_all()

    def software_trigger(self) -> None:
        with self._cond:
            if self._mode is None:
                raise AcquisitionNotActive("software trigger refused: no acquisition is running")
            if self._acq_trigger not in (EXT_TRIG_SOFTWARE_FIRST, EXT_TRIG_SOFTWARE_EDGE):
                names = {v: k for k, v in PVCAM_EXPOSURE_MODES.items()}
                raise CameraError(
                    f"software trigger refused: the trigger mode is {names[self._acq_trigger]}; "
                    "use Software-first or Software-edge"
                )
            self._triggers.append(time.monotonic())
            self._cond.notify_all()

    # frame k (1-based): (begin of exposure, end of readout) in monotonic seconds, or None
    def _frame_times(self, k: int) -> tuple[float, float] | None:
        period = self._acq_exposure + self._acq_readout
        mode = self._acq_trigger
        if mode == EXT_TRIG_INTERNAL:
            start = self._t0
        elif mode == EXT_TRIG_SOFTWARE_FIRST:
            if not self._triggers:
                return None
            start = self._triggers[0]
        elif mode == EXT_TRIG_SOFTWARE_EDGE:
            if k > len(self._triggers):
                return None
            # a trigger during the previous frame's exposure/readout starts the next one after it
            bof = self._triggers[0]
            for i in range(1, k):
                bof = max(self._triggers[i], bof + period)
            return bof, bof + period
        else:  # external modes: the trigger input never sees an edge in the simulation
            return None
        bof = start + (k - 1) * period
        return bof, bof + period

    def _newest_ready(self, now: float) -> int:
        """Highest frame number whose readout is complete at ``now`` (internal/first modes)."""
        period = self._acq_exposure + self._acq_readout
        mode = self._acq_trigger
        if mode == EXT_TRIG_INTERNAL:
            start = self._t0
        elif mode == EXT_TRIG_SOFTWARE_FIRST and self._triggers:
            start = self._triggers[0]
        else:
            return self._delivered
        return max(0, int((now - start) / period)) if period > 0 else self._delivered + 1

    def poll_frame(self, timeout_s: float) -> Frame:
        deadline = time.monotonic() + max(0.0, timeout_s)
        # A real camera's frame is in the host's buffer at the end of its readout. The pixels of
        # a frame whose exposure has begun are therefore made while it exposes (outside the
        # lock), not after its end: rendering a full frame takes milliseconds that the camera
        # does not have. Kept on the camera: a poll that times out during a long exposure must not
        # render the same frame again at the next one.
        while True:
            render = None  # (frame number, begin of exposure) to render now, outside the lock
            with self._cond:
                while True:
                    if self._mode is None:
                        raise AcquisitionNotActive("acquisition not active")
                    now = time.monotonic()
                    if not self._stuck:
                        if self._mode == "sequence" and self._delivered >= self._nb_frames:
                            pass  # complete: PyVCAM waits for a frame that never comes, then times out
                        elif self.free_run and self._acq_trigger == EXT_TRIG_INTERNAL:
                            k = self._delivered + 1
                            bof, eof = now - self._acq_exposure, now
                            break
                        else:
                            if self._mode == "live" and self._acq_trigger not in EXTERNAL_TRIGGER_MODES:
                                newest = self._newest_ready(now)
                                if newest - self._delivered > self._buffer_frames:
                                    self._delivered = newest - self._buffer_frames  # overwritten: lost
                            k = self._delivered + 1
                            times = self._frame_times(k)
                            if times is not None and times[1] <= now:
                                bof, eof = times
                                break
                            if times is not None:
                                ahead = self._ahead
                                if times[0] <= now and (ahead is None or ahead[:2] != (self._t0, k)):
                                    render = (k, times[0])
                                    break
                                deadline_wait = min(deadline, times[1])
                                if deadline_wait > now:
                                    self._cond.wait(deadline_wait - now)
                                    continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise FrameTimeout(
                            "Frame timeout. Verify the timeout exceeds the exposure time. "
                            "If applicable, check external trigger source."
                        )
                    self._cond.wait(remaining)
                shape, roi, binning = self._acq_shape, self._acq_roi, self._acq_binning
                exposure, t0, bit_depth = self._acq_exposure, self._t0, self._acq_bit_depth
                if render is None:
                    self._delivered = k
                    ahead, self._ahead = self._ahead, None
            if render is None:
                break
            k, bof = render
            pixels = self._render(k, shape, roi, binning, bit_depth, time.time() - (time.monotonic() - bof))
            with self._cond:
                self._ahead = (t0, k, pixels)
        if ahead is not None and ahead[:2] == (t0, k):
            pixels = ahead[2]
        else:
            pixels = self._render(k, shape, roi, binning, bit_depth, time.time() - (time.monotonic() - bof))
        return Frame(pixels, k, bof - t0, eof - t0, exposure)

    # ------------------------------------------------------------------ pixels
    def _render(self, k: int, shape: tuple[int, int], roi: Roi, binning: int, bit_depth: int, t_wall: float) -> np.ndarray:
        pool = noise_pool()
        h, w = shape
        n = h * w
        off = int(self._rng.integers(0, POOL_SLACK))
        frame = pool[off : off + n].reshape(h, w).copy()
        if self.scene is not None:
            spot = self.scene(t_wall)
            if spot is not None:
                self._add_spot(frame, spot, roi, binning, bit_depth)
        if w >= COUNTER_PIXELS:
            frame[0, 0] = k & 0xFFFF
            frame[0, 1] = (k >> 16) & 0xFFFF
        return frame

    def _add_spot(self, frame: np.ndarray, spot: tuple[float, float, float, float], roi: Roi, binning: int,
                  bit_depth: int) -> None:
        x, y, sigma, peak = (float(v) for v in spot)
        if not (sigma > 0 and peak > 0 and math.isfinite(x + y + sigma + peak)):
            return
        h, w = frame.shape
        # spot centre in binned ROI pixels
        cx, cy, s = (x - roi.x) / binning, (y - roi.y) / binning, sigma / binning
        half = 4.0 * s + 1.0
        x0, x1 = max(0, int(cx - half)), min(w, int(cx + half) + 1)
        y0, y1 = max(0, int(cy - half)), min(h, int(cy + half) + 1)
        if x0 >= x1 or y0 >= y1:
            return
        # Separable Gaussian in float32: the signal and its shot-noise amplitude (the square root of
        # the signal, ADU ~ electrons at unit gain) are outer products of 1-D profiles, the noise a
        # randomly placed slice of precomputed normal deviates; worked in blocks of rows that stay
        # in the CPU cache. A spot filling the sensor renders in ~10 ms, the lab's in well under 1.
        gy = (peak * binning * binning) * np.exp(-0.5 * ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / s) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / s) ** 2)
        sgy, sgx = np.sqrt(gy), np.sqrt(gx)  # signal = outer(gy, gx) = outer(sgy, sgx) ** 2
        normal = _normal_pool()
        width = x1 - x0
        start = int(self._rng.integers(0, normal.size - (y1 - y0) * width + 1))
        rows = max(1, SPOT_BLOCK_PIXELS // width)
        block, noisy = np.empty((rows, width), np.float32), np.empty((rows, width), np.float32)
        top = (1 << bit_depth) - 1
        for r in range(0, y1 - y0, rows):
            n = min(rows, y1 - y0 - r)
            w, sig = block[:n], noisy[:n]
            np.multiply.outer(sgy[r : r + n], sgx, out=w)  # sqrt(signal)
            np.add(w, normal[start + r * width : start + (r + n) * width].reshape(n, width), out=sig)
            w *= sig  # sqrt(S) * (sqrt(S) + N) = signal + shot noise
            w += frame[y0 + r : y0 + r + n, x0:x1]  # + offset and read noise
            # no lower clip needed: S + sqrt(S) * N >= -N**2 / 4 > -10 ADU (|N| < 6), above -offset
            np.minimum(w, top, out=w)
            frame[y0 + r : y0 + r + n, x0:x1] = w
