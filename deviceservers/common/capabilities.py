"""What the Tango layer relies on in a component: the one contract every component meets.

:class:`~deviceservers.common.device.ParameterDevice` maps a component's Parameters to
attributes, its derived state to State/Status and its link health to ``CommunicationOk``,
``ErrorCount`` and ``LastError``, and starts and stops it with the server. It needs nothing else,
so this is all a component must have, serial (:class:`~deviceservers.common.component.Component`)
or not (the camera's :class:`~deviceservers.Pvcam.component.PvcamComponent`).
``tests/unit/test_capabilities.py`` checks every component of the tree against it.

Sardana's controllers do not see components: they drive the *devices*, through Tango, by the
device contract written in ``docs/design.md`` (a movable device has a writable ``Position`` or
``Wavelength``, is MOVING until it arrives and may have ``Stop``/``Abort``; the power meter has
``Measure``; the camera has ``Snap``). That contract is what lets one motor controller drive the
stage axes, the mounts and the laser's wavelength, and the device tests check it on each server.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .component import DeviceState, StateListener
from .parameter import ParameterSet


@runtime_checkable
class ParameterComponent(Protocol):
    """Hardware access for one device, as its Tango device uses it."""

    #: the settings and readings, each becoming an attribute of the device
    parameters: ParameterSet

    @property
    def state(self) -> DeviceState:
        """Derived from what the hardware reports; never set by hand."""

    @property
    def status(self) -> str:
        """Why the state is what it is, and what to do about it."""

    def add_state_listener(self, listener: StateListener) -> None:
        """``listener(state, status)`` on every real change (the device pushes State/Status)."""

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener`` (the device is deleted or re-initialised)."""

    def update_state(self) -> None:
        """Derive the state again now (after a write that changes it)."""

    def start(self) -> None:
        """Start talking to the hardware (connect, poll); returns at once."""

    def stop(self) -> None:
        """Stop talking to it (the server stops or re-initialises): make it safe, release it."""

    @property
    def communication_ok(self) -> bool:
        """The hardware answers now."""

    @property
    def error_count(self) -> int:
        """Errors since the server started."""

    @property
    def last_error(self) -> str:
        """The last error, in words ("" if none)."""
