"""The macros' polarisation maths against the bench's own optics model (its offsets are the truth)."""

from __future__ import annotations

import numpy as np
import pytest

from deviceservers.bench.optics import OpticsModel
from tangodaq_macros._polarization_analysis import fit_malus, fit_offsets, periodicity  # noqa: E402

MOUNTS = ("hwp", "qwp", "pol")


def mai_tai_gain(nm: float) -> float:
    """The laser's output vs wavelength, as deviceservers/MaiTai/simulator.py models it."""
    return float(np.exp(-0.5 * ((nm - 800.0) / 120.0) ** 2))


def sweeps(model: OpticsModel, wavelengths, step=15.0, noise=0.0, seed=1, laser_w=lambda nm: 1.0):
    rng = np.random.default_rng(seed)
    cols = {m: [] for m in (*MOUNTS, "wl", "p")}
    for wl in wavelengths:
        for swept in MOUNTS:
            for a in np.arange(0.0, 180.0, step):
                pos = {m: (a if m == swept else 0.0) for m in MOUNTS}
                p = model.transmitted_power(laser_w(wl), wl, pos["hwp"], pos["qwp"], pos["pol"])
                for m in MOUNTS:
                    cols[m].append(pos[m])
                cols["wl"].append(wl)
                cols["p"].append(p * (1 + noise * rng.standard_normal()))
    return cols


def test_malus_fit_recovers_angle_and_extinction():
    angles = np.arange(0, 181, 5.0)
    power = 1e-3 * np.cos(np.radians(angles - 37.0)) ** 2 + 1e-6
    fit = fit_malus(angles, power, k=1)
    assert fit.theta_max_deg == pytest.approx(37.0, abs=1e-6)
    assert fit.extinction_ratio == pytest.approx((1e-3 + 1e-6) / 1e-6, rel=1e-6)


def test_periodicity_tells_polariser_from_plates():
    model = OpticsModel()
    angles = np.arange(0, 180, 10.0)
    kinds = {}
    for swept in MOUNTS:
        p = [model.transmitted_power(1.0, 800, *(a if m == swept else 0.0 for m in MOUNTS)) for a in angles]
        k, f1, f2 = periodicity(angles, np.array(p))
        kinds[swept] = (k, (f1 if k == 1 else f2).contrast)
    assert kinds["pol"][0] == 1 and kinds["hwp"][0] == 2 and kinds["qwp"][0] == 2
    assert kinds["hwp"][1] > kinds["qwp"][1]  # the half-wave plate modulates deeper


def test_one_wavelength_cannot_fix_the_half_wave_plate():
    """At the design wavelength only qwp - 2*hwp and pol - 2*hwp are observable."""
    model = OpticsModel()
    c = sweeps(model, [800.0], step=20.0)
    offsets, rms = fit_offsets(c["hwp"], c["qwp"], c["pol"], c["wl"], c["p"], starts=2)
    assert rms < 1e-3
    assert (offsets["qwp"] - 2 * offsets["hwp"] - (-1.7 - 6.4) + 90) % 180 - 90 == pytest.approx(0, abs=0.2)


def test_two_wavelengths_recover_the_configured_offsets_with_noise():
    model = OpticsModel()
    c = sweeps(model, [800.0, 700.0], step=15.0, noise=0.005)
    offsets, rms = fit_offsets(c["hwp"], c["qwp"], c["pol"], c["wl"], c["p"])
    assert offsets["hwp"] == pytest.approx(model.hwp.offset_deg, abs=0.7)
    assert offsets["qwp"] == pytest.approx(model.qwp.offset_deg, abs=1.0)
    assert offsets["pol"] == pytest.approx(model.pol.offset_deg, abs=1.0)
    assert rms < 0.02


def test_offsets_survive_a_laser_power_that_changes_with_wavelength():
    """A tunable laser gives less power away from its gain peak: each wavelength has its own
    input power, which must not leak into the offsets."""
    model = OpticsModel()
    c = sweeps(model, [800.0, 700.0], step=20.0, noise=0.005, laser_w=mai_tai_gain)
    offsets, rms = fit_offsets(c["hwp"], c["qwp"], c["pol"], c["wl"], c["p"])
    assert offsets["hwp"] == pytest.approx(model.hwp.offset_deg, abs=0.7)
    assert offsets["qwp"] == pytest.approx(model.qwp.offset_deg, abs=1.0)
    assert offsets["pol"] == pytest.approx(model.pol.offset_deg, abs=1.0)
    assert offsets["scales"][700.0] / offsets["scales"][800.0] == pytest.approx(mai_tai_gain(700.0), rel=0.02)
    assert rms < 0.02


def test_both_plates_turned_by_90_give_the_same_powers_so_the_qwp_offset_is_modulo_90():
    """Both plates turned by 90° (fast and slow axes swapped, every retardance negated: the light
    is complex conjugated) give the same powers through the polariser at both wavelengths. The
    HWP's offset is modulo 90°, so the QWP's can only be too (reported modulo 180°, noise tipped
    the fit to 88.5° for a -1.7° plate in CI)."""
    model, twin = OpticsModel(), OpticsModel()
    twin.hwp.offset_deg += 90.0
    twin.qwp.offset_deg += 90.0
    for wl in (800.0, 700.0):
        for a in np.arange(0.0, 180.0, 30.0):
            for swept in MOUNTS:
                pos = [a if m == swept else 0.0 for m in MOUNTS]
                assert twin.transmitted_power(1.0, wl, *pos) == pytest.approx(model.transmitted_power(1.0, wl, *pos),
                                                                              rel=1e-9, abs=1e-15)
    for seed in (0, 10, 16, 19):  # whichever twin the noise favours (10, 16, 19 tipped the old fit), the same offsets
        c = sweeps(model, [800.0, 700.0], step=30.0, noise=0.005, seed=seed, laser_w=mai_tai_gain)
        offsets, _ = fit_offsets(c["hwp"], c["qwp"], c["pol"], c["wl"], c["p"])
        for m in MOUNTS:
            assert offsets[m] == pytest.approx(getattr(model, m).offset_deg, abs=1.0), (seed, offsets)
