"""The bench's optics behave like the real optics (the calibration macros rely on it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deviceservers.bench.optics import OpticsModel

LASER_W = 2.0


@pytest.fixture
def optics() -> OpticsModel:
    return OpticsModel()


def aligned(optics: OpticsModel):
    """Mount angles that put each element's axis at 0° (what a calibration would find)."""
    return -optics.hwp.offset_deg, -optics.qwp.offset_deg, -optics.pol.offset_deg


def test_crossed_polariser_transmits_almost_nothing(optics):
    h, q, p = aligned(optics)
    full = optics.transmitted_power(LASER_W, 800, h, q, p)
    crossed = optics.transmitted_power(LASER_W, 800, h, q, p + 90)
    assert math.isclose(full, LASER_W * optics.throughput, rel_tol=1e-9)
    assert crossed / full < 2e-5


def test_malus_law_cos2_of_twice_the_half_wave_plate_angle(optics):
    h, q, p = aligned(optics)
    full = LASER_W * optics.throughput
    for theta in np.linspace(0, 180, 37):
        got = optics.transmitted_power(LASER_W, 800, h + theta, q, p)
        expected = full * (math.cos(math.radians(2 * theta)) ** 2 * (1 - optics.pol.extinction) + optics.pol.extinction)
        assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12), theta


def test_quarter_wave_plate_at_45_degrees_gives_a_flat_response(optics):
    h, q, p = aligned(optics)
    values = [optics.transmitted_power(LASER_W, 800, h + t, q + 45, p) for t in range(0, 180, 5)]
    assert max(values) - min(values) < 1e-9 * LASER_W
    assert math.isclose(values[0], LASER_W * optics.throughput / 2, rel_tol=1e-4)


def test_plates_are_exact_only_at_their_design_wavelength(optics):
    h, q, p = aligned(optics)
    at_design = optics.transmitted_power(LASER_W, 800, h + 45, q, p)
    off_design = optics.transmitted_power(LASER_W, 1000, h + 45, q, p)
    assert at_design <= 1.01 * optics.pol.extinction * LASER_W * optics.throughput
    assert off_design > 100 * at_design


def test_offsets_are_not_zero_by_default(optics):
    assert optics.hwp.offset_deg and optics.qwp.offset_deg and optics.pol.offset_deg


def test_no_light_no_power(optics):
    assert optics.transmitted_power(0.0, 800, 0, 0, 0) == 0.0


def test_stage_moves_the_spot_by_the_expected_pixels(optics):
    x0, y0 = optics.spot(0, 0)
    x1, y1 = optics.spot(1.5, -2.0)
    assert (x1 - x0, y1 - y0) == (150.0, -200.0)
