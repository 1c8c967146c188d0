"""Tango device server ``MaiTai``: the Spectra-Physics Mai Tai tunable Ti:sapphire laser (class 4).

Wavelength limits: the laser reports its own range (``WAV:MIN?``/``MAX?``) only after connecting,
after the attribute exists. Both layers use it: the Parameter validates every write (the
DevFailed names the range), and the device copies the range into the attribute's Tango
``min_value``/``max_value`` at run time (``always_executed_hook``, i.e. inside a Tango request,
under the device lock) so that GUIs and Sardana see it in the attribute configuration.
"""

from __future__ import annotations

import logging

import tango
from tango.server import command, device_property

from deviceservers.common.device import InstrumentDevice, tango_errors
from deviceservers.common.serial_link import LinkSettings

from . import driver
from .component import DEFAULT_MANUAL_LEASE_S, MAX_LEASE_S, MIN_LEASE_S, MaiTaiComponent


class MaiTai(InstrumentDevice):
    """Spectra-Physics Mai Tai on RS-232 (9600 8N1 XON/XOFF, LF) or USB (115200, no flow control)."""

    DEFAULT_BAUD_RATE = 9600
    DEFAULT_FLOW_CONTROL = "xonxoff"
    DEFAULT_TIMEOUT_S = 3.0  # replies can take 2 s or more at 9600 baud
    DEFAULT_POLL_PERIOD_MS = 500
    WRITE_TERMINATOR = b"\n"
    READ_TERMINATOR = b"\n"

    EmissionBit = device_property(
        dtype=int, default_value=driver.STB_EMISSION_DEFAULT,
        doc="Bit of *STB? that means emission: 6 per the manual; units in the field differ")
    WatchdogS = device_property(
        dtype=float, default_value=0.0,
        doc="TIMer:WATChdog written at every connection: the pump goes off after this many seconds without a "
            "command from this server (it polls, so only if the server dies). 0 disables it")
    ManualShutterLeaseS = device_property(
        dtype=float, default_value=DEFAULT_MANUAL_LEASE_S,
        doc="Lease of a shutter opened by OpenShutter or Shutter = True (a person at a GUI or itango): the server "
            "closes the shutter this many seconds after the last opening unless it is opened (renewed) again. "
            "Macros use OpenShutterWithLease with a short lease they renew")
    WavelengthToleranceNm = device_property(
        dtype=float, default_value=0.5,
        doc="Tuning is over when the actual wavelength is this close to the setpoint")

    component: MaiTaiComponent

    def create_component(self, settings: LinkSettings, poll_period_s: float, logger: logging.Logger) -> MaiTaiComponent:
        self._limits_applied = -1
        return MaiTaiComponent(settings, poll_period_s, logger, emission_bit=self.EmissionBit,
                               watchdog_s=self.WatchdogS, tolerance_nm=self.WavelengthToleranceNm,
                               manual_lease_s=self.ManualShutterLeaseS)

    def always_executed_hook(self) -> None:
        self._apply_wavelength_limits()

    def _apply_wavelength_limits(self) -> None:
        """Copy the laser's tuning range into the Wavelength attribute's min/max configuration."""
        comp = getattr(self, "component", None)
        if comp is None or comp.limits_version == getattr(self, "_limits_applied", -1):
            return
        lo, hi = comp.wavelength.minimum, comp.wavelength.maximum
        if lo is None or hi is None:
            return
        try:
            attr = self.get_device_attr().get_attr_by_name("Wavelength")
            props = attr.get_properties()
            props.min_value, props.max_value = f"{lo:g}", f"{hi:g}"
            attr.set_properties(props)
            self._limits_applied = comp.limits_version
        except tango.DevFailed as exc:  # the attribute may not exist yet during start-up
            self._log.debug("Wavelength limits not applied yet: %s", exc.args[0].desc)

    @command
    @tango_errors
    def On(self) -> None:
        """Start emission (warm-up must be 100 %). On a cold laser (0 %) this starts the ~2 min warm-up:
        State is INIT with the percentage, then run On again. Does not open the shutter, and is refused
        while the shutter is open (emission never starts into an open shutter)."""
        self.component.on()

    @command
    @tango_errors
    def Off(self) -> None:
        """Safe stop: close the shutter (confirmed), then switch emission off."""
        self.component.off()

    @command
    @tango_errors
    def OpenShutter(self) -> None:
        """Open the shutter (a person's opening: held by a ManualShutterLeaseS lease, renewed by opening again);
        returns once SHUTter? confirms it (at most ~2 s), else fails with the reason. Refused while the server is
        closing the shutter for safety."""
        self.component.open_shutter()

    @command(dtype_in=float, doc_in=f"lease in s ({MIN_LEASE_S:g} to {MAX_LEASE_S:g})")
    @tango_errors
    def OpenShutterWithLease(self, seconds: float) -> None:
        """Open the shutter held by a lease of ``seconds``: unless RenewShutterLease is called before it
        expires, this server closes the shutter. For programs (macros) that renew from a thread living
        exactly as long as they do, so the light ends when they die."""
        self.component.open_shutter(seconds)

    @command(dtype_in=float, doc_in="new lease in s, from now", dtype_out=float, doc_out="the lease granted (s)")
    @tango_errors
    def RenewShutterLease(self, seconds: float) -> float:
        """The shutter lease ends ``seconds`` from now. Refused when nobody holds the shutter open (closed by
        the lease's expiry, by hand, by the interlock): a renewal never reopens the shutter."""
        return self.component.renew_lease(seconds)

    @command
    @tango_errors
    def CloseShutter(self) -> None:
        """Close the shutter; returns once SHUTter? confirms it (at most ~2 s), else fails with the reason."""
        self.component.close_shutter()


def main(args: list[str] | None = None) -> None:
    MaiTai.run_server(args=args)


if __name__ == "__main__":
    main()
