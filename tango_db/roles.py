"""Which device plays which part in the lab: the laser, the meter, the camera, the stage axes...

Macros, Sardana controllers, the experiment code and the GUI never spell a device name: they ask
for a role (``device("laser")``) and get the name the deployment chose (``lab/maitai/1`` in the
simulated lab, ``b12/laser/maitai`` at a facility that names it so).

Where the roles live: ``lab.json`` has a ``"roles"`` section (tangodaq's own, beside dsconfig's
``"servers"``); ``tangodaq up`` and ``tangodaq deploy`` write it into the Tango database as the
free property ``tangodaq``/``Roles`` (one ``role=device`` line each). A free property, because
every client already has a database connection (macros inside the MacroServer, controllers inside
the Pool, a GUI on a workstation) and Jive shows and edits it like any other property.

A database without that property (a DeviceTestContext, an old deployment) gets ``DEFAULT_ROLES``,
the simulated lab's names.
"""

from __future__ import annotations

import threading
import time

ROLES_OBJECT = "tangodaq"
ROLES_PROPERTY = "Roles"

#: the simulated lab's names (tango_db/lab.json), used where the database has no Roles property
DEFAULT_ROLES: dict[str, str] = {
    "laser": "lab/maitai/1",
    "meter": "lab/powermeter/1",
    "camera": "lab/camera/1",
    "datawriter": "lab/datawriter/1",
    "stage_x": "lab/esp300/x",
    "stage_y": "lab/esp300/y",
    "stage_z": "lab/esp300/z",
    "hwp": "lab/ell14/hwp",
    "pol": "lab/ell14/pol",
    "qwp": "lab/ell14/qwp",
    "pool": "pool/lab/1",
    "macroserver": "macroserver/lab/1",
    "door": "door/lab/1",
}

#: roles of the stage axes and the rotation mounts, in the order panels and setups list them
STAGE_ROLES = ("stage_x", "stage_y", "stage_z")
MOUNT_ROLES = ("hwp", "pol", "qwp")


def roles_from_config(config: dict) -> dict[str, str]:
    """The ``roles`` section of a (merged) lab configuration, or the defaults when it has none."""
    roles = config.get("roles")
    if not roles:
        return dict(DEFAULT_ROLES)
    return {str(k): str(v) for k, v in roles.items() if v}


def encode(roles: dict[str, str]) -> list[str]:
    return [f"{role}={device}" for role, device in sorted(roles.items())]


def decode(lines) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines or ():
        role, sep, device = str(line).partition("=")
        if sep and role.strip() and device.strip():
            out[role.strip()] = device.strip()
    return out


def write_roles(db, roles: dict[str, str]) -> bool:
    """Store ``roles`` in ``db`` (a ``tango.Database``); True when something changed."""
    current = decode(db.get_property(ROLES_OBJECT, ROLES_PROPERTY)[ROLES_PROPERTY])
    if current == roles:
        return False
    db.put_property(ROLES_OBJECT, {ROLES_PROPERTY: encode(roles)})
    _cache.clear()
    return True


_cache: dict[str, tuple[float, dict[str, str]]] = {}
_lock = threading.Lock()
CACHE_S = 5.0  # a renamed device is picked up within seconds, without a DB call per lookup


def lab_roles(db=None) -> dict[str, str]:
    """Every role of the deployed lab (the database's, or ``DEFAULT_ROLES``)."""
    key = _db_key(db)
    with _lock:
        hit = _cache.get(key)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return dict(hit[1])
    roles = dict(DEFAULT_ROLES)
    try:
        import tango

        db = db or tango.Database()
        stored = decode(db.get_property(ROLES_OBJECT, ROLES_PROPERTY)[ROLES_PROPERTY])
        if stored:
            roles = stored
    except Exception:  # noqa: BLE001 - no database (test context): the simulated lab's names
        pass
    with _lock:
        _cache[key] = (time.monotonic(), roles)
    return dict(roles)


def _db_key(db) -> str:
    """The cache key of a database: its host:port (a process may read two databases)."""
    if db is None:
        import os

        return os.environ.get("TANGO_HOST", "")
    try:
        return f"{db.get_db_host()}:{db.get_db_port()}"
    except Exception:  # noqa: BLE001 - an object without the Database API: no sharing
        return str(id(db))


def device(role: str, db=None) -> str:
    """The Tango name of the device playing ``role``; KeyError with the known roles if none."""
    roles = lab_roles(db)
    try:
        return roles[role]
    except KeyError:
        raise KeyError(
            f"the lab has no device for the role {role!r} (roles: {', '.join(sorted(roles))}); "
            f"add it to the 'roles' section of the lab's configuration and deploy again"
        ) from None


def device_or_empty(role: str) -> str:
    """The device playing ``role``, or "" when the lab has none: a default for a Sardana
    controller's axis attribute, asked when the axis is created (a deployment's names apply
    without a Pool restart; roles are cached a few seconds)."""
    try:
        return device(role)
    except KeyError:
        return ""
