"""A test double of PyVCAM 2.3.2 (``pyvcam.pvc``, ``pyvcam.camera.Camera``, ``pyvcam.constants``).

The PVCAM SDK and a camera cannot be installed on the test machines, so the pyvcam backend is
tested against this double. It follows PyVCAM **2.3.2** as its source reads (Photometrics/PyVCAM
tag v2.3.2: ``src/pyvcam/camera.py``, ``src/pyvcam/pvcmodule.cpp``, ``constants.py`` and the
``pvcam.h`` it ships), including the behaviours that surprise a new user:

* constants with the real values (``PARAM_*`` IDs built from class, type and index);
* ``get_param``/``set_param`` raise AttributeError for a parameter the camera does not have;
  ``check_param`` says whether it has it; enum properties (``fan_speeds``...) are empty dicts
  on such cameras, so the ``fan_speed`` *setter* raises **ValueError** (empty-enum look-up) while
  the getter raises AttributeError;
* parameters that are not ``ATTR_LIVE`` must not be accessed while the camera is imaging: the
  double raises RuntimeError (``FakeHardware.temp_live`` says whether ``PARAM_TEMP`` is live);
* ``PARAM_READOUT_TIME`` (microseconds) changes only when an acquisition is set up
  (``start_live``/``start_seq``, and the ``exp_mode`` setter, which PyVCAM implements with a
  2x2-pixel ``pl_exp_setup_seq``);
* metadata timestamps count from the camera's power-up (``FakeHardware.power_up``, hours before
  the test) unless ``PARAM_METADATA_RESET_TIMESTAMP`` is written (where the camera has it);
* ``frame_count`` (third item of ``poll_frame``) counts EOF callbacks: frames lost in the driver
  (``FakeHardware.drop_frames``) leave no gap in it, only in the metadata ``frameNr``;
* the live buffer is circular (``CIRC_OVERWRITE``) with the queue as long as the buffer: the
  oldest queued frame's slot is the one the next frame is being written into, so a slow poller
  gets pixels (and metadata header) of the newer frame, torn part-way;
* a metadata decode failure raises RuntimeError after the frame left the queue
  (``FakeHardware.corrupt_metadata``); ``sw_trigger`` raises **ValueError**; a pulled cable
  (``FakeHardware.pull_cable``) gives ``"Frame readout failed."`` or the callback's error text;
  ``poll_frame`` on a closed camera raises **KeyError** (invalid handle);
* acquisition buffers are capped at 4 GiB (``MemoryError`` from ``start_seq``/``start_live``);
  pixels are ``uint8`` at 8-bit speeds (PyVCAM's ``_set_dtype``).

``install(monkeypatch)`` puts the double in ``sys.modules`` as ``pyvcam`` so the backend's
lazy import finds it exactly as it would find the real package.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

# ---------------------------------------------------------------- constants (values from PyVCAM 2.3.2)
constants = types.ModuleType("pyvcam.constants")
CLASS2, CLASS3 = 2, 3
TYPE_INT16, TYPE_FLT64, TYPE_UNS16, TYPE_UNS64, TYPE_ENUM, TYPE_BOOLEAN, TYPE_CHAR_PTR = 1, 4, 6, 8, 9, 11, 13
_C: dict[str, int] = {
    "ATTR_CURRENT": 0, "ATTR_COUNT": 1, "ATTR_TYPE": 2, "ATTR_MIN": 3, "ATTR_MAX": 4, "ATTR_DEFAULT": 5,
    "ATTR_INCREMENT": 6, "ATTR_ACCESS": 7, "ATTR_AVAIL": 8, "ATTR_LIVE": 9,
    "PARAM_PAR_SIZE": (CLASS2 << 16) + (TYPE_UNS16 << 24) + 57,
    "PARAM_SER_SIZE": (CLASS2 << 16) + (TYPE_UNS16 << 24) + 58,
    "PARAM_READOUT_TIME": (CLASS2 << 16) + (TYPE_FLT64 << 24) + 179,
    "PARAM_TEMP": (CLASS2 << 16) + (TYPE_INT16 << 24) + 525,
    "PARAM_TEMP_SETPOINT": (CLASS2 << 16) + (TYPE_INT16 << 24) + 526,
    "PARAM_FAN_SPEED_SETPOINT": (CLASS2 << 16) + (TYPE_ENUM << 24) + 710,
    "PARAM_EXPOSURE_MODE": (CLASS2 << 16) + (TYPE_ENUM << 24) + 535,
    "PARAM_BIT_DEPTH": (CLASS2 << 16) + (TYPE_INT16 << 24) + 511,
    "PARAM_GAIN_INDEX": (CLASS2 << 16) + (TYPE_INT16 << 24) + 512,
    "PARAM_SPDTAB_INDEX": (CLASS2 << 16) + (TYPE_INT16 << 24) + 513,
    "PARAM_READOUT_PORT": (CLASS2 << 16) + (TYPE_ENUM << 24) + 247,
    "PARAM_PIX_TIME": (CLASS2 << 16) + (TYPE_UNS16 << 24) + 516,
    "PARAM_EXP_RES": (CLASS3 << 16) + (TYPE_ENUM << 24) + 2,
    "PARAM_EXPOSURE_TIME": (CLASS3 << 16) + (TYPE_UNS64 << 24) + 8,
    "PARAM_BINNING_SER": (CLASS3 << 16) + (TYPE_ENUM << 24) + 165,
    "PARAM_BINNING_PAR": (CLASS3 << 16) + (TYPE_ENUM << 24) + 166,
    "PARAM_METADATA_ENABLED": (CLASS3 << 16) + (TYPE_BOOLEAN << 24) + 168,
    "PARAM_METADATA_RESET_TIMESTAMP": (CLASS3 << 16) + (TYPE_BOOLEAN << 24) + 176,
    "PARAM_ROI_COUNT": (CLASS3 << 16) + (TYPE_UNS16 << 24) + 169,
    "EXP_RES_ONE_MILLISEC": 0, "EXP_RES_ONE_MICROSEC": 1, "EXP_RES_ONE_SEC": 2,
    "EXT_TRIG_INTERNAL": 1792, "EXT_TRIG_TRIG_FIRST": 2048, "EXT_TRIG_EDGE_RISING": 2304,
    "EXT_TRIG_LEVEL": 2560, "EXT_TRIG_SOFTWARE_FIRST": 2816, "EXT_TRIG_SOFTWARE_EDGE": 3072,
    "EXT_TRIG_LEVEL_OVERLAP": 3328, "EXT_TRIG_LEVEL_PULSED": 3584,
    "FAN_SPEED_HIGH": 0, "FAN_SPEED_MEDIUM": 1, "FAN_SPEED_LOW": 2, "FAN_SPEED_OFF": 3,
}
for _k, _v in _C.items():
    setattr(constants, _k, _v)
const = constants

EXP_MODES = {"Internal Trigger": 1792, "Edge Trigger": 2304, "Trigger first": 2048, "Software Trigger Edge": 3072,
             "Software Trigger First": 2816}
SPEED_TABLE = {  # port name -> (port value, [(speed name, pixel time ns, [(gain name, bit depth)])])
    "Sensitivity": (0, [("5 ns/pixel", 5, [("Full well", 11), ("Balanced", 11), ("Sensitivity", 11)]),
                        ("10 ns/pixel", 10, [("Default", 16), ("Full well", 12)])]),
    "Speed": (1, [("5 ns/pixel", 5, [("Full well", 8), ("Sensitivity", 8)])]),
}
FAN_SPEEDS = {"High": 0, "Medium": 1, "Low": 2, "Off": 3}
SENSOR = (2048, 2048)
LINE_TIME_PER_PIX_NS = 2e-6  # line time = pixel time (ns) x 2 us: 10 us per row at 5 ns/pixel
METADATA_BYTES = 256  # frame + ROI header in front of the pixels when metadata is on
BUFFER_LIMIT = 2**32 - 1  # pvcmodule's AllocateAcqBuffer: "PVCAM supports buffer up to 4GB only"
POWER_UP_AGO_S = 5 * 3600.0
NOT_LIVE = ("PVCAM error 185 (C2_CAM_BUSY?): parameter 0x{:08X} cannot be accessed while the camera is imaging "
            "(ATTR_LIVE is FALSE)")


class FakeHardware:
    """The camera on the other end of the cable: survives Camera objects and re-opens.

    Options model what differs between cameras (``has_fan``, ``has_metadata``,
    ``has_reset_timestamp``, ``temp_live``); methods inject the field faults."""

    def __init__(self, name: str = "pvcamUSB_0", *, has_fan: bool = True, has_metadata: bool = True,
                 has_reset_timestamp: bool = True, temp_live: bool = False) -> None:
        self.name = name
        self.has_fan = has_fan
        self.has_metadata = has_metadata
        self.has_reset_timestamp = has_reset_timestamp
        self.temp_live = temp_live
        self.power_up = time.monotonic() - POWER_UP_AGO_S  # the metadata clock's zero
        self.opened = False
        self.busy = False  # left acquiring (stuck) until a close + re-open
        self.stuck = False
        self.unplugged = False
        self.unplug_error = "Frame readout failed."
        self.drop = 0
        self.corrupt = 0
        self.fail_open: BaseException | None = None
        self.before_get_frame: Callable[[], None] | None = None
        self.temp_c = 25.0
        self.setpoint_c = -20.0
        self.fan = 0
        self.not_live_reads: list[int] = []  # parameters read while imaging (that must not be)
        self.camera: Camera | None = None  # the open Camera object

    def drop_frames(self, n: int) -> None:
        """The next ``n`` frames the camera reads out are lost in the driver (no EOF callback):
        their ``frameNr`` never arrives and ``frame_count`` does not count them."""
        cam = self.camera
        if cam is not None:
            cam._catch_up()  # frames already due were delivered before the fault
        self.drop += n

    def corrupt_metadata(self, n: int = 1) -> None:
        """``pl_md_frame_decode`` fails for the next ``n`` frames polled (each leaves the queue)."""
        self.corrupt += n

    def pull_cable(self, error: str = "Frame readout failed.") -> None:
        """The USB/PCIe cable is pulled: the acquisition fails with ``error`` (``"Frame readout
        failed."`` from READOUT_FAILED, or a callback error such as ``"Failed to get latest frame
        from PVCAM."``), the camera vanishes until :meth:`plug_cable`."""
        self.unplugged = True
        self.unplug_error = error

    def plug_cable(self) -> None:
        self.unplugged = False
        self.opened = False
        self.busy = False
        self.stuck = False

    def stick(self) -> None:
        """The acquisition stops delivering frames and the camera stays busy."""
        self.stuck = True
        self.busy = True

    def clock_ps(self, t_monotonic: float) -> int:
        return int(round((t_monotonic - self.power_up) * 1e12))


HARDWARE: dict[str, FakeHardware] = {}
_state: dict[str, Any] = {"inited": False, "next_handle": 0}
_HANDLES: dict[int, FakeHardware] = {}  # pvcmodule's g_cameraMap

# ---------------------------------------------------------------- pvc
pvc = types.ModuleType("pyvcam.pvc")


def _init_pvcam() -> None:
    if _state["inited"]:
        raise RuntimeError("PVCAM error 2: pl_pvcam_init: PVCAM library already initialized")
    _state["inited"] = True


def _uninit_pvcam() -> None:
    if not _state["inited"]:
        raise RuntimeError("PVCAM error 1: pl_pvcam_uninit: PVCAM library not initialized")
    _state["inited"] = False


def _get_cam_total() -> int:
    if not _state["inited"]:
        raise RuntimeError("PVCAM error 1: PVCAM library not initialized")
    return len(_present())


def _present() -> list[str]:
    return [n for n, hw in HARDWARE.items() if not hw.unplugged]


def _get_cam_name(index: int) -> str:
    return _present()[index]


pvc.init_pvcam = _init_pvcam
pvc.uninit_pvcam = _uninit_pvcam
pvc.get_cam_total = _get_cam_total
pvc.get_cam_name = _get_cam_name


# ---------------------------------------------------------------- camera
class ReversibleEnumDict(dict):
    """As PyVCAM's: accepts keys or values, ValueError otherwise (also when the enum is empty
    because the camera lacks the parameter)."""

    def __init__(self, name: str, items: dict[str, int], camera: Camera | None = None) -> None:
        super().__init__(items)
        self.name = name
        self._camera = camera

    def __getitem__(self, key_or_value: Any) -> Any:
        if self._camera is None or not self._camera.is_open:
            raise RuntimeError(f"Failed to access {self.name} enum, camera is not open")
        try:
            if isinstance(key_or_value, str):
                return super().__getitem__(key_or_value)
            return [k for k, v in self.items() if v == key_or_value][0]
        except KeyError as ex:
            raise ValueError(f"Invalid key '{key_or_value}' for {self.name} - Available keys are: {list(self.keys())}") from ex
        except IndexError as ex:
            raise ValueError(f"Invalid value '{key_or_value}' for {self.name} - Available values are: {list(self.values())}") from ex


class RegionOfInterest:
    def __init__(self, s1: int, s2: int, sbin: int, p1: int, p2: int, pbin: int) -> None:
        self.s1, self.s2, self.sbin, self.p1, self.p2, self.pbin = s1, s2, sbin, p1, p2, pbin

    @property
    def shape(self) -> tuple[int, int]:
        return ((self.s2 - self.s1 + 1) // self.sbin, (self.p2 - self.p1 + 1) // self.pbin)


class Camera:
    WAIT_FOREVER = -1

    def __init__(self, name: str) -> None:
        self._name = name
        self._hw = HARDWARE[name]
        self._handle = -1
        self._open = False
        self._rois: list[RegionOfInterest] = []
        self._exp_res = 0
        self._exp_time = 0
        self._exp_mode = 1792
        self._port = 0
        self._speed = 0
        self._gain = 1
        self._metadata = False
        self._acq: str | None = None
        self._cond = threading.Condition()
        self._table: dict[str, Any] = {}
        self._readout_us = 0
        self._fan_speeds = ReversibleEnumDict("fan_speeds", {})

    @staticmethod
    def get_available_camera_names() -> list[str]:
        return [pvc.get_cam_name(i) for i in range(pvc.get_cam_total())]

    @classmethod
    def detect_camera(cls):  # noqa: ANN206 - a generator, as PyVCAM's
        for i in range(pvc.get_cam_total()):
            yield Camera(pvc.get_cam_name(i))

    @classmethod
    def select_camera(cls, name: str) -> Camera:
        for i in range(pvc.get_cam_total()):
            if pvc.get_cam_name(i) == name:
                return Camera(name)
        raise RuntimeError("Failed to create a detected camera. Invalid name")

    # -------------------------------------------------------------- lifecycle
    def open(self) -> None:
        hw = self._hw
        if hw.fail_open is not None:
            raise hw.fail_open
        if not _state["inited"] or hw.opened or hw.busy or hw.unplugged:
            raise RuntimeError("Failed to open camera.")
        hw.opened = True
        hw.camera = self
        self._open = True
        self._handle = _state["next_handle"]
        _state["next_handle"] += 1
        _HANDLES[self._handle] = hw
        self._rois = [RegionOfInterest(0, SENSOR[0] - 1, 1, 0, SENSOR[1] - 1, 1)]
        self._table = {}
        for port_name, (port_value, speeds) in SPEED_TABLE.items():
            entry: dict[str, Any] = {"port_value": port_value}
            for si, (speed_name, pix, gains) in enumerate(speeds):
                sp: dict[str, Any] = {"speed_index": si, "pixel_time": pix, "gain_range": list(range(1, len(gains) + 1))}
                for gi, (gain_name, bd) in enumerate(gains, start=1):
                    sp[gain_name] = {"gain_index": gi, "bit_depth": bd}
                entry[speed_name] = sp
            self._table[port_name] = entry
        self._port, self._speed, self._gain = 0, 0, 1
        self._fan_speeds = ReversibleEnumDict("fan_speeds", FAN_SPEEDS if hw.has_fan else {}, self)
        self._readout_us = self._readout_us_for(SENSOR[1])  # whatever the last setup before power-up left

    def close(self) -> None:
        if not self._open or self._hw.unplugged and not self._hw.opened:
            raise RuntimeError("Failed to close camera.")
        _HANDLES.pop(self._handle, None)
        self._handle = -1
        self._open = False
        self._hw.opened = False
        self._hw.camera = None
        self._hw.busy = False  # closing the handle (after abort) frees the camera
        self._hw.stuck = False
        with self._cond:
            self._acq = None
            self._cond.notify_all()

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError("Camera is not open")

    # -------------------------------------------------------------- parameters
    def _available(self) -> dict[int, bool]:
        """param id -> ATTR_LIVE, for the parameters this camera has."""
        hw = self._hw
        params = {const.PARAM_TEMP: hw.temp_live, const.PARAM_TEMP_SETPOINT: False, const.PARAM_EXPOSURE_TIME: False,
                  const.PARAM_READOUT_TIME: False, const.PARAM_EXP_RES: False, const.PARAM_EXPOSURE_MODE: False,
                  const.PARAM_BIT_DEPTH: False, const.PARAM_READOUT_PORT: False, const.PARAM_SPDTAB_INDEX: False,
                  const.PARAM_GAIN_INDEX: False, const.PARAM_PIX_TIME: False, const.PARAM_ROI_COUNT: False,
                  const.PARAM_SER_SIZE: True, const.PARAM_PAR_SIZE: True}
        if hw.has_metadata:
            params[const.PARAM_METADATA_ENABLED] = False
            if hw.has_reset_timestamp:
                params[const.PARAM_METADATA_RESET_TIMESTAMP] = False
        if hw.has_fan:
            params[const.PARAM_FAN_SPEED_SETPOINT] = False
        return params

    def check_param(self, param_id: int) -> bool:
        if self._handle not in _HANDLES:
            raise RuntimeError("PVCAM error 8: invalid camera handle")
        return param_id in self._available()

    def _access(self, param_id: int, param_attr: int = 0) -> None:
        avail = self._available()
        if param_id not in avail:
            raise AttributeError(f"Invalid setting for this camera. Parameter ID 0x{param_id:08X} is not available.")
        if self._acq is not None and param_attr in (const.ATTR_CURRENT,) and not avail[param_id]:
            self._hw.not_live_reads.append(param_id)
            raise RuntimeError(NOT_LIVE.format(param_id))

    def get_param(self, param_id: int, param_attr: int = 0) -> Any:
        self._require_open()
        if param_attr == const.ATTR_AVAIL:
            return param_id in self._available()
        self._access(param_id, param_attr)
        if param_attr == const.ATTR_LIVE:
            return self._available()[param_id]
        if param_id == const.PARAM_EXPOSURE_TIME:
            lo, hi = {0: (0, 3_600_000), 1: (1, 3_600_000_000), 2: (0, 3600)}[self._exp_res]
            return {const.ATTR_MIN: lo, const.ATTR_MAX: hi}.get(param_attr, self._exp_time)
        if param_id == const.PARAM_TEMP_SETPOINT:
            return {const.ATTR_MIN: -2500, const.ATTR_MAX: 2500}.get(param_attr, int(round(self._hw.setpoint_c * 100)))
        if param_id == const.PARAM_TEMP:
            return int(round(self._hw.temp_c * 100))
        if param_id == const.PARAM_METADATA_ENABLED:
            return self._metadata
        if param_id == const.PARAM_READOUT_TIME:
            return self._readout_us
        if param_id == const.PARAM_FAN_SPEED_SETPOINT:
            return self._hw.fan
        if param_id == const.PARAM_EXPOSURE_MODE:
            return self._exp_mode
        if param_id == const.PARAM_BIT_DEPTH:
            return self.bit_depth
        raise AttributeError(f"Invalid setting for this camera. Parameter ID 0x{param_id:08X} is not available.")

    def set_param(self, param_id: int, value: Any) -> None:
        self._require_open()
        self._access(param_id)
        if param_id == const.PARAM_METADATA_ENABLED:
            self._metadata = bool(value)
            return
        if param_id == const.PARAM_METADATA_RESET_TIMESTAMP:
            if value:
                self._hw.power_up = time.monotonic()
            return
        if param_id == const.PARAM_TEMP_SETPOINT:
            self._hw.setpoint_c = value / 100.0
            return
        if param_id == const.PARAM_FAN_SPEED_SETPOINT:
            self._hw.fan = int(value)
            return
        raise AttributeError(f"parameter {param_id} cannot be set in this double")

    def _setup_param(self, what: str) -> None:
        if self._acq is not None:
            raise RuntimeError(f"PVCAM error 185: {what} cannot be changed during acquisition")

    @property
    def name(self) -> str:
        return self._name

    @property
    def handle(self) -> int:
        return self._handle

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def sensor_size(self) -> tuple[int, int]:
        self._require_open()
        return SENSOR

    @property
    def port_speed_gain_table(self) -> dict[str, Any]:
        return self._table

    @property
    def exp_modes(self) -> ReversibleEnumDict:
        return ReversibleEnumDict("exp_modes", EXP_MODES, self)

    @property
    def exp_resolutions(self) -> ReversibleEnumDict:
        return ReversibleEnumDict("exp_resolutions", {"One Millisecond": 0, "One Microsecond": 1, "One Second": 2}, self)

    @property
    def fan_speeds(self) -> ReversibleEnumDict:
        return self._fan_speeds

    @property
    def binnings(self) -> list[tuple[int, int]]:
        self._require_open()
        return [(1, 1), (2, 2)]

    @property
    def binning(self) -> tuple[int, int]:
        return self._rois[0].sbin, self._rois[0].pbin

    @binning.setter
    def binning(self, value: Any) -> None:
        bx, by = value if isinstance(value, tuple) else (value, value)
        if bx <= 0 or by <= 0:
            raise ValueError("Binning must be >= 1")
        if (bx, by) not in self.binnings:
            raise ValueError(f"{self._name} only supports {self.binnings} binnings")
        for roi in self._rois:
            roi.sbin, roi.pbin = bx, by

    def reset_rois(self) -> None:
        self._require_open()
        self._rois = [RegionOfInterest(0, SENSOR[0] - 1, 1, 0, SENSOR[1] - 1, 1)]

    def set_roi(self, s1: int, p1: int, w: int, h: int) -> None:
        self._require_open()
        if w < 1 or h < 1:
            raise ValueError("Width and height must be >= 1")
        s2, p2 = s1 + w - 1, p1 + h - 1
        if not (0 <= s1 < SENSOR[0] and 0 <= s2 < SENSOR[0] and 0 <= p1 < SENSOR[1] and 0 <= p2 < SENSOR[1]):
            raise ValueError("Could not add ROI. ROI extends beyond limits of sensor")
        sbin, pbin = self._rois[0].sbin, self._rois[0].pbin
        self._rois = [RegionOfInterest(s1, s2 - ((s2 - s1 + 1) % sbin), sbin, p1, p2 - ((p2 - p1 + 1) % pbin), pbin)]

    @property
    def rois(self) -> list[RegionOfInterest]:
        return self._rois

    @property
    def exp_res(self) -> int:
        return self._exp_res

    @exp_res.setter
    def exp_res(self, value: Any) -> None:
        value = self.exp_resolutions[value] if isinstance(value, str) else value
        _ = self.exp_resolutions[value]
        self._exp_res = value

    @property
    def exp_time(self) -> int:
        return self._exp_time

    @exp_time.setter
    def exp_time(self, value: int) -> None:
        lo = self.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MIN)
        hi = self.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MAX)
        if not lo <= value <= hi:
            raise ValueError(f"Invalid value: {value} - {self._name} only supports exposure times between {lo} and {hi}")
        self._exp_time = value

    @property
    def exp_mode(self) -> int:
        return self.get_param(const.PARAM_EXPOSURE_MODE)

    @exp_mode.setter
    def exp_mode(self, value: Any) -> None:
        mode = self.exp_modes[value] if isinstance(value, str) else value
        _ = self.exp_modes[mode]
        self._setup_param("exposure mode")
        self._exp_mode = mode
        self._readout_us = self._readout_us_for(2)  # pvc.set_exp_modes: pl_exp_setup_seq of a 2x2 region

    @property
    def readout_port(self) -> int:
        return self._port

    @readout_port.setter
    def readout_port(self, value: Any) -> None:
        ports = ReversibleEnumDict("readout_ports", {k: v[0] for k, v in SPEED_TABLE.items()}, self)
        value = ports[value] if isinstance(value, str) else value
        _ = ports[value]
        self._setup_param("readout port")
        self._port, self._speed, self._gain = value, 0, 1  # PVCAM resets speed and gain

    def _speeds(self) -> list[Any]:
        return next(v[1] for v in SPEED_TABLE.values() if v[0] == self._port)

    @property
    def speed(self) -> int:
        return self._speed

    @speed.setter
    def speed(self, value: int) -> None:
        if value >= len(self._speeds()):
            raise ValueError(f"{self._name} only supports {len(self._speeds())} speed entries")
        self._setup_param("speed")
        self._speed, self._gain = value, 1

    @property
    def gain(self) -> int:
        return self._gain

    @gain.setter
    def gain(self, value: int) -> None:
        n = len(self._speeds()[self._speed][2])
        if not 1 <= value <= n:
            raise ValueError(f"Invalid value: {value} - {self._name} only supports gain indices from 1 to {n}.")
        self._setup_param("gain")
        self._gain = value

    @property
    def bit_depth(self) -> int:
        return self._speeds()[self._speed][2][self._gain - 1][1]

    @property
    def fan_speed(self) -> int:
        return self.get_param(const.PARAM_FAN_SPEED_SETPOINT)

    @fan_speed.setter
    def fan_speed(self, value: Any) -> None:
        value = self._fan_speeds[value] if isinstance(value, str) else value
        _ = self._fan_speeds[value]  # ValueError on a camera without fan control (empty enum)
        self.set_param(const.PARAM_FAN_SPEED_SETPOINT, value)

    @property
    def temp(self) -> float:
        return self.get_param(const.PARAM_TEMP) / 100.0

    @property
    def temp_setpoint(self) -> float:
        return self.get_param(const.PARAM_TEMP_SETPOINT) / 100.0

    @temp_setpoint.setter
    def temp_setpoint(self, value: float) -> None:
        t = int(value * 100.0)
        lo = self.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MIN)
        hi = self.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MAX)
        if not lo <= t <= hi:
            raise ValueError(f"Invalid temp {value} : Valid temps are in the range {lo / 100.0} - {hi / 100.0}.")
        self.set_param(const.PARAM_TEMP_SETPOINT, t)

    @property
    def metadata_enabled(self) -> bool:
        return self.get_param(const.PARAM_METADATA_ENABLED)

    @metadata_enabled.setter
    def metadata_enabled(self, value: bool) -> None:
        self.set_param(const.PARAM_METADATA_ENABLED, value)

    @property
    def readout_time(self) -> int:
        return self.get_param(const.PARAM_READOUT_TIME)

    def _line_time_s(self) -> float:
        return self._speeds()[self._speed][1] * LINE_TIME_PER_PIX_NS

    def _readout_us_for(self, rows: int) -> int:
        return int(round(rows * self._line_time_s() * 1e6))

    def _readout_s(self) -> float:
        roi = self._rois[0]
        return (roi.p2 - roi.p1 + 1) * self._line_time_s()  # every sensor row is read, binned or not

    # -------------------------------------------------------------- acquisition
    def _frame_bytes(self) -> int:
        w, h = self._rois[0].shape
        return w * h * (1 if self.bit_depth <= 8 else 2) + (METADATA_BYTES if self._metadata else 0)

    def _start(self, mode: str, exp_time: int | None, capacity: int, total: int) -> None:
        self._require_open()
        if self._hw.busy or self._hw.unplugged:
            raise RuntimeError("PVCAM error 3016: camera busy")
        frame_bytes = self._frame_bytes()
        if frame_bytes * capacity > BUFFER_LIMIT:  # pvc.setup_seq / setup_live: AllocateAcqBuffer
            raise MemoryError(f"Unable to allocate acquisition buffer for {capacity} frame {frame_bytes} bytes each.")
        exp = self._exp_time if not isinstance(exp_time, int) else exp_time
        with self._cond:
            self._acq = mode
            self._capacity = capacity
            self._total = total
            self._exp_s = exp * {0: 1e-3, 1: 1e-6, 2: 1.0}[self._exp_res]
            self._period = self._exp_s + self._readout_s()
            self._readout_us = int(round(self._readout_s() * 1e6))  # set up: the camera computes it now
            self._t0 = time.monotonic()
            self._camera_frames = 0  # frames the sensor made (frameNr)
            self._delivered = 0  # EOF callbacks (frame_count)
            self._queue: list[tuple[int, int, float, float]] = []  # (count, nr, bof, eof)
            self._slots: dict[int, tuple[int, int, float, float]] = {}  # slot -> frame written there
            self._triggers: list[float] = []
            self._shape = self._rois[0].shape
            self._dtype = np.uint8 if self.bit_depth <= 8 else np.uint16
            self._md = self._metadata

    def start_live(self, exp_time: int | None = None, buffer_frame_count: int = 16, stream_to_disk_path: str | None = None,
                   reset_frame_counter: bool = False) -> None:
        self._start("Live", exp_time, buffer_frame_count, 0)

    def start_seq(self, exp_time: int | None = None, num_frames: int = 1, reset_frame_counter: bool = False) -> None:
        self._start("Sequence", exp_time, num_frames, num_frames)

    def sw_trigger(self) -> None:
        if self._handle not in _HANDLES or self._acq is None or self._exp_mode not in (2816, 3072):
            raise ValueError("Failed to deliver software trigger.")  # pvcmodule: ValueError, not RuntimeError
        with self._cond:
            self._triggers.append(time.monotonic())
            self._cond.notify_all()

    def _catch_up(self) -> None:
        with self._cond:
            if self._acq is not None:
                self._advance(time.monotonic())

    def _due(self, now: float) -> int:
        if self._exp_mode == 1792:
            due = int((now - self._t0) / self._period)
        elif self._exp_mode == 2816:
            due = int((now - self._triggers[0]) / self._period) if self._triggers else 0
        elif self._exp_mode == 3072:
            due = sum(1 for t in self._triggers if t + self._period <= now)
        else:
            due = 0  # no edge ever reaches the trigger input
        return min(due, self._total) if self._total else due

    def _advance(self, now: float) -> None:
        """Read out every frame due by ``now`` (what the EOF callback does)."""
        if self._hw.stuck or self._hw.unplugged:
            return
        due = self._due(now)
        while self._camera_frames < due:
            self._camera_frames += 1
            nr = self._camera_frames
            if self._hw.drop:
                self._hw.drop -= 1  # lost in the driver: no callback, no count, no slot
                continue
            self._delivered += 1
            eof = self._t0 + nr * self._period
            entry = (self._delivered, nr, eof - self._period, eof)
            self._slots[(self._delivered - 1) % self._capacity] = entry
            self._queue.append(entry)
            while len(self._queue) > self._capacity:
                self._queue.pop(0)

    def _render(self, nr: int, h: int, w: int) -> np.ndarray:
        pixels = np.full((h, w), 100, dtype=self._dtype)
        pixels[:, 0] = nr & (0xFF if self._dtype == np.uint8 else 0xFFFF)  # the number in every row
        return pixels

    def poll_frame(self, timeout_ms: int = WAIT_FOREVER, oldestFrame: bool = True, copyData: bool = True) -> Any:
        hook = self._hw.before_get_frame
        if hook is not None:
            self._hw.before_get_frame = None
            hook()
        if self._handle not in _HANDLES:
            raise KeyError("Invalid camera handle (map::at).")
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms >= 0 else 1e9)
        with self._cond:
            while True:
                if self._acq is None:
                    raise RuntimeError("Acquisition not active.")
                if self._hw.unplugged:
                    raise RuntimeError(self._hw.unplug_error)
                now = time.monotonic()
                self._advance(now)
                if self._queue:
                    break
                if now >= deadline:
                    raise RuntimeError("Frame timeout. Verify the timeout exceeds the exposure time. "
                                       "If applicable, check external trigger source.")
                self._cond.wait(min(deadline - now, 0.002))
            entry = self._queue.pop(0) if oldestFrame else self._queue[-1]
            count, nr, bof, eof = entry
            w, h = self._shape
            pixels = self._render(nr, h, w)
            header_entry = entry
            writing_now = self._exp_mode == 1792 and not (self._hw.drop or self._hw.stuck)
            if self._acq == "Live" and writing_now:
                # the circular buffer: the frame after the newest delivered one is being written into
                # the slot of the oldest queued frame (CIRC_OVERWRITE)
                writing = self._delivered + 1
                if count == writing - self._capacity:
                    next_nr = self._camera_frames + 1
                    frac = (now - (self._t0 + self._camera_frames * self._period)) / self._period
                    rows = max(1, min(h, int(frac * h) + 1))
                    pixels[:rows] = self._render(next_nr, rows, w)
                    header_entry = (writing, next_nr, self._t0 + self._camera_frames * self._period,
                                    self._t0 + next_nr * self._period)
            if self._md and self._hw.corrupt and oldestFrame:
                self._hw.corrupt -= 1
                raise RuntimeError("PVCAM error 1006 (PL_ERR_MD_DECODE?): failed to decode the frame metadata")
        frame: dict[str, Any] = {"pixel_data": pixels}
        if self._md:
            _c, hnr, hbof, heof = header_entry
            frame["meta_data"] = {
                "frame_header": {
                    "signature": "PVCAM", "version": 3, "frameNr": hnr, "roiCount": 1,
                    "timestampBofPs": self._hw.clock_ps(hbof), "timestampEofPs": self._hw.clock_ps(heof),
                    "exposureTimePs": int(self._exp_s * 1e12), "bitDepth": self.bit_depth, "colorMask": 0, "flags": 0,
                    "extendedMdSize": 0, "imageFormat": 0, "imageCompression": 0,
                },
                "roi_headers": [{"roiNr": 1}],
            }
        fps = 1.0 / self._period if self._period else 0.0
        return frame, fps, count

    def finish(self) -> None:
        with self._cond:
            if self._acq is None:
                return
            if self._hw.unplugged:
                self._acq = None
                raise RuntimeError("PVCAM error 3014: pl_exp_abort failed: the camera does not respond")
            if self._hw.stuck:
                return  # a stuck camera stays busy: only closing the handle frees it
            self._acq = None
            self._cond.notify_all()


camera = types.ModuleType("pyvcam.camera")
camera.Camera = Camera
package = types.ModuleType("pyvcam")
package.pvc = pvc
package.camera = camera
package.constants = constants
package.__version__ = "2.3.2"
package.__path__ = []  # a package, so `import pyvcam.camera` works


def install(monkeypatch: Any, names: tuple[str, ...] = ("pvcamUSB_0",), **options: Any) -> dict[str, FakeHardware]:
    """Make ``import pyvcam`` find the double; fresh hardware and library state for each test.
    ``options`` are FakeHardware options (``has_fan=False`` ...) for every camera."""
    HARDWARE.clear()
    _HANDLES.clear()
    for n in names:
        HARDWARE[n] = FakeHardware(n, **options)
    _state["inited"] = False
    for mod_name, mod in (("pyvcam", package), ("pyvcam.pvc", pvc), ("pyvcam.camera", camera),
                          ("pyvcam.constants", constants)):
        monkeypatch.setitem(__import__("sys").modules, mod_name, mod)
    return HARDWARE
