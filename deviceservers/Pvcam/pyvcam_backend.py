"""The real camera through Photometrics' PyVCAM >= 2.3.2 (optional: ``pip install tangodaq[pvcam]``).

PyVCAM is imported only when this backend is built (``Backend=pyvcam``), so the server runs
without the SDK in simulation. It is written against PyVCAM 2.3.2 as its source reads
(``camera.py``, ``pvcmodule.cpp``, the ``pvcam.h`` it ships); 2.3.2 is the first release whose
speed table gives every gain its ``bit_depth`` and whose metadata keys, ``reset_frame_counter``
and speed setters are the ones used here. What this layer adds to PyVCAM, and why:

* every ``poll_frame`` has a time-out (PyVCAM's default waits forever: a camera in an external
  trigger mode with no trigger would hang the acquisition thread for good);
* frame numbers: the metadata ``frameNr`` when the camera has metadata (frames lost in the driver
  leave a gap there, never in PyVCAM's ``frame_count``, which counts EOF callbacks); without
  metadata only ``frame_count`` is known and :attr:`counts_driver_losses` is False, so the
  device can say such losses are not counted;
* timestamps: the camera's metadata clock counts from its power-up. It is reset before each
  acquisition where the camera has ``PARAM_METADATA_RESET_TIMESTAMP``; otherwise the offset is
  taken from the first frame (its EOF against the host clock). Frames carry seconds since the
  acquisition started either way;
* the live buffer is circular and overwrites (``CIRC_OVERWRITE``) with a queue as long as the
  buffer, so the oldest queued frame's slot is the one the next frame is written into: after
  each frame the newest frame count is looked at (``oldestFrame=False``, no copy), and a frame
  whose slot was being overwritten is reported as :class:`FrameLost`, as is a frame whose
  metadata cannot be decoded; neither ends the acquisition;
* ``start_seq`` keeps the whole sequence in one buffer (PVCAM caps it at 4 GiB: ~500 full
  frames). A sequence bigger than :attr:`SEQUENCE_BUFFER_BYTES` runs in live mode and ends after
  its frame count, with the same interface;
* parameters that are not ``ATTR_LIVE`` are never read while imaging (``pvcam.h``):
  ``PARAM_READOUT_TIME`` (which, besides, changes only at the next acquisition set-up, so it is
  read after each acquisition and scaled to a new ROI or speed until then) and, unless it is
  live, the temperature (the last value read before the acquisition is returned);
* optional settings (fan, temperature set-point, metadata, timestamp reset) are used only when
  ``check_param`` says the camera has them (PyVCAM's ``fan_speed`` setter raises ValueError on a
  camera without fan control); ``uint8`` frames of 8-bit speeds become ``uint16``;
* errors: any exception while opening becomes a CameraError (the device shows FAULT and retries);
  ``"Frame readout failed."`` and the EOF callback's errors (cable pulled) become
  :class:`CameraConnectionLost`; a KeyError from a closed handle ends the poll; ``sw_trigger``'s
  ValueError becomes a CameraError;
* :meth:`PyVcamBackend.recover`: abort, close, re-open, re-apply everything (port, speed, gain in
  that order), for a camera left busy by a stuck or killed acquisition.

Tested against ``tests/pyvcam_double.py``, a double of PyVCAM 2.3.2 built from its source, since
the SDK and a camera cannot be installed on the CI machines. It has not been run on a camera.
"""

from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np

from .backend import (
    AcquisitionNotActive,
    AcquisitionRunning,
    CameraBackend,
    CameraConnectionLost,
    CameraError,
    Frame,
    FrameLost,
    FrameTimeout,
    Gain,
    ReadoutPort,
    Roi,
    Speed,
    validate_binning,
    validate_roi,
)

