"""Who may do what in the lab: the operator model, as TangoAccessControl (TAC) rules.

Roles (``access_control`` in ``site.json``, see ``tango_db/examples/site.json``):

* **everyone** reads every device and makes things safe: the commands of :data:`SAFE_COMMANDS`
  (``CloseShutter``, ``Off``, ``Stop``, ``Abort``, ``StopRecording``, stopping a macro). Tango
  lets a client with *read* access run exactly the commands listed in its device class's
  ``AllowedAccessCmd`` class property, so these lists are what makes "make safe" possible for
  a read-only client (by default a read-only client may run no command but State and Status);
* **operators** move and measure: write access to every lab device except the light-makers (the
  laser and the laser Door) and Sardana's managers (the Pool and the MacroServer, whose commands
  create controllers and reload code that would act as the service user);
* **laser operators** make light: write access to every lab device, laser and laser Door
  included. Only from the lab's own hosts (``lab_hosts``);
* the **service user** (the servers' own account: the MacroServer and the Pool are clients of
  the other servers) has write access to the lab from the lab's hosts.

What TAC 9.3.4 really checks (``TangoAccessControl/DbUtils.cpp``; the check runs in the client's
cppTango, ``AccessProxy::check_access_control``, with the client's effective user name and its
non-loopback IPv4 addresses):

1. *address*: the user's rows of ``access_address`` (or, when the user has none, the ``*``
   rows) must match one of the client's addresses (``a.b.c.d``, ``a.b.c.*``, ``a.b.*.*`` ...),
   else the answer is **read** for every device;
2. *device*: the user's rows of ``access_device`` that match the device (``*`` per member): one
   match gives its rights, several give *read* if any is *read*; no row of the user matches:
   the ``*`` rows decide (*write* only if they say so).

So the rules here are per device (exact names, and the Pool's elements by their controller's
name), never ``*/*/*``: the facility's other devices keep whatever the facility decided. This
module has no Tango or database code; ``tango_db.deploy`` compares and writes.
"""

from __future__ import annotations

import grp
import pwd
import re
import socket
from dataclasses import dataclass, field

#: AllowedAccessCmd per device class: what a read-only client may run (State and Status always).
#: Safe means it can only stop, close or read: never start motion, light or a recording.
SAFE_COMMANDS: dict[str, tuple[str, ...]] = {
    "MaiTai": ("CloseShutter", "Off"),
    "Esp300": ("Abort", "Stop"),
    "Ell14": ("Stop",),
    "Pvcam": ("StopAcquisition",),
    "DataWriter": ("StopRecording",),
    "Newport1830C": (),
    "VirtualBench": ("Truth",),
    # Sardana: stopping (and pausing: a pause closes the shutter) a macro, reading macro information
    "Door": ("AbortMacro", "GetMacroEnv", "PauseMacro", "ReleaseMacro", "StopMacro"),
    "MacroServer": ("GetMacroCode", "GetMacroInfo"),
    "Pool": ("Abort", "GetControllerClassInfo", "GetControllerCode", "Stop"),
    "Motor": ("Abort", "Release", "Stop"),
    "PseudoMotor": ("Abort", "Release", "Stop"),
    "MotorGroup": ("Abort", "Release", "Stop"),
    "MeasurementGroup": ("Abort", "Release", "Stop"),
    "CTExpChannel": ("Abort", "Release", "Stop"),
    "ZeroDExpChannel": ("Abort", "Release", "Stop"),
    "OneDExpChannel": ("Abort", "Release", "Stop"),
    "TwoDExpChannel": ("Abort", "Release", "Stop"),
    "PseudoCounter": ("Abort", "Release", "Stop"),
    "Controller": ("Abort", "ElementList", "Release", "Stop"),
}

#: commands that make light: never in a read-only list (checked by the unit tests)
LIGHT_COMMANDS = ("On", "OpenShutter", "OpenShutterWithLease", "RenewShutterLease")

ROLE_KEYS = ("operators", "laser_operators")
ACCESS_SERVICE = "AccessControl/tango"  # cppTango looks up the service "AccessControl", instance "tango"
TAC_DEVICE = "sys/access_control/1"
TAC_SERVER = "TangoAccessControl/1"
LASER_DOOR_MEMBER = "laser"  # the laser Door: the lab's Door name with this last member

