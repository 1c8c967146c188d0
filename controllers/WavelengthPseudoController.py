"""Pseudo motor: tune the laser and set the power meter's wavelength together.

The 1830-C corrects its reading with the detector's responsivity at the wavelength it is told;
a wavelength scan with the meter left at 800 nm measures the responsivity curve, not the laser.
This pseudo motor moves two physical motors to the same value:

- role ``laser``: the Mai Tai's ``Wavelength`` (the Pool motor ``wavelength``);
- role ``meter``: the power meter's ``Wavelength`` (the Pool motor ``meter_wavelength``, served by
  TangoMovableController like every other movable; it "arrives" at once).

Its position is the laser's wavelength. Used as ``mv wavelength_tracked 920`` or as the motor of
an ``ascan`` / ``wavelength_scan``; Sardana waits for the end of tuning through the laser
motor's state (MOVING while tuning), never a fixed sleep.
"""

from __future__ import annotations

from typing import Any

from sardana.pool.controller import PseudoMotorController


class LaserMeterWavelengthController(PseudoMotorController):
    """wavelength_tracked = laser wavelength; moving it sets laser and meter to the same nm."""

    gender = "PseudoMotor"
    model = "tangodaq laser + meter wavelength"
    organization = "tangodaq"

    motor_roles = ("laser", "meter")
    pseudo_motor_roles = ("wavelength_tracked",)

    def CalcPhysical(self, axis: int, pseudo_pos: Any, curr_physical_pos: Any) -> float:
        # both physical motors go to the pseudo position
        return float(pseudo_pos[0])

    def CalcPseudo(self, axis: int, physical_pos: Any, curr_pseudo_pos: Any) -> float:
        return float(physical_pos[0])
