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
from tests.roles_b12 import B12_CLASSES, B12_ROLES

ROOT = Path(__file__).resolve().parents[2]

#: the b12 lab without its stage_z axis and its analyser mount (rows follow the roles present)
B12 = {role: device for role, device in B12_ROLES.items() if role not in ("stage_z", "analyser")}


def test_layout_takes_every_device_from_the_roles():
    lay = layout_from_roles(B12)
    assert (lay.laser, lay.meter, lay.camera, lay.datawriter) == (
        "b12/laser/maitai", "b12/meter/1830c", "b12/camera/bsi", "b12/daq/writer")
    assert (lay.macroserver, lay.door) == ("b12/macroserver/1", "b12/door/1")
    assert lay.axes == {"Stage X": "b12/stage/x", "Stage Y": "b12/stage/y"}  # no stage_z role: no row
    assert lay.mounts == {"Half-wave plate": "b12/mount/hwp", "Polariser": "b12/mount/pol",
                          "Quarter-wave plate": "b12/mount/qwp"}
    assert set(lay.overview) == set(B12.values())
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
    roles = {**B12, "analyser": "b12/mount/ana", "focus": "b12/stage/focus", "stage_t": "b12/x/t"}
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


def test_gui_command_line_takes_tango_host_and_panel():
    from taurus_gui.main_window import parse_args

    args = parse_args(["--tango-host", "tango://127.0.0.1:20123", "--panel", "Camera"])
    assert (args.tango_host, args.panel) == ("127.0.0.1:20123", "Camera")
    assert parse_args(["--tab", "Macros"]).panel == "Macros"  # the old option's name
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


def test_configuration_has_a_panel_per_part_of_the_lab():
    """The taurusgui configuration of the b12 lab: its devices, Sardana's panels when the
    database defines its MacroServer and Door, none (and no Door to connect to) otherwise."""
    from taurus_gui.config import INSTRUMENT_PANELS, configuration

    classes = {**B12_CLASSES, "b12/macroserver/1": "MacroServer", "b12/door/1": "Door"}
    conf = configuration("tango://ctl01:20000", B12_ROLES, classes)
    panels = {p.name: p for key, p in conf.items() if key.startswith("PANEL_")}
    assert list(panels) == list(INSTRUMENT_PANELS)
    assert panels["Laser"].model == "tango://ctl01:20000/b12/laser/maitai"
    assert set(panels["Lab overview"].model) == {f"tango://ctl01:20000/{d}" for d in B12_ROLES.values()}
    sections = panels["Motion"].widget_properties["sections"]
    assert [(title, list(rows), homing) for title, rows, homing in sections] == [
        ("Newport ESP300 stage", ["Stage X", "Stage Y", "Stage Z"], False),
        ("Thorlabs ELL14 rotation mounts", ["Half-wave plate", "Polariser", "Quarter-wave plate",
                                            "analyser"], True)]
    health = panels["Lab overview"].widget_properties["health_devices"]
    assert "tango://ctl01:20000/b12/mount/analyser" in health
    assert not [d for d in health if "/macroserver/" in d or "/door/" in d or "/daq/" in d]
    assert (conf["MACROSERVER_NAME"], conf["DOOR_NAME"]) == (
        "tango://ctl01:20000/b12/macroserver/1", "tango://ctl01:20000/b12/door/1")
    assert conf["SINGLE_INSTANCE"] is False

    without_sardana = configuration("ctl01:20000", B12_ROLES, B12_CLASSES)
    assert without_sardana["MACRO_PANELS"] is False and "DOOR_NAME" not in without_sardana
    smaller = configuration("ctl01:20000", {"meter": "b12/meter/1830c"}, {})
    assert [p.name for k, p in smaller.items() if k.startswith("PANEL_")] == ["Lab overview", "Power meter"]