_NAME = re.compile(r"^[A-Za-z0-9_.*-]+$")
_DEVICE = re.compile(r"^[A-Za-z0-9_.*-]+/[A-Za-z0-9_.*-]+/[A-Za-z0-9_.*-]+$")
_ADDRESS = re.compile(r"^(\d{1,3}|\*)\.(\d{1,3}|\*)\.(\d{1,3}|\*)\.(\d{1,3}|\*)$")


class AccessConfigError(ValueError):
    """An ``access_control`` section that cannot be turned into rules, with the reason."""


@dataclass
class AccessPolicy:
    """The ``access_control`` section of site.json, with groups expanded to users."""

    service_user: str
    operators: set[str] = field(default_factory=set)
    laser_operators: set[str] = field(default_factory=set)
    lab_hosts: list[str] = field(default_factory=list)

    @classmethod
    def from_site(cls, section: dict, service_user: str, *, members=None, addresses=None) -> AccessPolicy:
        """``section``: {"operators": {"users": [...], "groups": [...]}, "laser_operators": {...},
        "lab_hosts": [...]}. ``members(group)`` and ``addresses()`` default to this host's
        account database and interfaces (parameters for the tests)."""
        members = members or group_members
        unknown = sorted(k for k in section if k not in (*ROLE_KEYS, "lab_hosts") and not k.startswith("_"))
        if unknown:
            raise AccessConfigError(f"access_control: unknown keys {', '.join(unknown)} "
                                    f"(known: {', '.join((*ROLE_KEYS, 'lab_hosts'))})")
        roles: dict[str, set[str]] = {}
        for key in ROLE_KEYS:
            part = section.get(key) or {}
            if not isinstance(part, dict) or set(part) - {"users", "groups"} - {k for k in part if k.startswith("_")}:
                raise AccessConfigError(f"access_control.{key} must be {{\"users\": [...], \"groups\": [...]}}")
            users = {str(u).lower() for u in part.get("users", [])}
            for group in part.get("groups", []):
                users |= {u.lower() for u in members(str(group))}
            for user in users:
                if not _NAME.match(user) or "*" in user:
                    raise AccessConfigError(f"access_control.{key}: {user!r} is not a user name")
            roles[key] = users
        hosts = [str(h) for h in section.get("lab_hosts", [])] or list((addresses or local_addresses)())
        for host in hosts:
            if not _ADDRESS.match(host) or any(p != "*" and int(p) > 255 for p in host.split(".")):
                raise AccessConfigError(f"access_control.lab_hosts: {host!r} is not an IPv4 address or a TAC "
                                        "pattern (a.b.c.d, a.b.c.*, a.b.*.*)")
        laser = roles["laser_operators"]
        return cls(service_user=service_user.lower(), operators=roles["operators"] - laser,
                   laser_operators=laser, lab_hosts=hosts)


def group_members(group: str) -> set[str]:
    """Users of ``group`` on this host: listed members and those whose primary group it is.
    TAC knows users only: a change of membership takes effect at the next deploy."""
    try:
        g = grp.getgrnam(group)
    except KeyError:
        raise AccessConfigError(f"access_control: no group {group!r} on this host") from None
    return set(g.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid}


def local_addresses() -> list[str]:
    """This host's IPv4 addresses as cppTango sends them to TAC: every interface's, loopback
    left out unless there is nothing else (``ApiUtil::get_ip_from_if``)."""
    import fcntl
    import struct

    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:
                continue
            ip = socket.inet_ntoa(packed[20:24])
            if ip not in found:
                found.append(ip)
    outside = [ip for ip in found if not ip.startswith("127.")]
    return outside or found[:1]


# --- the lab's devices --------------------------------------------------------------------------------


@dataclass
class LabDevices:
    """The devices the rules cover, as TAC device patterns (lower case)."""

    plain: list[str]  # every device of the deployed servers and the Pool's elements
    light: list[str]  # the laser and the laser Door: laser operators only
    managers: list[str]  # the Pool and the MacroServer: laser operators and the service user


def laser_door_name(door: str) -> str:
    """The laser Door's name beside the lab's Door (``door/lab/1`` -> ``door/lab/laser``)."""
    return f"{door.rsplit('/', 1)[0]}/{LASER_DOOR_MEMBER}"


