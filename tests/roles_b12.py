"""The role table of a facility that names its devices ``b12/...``, shared by the unit tests of the
GUI's layout (tests/unit/test_roles.py) and the system test of the GUI and the Sardana controllers
on a database holding it (tests/system/test_gui_roles.py).

Larger than the simulated lab on purpose: a mount under a role of the facility's own
(``analyser``), which only its Tango class (Ell14) puts on the Motion panel.
"""

from __future__ import annotations

B12_ROLES: dict[str, str] = {
    "laser": "b12/laser/maitai",
    "meter": "b12/meter/1830c",
    "camera": "b12/camera/bsi",
    "datawriter": "b12/daq/writer",
    "stage_x": "b12/stage/x",
    "stage_y": "b12/stage/y",
    "stage_z": "b12/stage/z",
    "hwp": "b12/mount/hwp",
    "pol": "b12/mount/pol",
    "qwp": "b12/mount/qwp",
    "analyser": "b12/mount/analyser",
    "pool": "b12/pool/1",
    "macroserver": "b12/macroserver/1",
    "door": "b12/door/1",
}

#: the Tango class of the device the facility defines under its own role name
B12_CLASSES: dict[str, str] = {"b12/mount/analyser": "Ell14"}
