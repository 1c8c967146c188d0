"""Tango device server ``Esp300``: one device per axis of a Newport ESP300.

Axes with the same SerialURL in one server process share one link (the port opens once) and one
request queue. Stop and Abort go to the wire through the link's urgent lane, ahead of every
queued request. The server keeps Tango's default serial model (one request at a time per
device): a Stop waits at most for a request of the same axis already in progress (a Position
write takes the controller's confirmation, tens of ms), never for the link queue.

It ran with NO_SYNC before, so that a Stop would not wait even for that; but with NO_SYNC a
client's read of an attribute races the event thread's push of the same attribute inside
cppTango (the push clears the value the read has just set: "Read value for attribute Position
has not been updated", about 1 read in 30 000 while the axis moves; cppTango#1202). A read that
fails during a move is worse than a Stop that waits tens of ms.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import tango
from tango.server import command, device_property

from deviceservers.common.device import InstrumentDevice, tango_errors
from deviceservers.common.parameter import Parameter, Reading
from deviceservers.common.serial_link import LinkSettings

from . import driver
from .component import Esp300AxisComponent

#: attribute -> unit suffix added to the axis unit
_UNIT_SUFFIX = {"Position": "", "SoftLimitLow": "", "SoftLimitHigh": "", "Velocity": "/s", "Acceleration": "/s2"}


class Esp300(InstrumentDevice):
    """One axis of a Newport ESP300 motion controller (RS-232 19200 8N1, RTS/CTS, CR out, CR LF in)."""

    DEFAULT_BAUD_RATE = 19200
    DEFAULT_FLOW_CONTROL = "rtscts"  # one source says none: the FlowControl property overrides it
    DEFAULT_TIMEOUT_S = 1.0
    DEFAULT_POLL_PERIOD_MS = 500
    WRITE_TERMINATOR = b"\r"
    READ_TERMINATOR = b"\r\n"

    Axis = device_property(dtype=np.int16, default_value=1, doc="Axis number on the controller: 1, 2 or 3")

    component: Esp300AxisComponent

    def create_component(self, settings: LinkSettings, poll_period_s: float, logger: logging.Logger) -> Esp300AxisComponent:
        return Esp300AxisComponent(settings, int(self.Axis), poll_period_s, logger)

    # ------------------------------------------------------------------ lifecycle
    def init_device(self) -> None:
        # Writes, Home, MoveRelative, DefinePosition and Init one at a time (Tango's device
        # monitor does so too; the lock keeps it true for callers that are not Tango requests).
        if not hasattr(self, "_op_lock"):
            self._op_lock = threading.RLock()
        with self._op_lock:
            try:
                super().init_device()
            except ValueError as exc:  # e.g. the same axis twice on one controller
                self.component = None  # type: ignore[assignment]
                self.set_state(tango.DevState.FAULT)
                self.set_status(f"Bad configuration: {exc}. Fix the Axis property and run Init.")
                return
            if self.component is not None:
                self._unsubscribers.append(self.component.unit.subscribe(self._on_unit))
                for p in (self.component.soft_limit_low, self.component.soft_limit_high):
                    self._unsubscribers.append(p.subscribe(self._on_soft_limit))

    def delete_device(self) -> None:
        with self._op_lock:
            super().delete_device()

    def initialize_dynamic_attributes(self) -> None:
        super().initialize_dynamic_attributes()
        if self.component is not None:
            self._apply_attribute_properties()

    def _on_unit(self, _r: Reading[Any]) -> None:
        self._apply_attribute_properties()

    def _on_soft_limit(self, _r: Reading[Any]) -> None:
        self._apply_attribute_properties()

    def _apply_attribute_properties(self) -> None:
        """Units from SN? and Position's range from the soft limits, shown to every client."""
        comp = self.component
        if comp is None:
            return
        unit = comp.unit.value or ""
        low, high = comp.soft_limit_low.value, comp.soft_limit_high.value
        try:
            attrs = self.get_device_attr()
            for name, suffix in _UNIT_SUFFIX.items():
                attr = attrs.get_attr_by_name(name)
                props = attr.get_properties()
                changed = False
                if unit and props.unit != unit + suffix:
                    props.unit = unit + suffix
                    changed = True
                if name == "Position" and low is not None and high is not None:
                    lo, hi = repr(float(low)), repr(float(high))
                    if (props.min_value, props.max_value) != (lo, hi):
                        props.min_value, props.max_value = lo, hi
                        changed = True
                if changed:
                    attr.set_properties(props)
        except (tango.DevFailed, RuntimeError) as exc:  # attributes not created yet: done later
            self._log.debug("attribute properties not applied yet: %s", exc)

    # ------------------------------------------------------------------ writes
    def write_parameter(self, p: Parameter[Any], value: Any) -> None:
        with self._op_lock:
            super().write_parameter(p, value)

    # ------------------------------------------------------------------ commands
    @command(doc_in="", doc_out="")
    @tango_errors
    def Stop(self) -> None:
        """Stop this axis, decelerating (xxST). Sent at once, even while other requests wait."""
        self._component_or_fail().stop_motion()

    @command
    @tango_errors
    def Abort(self) -> None:
        """Emergency stop of every axis of the controller (AB): no deceleration, motors off."""
        self._component_or_fail().abort()

    @command(dtype_in=np.int16, doc_in="home search mode: " + ", ".join(f"{k} {v}" for k, v in driver.HOME_MODES.items()))
    @tango_errors
    def Home(self, mode: int) -> None:
        """Start a home search (xxORm); the found position becomes 0."""
        with self._op_lock:
            self._component_or_fail().home(int(mode))

    @command(dtype_in=float, doc_in="distance to move, in the axis unit")
    @tango_errors
    def MoveRelative(self, delta: float) -> None:
        """Start a relative move (xxPR) after checking the target against the soft limits."""
        with self._op_lock:
            self._component_or_fail().move_relative(float(delta))

    @command(dtype_in=float, doc_in="the value the present position becomes")
    @tango_errors
    def DefinePosition(self, value: float) -> None:
        """Redefine the present position (xxDH) without moving."""
        with self._op_lock:
            self._component_or_fail().define_position(float(value))

    def _component_or_fail(self) -> Esp300AxisComponent:
        comp = self.component
        if comp is None:
            raise RuntimeError(f"the device is not configured: {self.get_status()}")
        return comp


def main(args: list[str] | None = None) -> None:
    Esp300.run_server(args=args)


if __name__ == "__main__":
    main()
