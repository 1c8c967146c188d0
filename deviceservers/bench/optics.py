"""The virtual bench's optics: Jones calculus from the laser to the power meter and the camera.

The beam leaves the laser horizontally polarised, passes a half-wave plate (ELL14 at address 2),
a quarter-wave plate (address 8) and a linear polariser (address 3), then reaches the power
meter. Each element has an orientation offset (the angle of its axis when the mount reads 0°)
and a retardance that scales with wavelength like a zero-order plate (retardance ∝ λ₀/λ), so the
plates are exact only at their design wavelength, as in a real lab. The defaults are not zero,
so calibration macros have something to find.

The ESP300 x/y stage moves the beam spot on the camera; the spot's brightness follows the power
after the optics and the exposure time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, s], [-s, c]], dtype=complex)


def retarder(axis_rad: float, retardance_rad: float) -> np.ndarray:
    """Jones matrix of a wave plate with its fast axis at ``axis_rad``."""
    core = np.array([[1.0, 0.0], [0.0, np.exp(1j * retardance_rad)]], dtype=complex)
    return rotation(-axis_rad) @ core @ rotation(axis_rad)


def polariser(axis_rad: float, extinction: float) -> np.ndarray:
    """Jones matrix of a linear polariser; ``extinction`` is the power ratio leaking through."""
    core = np.array([[1.0, 0.0], [0.0, math.sqrt(extinction)]], dtype=complex)
    return rotation(-axis_rad) @ core @ rotation(axis_rad)


@dataclass
class WavePlate:
    """A wave plate: ``waves`` of retardance at ``design_nm`` (0.5 = half-wave)."""

    waves: float
    offset_deg: float = 0.0
    design_nm: float = 800.0

    def matrix(self, mount_deg: float, wavelength_nm: float) -> np.ndarray:
        retardance = 2 * math.pi * self.waves * self.design_nm / wavelength_nm
        return retarder(math.radians(mount_deg + self.offset_deg), retardance)


@dataclass
class Polariser:
    offset_deg: float = 0.0
    extinction: float = 1e-5

    def matrix(self, mount_deg: float) -> np.ndarray:
        return polariser(math.radians(mount_deg + self.offset_deg), self.extinction)


@dataclass
class OpticsModel:
    """Laser → HWP → QWP → polariser → power meter; stage → spot on the camera."""

    hwp: WavePlate = field(default_factory=lambda: WavePlate(0.5, offset_deg=3.2))
    qwp: WavePlate = field(default_factory=lambda: WavePlate(0.25, offset_deg=-1.7))
    pol: Polariser = field(default_factory=lambda: Polariser(offset_deg=5.0))
    #: fraction of the laser's output that reaches the optics (a beam splitter / ND in front)
    throughput: float = 2.0e-4
    #: camera: where the spot is with the stage at 0, and how far it moves per mm of stage
    spot_origin_px: tuple[float, float] = (1024.0, 1024.0)
    px_per_mm: float = 100.0
    spot_sigma_px: float = 12.0
    #: camera counts per watt-second reaching the sensor (sets the spot's brightness)
    adu_per_joule: float = 4.0e9

    def transmitted_power(self, laser_w: float, wavelength_nm: float, hwp_deg: float, qwp_deg: float,
                          pol_deg: float) -> float:
        """Power after the polariser, in watts, for a horizontally polarised input beam."""
        if laser_w <= 0.0:
            return 0.0
        e_in = np.array([1.0, 0.0], dtype=complex) * math.sqrt(laser_w * self.throughput)
        chain = self.pol.matrix(pol_deg) @ self.qwp.matrix(qwp_deg, wavelength_nm) @ self.hwp.matrix(hwp_deg, wavelength_nm)
        e_out = chain @ e_in
        return float(np.vdot(e_out, e_out).real)

    def spot(self, stage_x_mm: float, stage_y_mm: float) -> tuple[float, float]:
        """Spot centre on the camera (column, row) in pixels for a stage position."""
        x0, y0 = self.spot_origin_px
        return x0 + stage_x_mm * self.px_per_mm, y0 + stage_y_mm * self.px_per_mm

    def spot_peak_adu(self, power_w: float, exposure_s: float) -> float:
        """Peak counts of a Gaussian spot carrying ``power_w`` for ``exposure_s``."""
        energy = power_w * exposure_s
        return self.adu_per_joule * energy / (2 * math.pi * self.spot_sigma_px**2) * 1e3
