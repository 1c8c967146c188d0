"""The real camera through Photometrics' PyVCAM (optional: ``pip install tangodaq[pvcam]``).

PyVCAM is imported only when this backend is built (``Backend=pyvcam``), so the server runs
without the SDK in simulation. What this layer adds to PyVCAM, and why:

* every ``poll_frame`` has a time-out (PyVCAM's default waits forever: a camera in an external
  trigger mode with no trigger would hang the acquisition thread for good);
* ``oldestFrame=True``: frames are taken in order, so a slow consumer shows up as frame-number
  gaps (metadata ``frameNr``) that the component counts as lost frames;
* metadata is switched on at every open, giving frame numbers and begin/end-of-frame timestamps
  from the camera clock;
* exposure is set in microseconds when the camera offers that resolution;
* ROI and binning are validated against the sensor and the offered binnings before PyVCAM sees
  them (PyVCAM silently clips partial binned pixels), and setup changes are refused while an
  acquisition runs (the SDK either refuses them or applies them only at the next start);
* :meth:`PyVcamBackend.recover`: abort, close, re-open, re-apply everything (port, speed, gain in
  that order), for a camera left busy by a stuck or killed acquisition.

Tested against ``tests/pyvcam_double.py``, a test double of PyVCAM's documented API and behaviour,
since the SDK and a camera cannot be installed on the CI machines.
"""

from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np

