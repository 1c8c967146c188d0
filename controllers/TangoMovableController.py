"""One Sardana motor controller for every Movable Tango device of the lab.

The ESP300 axes (``Position`` in mm), the ELL14 mounts (``Position`` in degrees) and the Mai Tai
(``Wavelength`` in nm) all follow the same Tango contract (docs/design.md): a writable
position-like attribute, MOVING while moving or tuning, ALARM on a limit or interlock, FAULT on a
lost link, and (where the hardware has them) ``Stop`` / ``Abort`` commands. So one controller
serves all of them; each axis names its device and attribute:

- axis attribute ``TangoDevice``: the device's Tango name (memorized: the Pool restores it). An
  axis with none memorized whose Pool element is named after a role of the lab (``hwp``,
  ``stage_x``...: ``tango_db.roles``) gets that role's device, so the elements of the lab's
  configuration need no device names;
- axis attribute ``PositionAttribute``: ``Position`` (default) or ``Wavelength``.

Why a controller of our own rather than sardana's generic Taurus one: ``StateOne`` must be fast
and true (one ``read_attributes(State, Status)`` round trip, limit flags from ALARM, the device's
Status as the axis status), and stop/abort must use the device's own commands, falling back to
"target = where it is" for the laser, which has no Stop command.

Sardana's motion parameters (Velocity, Acceleration and Deceleration as times, Base_rate) come
from the instrument where it has them, so continuous scans (``ascanct``) compute their trajectory
from the real stage: see ``GetAxisPar``.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import tango
from sardana import State
from sardana.pool.controller import (
    Access,
    DataAccess,
    DefaultValue,
    Description,
    Memorize,
    Memorized,
    MotorController,
    Type,
)

from tango_db.proxies import device_proxy
from tango_db.roles import lab_roles
from tangodaq_controllers._acquisition import describe

TIMEOUT_MS = 2000
START_GRACE_S = 0.5  # a device that has not reported MOVING yet right after a write is still moving
ARRIVED_TOLERANCE = 1e-3  # relative to max(1, |target|)

TANGO_TO_SARDANA = {
    tango.DevState.ON: State.On,
    tango.DevState.OFF: State.Off,
    tango.DevState.MOVING: State.Moving,
    tango.DevState.RUNNING: State.Moving,
    tango.DevState.ALARM: State.Alarm,
    tango.DevState.FAULT: State.Fault,
    tango.DevState.INIT: State.Init,
    tango.DevState.DISABLE: State.Disable,
    tango.DevState.STANDBY: State.Standby,
    tango.DevState.UNKNOWN: State.Unknown,
}

_LOW = re.compile(r"\b(low|lower|negative|minus|-\s*limit)\b", re.I)
_HIGH = re.compile(r"\b(high|upper|positive|plus|\+\s*limit)\b", re.I)


def limit_switches(state: tango.DevState, status: str) -> int:
    """Sardana's limit-switch bits from an ALARM whose Status names a limit (0 otherwise)."""
    if state != tango.DevState.ALARM or "limit" not in status.lower():
        return MotorController.NoLimitSwitch
    flags = 0
    if _HIGH.search(status):
        flags |= MotorController.UpperLimitSwitch
    if _LOW.search(status):
        flags |= MotorController.LowerLimitSwitch
    if not flags:  # a limit without a side: report both, motion is refused either way
        flags = MotorController.UpperLimitSwitch | MotorController.LowerLimitSwitch
    return flags


class Axis:
    """What the controller knows of one axis."""

    def __init__(self) -> None:
        self.device = ""
        self.attribute = "Position"
        self.proxy: tango.DeviceProxy | None = None
        self.commands: set[str] = set()
        self.attributes: set[str] = set()
        self.units: dict[str, str] = {}
        self.target: float | None = None
        self.started = 0.0
        # parameters the device does not have: kept so Sardana's memorized values round-trip
        self.params: dict[str, float] = {"velocity": 1.0, "acceleration": 0.1, "deceleration": 0.1,
                                         "base_rate": 0.0, "step_per_unit": 1.0}

    def connect(self) -> tango.DeviceProxy:
        if not self.device:
            raise RuntimeError("no TangoDevice set for this axis (write the motor's TangoDevice attribute)")
        if self.proxy is None:
            proxy = device_proxy(self.device, TIMEOUT_MS)
            self.commands = {c.cmd_name for c in proxy.command_list_query()}
            infos = proxy.attribute_list_query()
            self.attributes = {a.name for a in infos}
            self.units = {a.name: a.unit.strip() for a in infos}
            if self.attribute not in self.attributes:
                raise RuntimeError(f"{self.device} has no attribute {self.attribute!r}; "
                                   f"PositionAttribute must be one of its attributes")
            self.proxy = proxy
        return self.proxy


POSITION_ATTRIBUTES = ("Position", "Wavelength")  # what a lab device moves; nothing else may be driven