PS = 1e-12
MIN_PYVCAM = (2, 3, 2)
_init_lock = threading.Lock()
_init_count = 0
#: pvcmodule's get_frame errors that mean the camera or its link failed (not one frame)
_CONNECTION_ERRORS = ("frame readout failed", "failed to get latest frame", "streaming to disk failed")
#: Consecutive undecodable frames after which the acquisition is declared failed (a persistent
#: PVCAM error, e.g. a status check failing on a vanished camera, looks the same as one bad frame)
MAX_CONSECUTIVE_BAD_FRAMES = 8
METADATA_BYTES = 4096  # headroom for the frame and ROI headers in front of the pixels


def import_pyvcam() -> tuple[ModuleType, Any, ModuleType]:
    """(pvc, Camera, constants) from PyVCAM, or a CameraError that says how to install it."""
    try:
        pvc = importlib.import_module("pyvcam.pvc")
        camera_mod = importlib.import_module("pyvcam.camera")
        const = importlib.import_module("pyvcam.constants")
    except ImportError as exc:
        raise CameraError(
            f"Backend=pyvcam needs PyVCAM >= 2.3.2 and the PVCAM runtime ({exc}): install the PVCAM SDK in "
            "/opt/pvcam and `pip install tangodaq[pvcam]`, or set Backend=sim"
        ) from exc
    version = getattr(importlib.import_module("pyvcam"), "__version__", "")
    try:
        parts = tuple(int(x) for x in str(version).split(".")[:3])
    except ValueError:
        parts = ()
    if parts and parts < MIN_PYVCAM:
        raise CameraError(
            f"PyVCAM {version} is installed; Backend=pyvcam needs PyVCAM >= 2.3.2 (gain bit depths, metadata "
            "keys, reset_frame_counter): `pip install -U 'pyvcam>=2.3.2'`"
        )
    return pvc, camera_mod.Camera, const


