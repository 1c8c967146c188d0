"""Capabilities: the small interfaces that controllers and macros are written against.

One Sardana motor controller serves the ESP300 axes, the ELL14 mounts and the laser wavelength
because all of them are :class:`Movable`. The protocols are structural (``typing.Protocol``):
a component satisfies one by having the methods, with no registration and no inheritance.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Movable(Protocol):
    """Something with a position that moves to a target and can be stopped."""

    def move_to(self, target: float) -> None:
        """Start a move and return at once."""

    def position(self) -> float:
        """The actual position, in the component's unit."""

    def is_moving(self) -> bool: ...

    def stop(self) -> None:
        """Stop the move (decelerating) as fast as the link allows."""


@runtime_checkable
class Readable(Protocol):
    """Something that yields a scalar measurement."""

    def read_value(self) -> float: ...


@runtime_checkable
class WavelengthTunable(Protocol):
    """A source or detector whose wavelength (nm) can be set."""

    def set_wavelength(self, nm: float) -> None: ...

    def wavelength(self) -> float: ...


@runtime_checkable
class ShutterControl(Protocol):
    def open_shutter(self) -> None: ...

    def close_shutter(self) -> None: ...

    def shutter_open(self) -> bool: ...


@runtime_checkable
class ExposureControl(Protocol):
    def set_exposure(self, seconds: float) -> None: ...

    def exposure(self) -> float: ...


@runtime_checkable
class FrameProducer(Protocol):
    """A camera-like source of 2-D frames."""

    def start_acquisition(self, nb_frames: int = 0) -> None: ...

    def stop_acquisition(self) -> None: ...

    def last_frame(self) -> np.ndarray | None: ...