class TangoMovableController(MotorController):
    """Motors backed by any Movable lab device (ESP300 axis, ELL14 mount, Mai Tai wavelength)."""

    gender = "Motor"
    model = "tangodaq Movable"
    organization = "tangodaq"

    axis_attributes = {
        "TangoDevice": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized, DefaultValue: "",
            Description: "Tango device moved by this axis (default: the device of the lab's role "
                         "named like the motor, e.g. hwp)",
        },
        "PositionAttribute": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized, DefaultValue: "Position",
            Description: "the device's writable position attribute: Position, or Wavelength for the laser",
        },
    }

    def __init__(self, inst: str, props: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(inst, props, *args, **kwargs)
        self.axes: dict[int, Axis] = {}

    # ------------------------------------------------------------------ axes
    def _element_name(self, axis: int) -> str:
        """The Pool element (motor) name of ``axis``, "" when the Pool does not say (yet)."""
        try:
            element = self._getPoolController().get_element(axis=axis)
        except Exception:  # noqa: BLE001 - outside a Pool (unit use) or element not registered
            return ""
        return str(getattr(element, "name", "") or "")

    def GetAxisAttributes(self, axis: int) -> dict:
        """Sardana's axis attributes; ``TangoDevice`` defaults to the device of the lab's role
        named like this axis' motor (``hwp`` -> the lab's half-wave plate), else ""."""
        attrs = super().GetAxisAttributes(axis)
        name = self._element_name(axis)
        attrs["TangoDevice"][DefaultValue] = lab_roles().get(name, "") if name else ""
        return attrs

    def AddDevice(self, axis: int) -> None:
        self.axes[axis] = Axis()

    def DeleteDevice(self, axis: int) -> None:
        self.axes.pop(axis, None)

    def GetAxisExtraPar(self, axis: int, name: str) -> Any:
        ax = self.axes[axis]
        if name.lower() == "tangodevice":
            return ax.device
        if name.lower() == "positionattribute":
            return ax.attribute
        raise KeyError(name)

    def SetAxisExtraPar(self, axis: int, name: str, value: Any) -> None:
        ax = self.axes[axis]
        if name.lower() == "tangodevice":
            ax.device, ax.proxy = str(value).strip(), None
        elif name.lower() == "positionattribute":
            attribute = str(value).strip() or "Position"
            if attribute not in POSITION_ATTRIBUTES:
                # A free attribute name would let anyone who may configure a motor write any
                # attribute through the Pool's account (the laser's Shutter, for one).
                raise ValueError(f"PositionAttribute must be one of {', '.join(POSITION_ATTRIBUTES)}, not {attribute!r}")
            ax.attribute, ax.proxy = attribute, None
        else:
            raise KeyError(name)

    # ------------------------------------------------------------------ state
    def StateOne(self, axis: int) -> tuple[Any, str, int]:
        ax = self.axes[axis]
        try:
            proxy = ax.connect()
            state_da, status_da = proxy.read_attributes(["State", "Status"])
        except (tango.DevFailed, RuntimeError) as exc:
            ax.proxy = None  # reconnect (and re-query the interface) next time
            why = describe(exc) if isinstance(exc, tango.DevFailed) else str(exc)
            return State.Fault, f"{ax.device or f'axis {axis}'}: {why}", MotorController.NoLimitSwitch
        state, status = state_da.value, str(status_da.value)
        sardana_state = TANGO_TO_SARDANA.get(state, State.Unknown)
        if sardana_state == State.On and self._just_started(ax):
            sardana_state = State.Moving
        return sardana_state, f"{ax.device}: {status}", limit_switches(state, status)

    def _just_started(self, ax: Axis) -> bool:
        """The device may take a poll cycle to report MOVING after the write: not arrived yet."""
        if ax.target is None or time.monotonic() - ax.started > START_GRACE_S:
            return False
        try:
            pos = float(ax.connect().read_attribute(ax.attribute).value)
        except (tango.DevFailed, RuntimeError, TypeError, ValueError):
            return False
        return abs(pos - ax.target) > ARRIVED_TOLERANCE * max(1.0, abs(ax.target))

    # ------------------------------------------------------------------ position
    def ReadOne(self, axis: int) -> float:
        ax = self.axes[axis]
        try:
            value = ax.connect().read_attribute(ax.attribute).value
        except tango.DevFailed as exc:
            ax.proxy = None
            raise RuntimeError(f"{ax.device}: cannot read {ax.attribute}: {describe(exc)}") from None
        if value is None:
            raise RuntimeError(f"{ax.device}: {ax.attribute} has no valid value ({self._status(ax)})")
        return float(value)

    def StartOne(self, axis: int, position: float) -> None:
        ax = self.axes[axis]
        if not math.isfinite(position):
            raise ValueError(f"{ax.device}: target {position!r} is not a finite number")
        try:
            ax.connect().write_attribute(ax.attribute, float(position))
        except tango.DevFailed as exc:
            raise RuntimeError(f"{ax.device}: cannot move to {position:g}: {describe(exc)} "
                               f"(device says: {self._status(ax)})") from None
        ax.target, ax.started = float(position), time.monotonic()

    def _status(self, ax: Axis) -> str:
        try:
            return ax.connect().status().strip()
        except (tango.DevFailed, RuntimeError) as exc:
            return describe(exc) if isinstance(exc, tango.DevFailed) else str(exc)

    # ------------------------------------------------------------------ stop
    def StopOne(self, axis: int) -> None:
        self._halt(self.axes[axis], ("Stop",))

    def AbortOne(self, axis: int) -> None:
        self._halt(self.axes[axis], ("Abort", "Stop"))

    def _halt(self, ax: Axis, commands: tuple[str, ...]) -> None:
        ax.target = None
        proxy = ax.connect()
        for cmd in commands:
            if cmd in ax.commands:
                proxy.command_inout(cmd)
                return
        # no Stop command (the laser): the target becomes where it is now
        actual = float(proxy.read_attribute(ax.attribute).value)
        proxy.write_attribute(ax.attribute, actual)

    # ------------------------------------------------------------------ parameters
    # Sardana's motion parameters, from the instrument where it has them (continuous scans
    # compute their trajectory from these): velocity in units/s, acceleration and deceleration
    # as *times* in s (from the base rate to the velocity), base rate in units/s.
    #
    # - a device with a velocity in physical units (the ESP300's Velocity = VA, the ELL14's Speed
    #   in deg/s) gives the velocity; base rate 0 (the ESP300 ramps from rest);
    # - with an Acceleration in units/s2 too (the ESP300's AC/AG, set together) the times are
    #   velocity / acceleration, and writing a time writes acceleration = velocity / time;
    # - with a velocity but no acceleration (the ELL14, a resonant piezo motor with no ramp
    #   setting) the times are 0: it runs at its speed from the start;
    # - a device with neither (the laser's wavelength) keeps what Sardana wrote (memorized values
    #   round-trip) and has no continuous-scan trajectory of its own.
    VELOCITY_ATTRIBUTES = ("Speed", "Velocity")

    def GetAxisPar(self, axis: int, name: str) -> Any:
        ax = self.axes[axis]
        name = name.lower()
        velocity_attr, accel_attr = self._motion_attributes(ax)
        if velocity_attr is None or name not in ("velocity", "acceleration", "deceleration", "base_rate"):
            return ax.params.get(name)
        if name == "base_rate":
            return 0.0
        velocity = self._read_float(ax, velocity_attr)
        if name == "velocity":
            return velocity
        if accel_attr is None:
            return 0.0
        accel = self._read_float(ax, accel_attr)
        return velocity / accel if accel > 0 else 0.0

    def SetAxisPar(self, axis: int, name: str, value: Any) -> None:
        ax = self.axes[axis]
        name = name.lower()
        value = float(value)
        velocity_attr, accel_attr = self._motion_attributes(ax)
        if velocity_attr is not None and name == "velocity":
            self._write(ax, velocity_attr, value)
        elif velocity_attr is not None and accel_attr is not None and name in ("acceleration", "deceleration"):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{ax.device}: {name} time must be >= 0 s, not {value}")
            if value > 0:
                self._write(ax, accel_attr, self._read_float(ax, velocity_attr) / value)
            else:  # "as fast as it can": its maximum acceleration
                limit = self._max_value(ax, accel_attr)
                if limit is not None:
                    self._write(ax, accel_attr, limit)
        ax.params[name] = value

    def _motion_attributes(self, ax: Axis) -> tuple[str | None, str | None]:
        """(velocity attribute, acceleration attribute) of the device in physical units, or None
        (a percentage is not a velocity Sardana could compute times with)."""
        if ax.attribute != "Position":
            return None, None
        try:
            ax.connect()
        except (tango.DevFailed, RuntimeError):
            return None, None
        velocity = next((a for a in self.VELOCITY_ATTRIBUTES if a in ax.attributes and ax.units.get(a) != "%"), None)
        if velocity is None:
            return None, None
        accel = "Acceleration" if "Acceleration" in ax.attributes and ax.units.get("Acceleration") != "%" else None
        return velocity, accel

    def _read_float(self, ax: Axis, attr: str) -> float:
        try:
            value = ax.connect().read_attribute(attr).value
        except tango.DevFailed as exc:
            raise RuntimeError(f"{ax.device}: cannot read {attr}: {describe(exc)}") from None
        if value is None:
            raise RuntimeError(f"{ax.device}: {attr} has no valid value ({self._status(ax)})")
        return float(value)

    def _write(self, ax: Axis, attr: str, value: float) -> None:
        try:
            ax.connect().write_attribute(attr, float(value))
        except tango.DevFailed as exc:
            raise RuntimeError(f"{ax.device}: cannot set {attr} to {value:g}: {describe(exc)}") from None

    @staticmethod
    def _max_value(ax: Axis, attr: str) -> float | None:
        try:
            text = ax.connect().get_attribute_config(attr).max_value
            return float(text)
        except (tango.DevFailed, TypeError, ValueError):
            return None

    def DefinePosition(self, axis: int, position: float) -> None:
        ax = self.axes[axis]
        proxy = ax.connect()
        if "DefinePosition" not in ax.commands:
            raise RuntimeError(f"{ax.device} cannot redefine its position (no DefinePosition command)")
        proxy.command_inout("DefinePosition", float(position))
