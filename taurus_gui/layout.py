"""What the lab window shows, worked out from the lab's roles (no Qt here, so it is unit-testable).

The window never spells a device name: the deployment's roles (``tango_db.roles``: the free
property ``tangodaq``/``Roles`` in the lab's database) say which device is the laser, the meter,
the camera, the stage axes and the rotation mounts, and :func:`layout_from_roles` turns them into
the panels' device lists. A facility that names its laser ``b12/laser/maitai``, or adds a fourth
mount under a role of its own, gets a window for exactly those devices.

Which roles go on the Motion panel:

- stage axes: every role named ``stage_*``, and any role whose device's Tango class is ``Esp300``;
- rotation mounts: the lab's mount roles (``hwp``, ``pol``, ``qwp``), and any role whose device's
  class is ``Ell14``.

The class is asked of the database (:func:`read_roles`), so a role the GUI does not know by name
still lands on the right panel; without a class (device not defined yet) the names decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tango_db.environment import split_tango_host  # re-exported: config.py, main_window.py, tests
from tango_db.roles import DEFAULT_ROLES, MOUNT_ROLES, lab_roles

log = logging.getLogger(__name__)

#: overview descriptions of the lab's single-device roles, in the order the overview lists them
ROLE_DESCRIPTIONS: dict[str, str] = {
    "laser": "Mai Tai laser",
    "meter": "Newport 1830-C power meter",
    "camera": "Prime BSI camera",
    "datawriter": "DataWriter (HDF5 recording)",
    "pool": "Sardana Pool",
    "macroserver": "Sardana MacroServer",
    "door": "Sardana Door",
}
MOUNT_TITLES = {"hwp": "Half-wave plate", "pol": "Polariser", "qwp": "Quarter-wave plate"}
STAGE_CLASSES = frozenset({"Esp300"})
MOUNT_CLASSES = frozenset({"Ell14"})


@dataclass(frozen=True)
class LabLayout:
    """The devices of each panel; ``None`` (or empty) where the lab has no device for the role."""

    roles: dict[str, str]
    laser: str | None
    meter: str | None
    camera: str | None
    datawriter: str | None
    macroserver: str | None
    door: str | None
    axes: dict[str, str] = field(default_factory=dict)  # row title -> device
    mounts: dict[str, str] = field(default_factory=dict)  # row title -> device
    overview: dict[str, str] = field(default_factory=dict)  # device -> description


def _is_stage(role: str, device_class: str | None) -> bool:
    if device_class is not None:
        return device_class in STAGE_CLASSES
    return role.startswith("stage_")


def _is_mount(role: str, device_class: str | None) -> bool:
    if device_class is not None:
        return device_class in MOUNT_CLASSES
    return role in MOUNT_ROLES


def stage_title(role: str) -> str:
    """``stage_x`` -> ``Stage X``; a role of another name is shown as it is."""
    return f"Stage {role[len('stage_'):].upper()}" if role.startswith("stage_") else role


def layout_from_roles(roles: dict[str, str], classes: dict[str, str] | None = None) -> LabLayout:
    """The window's devices for ``roles`` (role -> device); ``classes``: device -> Tango class,
    where known (lower-case device names are matched too, Tango names being case-insensitive)."""
    classes = {k.lower(): v for k, v in (classes or {}).items()}

    def class_of(role: str) -> str | None:
        return classes.get(roles[role].lower())

    stage_roles = sorted(r for r in roles if _is_stage(r, class_of(r)))
    known_mounts = [r for r in MOUNT_ROLES if r in roles and _is_mount(r, class_of(r))]
    mount_roles = known_mounts + sorted(
        r for r in roles if r not in known_mounts and r not in stage_roles and _is_mount(r, class_of(r)))
    axes = {stage_title(r): roles[r] for r in stage_roles}
    mounts = {MOUNT_TITLES.get(r, r): roles[r] for r in mount_roles}

    overview: dict[str, str] = {}

    def add(device: str, description: str) -> None:
        overview.setdefault(device, description)  # one row per device, even if two roles name it

    if "laser" in roles:
        add(roles["laser"], ROLE_DESCRIPTIONS["laser"])
    for r in stage_roles:
        add(roles[r], f"ESP300 stage, axis {r[len('stage_'):].upper()}" if r.startswith("stage_")
            else f"ESP300 stage axis ({r})")
    for r in mount_roles:
        add(roles[r], f"ELL14 {MOUNT_TITLES[r].lower()}" if r in MOUNT_TITLES else f"ELL14 mount ({r})")
    for r in ("meter", "camera", "datawriter", "pool", "macroserver", "door"):
        if r in roles:
            add(roles[r], ROLE_DESCRIPTIONS[r])
    for r in sorted(roles):
        add(roles[r], f"role {r}")

    return LabLayout(
        roles=dict(roles),
        laser=roles.get("laser"),
        meter=roles.get("meter"),
        camera=roles.get("camera"),
        datawriter=roles.get("datawriter"),
        macroserver=roles.get("macroserver"),
        door=roles.get("door"),
        axes=axes,
        mounts=mounts,
        overview=overview,
    )


def read_roles(tango_host: str) -> tuple[dict[str, str], dict[str, str]]:
    """The roles stored in the database at ``tango_host`` and the Tango class of each named device.

    A database that does not answer gives the simulated lab's roles (logged as a warning): the
    window then opens with every device shown as unreachable, which says more than no window.
    """
    import tango

    host, port = split_tango_host(tango_host)
    try:
        db = tango.Database(host, port)
    except tango.DevFailed as exc:
        log.warning("no Tango database answers at %s (%s): showing the simulated lab's devices",
                    tango_host, exc.args[0].desc.strip() if exc.args else exc)
        return dict(DEFAULT_ROLES), {}
    roles = lab_roles(db)
    classes: dict[str, str] = {}
    for device in set(roles.values()):
        try:
            classes[device] = db.get_class_for_device(device)
        except tango.DevFailed:  # not defined in this database: the role's name decides
            continue
    return roles, classes
