"""Polarisation analysis for the lab's macros: Malus fits and the three-element Jones model.

Pure numpy (no Sardana, no Tango) so the maths is tested on its own against the bench's optics
model (tests/unit/test_polarization_analysis.py). Its name starts with ``_`` so that the
MacroServer, which loads every other file of its MacroPath as a macro library, leaves it alone
(it defines no macro; as a library it made every start log "Invalid module").

Conventions (same as deviceservers/bench/optics.py): horizontally polarised input, then the
half-wave plate, the quarter-wave plate, the polariser; an element's axis is at
``mount angle + offset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class MalusFit:
    """P(θ) = background + amplitude·cos²(k·(θ − θmax)), θ in degrees."""

    k: int  # 1: polariser-like (period 180°), 2: wave-plate-like (period 90°)
    theta_max_deg: float  # first angle of maximum power, in [0, 180/k)
    p_max: float
    p_min: float
    residual_rms: float

    @property
    def extinction_ratio(self) -> float:
        return math.inf if self.p_min <= 0 else self.p_max / self.p_min

    @property
    def contrast(self) -> float:
        return (self.p_max - self.p_min) / (self.p_max + self.p_min) if self.p_max + self.p_min > 0 else 0.0


def fit_malus(angles_deg: np.ndarray, power: np.ndarray, k: int) -> MalusFit:
    """Least-squares fit of c0 + c1·cos(2kθ) + c2·sin(2kθ) (= Malus's law with period 180°/k)."""
    theta = np.radians(np.asarray(angles_deg, dtype=float))
    p = np.asarray(power, dtype=float)
    if len(theta) < 3:
        raise ValueError("a Malus fit needs at least 3 points")
    a = np.column_stack([np.ones_like(theta), np.cos(2 * k * theta), np.sin(2 * k * theta)])
    (c0, c1, c2), *_ = np.linalg.lstsq(a, p, rcond=None)
    r = math.hypot(c1, c2)
    phase = math.atan2(c2, c1)  # = 2k·θmax
    theta_max = math.degrees(phase / (2 * k)) % (180.0 / k)
    rms = float(np.sqrt(np.mean((a @ np.array([c0, c1, c2]) - p) ** 2)))
    return MalusFit(k, theta_max, c0 + r, c0 - r, rms)


def periodicity(angles_deg: np.ndarray, power: np.ndarray) -> tuple[int, MalusFit, MalusFit]:
    """Which period explains power vs angle better: 180° (k=1, a polariser) or 90° (k=2, a wave
    plate seen through a polariser). Returns (k, fit k=1, fit k=2)."""
    f1, f2 = fit_malus(angles_deg, power, 1), fit_malus(angles_deg, power, 2)
    amp1, amp2 = f1.p_max - f1.p_min, f2.p_max - f2.p_min
    return (1 if amp1 >= amp2 else 2), f1, f2


# ----------------------------------------------------------------------------- Jones model


def _rot(t: float) -> np.ndarray:
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s], [s, c]])


def _retarder(axis: float, retardance: float) -> np.ndarray:
    r = _rot(axis)
    return r @ np.diag([1.0, np.exp(1j * retardance)]) @ r.T


def _polariser(axis: float) -> np.ndarray:
    r = _rot(axis)
    return r @ np.diag([1.0, 0.0]) @ r.T


DESIGN_NM = 800.0  # the wave plates' design wavelength (zero-order plates: retardance ∝ 1/λ)


def model_power(hwp_deg, qwp_deg, pol_deg, wavelength_nm, hwp_off: float, qwp_off: float, pol_off: float,
                scale: float, design_nm: float = DESIGN_NM) -> np.ndarray:
    """Power after HWP → QWP → polariser for horizontally polarised input of power ``scale``."""
    h, q, p, wl = np.broadcast_arrays(*(np.asarray(v, float) for v in (hwp_deg, qwp_deg, pol_deg, wavelength_nm)))
    out = np.empty(h.shape)
    e_in = np.array([1.0, 0.0], dtype=complex)
    for i in np.ndindex(h.shape):
        half = math.pi * design_nm / wl[i]
        chain = (_polariser(math.radians(p[i] + pol_off)) @ _retarder(math.radians(q[i] + qwp_off), half / 2)
                 @ _retarder(math.radians(h[i] + hwp_off), half))
        e = chain @ e_in
        out[i] = float(np.vdot(e, e).real)
    return scale * out