from .backend import (
    FAN_SPEEDS,
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

PS = 1e-12
_init_lock = threading.Lock()
_init_count = 0


def import_pyvcam() -> tuple[ModuleType, Any, ModuleType]:
    """(pvc, Camera, constants) from PyVCAM, or a CameraError that says how to install it."""
    try:
        pvc = importlib.import_module("pyvcam.pvc")
        camera_mod = importlib.import_module("pyvcam.camera")
        const = importlib.import_module("pyvcam.constants")
    except ImportError as exc:
        raise CameraError(
            f"Backend=pyvcam needs PyVCAM and the PVCAM runtime ({exc}): install the PVCAM SDK in /opt/pvcam "
            "and `pip install tangodaq[pvcam]`, or set Backend=sim"
        ) from exc
    return pvc, camera_mod.Camera, const


class PyVcamBackend(CameraBackend):
    """A PVCAM camera by name (``pvcamUSB_0``); empty name: the first camera detected."""

    def __init__(self, name: str = "") -> None:
        self._pvc, self._camera_cls, self._const = import_pyvcam()
        self._requested_name = name
        self._cam: Any = None
        self._lock = threading.RLock()
        self._mode: str | None = None
        self._nb_frames = 0
        self._delivered = 0
        self._t_start = 0.0
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
        self._fan_speeds: tuple[str, ...] = FAN_SPEEDS
        self._exposure_limits = (0.0, 0.0)
        self._setpoint_limits = (0.0, 0.0)
        self._has_metadata = False

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        global _init_count
        with _init_lock:
            if _init_count == 0:
                try:
                    self._pvc.init_pvcam()
                except RuntimeError as exc:
                    raise CameraError(f"PVCAM did not initialise: {exc}. Is the PVCAM runtime installed?") from exc
            _init_count += 1
        try:
            with self._lock:
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
                self._read_capabilities()
                self._apply_settings()
        except Exception:
            self._release_pvcam()
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
                except RuntimeError:
                    pass

    def _read_capabilities(self) -> None:
        cam, const = self._cam, self._const
        self._has_metadata = bool(cam.check_param(const.PARAM_METADATA_ENABLED))
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
        try:
            fans = dict(cam.fan_speeds.items())
            if fans:
                self._fan_speeds = tuple(name for name, _ in sorted(fans.items(), key=lambda kv: kv[1]))
        except AttributeError:
            pass
        if const.EXP_RES_ONE_MICROSEC in cam.exp_resolutions.values():
            cam.exp_res = const.EXP_RES_ONE_MICROSEC
            self._exp_unit_s = 1e-6
        else:
            cam.exp_res = const.EXP_RES_ONE_MILLISEC
            self._exp_unit_s = 1e-3
        self._exposure_limits = (
            max(1, cam.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MIN)) * self._exp_unit_s,
            cam.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MAX) * self._exp_unit_s,
        )
        try:
            self._setpoint_limits = (
                cam.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MIN) / 100.0,
                cam.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MAX) / 100.0,
            )
        except AttributeError:
            self._setpoint_limits = (0.0, 0.0)
        # first open: adopt what the camera holds
        if self._trigger_mode is None:
            self._trigger_mode = int(cam.exp_mode)
        if self._readout is None:
            self._readout = (int(cam.readout_port), int(cam.speed), int(cam.gain))
        if self._roi is None:
            self._roi = Roi(0, 0, self._sensor[0], self._sensor[1])
        if self._fan is None:
            try:
                self._fan = int(cam.fan_speed)
            except AttributeError:
                self._fan = 0
        if self._setpoint is None:
            try:
                self._setpoint = float(cam.temp_setpoint)
            except AttributeError:
                self._setpoint = 0.0

    def _apply_settings(self) -> None:
        """(Re-)apply every setting: after open and after recovery."""
        cam = self._cam
        if self._has_metadata:
            cam.metadata_enabled = True
        cam.exp_mode = self._trigger_mode
        assert self._readout is not None and self._roi is not None
        self._write_readout(*self._readout)
        self._write_geometry(self._roi, self._binning)
        cam.exp_time = self._exposure_units(self._exposure_s)
        try:
            cam.fan_speed = self._fan
            cam.temp_setpoint = self._setpoint
        except AttributeError:
            pass

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
                self._cam.close()
            except RuntimeError:
                pass
            finally:
                self._mode = None
                self._cam = None
                self._release_pvcam()

    def recover(self) -> None:
        with self._lock:
            if self._cam is not None:
                try:
                    self._cam.finish()  # pl_exp_abort: the only way out of a stuck acquisition
                except RuntimeError:
                    pass
                self._mode = None
                self.close()
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
        except RuntimeError as exc:
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
        return self._fan_speeds

    @property
    def exposure_limits_s(self) -> tuple[float, float]:
        return self._exposure_limits

    @property
    def temperature_setpoint_limits(self) -> tuple[float, float]:
        return self._setpoint_limits

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
            except (RuntimeError, ValueError) as exc:
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
        if value not in range(len(self._fan_speeds)):
            raise ValueError(f"fan speed {value} is not one of "
                             f"{', '.join(f'{i}={n}' for i, n in enumerate(self._fan_speeds))}")
        with self._lock:
            cam = self._require_open()
            self._sdk_call(setattr, cam, "fan_speed", value)
            self._fan = value

    def get_temperature_setpoint(self) -> float:
        return float(self._setpoint or 0.0)

    def set_temperature_setpoint(self, celsius: float) -> None:
        lo, hi = self._setpoint_limits
        if not (isinstance(celsius, int | float) and lo <= celsius <= hi):
            raise ValueError(f"temperature setpoint {celsius!r} degC is outside {lo:g} .. {hi:g} degC")
        with self._lock:
            cam = self._require_open()
            self._sdk_call(setattr, cam, "temp_setpoint", celsius)
            self._setpoint = round(float(celsius), 2)

    def temperature(self) -> float:
        with self._lock:
            cam = self._require_open()
            return float(self._sdk_call(getattr, cam, "temp"))

    def bit_depth(self) -> int:
        assert self._readout is not None
        port, speed, gain = self._readout
        return {p.value: p for p in self._speed_table}[port].speed(speed).gain(gain).bit_depth

    def readout_time_s(self) -> float:
        with self._lock:
            cam = self._require_open()
            try:
                return float(cam.readout_time) * 1e-6  # PARAM_READOUT_TIME is in microseconds
            except AttributeError:
                port, speed, _ = self.get_readout()
                pix_ns = {p.value: p for p in self._speed_table}[port].speed(speed).pixel_time_ns
                return self.get_roi().height * pix_ns * 1e-9 * 2200

    # ------------------------------------------------------------------ acquisition
    @property
    def acquiring(self) -> bool:
        return self._mode is not None

    def start_live(self, buffer_frames: int) -> None:
        with self._lock:
            cam = self._require_idle("the acquisition mode")
            self._begin("live", 0)
            try:
                cam.start_live(exp_time=self._exposure_units(self._exposure_s), buffer_frame_count=buffer_frames,
                               reset_frame_counter=True)
            except RuntimeError as exc:
                self._mode = None
                raise CameraError(f"live acquisition did not start: {exc}") from exc

    def start_sequence(self, nb_frames: int) -> None:
        if not 1 <= nb_frames <= 65535:
            raise ValueError(f"a sequence has 1 to 65535 frames, not {nb_frames}")
        with self._lock:
            cam = self._require_idle("the acquisition mode")
            self._begin("sequence", nb_frames)
            try:
                cam.start_seq(exp_time=self._exposure_units(self._exposure_s), num_frames=nb_frames,
                              reset_frame_counter=True)
            except RuntimeError as exc:
                self._mode = None
                raise CameraError(f"sequence acquisition did not start: {exc}") from exc

    def _begin(self, mode: str, nb_frames: int) -> None:
        self._mode = mode
        self._nb_frames = nb_frames
        self._delivered = 0
        self._t_start = time.monotonic()
        self._acq_exposure_s = self._exposure_s

    def poll_frame(self, timeout_s: float) -> Frame:
        cam = self._cam
        if cam is None or self._mode is None:
            raise AcquisitionNotActive("acquisition not active")
        timeout_ms = max(1, int(timeout_s * 1000))
        try:
            frame, _fps, frame_count = cam.poll_frame(timeout_ms=timeout_ms, oldestFrame=True, copyData=True)
        except RuntimeError as exc:
            text = str(exc)
            if "timeout" in text.lower():
                raise FrameTimeout(text) from exc
            if "not active" in text.lower() or "aborted" in text.lower():
                raise AcquisitionNotActive(text) from exc
            raise CameraError(f"poll_frame failed: {text}") from exc
        pixels = np.asarray(frame["pixel_data"])
        header = frame.get("meta_data", {}).get("frame_header") if isinstance(frame, dict) else None
        if header:
            number = int(header["frameNr"])
            bof = header["timestampBofPs"] * PS
            eof = header["timestampEofPs"] * PS
            exposure = header["exposureTimePs"] * PS or self._acq_exposure_s
        else:  # no metadata: the driver's frame counter and the host clock
            number = int(frame_count)
            eof = time.monotonic() - self._t_start
            bof = max(0.0, eof - self._acq_exposure_s)
            exposure = self._acq_exposure_s
        self._delivered = number
        return Frame(pixels, number, bof, eof, exposure)

    def stop(self) -> None:
        with self._lock:
            if self._cam is None or self._mode is None:
                return
            try:
                self._cam.finish()
            except RuntimeError as exc:
                raise CameraError(f"the acquisition did not stop ({exc}); Init re-opens the camera") from exc
            finally:
                self._mode = None

    def software_trigger(self) -> None:
        cam = self._require_open()
        if self._mode is None:
            raise AcquisitionNotActive("software trigger refused: no acquisition is running")
        try:
            cam.sw_trigger()
        except RuntimeError as exc:
            raise CameraError(f"software trigger refused by the camera: {exc}") from exc