def lab_devices(devices: dict[str, str], roles: dict[str, str], sardana: dict | None) -> LabDevices:
    """``devices``: device -> class of the deployed servers; ``sardana``: deploy's description of
    the Pool's controllers and measurement groups (their devices exist only once the Pool made them:
    named by Sardana as ``<type>/<controller>/<axis>``, ``controller/<class>/<name>`` and
    ``mntgrp/<pool>/<name>``, hence the patterns)."""
    names = {d.lower() for d, cls in devices.items() if cls != "DServer"}
    for ctrl in (sardana or {}).get("controllers", []):
        name = ctrl["name"].lower()
        names |= {f"*/{name}/*", f"controller/*/{name}"}
    for group in (sardana or {}).get("measurement_groups", []):
        names.add(f"mntgrp/*/{group['name'].lower()}")
    light = {roles[r].lower() for r in ("laser", "laser_door") if roles.get(r)}
    managers = {d.lower() for d, cls in devices.items() if cls in ("Pool", "MacroServer")}
    return LabDevices(plain=sorted(names - light - managers), light=sorted(light & names),
                      managers=sorted(managers))


# --- the rules ----------------------------------------------------------------------------------------


def device_rules(policy: AccessPolicy, lab: LabDevices) -> set[tuple[str, str, str]]:
    """(user, device pattern, rights) rows of ``access_device`` for the lab."""
    everything = [*lab.plain, *lab.light, *lab.managers]
    rows = {("*", dev, "read") for dev in everything}
    for user in {policy.service_user, *policy.laser_operators}:
        rows |= {(user, dev, "write") for dev in everything}
    for user in policy.operators - {policy.service_user}:
        rows |= {(user, dev, "write") for dev in lab.plain}
        rows |= {(user, dev, "read") for dev in (*lab.light, *lab.managers)}
    return rows


def address_rules(policy: AccessPolicy) -> set[tuple[str, str]]:
    """(user, address) rows of ``access_address``: the roles (and the service user) from the lab's
    hosts only. Everyone else has no row and falls back to the ``*`` rows (read, see above)."""
    users = {policy.service_user, *policy.operators, *policy.laser_operators}
    return {(user, host) for user in users for host in policy.lab_hosts}


def managed_users(policy: AccessPolicy) -> set[str]:
    return {policy.service_user, *policy.operators, *policy.laser_operators}


def allowed_commands(classes: set[str]) -> dict[str, list[str]]:
    """AllowedAccessCmd per deployed class (and Sardana's element classes when a Pool is deployed)."""
    wanted = set(classes)
    if "Pool" in wanted:
        wanted |= {"Motor", "PseudoMotor", "MotorGroup", "MeasurementGroup", "CTExpChannel", "ZeroDExpChannel",
                   "OneDExpChannel", "TwoDExpChannel", "PseudoCounter", "Controller"}
    return {cls: sorted(SAFE_COMMANDS[cls]) for cls in sorted(wanted) if cls in SAFE_COMMANDS}


def sql_quote(text: str) -> str:
    """A value checked to hold only name characters, quoted for SQL (nothing needs escaping)."""
    if not (_NAME.match(text) or _DEVICE.match(text) or _ADDRESS.match(text)):
        raise AccessConfigError(f"{text!r} is not a user, device or address")
    return f"'{text}'"


def insert_device_sql(user: str, device: str, rights: str) -> str:
    """The row TAC's ``AddDeviceForUser`` means to write, with ``updated`` given: TAC 9.3.4 leaves
    it out, and the column (``timestamp NOT NULL``, no default since MariaDB 10.10's
    ``explicit_defaults_for_timestamp``) then fails in strict mode."""
    return (f"INSERT INTO access_device (user, device, rights, updated, accessed) VALUES "
            f"({sql_quote(user)}, {sql_quote(device)}, {sql_quote(rights)}, NOW(), NOW());")


def delete_device_sql(user: str, device: str, rights: str) -> str:
    return (f"DELETE FROM access_device WHERE user={sql_quote(user)} AND device={sql_quote(device)} "
            f"AND rights={sql_quote(rights)};")


def insert_address_sql(user: str, address: str) -> str:
    return (f"INSERT INTO access_address (user, address, netmask, updated, accessed) VALUES "
            f"({sql_quote(user)}, {sql_quote(address)}, 'FF.FF.FF.FF', NOW(), NOW());")


def delete_address_sql(user: str, address: str) -> str:
    return f"DELETE FROM access_address WHERE user={sql_quote(user)} AND address={sql_quote(address)};"