def fit_offsets(hwp_deg, qwp_deg, pol_deg, wavelength_nm, power, starts: int = 6) -> tuple[dict, float]:
    """Offsets (degrees) of the three elements and the input power from any set of measurements,
    by Levenberg-Marquardt on the Jones model from several starting points. Returns
    ({"hwp": .., "qwp": .., "pol": .., "scale": .., "scales": {nm: ..}}, relative rms residual).

    Why two wavelengths are needed: at the design wavelength a half-wave plate turned by δ is
    indistinguishable from everything after it turned by 2δ (only qwp − 2·hwp and pol − 2·hwp
    are observable). Away from it the plate is no longer exactly half-wave and the ambiguity
    goes: include sweeps at a second wavelength (e.g. 700 nm besides 800 nm).

    The input power is one free scale *per wavelength*: a tunable laser's output follows its gain
    curve (the Mai Tai gives ~30 % less at 700 nm than at 800 nm), so one scale for all would
    bend the offsets to absorb it. ``scale`` is the one at the first wavelength.

    Offsets are defined modulo 180° for the polariser and modulo 90° for the plates: the HWP's
    effect repeats every 90° at its design wavelength, and both plates turned by 90° together give
    the same powers at every wavelength (see below). They are returned in (-90, 90] (plates:
    (-45, 45])."""
    h, q, p, wl, y = (np.asarray(v, float) for v in (hwp_deg, qwp_deg, pol_deg, wavelength_nm, power))
    norm = float(np.max(np.abs(y))) or 1.0
    y = y / norm
    wavelengths, which = np.unique(wl, return_inverse=True)
    if len(wavelengths) > 1:  # keep the first wavelength given first
        order = list(dict.fromkeys(wl.tolist()))
        wavelengths = np.array(order)
        which = np.array([order.index(v) for v in wl.tolist()])

    def residual(x: np.ndarray) -> np.ndarray:
        return model_power(h, q, p, wl, x[0], x[1], x[2], 1.0) * x[3:][which] - y

    best: tuple[float, np.ndarray] | None = None
    rng = np.random.default_rng(0)
    ones = [1.0] * len(wavelengths)
    grid = [np.array([a, b, c, *ones]) for a in (-30.0, 0.0, 30.0) for b in (-40.0, 0.0, 40.0) for c in (-60.0, 0.0, 60.0)]
    rng.shuffle(grid)
    for x0 in grid[: max(starts, 1) * 4]:
        x = _levenberg_marquardt(residual, x0)
        cost = float(np.sum(residual(x) ** 2))
        if best is None or cost < best[0]:
            best = (cost, x)
    assert best is not None
    cost, x = best
    # Both plates turned by 90° swap their fast and slow axes: every retardance changes sign, the
    # light after them is the complex conjugate, and the powers through the polariser are the
    # same, at any wavelength. The half-wave plate's offset is reported modulo 90° anyway (at its
    # design wavelength its effect repeats every 90°), so the quarter-wave plate's can only be
    # given modulo 90° too; reporting it modulo 180° showed 88.5° for a -1.7° plate whenever the
    # noise tipped the fit to the twin (seen in CI; a refine from the twin did not help: both fit
    # exactly as well).
    rms = math.sqrt(cost / len(y))

    def wrap(v: float, period: float) -> float:
        v = (v + period / 2) % period - period / 2
        return period / 2 if math.isclose(v, -period / 2) else v

    scales = {float(w): float(s * norm) for w, s in zip(wavelengths, x[3:], strict=True)}
    return {"hwp": wrap(x[0], 90.0), "qwp": wrap(x[1], 90.0), "pol": wrap(x[2], 180.0),
            "scale": scales[float(wavelengths[0])], "scales": scales}, rms


def _levenberg_marquardt(residual, x0: np.ndarray, iterations: int = 60) -> np.ndarray:
    x = x0.astype(float).copy()
    lam = 1e-2
    r = residual(x)
    cost = float(r @ r)
    for _ in range(iterations):
        jac = np.empty((len(r), len(x)))
        for j in range(len(x)):
            dx = np.zeros_like(x)
            dx[j] = 1e-4 if j < 3 else 1e-6
            jac[:, j] = (residual(x + dx) - r) / dx[j]
        jtj, jtr = jac.T @ jac, jac.T @ r
        while True:
            step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jtr)
            r_new = residual(x + step)
            c_new = float(r_new @ r_new)
            if c_new < cost:
                x, r, cost, lam = x + step, r_new, c_new, lam / 3
                break
            lam *= 4
            if lam > 1e8:
                return x
        if np.max(np.abs(step[:3])) < 1e-5:
            break
    return x
