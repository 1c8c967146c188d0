"""Device names come from the lab's roles: the GUI's layout, its command line, and no spelled names.

No server here: ``taurus_gui.layout`` is plain Python over a roles dict. The same roles in a real
database, with the window and the Sardana controllers, are in tests/system/test_gui_roles.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tango_db.roles import DEFAULT_ROLES
from taurus_gui.layout import layout_from_roles, split_tango_host

ROOT = Path(__file__).resolve().parents[2]

B12_ROLES = {
    "laser": "b12/laser/maitai",
    "meter": "b12/meter/1830c",
    "camera": "b12/camera/bsi",
    "datawriter": "b12/daq/writer",
    "stage_x": "b12/stage/x",
    "stage_y": "b12/stage/y",
    "hwp": "b12/mount/hwp",
    "pol": "b12/mount/pol",
    "qwp": "b12/mount/qwp",
    "pool": "b12/pool/1",
    "macroserver": "b12/macroserver/1",
    "door": "b12/door/1",
}


def test_layout_takes_every_device_from_the_roles():
    lay = layout_from_roles(B12_ROLES)
    assert (lay.laser, lay.meter, lay.camera, lay.datawriter) == (
        "b12/laser/maitai", "b12/meter/1830c", "b12/camera/bsi", "b12/daq/writer")
    assert (lay.macroserver, lay.door) == ("b12/macroserver/1", "b12/door/1")
    assert lay.axes == {"Stage X": "b12/stage/x", "Stage Y": "b12/stage/y"}  # no stage_z role: no row
    assert lay.mounts == {"Half-wave plate": "b12/mount/hwp", "Polariser": "b12/mount/pol",
                          "Quarter-wave plate": "b12/mount/qwp"}
    assert set(lay.overview) == set(B12_ROLES.values())
    assert list(lay.overview)[0] == "b12/laser/maitai"
    assert lay.overview["b12/door/1"] == "Sardana Door"
    assert not [d for d in lay.overview if d.startswith("lab/")]


def test_the_simulated_lab_keeps_its_panels():
    lay = layout_from_roles(DEFAULT_ROLES)
    assert lay.axes == {"Stage X": "lab/esp300/x", "Stage Y": "lab/esp300/y", "Stage Z": "lab/esp300/z"}
    assert list(lay.mounts.values()) == ["lab/ell14/hwp", "lab/ell14/pol", "lab/ell14/qwp"]
    assert len(lay.overview) == len(set(DEFAULT_ROLES.values()))


def test_device_classes_put_unknown_roles_on_the_motion_panel():
    """A facility's own role names: the device's Tango class decides where it goes."""
    roles = {**B12_ROLES, "analyser": "b12/mount/ana", "focus": "b12/stage/focus", "stage_t": "b12/x/t"}
    classes = {"B12/Mount/Ana": "Ell14", "b12/stage/focus": "Esp300", "b12/x/t": "MaiTai",
               "b12/mount/hwp": "Ell14"}
    lay = layout_from_roles(roles, classes)
    assert lay.mounts["analyser"] == "b12/mount/ana"
    assert lay.axes["focus"] == "b12/stage/focus"
    assert "b12/x/t" not in lay.axes.values()  # named stage_* but its class says otherwise
    assert lay.overview["b12/x/t"] == "role stage_t"


def test_missing_roles_give_no_panel_device():
    lay = layout_from_roles({"meter": "b12/meter/1"})
    assert lay.laser is None and lay.camera is None and lay.door is None
    assert lay.axes == {} and lay.mounts == {}
    assert lay.overview == {"b12/meter/1": "Newport 1830-C power meter"}


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:10000", ("127.0.0.1", 10000)),
    ("tango://ctl01.b12.example:20000", ("ctl01.b12.example", 20000)),
])
def test_tango_host_is_split(text, expected):
    assert split_tango_host(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:", ":10000", "host:port", "host:70000"])
def test_a_bad_tango_host_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_tango_host(text)


def test_gui_command_line_takes_tango_host_and_tab():
    from taurus_gui.main_window import parse_args

    args = parse_args(["--tango-host", "tango://127.0.0.1:20123", "--tab", "Camera"])
    assert (args.tango_host, args.tab) == ("127.0.0.1:20123", "Camera")
    assert parse_args(["--", "--tango-host=h:1"]).tango_host == "h:1"  # `tangodaq gui -- ...`
    assert parse_args([]).tango_host is None


def test_gui_command_line_refuses_a_bad_tango_host(capsys):
    from taurus_gui.main_window import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--tango-host", "nohostport"])
    assert exc.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


# The files that must take names from the roles; a quoted Tango name of the simulated lab in them
# is a name a facility could not change.
ROLE_FILES = [*sorted((ROOT / "taurus_gui").glob("*.py")), *sorted((ROOT / "controllers").glob("*.py")),
              ROOT / "tango_db" / "experiment.py", ROOT / "tango_db" / "demo.py"]
SPELLED_NAME = re.compile(r"""["'](lab/[\w.-]+/[\w.-]+|(pool|macroserver|door)/lab/\w+)["']""")


@pytest.mark.parametrize("path", ROLE_FILES, ids=lambda p: p.name)
def test_no_device_name_is_spelled(path):
    found = [m.group(0) for m in SPELLED_NAME.finditer(path.read_text())]
    assert not found, f"{path.relative_to(ROOT)} spells {found}: use tango_db.roles.device(role)"
