"""The README's main job: `tangodaq demo` against a running lab."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.system


def test_demo_reads_and_writes_the_power_meter_through_tango(lab):
    result = lab.tangodaq("demo", timeout=180)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "5 Power change events" in out
    watts = re.search(r"Power = [^(]*\(([0-9.e+-]+) W, quality ATTR_VALID\)", out)
    assert watts and 1e-7 < float(watts.group(1)) < 1e-4, out
    assert "state ALARM" in out and "Wavelength = 5000: refused" in out
    assert "still at 800 nm, range AUTO, state ON" in out
    # the demo restored what it touched
    pm = lab.proxy("lab/powermeter/1")
    assert pm.Wavelength == 800 and pm.Range == 0


def test_up_refuses_to_write_into_a_database_it_did_not_start(lab, tmp_path):
    """A database already answers at TANGO_HOST (could be the facility's): no silent overwrite."""
    env = {**lab.env, "TANGODAQ_HOME": str(tmp_path)}
    result = lab.tangodaq("up", env=env, timeout=60)
    assert result.returncode == 2
    assert "tangodaq deploy" in result.stdout and "--use-existing-db" in result.stdout
