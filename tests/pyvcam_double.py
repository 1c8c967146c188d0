"""A test double of PyVCAM (``pyvcam.pvc``, ``pyvcam.camera.Camera``, ``pyvcam.constants``).

The PVCAM SDK and a camera cannot be installed on the test machines, so the pyvcam backend is
tested against this double. It mirrors PyVCAM 2.2's documented API and the behaviour of its C
module (``src/pyvcam/camera.py`` and ``pvcmodule.cpp`` in Photometrics/PyVCAM):

* lifecycle ``pvc.init_pvcam`` (a second init fails, as PVCAM's does), ``detect_camera`` /
  ``select_camera`` (RuntimeError for an unknown name), ``open`` / ``close``;
* parameters by ID and attribute (``get_param``/``set_param``/``check_param``), enum dicts that
  accept keys or values and raise ValueError otherwise, the port/speed/gain table learnt at open,
  a port change resetting speed and gain;
* ``set_roi`` bounds checks (ValueError) and binning from ``binnings``; exposure as an integer in
  the ``exp_res`` unit, checked against PARAM_EXPOSURE_TIME min/max;
* ``start_live`` with a circular queue of ``buffer_frame_count`` frames that drops the oldest
  when the consumer is slow (pvcmodule's queue), ``start_seq``, ``poll_frame(timeout_ms,
  oldestFrame, copyData)`` returning ``(frame, fps, frame_count)`` with metadata
  (``frameNr``, ``timestampBofPs``, ``timestampEofPs``, ``exposureTimePs``) and raising
  ``RuntimeError("Frame timeout. ...")`` after the time-out, ``finish``, ``sw_trigger``;
* hardware faults a test can cause: ``FakeHardware.drop_frames(n)`` (frame-number gap),
  ``FakeHardware.stick()`` (no more frames; the camera stays busy until closed and re-opened).

``install(monkeypatch)`` puts the double in ``sys.modules`` as ``pyvcam`` so the backend's
lazy import finds it exactly as it would find the real package.
"""

from __future__ import annotations

import threading
import time
import types
from typing import Any

import numpy as np