class PyVcamBackend(CameraBackend):
    """A PVCAM camera by name (``pvcamUSB_0``); empty name: the first camera detected."""

    #: Largest sequence held in one ``start_seq`` buffer; bigger ones run in live mode with a count
    #: (PVCAM refuses more than 4 GiB, and a 4 GiB buffer is a lot of RAM for one acquisition).
    SEQUENCE_BUFFER_BYTES = 1 << 30
    #: Live buffer of a live-backed sequence: this many bytes, at least 4 frames.
    LIVE_SEQUENCE_BUFFER_BYTES = 256 << 20

    def __init__(self, name: str = "") -> None:
        self._pvc, self._camera_cls, self._const = import_pyvcam()
        self._requested_name = name
        self._cam: Any = None
        self._lock = threading.RLock()
        self._mode: str | None = None
        self._camera_live = False  # the camera itself runs start_live (also for a long sequence)
        self._buffer_frames = 0
        self._seq_target = 0  # a live-backed sequence: frames wanted (0: none)
        self._seq_done = False
        self._last_number = 0
        self._bad_frames = 0
        self._t_start = 0.0
        self._ts_origin_ps: int | None = None
        self._exp_unit_s = 1e-3
        self._acq_exposure_s = 0.0
        # settings we hold so that a re-open can re-apply them
        self._exposure_s = 0.01
        self._trigger_mode: int | None = None
        self._readout: tuple[int, int, int] | None = None
        self._binning = 1
        self._roi: Roi | None = None
        self._fan: int | None = None
        self._setpoint: float | None = None
        # capabilities, read at open
        self._sensor = (0, 0)
        self._speed_table: tuple[ReadoutPort, ...] = ()
        self._trigger_modes: dict[str, int] = {}
        self._binnings: tuple[tuple[int, int], ...] = ((1, 1),)
        self._fan_speeds: tuple[str, ...] = ()
        self._exposure_limits = (0.0, 0.0)
        self._setpoint_limits = (0.0, 0.0)
        self._has: dict[str, bool] = {}
        self._live: dict[str, bool] = {}
        self._last_temp: float | None = None
        #: (seconds, sensor rows, pixel time ns) of the last set-up the camera computed a readout time for
        self._readout_ref: tuple[float, int, int] | None = None
        self._acq_geometry: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        global _init_count
        with _init_lock:
            if _init_count == 0:
                try:
                    self._pvc.init_pvcam()
                except Exception as exc:  # noqa: BLE001 - any failure is the camera's error
                    raise CameraError(f"PVCAM did not initialise: {exc}. Is the PVCAM runtime installed?") from exc
            _init_count += 1
        try:
            with self._lock:
                self._open_camera()
        except CameraError:
            self._release_pvcam()
            raise
        except Exception as exc:  # noqa: BLE001 - never let an SDK surprise kill the server
            self._release_pvcam()
            raise CameraError(f"camera {self._requested_name or '(any)'} could not be opened and set up "
                              f"({type(exc).__name__}: {exc}); Init retries") from exc

    def _open_camera(self) -> None:
        try:
            if self._requested_name:
                cam = self._camera_cls.select_camera(self._requested_name)
            else:
                cam = next(self._camera_cls.detect_camera())
        except (RuntimeError, StopIteration) as exc:
            names = self._available_names()
            raise CameraError(
                f"camera {self._requested_name or '(any)'} not found (PVCAM sees: {names or 'no camera'}). "
                "Check the USB/PCIe cable and power, and the CameraName property"
            ) from exc
        try:
            cam.open()
        except RuntimeError as exc:
            raise CameraError(
                f"camera {cam.name} could not be opened ({exc}); it may be busy in another process"
            ) from exc
        self._cam = cam
        try:
            self._read_capabilities()
            self._apply_settings()
        except Exception:
            self._cam = None
            try:
                cam.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise

    def _available_names(self) -> list[str]:
        try:
            return list(self._camera_cls.get_available_camera_names())
        except Exception:  # noqa: BLE001 - only for the message
            return []

    def _release_pvcam(self) -> None:
        global _init_count
        with _init_lock:
            _init_count = max(0, _init_count - 1)
            if _init_count == 0:
                try:
                    self._pvc.uninit_pvcam()
                except Exception:  # noqa: BLE001 - nothing to do about it
                    pass

    def _read_capabilities(self) -> None:
        cam, const = self._cam, self._const
        optional = {
            "metadata": "PARAM_METADATA_ENABLED", "reset_timestamp": "PARAM_METADATA_RESET_TIMESTAMP",
            "fan": "PARAM_FAN_SPEED_SETPOINT", "temp": "PARAM_TEMP", "setpoint": "PARAM_TEMP_SETPOINT",
            "readout_time": "PARAM_READOUT_TIME", "exp_res": "PARAM_EXP_RES",
        }
        self._has = {k: bool(hasattr(const, v) and cam.check_param(getattr(const, v))) for k, v in optional.items()}
        self._live = {}
        for key in ("temp", "setpoint", "fan"):
            try:
                self._live[key] = self._has[key] and bool(cam.get_param(getattr(const, optional[key]), const.ATTR_LIVE))
            except (AttributeError, RuntimeError):
                self._live[key] = False
        self._sensor = tuple(cam.sensor_size)  # type: ignore[assignment]
        ports = []
        for port_name, entry in cam.port_speed_gain_table.items():
            speeds = []
            for speed_name, sp in entry.items():
                if speed_name == "port_value":
                    continue
                gains = tuple(
                    Gain(int(g["gain_index"]), gain_name, int(g["bit_depth"]))
                    for gain_name, g in sp.items()
                    if isinstance(g, dict)
                )
                speeds.append(Speed(int(sp["speed_index"]), speed_name, int(sp["pixel_time"]), gains))
            speeds.sort(key=lambda s: s.index)
            ports.append(ReadoutPort(int(entry["port_value"]), port_name, tuple(speeds)))
        self._speed_table = tuple(sorted(ports, key=lambda p: p.value))
        self._trigger_modes = dict(sorted(cam.exp_modes.items(), key=lambda kv: kv[1]))
        binnings = cam.binnings
        self._binnings = tuple(tuple(b) for b in binnings) if binnings else ((1, 1), (2, 2), (4, 4), (8, 8))  # type: ignore[misc]
        self._fan_speeds = ()
        if self._has["fan"]:
            fans = dict(cam.fan_speeds.items())
            self._fan_speeds = tuple(name for name, _ in sorted(fans.items(), key=lambda kv: kv[1]))
        if self._has["exp_res"] and const.EXP_RES_ONE_MICROSEC in cam.exp_resolutions.values():
            cam.exp_res = const.EXP_RES_ONE_MICROSEC
            self._exp_unit_s = 1e-6
        else:
            if self._has["exp_res"]:
                cam.exp_res = const.EXP_RES_ONE_MILLISEC
            self._exp_unit_s = 1e-3  # PVCAM's default resolution
        self._exposure_limits = (
            max(1, cam.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MIN)) * self._exp_unit_s,
            cam.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MAX) * self._exp_unit_s,
        )
        self._setpoint_limits = (0.0, 0.0)
        if self._has["setpoint"]:
            self._setpoint_limits = (
                cam.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MIN) / 100.0,
                cam.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MAX) / 100.0,
            )
        # first open: adopt what the camera holds
        if self._trigger_mode is None:
            self._trigger_mode = int(cam.exp_mode)
        if self._readout is None:
            self._readout = (int(cam.readout_port), int(cam.speed), int(cam.gain))
        if self._roi is None:
            self._roi = Roi(0, 0, self._sensor[0], self._sensor[1])
        if self._fan is None:
            self._fan = int(cam.fan_speed) if self._has["fan"] else 0
        if self._setpoint is None:
            self._setpoint = float(cam.temp_setpoint) if self._has["setpoint"] else 0.0
        # the readout time of the last set-up (taken as full sensor at the current speed): the
        # exp_mode setter below sets up a 2x2 region, after which the value means nothing
        self._readout_ref = None
        if self._has["readout_time"]:
            try:
                self._readout_ref = (float(cam.readout_time) * 1e-6, self._sensor[1], self._pixel_time_ns())
            except (AttributeError, RuntimeError):
                pass
        if self._has["temp"]:
            try:
                self._last_temp = float(cam.temp)
            except (AttributeError, RuntimeError):
                self._last_temp = None

    def _pixel_time_ns(self) -> int:
        assert self._readout is not None
        port, speed, _ = self._readout
        return {p.value: p for p in self._speed_table}[port].speed(speed).pixel_time_ns

    def _apply_settings(self) -> None:
        """(Re-)apply every setting: after open and after recovery."""
        cam = self._cam
        if self._has["metadata"]:
            cam.metadata_enabled = True
        cam.exp_mode = self._trigger_mode
        assert self._readout is not None and self._roi is not None
        self._write_readout(*self._readout)
        self._write_geometry(self._roi, self._binning)
        cam.exp_time = self._exposure_units(self._exposure_s)
        if self._has["fan"] and self._fan is not None:
            cam.fan_speed = self._fan
        if self._has["setpoint"] and self._setpoint is not None:
            cam.temp_setpoint = self._setpoint

    def _write_readout(self, port: int, speed: int, gain: int) -> None:
        cam = self._cam
        cam.readout_port = port  # resets speed and gain on the camera: re-apply both, in order
        cam.speed = speed
        cam.gain = gain

    def _write_geometry(self, roi: Roi, binning: int) -> None:
        cam = self._cam
        cam.reset_rois()
        cam.set_roi(roi.x, roi.y, roi.width, roi.height)
        cam.binning = (binning, binning)

    def close(self) -> None:
        with self._lock:
            if self._cam is None:
                return
            try:
                if self._mode is not None:
                    self._cam.finish()
            except (RuntimeError, KeyError, ValueError):
                pass  # a vanished camera cannot abort: closing the handle is what is left
            try:
                self._cam.close()
            except (RuntimeError, KeyError, ValueError):
                pass
            finally:
                self._mode = None
                self._cam = None
                self._release_pvcam()

    def recover(self) -> None:
        with self._lock:
            self.close()  # pl_exp_abort, then the handle: the only way out of a stuck acquisition
            self.open()

    def _require_open(self) -> Any:
        if self._cam is None:
            raise CameraError("camera is not open")
        return self._cam

    def _require_idle(self, what: str) -> Any:
        cam = self._require_open()
        if self._mode is not None:
            raise AcquisitionRunning(f"cannot change {what} while acquiring: stop the acquisition first")
        return cam

    @staticmethod
    def _sdk_call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (RuntimeError, KeyError) as exc:
            raise CameraError(str(exc)) from exc

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return self._cam.name if self._cam is not None else self._requested_name

    @property
    def sensor_size(self) -> tuple[int, int]:
        return self._sensor

    @property
    def speed_table(self) -> tuple[ReadoutPort, ...]:
        return self._speed_table

    @property
    def trigger_modes(self) -> dict[str, int]:
        return dict(self._trigger_modes)

    @property
    def binnings(self) -> tuple[tuple[int, int], ...]:
        return self._binnings

    @property
    def fan_speeds(self) -> tuple[str, ...]:
        """The camera's fan speeds; empty for a camera without fan control."""
        return self._fan_speeds

    @property
    def exposure_limits_s(self) -> tuple[float, float]:
        return self._exposure_limits

    @property
    def temperature_setpoint_limits(self) -> tuple[float, float]:
        return self._setpoint_limits

    @property
    def counts_driver_losses(self) -> bool:
        return bool(self._has.get("metadata"))

    # ------------------------------------------------------------------ settings
    def _exposure_units(self, seconds: float) -> int:
        return max(1, int(round(seconds / self._exp_unit_s)))

    def get_exposure(self) -> float:
        return self._exposure_s

    def set_exposure(self, seconds: float) -> None:
        lo, hi = self._exposure_limits
        if not (isinstance(seconds, int | float) and lo <= seconds <= hi):
            raise ValueError(f"exposure time {seconds!r} s is outside {lo:g} .. {hi:g} s")
        with self._lock:
            cam = self._require_idle("the exposure time")
            try:
                cam.exp_time = self._exposure_units(seconds)
            except ValueError as exc:
                raise ValueError(f"exposure time {seconds} s refused by PyVCAM: {exc}") from exc
            self._exposure_s = self._exposure_units(seconds) * self._exp_unit_s

    def get_trigger_mode(self) -> int:
        return int(self._trigger_mode or 0)

    def set_trigger_mode(self, value: int) -> None:
        if value not in self._trigger_modes.values():
            raise ValueError(f"exposure mode {value} is not one of {self._trigger_modes}")
        with self._lock:
            cam = self._require_idle("the trigger mode")
            self._sdk_call(setattr, cam, "exp_mode", value)
            self._trigger_mode = value

    def get_readout(self) -> tuple[int, int, int]:
        assert self._readout is not None
        return self._readout

    def set_readout(self, port: int, speed: int, gain: int) -> None:
        ports = {p.value: p for p in self._speed_table}
        if port not in ports:
            raise ValueError(f"readout port {port} does not exist; choose one of "
                             f"{', '.join(f'{p.value}={p.name}' for p in self._speed_table)}")
        ports[port].speed(speed).gain(gain)
        with self._lock:
            self._require_idle("the readout port, speed or gain")
            previous = self._readout
            try:
                self._write_readout(port, speed, gain)
            except (RuntimeError, ValueError, AttributeError) as exc:
                if previous is not None:
                    self._write_readout(*previous)
                raise CameraError(f"readout port/speed/gain {port}/{speed}/{gain} refused: {exc}") from exc
            self._readout = (port, speed, gain)

    def get_binning(self) -> int:
        return self._binning

    def set_binning(self, binning: int) -> None:
        with self._lock:
            self._require_idle("the binning")
            assert self._roi is not None
            b = validate_binning(binning, self._binnings, self._roi)
            self._write_geometry(self._roi, b)
            self._binning = b

    def get_roi(self) -> Roi:
        assert self._roi is not None
        return self._roi

    def set_roi(self, roi: Roi) -> None:
        with self._lock:
            self._require_idle("the ROI")
            roi = validate_roi(roi, self._sensor, self._binning)
            self._write_geometry(roi, self._binning)
            self._roi = roi

    def get_fan_speed(self) -> int:
        return int(self._fan or 0)

    def set_fan_speed(self, value: int) -> None:
        if not self._fan_speeds:
            raise CameraError(f"camera {self.name} has no fan speed control (PARAM_FAN_SPEED_SETPOINT not available)")
        if value not in range(len(self._fan_speeds)):
            raise ValueError(f"fan speed {value} is not one of "
                             f"{', '.join(f'{i}={n}' for i, n in enumerate(self._fan_speeds))}")
        with self._lock:
            cam = self._require_open()
            if self._mode is not None and not self._live.get("fan"):
                raise AcquisitionRunning("the fan speed cannot be changed while the camera is imaging: stop first")
            try:
                cam.fan_speed = value
            except (RuntimeError, ValueError, AttributeError) as exc:
                raise CameraError(f"fan speed {value} refused by the camera: {exc}") from exc
            self._fan = value

    def get_temperature_setpoint(self) -> float:
        return float(self._setpoint or 0.0)

    def set_temperature_setpoint(self, celsius: float) -> None:
        if not self._has.get("setpoint"):
            raise CameraError(f"camera {self.name} has no temperature set-point (PARAM_TEMP_SETPOINT not available)")
        lo, hi = self._setpoint_limits
        if not (isinstance(celsius, int | float) and lo <= celsius <= hi):
            raise ValueError(f"temperature setpoint {celsius!r} degC is outside {lo:g} .. {hi:g} degC")
        with self._lock:
            cam = self._require_open()
            if self._mode is not None and not self._live.get("setpoint"):
                raise AcquisitionRunning("the temperature set-point cannot be changed while the camera is imaging: "
                                         "stop the acquisition first")
            try:
                cam.temp_setpoint = celsius
            except (RuntimeError, ValueError, AttributeError) as exc:
                raise CameraError(f"temperature set-point {celsius} degC refused by the camera: {exc}") from exc
            self._setpoint = round(float(celsius), 2)

    def temperature(self) -> float:
        with self._lock:
            cam = self._require_open()
            if not self._has.get("temp"):
                raise CameraError(f"camera {self.name} does not report its sensor temperature")
            if self._mode is not None and not self._live.get("temp"):
                if self._last_temp is None:
                    raise CameraError("the temperature cannot be read while the camera is imaging")
                return self._last_temp  # PARAM_TEMP is not live: not to be read while imaging
            self._last_temp = float(self._sdk_call(getattr, cam, "temp"))
            return self._last_temp

    def bit_depth(self) -> int:
        assert self._readout is not None
        port, speed, gain = self._readout
        return {p.value: p for p in self._speed_table}[port].speed(speed).gain(gain).bit_depth

    def readout_time_s(self) -> float:
        """The camera's PARAM_READOUT_TIME of the last set-up, scaled to the current rows and pixel
        time (exact after an acquisition with these settings; never read while imaging)."""
        assert self._roi is not None
        rows, pix = self._roi.height, self._pixel_time_ns()
        ref = self._readout_ref
        if ref is None or ref[1] <= 0 or ref[2] <= 0:
            return rows * pix * 1e-9 * 2200  # no camera value yet: a Prime BSI-like line time
        seconds, ref_rows, ref_pix = ref
        return seconds * (rows / ref_rows) * (pix / ref_pix)

    def _read_readout_time(self) -> None:
        """After an acquisition: PARAM_READOUT_TIME now describes its set-up."""
        if not self._has.get("readout_time") or self._cam is None:
            return
        try:
            self._readout_ref = (float(self._cam.readout_time) * 1e-6, *self._acq_geometry)
        except (AttributeError, RuntimeError, KeyError):
            pass

    # ------------------------------------------------------------------ acquisition
    @property
    def acquiring(self) -> bool:
        return self._mode is not None

    def _frame_bytes(self) -> int:
        h, w = self.frame_shape()
        return h * w * (1 if self.bit_depth() <= 8 else 2) + (METADATA_BYTES if self._has.get("metadata") else 0)

    def start_live(self, buffer_frames: int) -> None:
        with self._lock:
            cam = self._require_idle("the acquisition mode")
            self._begin("live", max(2, buffer_frames), 0)
            self._start_camera(cam, "live", self._buffer_frames)

    def start_sequence(self, nb_frames: int) -> None:
        if not 1 <= nb_frames <= 65535:
            raise ValueError(f"a sequence has 1 to 65535 frames, not {nb_frames}")
        with self._lock:
            cam = self._require_idle("the acquisition mode")
            frame_bytes = self._frame_bytes()
            if nb_frames * frame_bytes <= self.SEQUENCE_BUFFER_BYTES:
                self._begin("sequence", nb_frames, 0)
                self._start_camera(cam, "sequence", nb_frames)
            else:  # too big for one buffer: live mode, ended after nb_frames
                buffer = max(4, min(nb_frames, self.LIVE_SEQUENCE_BUFFER_BYTES // frame_bytes))
                self._begin("sequence", buffer, nb_frames)
                self._start_camera(cam, "live", buffer)

    def _begin(self, mode: str, buffer_frames: int, seq_target: int) -> None:
        self._buffer_frames = buffer_frames
        self._seq_target = seq_target
        self._seq_done = False
        self._last_number = 0
        self._bad_frames = 0
        self._acq_exposure_s = self._exposure_s
        assert self._roi is not None
        self._acq_geometry = (self._roi.height, self._pixel_time_ns())
        self._ts_origin_ps = None
        if self._has.get("reset_timestamp"):
            try:
                self._cam.set_param(self._const.PARAM_METADATA_RESET_TIMESTAMP, True)
                self._ts_origin_ps = 0  # the camera clock starts now
            except (RuntimeError, AttributeError, ValueError):
                self._ts_origin_ps = None  # taken from the first frame instead
        self._t_start = time.monotonic()

    def _start_camera(self, cam: Any, how: str, frames: int) -> None:
        exp = self._exposure_units(self._exposure_s)
        self._mode = "live" if how == "live" and not self._seq_target else "sequence"
        self._camera_live = how == "live"
        try:
            if how == "live":
                cam.start_live(exp_time=exp, buffer_frame_count=frames, reset_frame_counter=True)
            else:
                cam.start_seq(exp_time=exp, num_frames=frames, reset_frame_counter=True)
        except (RuntimeError, MemoryError, ValueError, KeyError) as exc:
            self._mode = None
            raise CameraError(f"{'live' if how == 'live' else 'sequence'} acquisition did not start "
                              f"({type(exc).__name__}: {exc})") from exc

    def poll_frame(self, timeout_s: float) -> Frame:
        cam = self._cam
        if cam is None or self._mode is None:
            raise AcquisitionNotActive("acquisition not active")
        if self._seq_done:  # a live-backed sequence that is complete behaves as a finished sequence
            time.sleep(timeout_s)
            raise FrameTimeout("sequence complete")
        timeout_ms = max(1, int(timeout_s * 1000))
        try:
            frame, _fps, frame_count = cam.poll_frame(timeout_ms=timeout_ms, oldestFrame=True, copyData=True)
        except KeyError as exc:  # pvcmodule: "Invalid camera handle" once the camera was closed
            raise AcquisitionNotActive(f"the camera was closed ({exc})") from exc
        except RuntimeError as exc:
            raise self._poll_error(str(exc)) from exc
        received = time.monotonic()
        self._bad_frames = 0
        if self._camera_live and self._overwritten(cam, int(frame_count)):
            self._last_number += 1
            raise FrameLost(f"frame {frame_count} was overwritten in the live buffer before it was read "
                            f"(the consumer fell {self._buffer_frames - 1} frames behind)")
        pixels = np.asarray(frame["pixel_data"])
        if pixels.dtype != np.uint16:
            pixels = pixels.astype(np.uint16)  # uint8 at 8-bit speeds
        meta = frame.get("meta_data") if isinstance(frame, dict) else None
        header = meta.get("frame_header") if isinstance(meta, dict) else None
        if header:
            number = int(header["frameNr"])
            bof_ps, eof_ps = int(header["timestampBofPs"]), int(header["timestampEofPs"])
            if self._ts_origin_ps is None:  # camera clock from power-up: align its EOF with our clock
                self._ts_origin_ps = eof_ps - int(round((received - self._t_start) * 1e12))
            bof = (bof_ps - self._ts_origin_ps) * PS
            eof = (eof_ps - self._ts_origin_ps) * PS
            exposure = header["exposureTimePs"] * PS or self._acq_exposure_s
        else:  # no metadata: the driver's frame counter and the host clock
            number = int(frame_count)
            eof = received - self._t_start
            bof = max(0.0, eof - self._acq_exposure_s)
            exposure = self._acq_exposure_s
        if self._seq_target and number >= self._seq_target:
            self._finish_live_sequence()
            if number > self._seq_target:  # the last frame(s) were lost in the driver
                missing = self._seq_target - self._last_number
                self._last_number = self._seq_target
                raise FrameLost(f"the last {missing} frame(s) of the sequence were lost", missing)
        self._last_number = number
        return Frame(pixels, number, bof, eof, exposure)

    def _poll_error(self, text: str) -> CameraError:
        low = text.lower()
        if "timeout" in low:
            return FrameTimeout(text)
        if "not active" in low or "aborted" in low:
            return AcquisitionNotActive(text)
        if any(k in low for k in _CONNECTION_ERRORS):
            return CameraConnectionLost(f"{text} The camera stopped answering: check its cable and power")
        # pl_md_frame_decode failed: that frame left the queue and is lost, the acquisition goes on
        self._bad_frames += 1
        if self._bad_frames > MAX_CONSECUTIVE_BAD_FRAMES:
            return CameraConnectionLost(f"{self._bad_frames} frames in a row could not be read ({text}); "
                                        "check the camera's cable and power")
        self._last_number += 1
        return FrameLost(f"a frame could not be decoded ({text})")

    def _overwritten(self, cam: Any, count: int) -> bool:
        """Was frame ``count``'s slot being written by a newer frame while we copied it? In a circular
        buffer of N slots that is so when the newest frame delivered is ``count + N - 1`` or later."""
        try:
            _f, _fps, newest = cam.poll_frame(timeout_ms=0, oldestFrame=False, copyData=False)
        except (RuntimeError, KeyError):  # nothing newer waiting (or nothing to tell)
            return False
        return int(newest) - count >= self._buffer_frames - 1

    def _finish_live_sequence(self) -> None:
        with self._lock:
            self._seq_done = True
            try:
                self._cam.finish()
            except (RuntimeError, KeyError):
                pass
            self._camera_live = False

    def stop(self) -> None:
        with self._lock:
            if self._cam is None or self._mode is None:
                return
            try:
                self._cam.finish()
            except (RuntimeError, KeyError, ValueError) as exc:
                raise CameraError(f"the acquisition did not stop ({exc}); Init re-opens the camera") from exc
            finally:
                self._mode = None
                self._camera_live = False
                self._seq_done = False
            self._read_readout_time()

    def software_trigger(self) -> None:
        cam = self._require_open()
        if self._mode is None:
            raise AcquisitionNotActive("software trigger refused: no acquisition is running")
        try:
            cam.sw_trigger()
        except (RuntimeError, ValueError, KeyError) as exc:  # pvcmodule raises ValueError
            raise CameraError(f"software trigger refused by the camera: {exc}") from exc
