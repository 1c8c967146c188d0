"""The lab's taurusgui configuration, generated from the deployed lab.

A taurusgui is described by a configuration module (``GUI_NAME``, ``PanelDescription`` objects,
``MACROSERVER_NAME``, ``DOOR_NAME``...: Taurus' declarative format). This one is not written by
hand: :func:`configuration` reads the lab's roles from its Tango database (``tango_db.roles``:
which device is the laser, the meter, the camera, the stage axes, the mounts, the DataWriter, the
MacroServer and Door) and the Tango class of each device, and returns one panel per part of the
lab, so a renamed lab (``b12/laser/maitai``) or a larger one (a fourth axis, another mount) gets
its panels without code. ``taurus_gui/__init__.py`` exposes the result as the package's module
attributes, which is what the standard launcher reads: ``taurus gui taurus_gui``.

Sardana: with the lab's MacroServer and Door defined in the database, Taurus' MacroBroker adds
Sardana's own panels: the macro executor (``Macros``), the sequencer (``Sequences``), the
experiment configuration (``Experiment Config``), the door's output and results, and a live plot
of the running scan (``Scan plot``, fed by the Door's JSON recorder); the status bar shows the
scan number, point and the scan file. Without them (a database where Sardana is not deployed
yet) the instrument panels open alone and the log says why.
"""

from __future__ import annotations

import logging
from typing import Any

from taurus.qt.qtgui.taurusgui.utils import PanelDescription

from taurus_gui.layout import LabLayout, layout_from_roles, read_roles, split_tango_host

log = logging.getLogger(__name__)

GUI_NAME = "tangodaq"
ORGANIZATION = "tangodaq"

#: panel names, in the order they are created (the first is shown on top)
OVERVIEW, LASER, MOTION, METER, CAMERA = "Lab overview", "Laser", "Motion", "Power meter", "Camera"
INSTRUMENT_PANELS = (OVERVIEW, LASER, MOTION, METER, CAMERA)
#: Sardana's panels, made by Taurus' MacroBroker when the configuration names a MacroServer
SARDANA_PANELS = ("Macros", "Sequences", "Experiment Config", "Scan plot", "DoorOutput", "DoorResult")

#: Tango classes of the devices that have the health attributes (``LastError``...)
HEALTH_CLASSES = frozenset({"Esp300", "Ell14", "MaiTai", "Newport1830C", "Pvcam"})


def full_name(tango_host: str, device: str) -> str:
    return f"tango://{tango_host}/{device}"


def health_devices(lay: LabLayout, classes: dict[str, str]) -> list[str]:
    """The devices with ``LastError``: those of the instrument classes; where the class is not
    known (device not in the database yet), the instruments of the roles."""
    instruments = {lay.laser, lay.meter, lay.camera, *lay.axes.values(), *lay.mounts.values()}
    out = []
    for device in lay.overview:
        device_class = classes.get(device.lower())
        if device_class in HEALTH_CLASSES or (device_class is None and device in instruments):
            out.append(device)
    return out


def panel_descriptions(tango_host: str, lay: LabLayout, classes: dict[str, str]) -> list[PanelDescription]:
    """One PanelDescription per part of the lab that the layout has (a missing role: no panel)."""
    module = "taurus_gui.panels"
    full = {device: full_name(tango_host, device) for device in lay.overview}
    classes = {k.lower(): v for k, v in classes.items()}
    panels = [PanelDescription(
        OVERVIEW, classname="LabOverview", modulename="taurus_gui.overview",
        model=list(full.values()),
        widget_properties={
            "descriptions": {full[d]: text for d, text in lay.overview.items()},
            "laser": full_name(tango_host, lay.laser) if lay.laser else "",
            "datawriter": full_name(tango_host, lay.datawriter) if lay.datawriter else "",
            "health_devices": [full[d] for d in health_devices(lay, classes)],
        },
        sharedDataWrite={"shortMessage": "shortMessage"},
    )]
    if lay.laser:
        panels.append(PanelDescription(LASER, classname="LaserPanel", modulename=module,
                                       model=full_name(tango_host, lay.laser)))
    if lay.axes or lay.mounts:
        sections = [(title, {row: full_name(tango_host, d) for row, d in devices.items()}, homing)
                    for title, devices, homing in (("Newport ESP300 stage", lay.axes, False),
                                                   ("Thorlabs ELL14 rotation mounts", lay.mounts, True))
                    if devices]
        panels.append(PanelDescription(
            MOTION, classname="MotionPanel", modulename=module,
            model=[m for _, devices, _ in sections for m in devices.values()],
            widget_properties={"sections": sections}))
    if lay.meter:
        panels.append(PanelDescription(METER, classname="PowerMeterPanel", modulename=module,
                                       model=full_name(tango_host, lay.meter)))
    if lay.camera:
        panels.append(PanelDescription(CAMERA, classname="CameraPanel", modulename=module,
                                       model=full_name(tango_host, lay.camera)))
    return panels


def sardana_names(lay: LabLayout, classes: dict[str, str]) -> tuple[str | None, str | None]:
    """(MacroServer, Door) when the database defines both with Sardana's classes, else (None,
    None): Taurus' macro panels connect to the Door at start and need it to be a Door."""
    classes = {k.lower(): v for k, v in classes.items()}
    ms, door = lay.macroserver, lay.door
    if ms and door and classes.get(ms.lower()) == "MacroServer" and classes.get(door.lower()) == "Door":
        return ms, door
    if ms or door:
        log.warning("no Sardana panels: the roles name MacroServer %s and Door %s, but the database "
                    "defines them as %s and %s", ms, door, classes.get((ms or "").lower(), "nothing"),
                    classes.get((door or "").lower(), "nothing"))
    return None, None


def configuration(tango_host: str, roles: dict[str, str] | None = None,
                  classes: dict[str, str] | None = None) -> dict[str, Any]:
    """The taurusgui configuration (module attribute -> value) for the lab at ``tango_host``.

    ``roles`` and ``classes`` default to what that database holds (``read_roles``)."""
    host, port = split_tango_host(tango_host)
    tango_host = f"{host}:{port}"
    if roles is None:
        roles, found = read_roles(tango_host)
        classes = found if classes is None else classes
    classes = classes or {}
    lay = layout_from_roles(roles, classes)
    macroserver, door = sardana_names(lay, classes)
    conf: dict[str, Any] = {
        "GUI_NAME": GUI_NAME,
        "ORGANIZATION": ORGANIZATION,
        # several labs (or a test beside a lab) may each have their GUI open at once
        "SINGLE_INSTANCE": False,
        "TANGODAQ_TANGO_HOST": tango_host,
        "TANGODAQ_LAYOUT": lay,
    }
    if macroserver and door:
        conf["MACROSERVER_NAME"] = full_name(tango_host, macroserver)
        conf["DOOR_NAME"] = full_name(tango_host, door)
        conf["MACRO_PANELS"] = True
    else:
        conf["MACRO_PANELS"] = False
    for index, panel in enumerate(panel_descriptions(tango_host, lay, classes)):
        conf[f"PANEL_{index:02d}_{panel.name.replace(' ', '_').upper()}"] = panel
    return conf


_cache: dict[str, dict[str, Any]] = {}


def cached_configuration(tango_host: str) -> dict[str, Any]:
    """:func:`configuration` for ``tango_host``, computed once (the package's attributes, read by
    TaurusGui, and LabGui ask for the same)."""
    if tango_host not in _cache:
        _cache[tango_host] = configuration(tango_host)
    return _cache[tango_host]


def clear_cache() -> None:
    _cache.clear()
