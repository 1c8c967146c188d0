"""What the Pvcam device needs from a camera: one interface, two implementations.

:class:`CameraBackend` is the contract between the Pvcam component and a camera. Two backends
implement it: :mod:`.sim` (a simulated Prime BSI, the default) and :mod:`.pyvcam_backend` (the
real camera through Photometrics' PyVCAM, an optional dependency imported only when selected).
Both are tested against the same contract tests, so the component cannot tell them apart.

The interface speaks SI units and plain Python/numpy (seconds, degrees Celsius, ``uint16``
arrays); it never imports Tango or Arrow. Values that the camera defines (trigger modes, the
speed table, binnings, fan speeds) are read from the backend after :meth:`CameraBackend.open`,
never hard-coded in the device.

Rules every backend follows (they are the lessons of the field problems in INSTRUMENTS.md):

* :meth:`CameraBackend.poll_frame` always has a time-out and returns the *oldest* frame
  waiting, so a slow consumer sees frame-number gaps (lost frames) instead of silently
  skipped data;
* a setting is validated completely before anything is sent to the camera, so an invalid
  value changes nothing; settings the SDK refuses while acquiring raise
  :class:`AcquisitionRunning`;
* after a stuck acquisition, :meth:`CameraBackend.recover` aborts, re-opens the camera and
  re-applies every setting (port, then speed, then gain, in that order).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: PVCAM exposure (trigger) modes, name -> SDK value (``cam.exp_modes`` of a Prime BSI).
PVCAM_EXPOSURE_MODES: dict[str, int] = {
    "Internal": 1792,
    "Trigger-first": 2048,
    "Edge rising": 2304,
    "Level": 2560,
    "Software-first": 2816,
    "Software-edge": 3072,
    "Level-overlap": 3328,
    "Level-pulsed": 3584,
}
EXT_TRIG_INTERNAL = 1792
EXT_TRIG_TRIG_FIRST = 2048
EXT_TRIG_EDGE_RISING = 2304
EXT_TRIG_LEVEL = 2560
EXT_TRIG_SOFTWARE_FIRST = 2816
EXT_TRIG_SOFTWARE_EDGE = 3072
EXT_TRIG_LEVEL_OVERLAP = 3328
EXT_TRIG_LEVEL_PULSED = 3584
#: Modes in which frames come only after a trigger from the software (``sw_trigger``).
SOFTWARE_TRIGGER_MODES = frozenset({EXT_TRIG_SOFTWARE_FIRST, EXT_TRIG_SOFTWARE_EDGE})
#: Modes in which frames come only after a trigger on the camera's trigger input.
EXTERNAL_TRIGGER_MODES = frozenset(
    {EXT_TRIG_TRIG_FIRST, EXT_TRIG_EDGE_RISING, EXT_TRIG_LEVEL, EXT_TRIG_LEVEL_OVERLAP, EXT_TRIG_LEVEL_PULSED}
)

#: PVCAM fan speeds, index = SDK value (FAN_SPEED_HIGH = 0 ... FAN_SPEED_OFF = 3).
FAN_SPEEDS: tuple[str, ...] = ("High", "Medium", "Low", "Off")


class CameraError(RuntimeError):
    """The camera or its SDK failed; the message says what to do."""


class FrameTimeout(CameraError):
    """No frame arrived within the poll time-out (normal while waiting for a trigger)."""


class AcquisitionRunning(CameraError):
    """The SDK refuses this change while an acquisition runs: stop the acquisition first."""


class AcquisitionNotActive(CameraError):
    """``poll_frame`` was called with no acquisition running, or after a sequence completed."""


class FrameLost(CameraError):
    """``count`` frames were taken from the camera but cannot be delivered (metadata that cannot be
    decoded, a live-buffer slot overwritten by a newer frame while it was read). They took the
    next frame number(s): the consumer counts them lost and carries on."""

    def __init__(self, message: str, count: int = 1) -> None:
        super().__init__(message)
        self.count = count


class CameraConnectionLost(CameraError):
    """The camera stopped answering during an acquisition (cable pulled, power cut, driver
    error): the handle is unusable and the camera must be closed and re-opened."""


@dataclass(frozen=True)
class Gain:
    """One gain of a speed: PVCAM gain index (starts at 1), name and the resulting bit depth."""

    index: int
    name: str
    bit_depth: int


@dataclass(frozen=True)
class Speed:
    """One readout speed of a port: speed-table index, name, pixel time and its gains."""

    index: int
    name: str
    pixel_time_ns: int
    gains: tuple[Gain, ...]

    def gain(self, index: int) -> Gain:
        for g in self.gains:
            if g.index == index:
                return g
        raise ValueError(
            f"gain index {index} is not offered by speed {self.index} ({self.name}); "
            f"choose one of {', '.join(f'{g.index}={g.name}' for g in self.gains)}"
        )


@dataclass(frozen=True)
class ReadoutPort:
    """One readout port: SDK value, name and its speeds."""

    value: int
    name: str
    speeds: tuple[Speed, ...]

    def speed(self, index: int) -> Speed:
        if not 0 <= index < len(self.speeds):
            raise ValueError(
                f"speed index {index} is not offered by port {self.name}; "
                f"choose one of {', '.join(f'{s.index}={s.name}' for s in self.speeds)}"
            )
        return self.speeds[index]


@dataclass(frozen=True)
class Roi:
    """A region of interest in unbinned sensor pixels: x (serial), y (parallel), width, height."""

    x: int
    y: int
    width: int
    height: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


@dataclass
class Frame:
    """One frame as the camera delivered it.

    ``frame_number`` is the camera's own counter (PVCAM ``frameNr``, 1 for the first frame of an
    acquisition); a gap between consecutive numbers means frames were lost. Timestamps are
    seconds on the camera clock since the start of the acquisition (PVCAM BOF/EOF).
    """

    pixels: np.ndarray
    frame_number: int
    timestamp_bof_s: float
    timestamp_eof_s: float
    exposure_s: float


class FrameSink(Protocol):
    """Where the component hands every frame (the device plugs in the shared-memory ring)."""

    def write_frame(
        self, frame: np.ndarray, frame_number: int, timestamp_bof: float, timestamp_eof: float, exposure_s: float
    ) -> None: ...


def validate_roi(roi: Roi, sensor: tuple[int, int], binning: int) -> Roi:
    """Check a ROI against the sensor and the binning; return it or raise ValueError.

    PyVCAM only checks the bounds and silently clips rows or columns that do not fill a binned
    pixel; here such a ROI is refused, so the frame shape is always exactly (h/bin, w/bin).
    """
    width, height = sensor
    values = roi.as_tuple()
    if any(isinstance(v, bool) or int(v) != v for v in values):
        raise ValueError(f"ROI {values}: x, y, width and height must be integers")
    if roi.width < 1 or roi.height < 1:
        raise ValueError(f"ROI {values}: width and height must be at least 1 pixel")
    if roi.x < 0 or roi.y < 0 or roi.x + roi.width > width or roi.y + roi.height > height:
        raise ValueError(
            f"ROI x={roi.x}, y={roi.y}, w={roi.width}, h={roi.height} extends beyond the {width}x{height} sensor "
            f"(x + w must be <= {width}, y + h <= {height})"
        )
    if roi.width % binning or roi.height % binning:
        raise ValueError(
            f"ROI {roi.width}x{roi.height} is not a multiple of the binning {binning}x{binning}: "
            "choose a width and height divisible by the binning"
        )
    return roi


def validate_binning(binning: int, offered: Sequence[tuple[int, int]], roi: Roi) -> int:
    """Check a symmetric binning against what the camera offers and the current ROI."""
    if isinstance(binning, bool) or int(binning) != binning:
        raise ValueError(f"binning {binning!r} must be an integer")
    binning = int(binning)
    if (binning, binning) not in offered:
        raise ValueError(
            f"binning {binning}x{binning} is not offered by this camera; "
            f"choose one of {', '.join(f'{x}x{y}' for x, y in offered)}"
        )
    if roi.width % binning or roi.height % binning:
        raise ValueError(
            f"binning {binning}x{binning} does not divide the ROI {roi.width}x{roi.height}: change the ROI first"
        )
    return binning


class CameraBackend(abc.ABC):
    """A camera as the Pvcam component drives it. Thread use: one acquisition thread calls
    :meth:`poll_frame`; any thread may call the rest (backends serialise what must be)."""

    # ------------------------------------------------------------------ lifecycle
    @abc.abstractmethod
    def open(self) -> None:
        """Open the camera, read its capabilities, enable metadata. Raises CameraError."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop any acquisition and release the camera (idempotent)."""

    @abc.abstractmethod
    def recover(self) -> None:
        """Abort, close and re-open the camera, then re-apply every setting (stuck acquisition)."""

    # ------------------------------------------------------------------ description
    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @property
    @abc.abstractmethod
    def sensor_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""

    @property
    @abc.abstractmethod
    def speed_table(self) -> tuple[ReadoutPort, ...]: ...

    @property
    @abc.abstractmethod
    def trigger_modes(self) -> dict[str, int]:
        """The camera's exposure modes, name -> SDK value, in the camera's order."""

    @property
    @abc.abstractmethod
    def binnings(self) -> tuple[tuple[int, int], ...]: ...

    @property
    @abc.abstractmethod
    def fan_speeds(self) -> tuple[str, ...]: ...

    @property
    @abc.abstractmethod
    def exposure_limits_s(self) -> tuple[float, float]: ...

    @property
    @abc.abstractmethod
    def temperature_setpoint_limits(self) -> tuple[float, float]: ...

    # ------------------------------------------------------------------ settings
    @property
    def counts_driver_losses(self) -> bool:
        """True when frame numbers come from the camera, so frames lost between the camera and
        the host show as gaps; False when only the host's frame counter is known (no metadata)."""
        return True

    @abc.abstractmethod
    def get_exposure(self) -> float: ...

    @abc.abstractmethod
    def set_exposure(self, seconds: float) -> None: ...

    @abc.abstractmethod
    def get_trigger_mode(self) -> int: ...

    @abc.abstractmethod
    def set_trigger_mode(self, value: int) -> None: ...

    @abc.abstractmethod
    def get_readout(self) -> tuple[int, int, int]:
        """(port value, speed index, gain index)."""

    @abc.abstractmethod
    def set_readout(self, port: int, speed: int, gain: int) -> None:
        """Apply port, then speed, then gain (PVCAM resets speed and gain on a port change)."""

    @abc.abstractmethod
    def get_binning(self) -> int: ...

    @abc.abstractmethod
    def set_binning(self, binning: int) -> None: ...

    @abc.abstractmethod
    def get_roi(self) -> Roi: ...

    @abc.abstractmethod
    def set_roi(self, roi: Roi) -> None: ...

    @abc.abstractmethod
    def get_fan_speed(self) -> int: ...

    @abc.abstractmethod
    def set_fan_speed(self, value: int) -> None: ...

    @abc.abstractmethod
    def get_temperature_setpoint(self) -> float: ...

    @abc.abstractmethod
    def set_temperature_setpoint(self, celsius: float) -> None: ...

    @abc.abstractmethod
    def temperature(self) -> float:
        """Sensor temperature in degrees Celsius. Callable while acquiring: a camera that must not
        be asked while imaging answers with the last value read before the acquisition."""

    @abc.abstractmethod
    def bit_depth(self) -> int: ...

    @abc.abstractmethod
    def readout_time_s(self) -> float:
        """Time to read one frame with the current ROI and speed (callable while acquiring)."""

    def frame_shape(self) -> tuple[int, int]:
        """(height, width) of the frames with the current ROI and binning."""
        roi, b = self.get_roi(), self.get_binning()
        return (roi.height // b, roi.width // b)

    # ------------------------------------------------------------------ acquisition
    @property
    @abc.abstractmethod
    def acquiring(self) -> bool: ...

    @abc.abstractmethod
    def start_live(self, buffer_frames: int) -> None:
        """Start continuous acquisition into a circular buffer of ``buffer_frames`` frames."""

    @abc.abstractmethod
    def start_sequence(self, nb_frames: int) -> None:
        """Start a sequence of ``nb_frames`` frames (1..65535), buffered completely."""

    @abc.abstractmethod
    def poll_frame(self, timeout_s: float) -> Frame:
        """The oldest frame waiting; raises FrameTimeout after ``timeout_s`` (also once a sequence is
        complete), AcquisitionNotActive when nothing runs, FrameLost for a frame that cannot be
        delivered (counted, the acquisition goes on), CameraConnectionLost when the camera stopped
        answering."""

    @abc.abstractmethod
    def stop(self) -> None:
        """End the acquisition (PyVCAM ``finish``: abort live or finish a sequence)."""

    @abc.abstractmethod
    def software_trigger(self) -> None:
        """One software trigger (software trigger modes only)."""