# ---------------------------------------------------------------- constants (values from PyVCAM)
constants = types.ModuleType("pyvcam.constants")
_C: dict[str, int] = {
    "ATTR_CURRENT": 0, "ATTR_COUNT": 1, "ATTR_TYPE": 2, "ATTR_MIN": 3, "ATTR_MAX": 4, "ATTR_DEFAULT": 5,
    "ATTR_INCREMENT": 6, "ATTR_ACCESS": 7, "ATTR_AVAIL": 8, "ATTR_LIVE": 9,
    "PARAM_TEMP": (2 << 16) + (1 << 24) + 525,
    "PARAM_TEMP_SETPOINT": (2 << 16) + (1 << 24) + 526,
    "PARAM_EXPOSURE_TIME": (3 << 16) + (8 << 24) + 8,
    "PARAM_METADATA_ENABLED": (3 << 16) + (11 << 24) + 168,
    "PARAM_READOUT_TIME": (2 << 16) + (6 << 24) + 179,
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
LINE_TIME_S = 10e-6


class FakeHardware:
    """The camera on the other end of the cable: survives Camera objects and re-opens."""

    def __init__(self, name: str = "pvcamUSB_0") -> None:
        self.name = name
        self.opened = False
        self.busy = False  # left acquiring (stuck) until a close + re-open
        self.stuck = False
        self.drop = 0
        self.temp_c = 25.0
        self.setpoint_c = -20.0
        self.fan = 0

    def drop_frames(self, n: int) -> None:
        """The next ``n`` frames not yet handed to the poller are lost on the link: their numbers
        are skipped (frames already read out but not polled count too, so a test's drop does not
        depend on how far the lazy read-out ran before the call)."""
        self.drop += n

    def stick(self) -> None:
        """The acquisition stops delivering frames and the camera stays busy."""
        self.stuck = True
        self.busy = True


HARDWARE: dict[str, FakeHardware] = {}
_state = {"inited": False}

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
    return len(HARDWARE)


def _get_cam_name(index: int) -> str:
    return list(HARDWARE)[index]


pvc.init_pvcam = _init_pvcam
pvc.uninit_pvcam = _uninit_pvcam
pvc.get_cam_total = _get_cam_total
pvc.get_cam_name = _get_cam_name


# ---------------------------------------------------------------- camera
class ReversibleEnumDict(dict):
    """As PyVCAM's: accepts keys or values, ValueError otherwise."""

    def __init__(self, name: str, items: dict[str, int]) -> None:
        super().__init__(items)
        self.name = name

    def __getitem__(self, key_or_value: Any) -> Any:
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
        if not _state["inited"]:
            raise RuntimeError("Failed to open camera.")
        if self._hw.opened or self._hw.busy:
            raise RuntimeError("Failed to open camera.")
        self._hw.opened = True
        self._open = True
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

    def close(self) -> None:
        if not self._open:
            raise RuntimeError("Failed to close camera.")
        self._open = False
        self._hw.opened = False
        self._hw.busy = False  # closing the handle (after abort) frees the camera
        self._hw.stuck = False
        with self._cond:
            self._acq = None
            self._cond.notify_all()

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError("Camera is not open")

    # -------------------------------------------------------------- parameters
    def check_param(self, param_id: int) -> bool:
        return param_id in (const.PARAM_METADATA_ENABLED, const.PARAM_TEMP, const.PARAM_TEMP_SETPOINT,
                            const.PARAM_EXPOSURE_TIME, const.PARAM_READOUT_TIME)

    def get_param(self, param_id: int, param_attr: int = 0) -> Any:
        self._require_open()
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
            return int(self._readout_s() * 1e6)
        raise AttributeError(f"parameter {param_id} is not available")

    def set_param(self, param_id: int, value: Any) -> None:
        self._require_open()
        if param_id == const.PARAM_METADATA_ENABLED:
            if self._acq is not None:
                raise RuntimeError("PVCAM error 185: parameter cannot be changed during acquisition")
            self._metadata = bool(value)
            return
        if param_id == const.PARAM_TEMP_SETPOINT:
            self._hw.setpoint_c = value / 100.0
            return
        raise AttributeError(f"parameter {param_id} is not available")

    def _setup_param(self, what: str) -> None:
        if self._acq is not None:
            raise RuntimeError(f"PVCAM error 185: {what} cannot be changed during acquisition")

    @property
    def name(self) -> str:
        return self._name

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
        return ReversibleEnumDict("exp_modes", EXP_MODES)

    @property
    def exp_resolutions(self) -> ReversibleEnumDict:
        return ReversibleEnumDict("exp_resolutions", {"One Millisecond": 0, "One Microsecond": 1, "One Second": 2})

    @property
    def fan_speeds(self) -> ReversibleEnumDict:
        return ReversibleEnumDict("fan_speeds", FAN_SPEEDS)

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
        return self._exp_mode

    @exp_mode.setter
    def exp_mode(self, value: Any) -> None:
        mode = self.exp_modes[value] if isinstance(value, str) else value
        _ = self.exp_modes[mode]
        self._setup_param("exposure mode")
        self._exp_mode = mode

    @property
    def readout_port(self) -> int:
        return self._port

    @readout_port.setter
    def readout_port(self, value: Any) -> None:
        ports = ReversibleEnumDict("readout_ports", {k: v[0] for k, v in SPEED_TABLE.items()})
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
        return self._hw.fan

    @fan_speed.setter
    def fan_speed(self, value: Any) -> None:
        value = self.fan_speeds[value] if isinstance(value, str) else value
        _ = self.fan_speeds[value]
        self._hw.fan = value

    @property
    def temp(self) -> float:
        return self.get_param(const.PARAM_TEMP) / 100.0

    @property
    def temp_setpoint(self) -> float:
        return self.get_param(const.PARAM_TEMP_SETPOINT) / 100.0

    @temp_setpoint.setter
    def temp_setpoint(self, value: float) -> None:
        t = int(value * 100.0)
        if not -2500 <= t <= 2500:
            raise ValueError(f"Invalid temp {value} : Valid temps are in the range -25.0 - 25.0.")
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

    def _readout_s(self) -> float:
        roi = self._rois[0]
        return (roi.p2 - roi.p1 + 1) * LINE_TIME_S

    # -------------------------------------------------------------- acquisition
    def _start(self, mode: str, exp_time: int | None, capacity: int, total: int) -> None:
        self._require_open()
        if self._hw.busy:
            raise RuntimeError("PVCAM error 3016: camera busy")
        exp = self._exp_time if not isinstance(exp_time, int) else exp_time
        with self._cond:
            self._acq = mode
            self._capacity = capacity
            self._total = total
            self._exp_s = exp * {0: 1e-3, 1: 1e-6, 2: 1.0}[self._exp_res]
            self._period = self._exp_s + self._readout_s()
            self._t0 = time.monotonic()
            self._produced = 0  # frames read out so far (drives the queue)
            self._queue: list[tuple[int, int, float, float]] = []  # (count, nr, bof, eof)
            self._next_nr = 1
            self._triggers: list[float] = []
            self._shape = self._rois[0].shape

    def start_live(self, exp_time: int | None = None, buffer_frame_count: int = 16, stream_to_disk_path: str | None = None,
                   reset_frame_counter: bool = False) -> None:
        self._start("Live", exp_time, buffer_frame_count, 0)

    def start_seq(self, exp_time: int | None = None, num_frames: int = 1, reset_frame_counter: bool = False) -> None:
        self._start("Sequence", exp_time, num_frames, num_frames)

    def sw_trigger(self) -> None:
        if self._acq is None or self._exp_mode not in (2816, 3072):
            raise RuntimeError("PVCAM error 3: pl_exp_trigger failed: camera not in a software trigger mode")
        with self._cond:
            self._triggers.append(time.monotonic())
            self._cond.notify_all()

    def _advance(self, now: float) -> None:
        """Read out every frame due by ``now`` into the queue (what the EOF callback does)."""
        if self._hw.stuck:
            return
        if self._exp_mode == 1792:
            due = int((now - self._t0) / self._period)
        elif self._exp_mode == 2816:
            due = int((now - self._triggers[0]) / self._period) if self._triggers else 0
        elif self._exp_mode == 3072:
            due = sum(1 for t in self._triggers if t + self._period <= now)
        else:
            due = 0  # no edge ever reaches the trigger input
        if self._total:
            due = min(due, self._total)
        while self._produced < due:
            self._produced += 1
            if self._hw.drop:
                self._hw.drop -= 1
                self._next_nr += 1  # lost on the link: this frame number never arrives
                continue
            eof = self._t0 + self._produced * self._period
            self._queue.append((self._produced, self._next_nr, eof - self._period, eof))
            self._next_nr += 1
            while len(self._queue) > self._capacity:
                self._queue.pop(0)

    def poll_frame(self, timeout_ms: int = WAIT_FOREVER, oldestFrame: bool = True, copyData: bool = True) -> Any:
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms >= 0 else 1e9)
        with self._cond:
            while True:
                if self._acq is None:
                    raise RuntimeError("Acquisition not active.")
                now = time.monotonic()
                self._advance(now)
                while self._hw.drop and self._queue:  # lost on the link before the host saw them
                    self._queue.pop(0)
                    self._hw.drop -= 1
                if self._queue:
                    break
                if now >= deadline:
                    raise RuntimeError("Frame timeout. Verify the timeout exceeds the exposure time. "
                                       "If applicable, check external trigger source.")
                self._cond.wait(min(deadline - now, 0.002))
            count, nr, bof, eof = self._queue.pop(0) if oldestFrame else self._queue[-1]
        w, h = self._shape
        pixels = np.full((h, w), 100, dtype=np.uint16)
        pixels[0, 0] = nr & 0xFFFF
        frame: dict[str, Any] = {"pixel_data": pixels}
        if self._metadata:
            frame["meta_data"] = {
                "frame_header": {
                    "signature": "PVCAM", "version": 3, "frameNr": nr, "roiCount": 1,
                    "timestampBofPs": int((bof - self._t0) * 1e12), "timestampEofPs": int((eof - self._t0) * 1e12),
                    "exposureTimePs": int(self._exp_s * 1e12), "bitDepth": self.bit_depth, "colorMask": 0, "flags": 0,
                    "extendedMdSize": 0, "imageFormat": 0, "imageCompression": 0,
                },
                "roi_headers": [{"roiNr": 1}],
            }
        fps = 1.0 / self._period if self._period else 0.0
        return frame, fps, count

    def finish(self) -> None:
        with self._cond:
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
package.__path__ = []  # a package, so `import pyvcam.camera` works


def install(monkeypatch: Any, names: tuple[str, ...] = ("pvcamUSB_0",)) -> dict[str, FakeHardware]:
    """Make ``import pyvcam`` find the double; fresh hardware and library state for each test."""
    HARDWARE.clear()
    for n in names:
        HARDWARE[n] = FakeHardware(n)
    _state["inited"] = False
    for mod_name, mod in (("pyvcam", package), ("pyvcam.pvc", pvc), ("pyvcam.camera", camera),
                          ("pyvcam.constants", constants)):
        monkeypatch.setitem(__import__("sys").modules, mod_name, mod)
    return HARDWARE
