"""The README's main job: `tangodaq demo` against a running lab."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.system


def test_demo_runs_the_experiment_and_the_file_holds_what_it_says(lab):
    import datawriter

    result = lab.tangodaq("demo", timeout=400)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out + lab.logs()
    events = re.search(r"(\d+) Power change events", out)
    assert events and int(events.group(1)) >= 5, out
    assert "laser on:" in out or "laser: emission on" in out, out
    watts = re.search(r"Power = [^(]*\(([0-9.e+-]+) W, quality ATTR_VALID\)", out)
    assert watts and 1e-6 < float(watts.group(1)) < 2e-3, out
    # the experiment ran as Sardana macros through the Door
    assert "Scan #" in out and "stage_camera_raster" in out and "Malus fit" in out
    assert "state ALARM" in out and "Wavelength = 5000: refused" in out
    assert "still at 800 nm, range AUTO, state ON" in out
    # the physics the bench was built with
    px_per_mm = float(re.search(r"beam spot\s+([0-9.]+) px/mm", out).group(1))
    assert px_per_mm == pytest.approx(100.0, rel=0.02)
    # the file holds what the summary says
    path = re.search(r"file\s+(\S+\.h5)", out).group(1)
    frames = int(re.search(r"in the file\s+(\d+) camera frames", out).group(1))
    samples = int(re.search(r"camera frames .*?\), (\d+) power samples", out).group(1))
    positions = int(re.search(r"over (\d+) stage positions", out).group(1))
    assert frames == positions > 0 and samples > 0
    with datawriter.open_recording(path) as f:
        inst = f["entry/instrument"]
        cam = inst["lab_camera_1"]
        n_frames = sum(g["data"].shape[0] for g in cam.values() if hasattr(g, "keys") and "data" in g)
        assert n_frames == frames
        assert inst["lab_powermeter_1"]["power"]["value"].shape[0] == samples
        assert "lab_maitai_1" in inst["manifest_start"] or len(inst["manifest_start"]) >= 9
    assert re.search(r"lost\s+0 ", out), out
    assert (lab.home / "data").exists() and path.endswith(".h5")
    from pathlib import Path

    assert Path(path).with_suffix(".png").stat().st_size > 10_000
    # the demo left the laser safe and the meter as it found it
    assert not lab.proxy("lab/maitai/1").Shutter
    pm = lab.proxy("lab/powermeter/1")
    assert pm.Wavelength == 800 and pm.Range == 0


def test_up_refuses_to_write_into_a_database_it_did_not_start(lab, tmp_path):
    """A database already answers at TANGO_HOST (could be the facility's): no silent overwrite."""
    env = {**lab.env, "TANGODAQ_HOME": str(tmp_path)}
    result = lab.tangodaq("up", env=env, timeout=60)
    assert result.returncode == 2
    assert "tangodaq deploy" in result.stdout and "--use-existing-db" in result.stdout
