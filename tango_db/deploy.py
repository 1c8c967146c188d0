"""``tangodaq deploy``: the lab into a facility's Tango database, for Starter and Astor.

What a deployment writes, in order (each part shown in the dry run, applied with ``--write``,
idempotent: a second run changes nothing):

1. the servers, devices and properties of the lab (``lab.json`` + the hardware overlay, or the
   virtual bench for ``--simulated``), with dsconfig, touching only the lab's server instances;
2. the roles (``tangodaq/Roles``: which device is the laser, the meter, ...) and the Sardana
   description (``tangodaq/Sardana``: controllers, elements, measurement groups, environment),
   which the Pool and MacroServer started by Starter create at their start (``sardana_servers``);
3. Starter on the host: its device, ``StartDsPath`` set (not appended: an older installation's
   folder must not win), ``AutoRestartDuration``, ``LogFileHome``; every server controlled with its
   startup level and registered on the host, so Astor lists it and ``DevStartAll`` starts it
   before it has ever run (the C++ database lists a host's servers from the device table, which
   only a server that ran fills: deploy records the admin device on the host as a server's own
   start and stop would);
4. the site's folders (data, scans, macro environment, logs), owned by the service user, and the
   launchers Starter runs for Sardana (the hardened MacroServer under its own server name);
5. with an ``access_control`` section in the site file, the operator model
   (``tango_db.access_control``): a laser Door beside the lab's Door, the rules of the roles
   (rows of ``access_device``/``access_address``, written by SQL: see :func:`access_changes`),
   the ``AllowedAccessCmd`` class properties (what read-only clients may run), and, once
   TangoAccessControl answers (a system service: Starter never runs it), the ``AccessControl/tango``
   service.

A deployment is either ``--simulated`` (the virtual bench as a Starter-run ``VirtualBench``
server, every serial URL pointing at it) or ``--config hardware.json`` (every instrument's serial
URL and the camera's backend named by the site's hardware file). Without either, or with a
hardware file that leaves an instrument on the simulator's addresses, deploy refuses and says
which.
"""

from __future__ import annotations

import copy
import grp
import json
import os
import pwd
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from .config import describe_calls, load_config, server_instances, write_config
from .processes import DEFAULT_LEVEL, LEVELS

#: Starter startup level of each server (lower starts first); ours are ``level - 1``
STARTER_LEVEL_OFFSET = 1
BENCH_SERVER = "VirtualBench"
BENCH_LEVEL = 2  # before the hardware servers (3)
BENCH_CONTROL_OFFSET = 9  # the bench's fault-injection port: database port + 9, as on a laptop
SARDANA_PROPERTY = "Sardana"  # free property tangodaq/Sardana: the elements the Pool creates
#: servers Starter must start through a launcher of ours (same Tango server name): see sardana_servers
LAUNCHED = ("MacroServer", "Pool")


class DeployError(Exception):
    """A deployment that must not be written, with what to do instead."""


# --- the site ---------------------------------------------------------------------------------------


@dataclass
class Site:
    """Where a facility keeps the lab's files and who runs its servers (``--site site.json``)."""

    service_user: str = "tango"  # Starter and every server it starts run as this user
    group: str = ""  # readers of data and rings (default: the service user's group)
    data_dir: str = "/var/lib/tangodaq"  # data/, scans/, macroserver/, setups/ inside
    log_dir: str = "/var/log/tangodaq"  # Starter's LogFileHome: one log per server
    auto_restart_minutes: int = 1  # Starter restarts a server that failed after running this long
    access_control: dict = field(default_factory=dict)  # roles and lab hosts (tango_db.access_control)
    hosts: dict = field(default_factory=dict)  # server or server/instance -> the host whose Starter runs it
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> Site:
        if not path:
            return cls()
        with open(path) as f:
            data = json.load(f)
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            raise DeployError(f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        site = cls(**{k: v for k, v in data.items() if k in known})
        bad = sorted(f"{k}={v!r}" for k, v in site.hosts.items()
                     if not k.startswith("_") and (not isinstance(v, str) or not v.strip() or "." in v or "/" in v))
        if bad:
            raise DeployError(f"{path}: hosts: {', '.join(bad)} — name each host by its short host name "
                              "(the name its Starter runs under, tango/admin/<host>)")
        return site

    def host_of(self, server_instance: str, default: str) -> str:
        """The Starter host of ``Server/instance``: named as such, or by the server's name, or ``default``."""
        server = server_instance.split("/")[0]
        return self.hosts.get(server_instance) or self.hosts.get(server) or default

    @property
    def group_name(self) -> str:
        if self.group:
            return self.group
        try:
            return grp.getgrgid(pwd.getpwnam(self.service_user).pw_gid).gr_name
        except KeyError:
            return self.service_user

    def folders(self) -> list[Path]:
        data = Path(self.data_dir)
        return [data, data / "data", data / "scans", data / "macroserver", data / "setups", Path(self.log_dir)]


# --- one change -------------------------------------------------------------------------------------


@dataclass
class Change:
    section: str
    description: str
    apply: Callable[[], object]


# --- the configuration ------------------------------------------------------------------------------


def _serial_devices(config: dict) -> dict[str, tuple[str, dict]]:
    out = {}
    for si in server_instances(config):
        for dev, cls in si.devices.items():
            out[dev] = (cls, si.properties.get(dev, {}))
    return out


def _overlay_props(overlay: dict) -> dict[str, dict]:
    """Device -> properties as the hardware file itself names them (before any merge)."""
    out: dict[str, dict] = {}
    for insts in (overlay.get("servers") or {}).values():
        for classes in (insts or {}).values():
            for devices in (classes or {}).values():
                for dev, data in (devices or {}).items():
                    if isinstance(data, dict):
                        out[dev.lower()] = data.get("properties") or {}
    return out


def check_hardware(config: dict, overlay: dict) -> list[str]:
    """What a hardware deployment would still take from the simulated lab (empty when all is named).

    Every serial instrument's ``SerialURL`` and every camera's ``Backend`` must be named by the
    hardware file itself: one inherited from lab.json means the file forgot that device, and a
    facility must never end up talking to the bench's ``socket://127.0.0.1:10003`` by accident.
    ``sim://`` URLs are refused even when named (in-process simulators are for tests)."""
    named = _overlay_props(overlay)
    problems = []
    for dev, (cls, props) in sorted(_serial_devices(config).items()):
        mine = named.get(dev.lower(), {})
        url = props.get("SerialURL")
        if url is not None:
            if "SerialURL" not in mine:
                problems.append(f"{dev} ({cls}): no SerialURL in the hardware file (lab.json's is {url[0]})")
            elif url[0].startswith("sim://"):
                problems.append(f"{dev} ({cls}): SerialURL {url[0]} is an in-process simulator")
        if props.get("Backend") is not None and "Backend" not in mine:
            problems.append(f"{dev} ({cls}): no Backend in the hardware file (\"pyvcam\" for a real camera)")
    return problems


def add_bench(config: dict, db_port: int, fast: bool = False, bench_device: str = "lab/bench/1") -> dict:
    """The simulated lab with the virtual bench as a Tango server serving its socket:// ports."""
    from deviceservers.bench.server import ports_from_config

    out = copy.deepcopy(config)
    ports = ports_from_config(out)
    if not ports:
        raise DeployError("the configuration has no socket:// SerialURL: nothing for a virtual bench to serve")
    host = next(iter(ports.values()))[0]
    lines = [f"{name}={h}:{p}" for name, (h, p) in sorted(ports.items())]
    lines.append(f"control={host}:{db_port + BENCH_CONTROL_OFFSET}")
    props = {"Ports": lines, "Fast": ["true" if fast else "false"]}
    out["servers"][BENCH_SERVER] = {"lab": {BENCH_SERVER: {bench_device: {"properties": props}}}}
    return out


def bench_on_host(config: dict, host: str) -> dict:
    """The simulated lab with every address of the virtual bench (``127.0.0.1``) replaced by the
    name of the host that runs it: the bench listens there, and servers on other hosts reach it."""
    return json.loads(json.dumps(config).replace("127.0.0.1:", f"{host}:"))


def check_paths(config: dict) -> list[str]:
    """Folders the Sardana servers will load code from, which must exist on this installation."""
    problems = []
    for si in server_instances(config):
        for dev, props in si.properties.items():
            for prop in ("PoolPath", "MacroPath"):
                for entry in props.get(prop, []):
                    if not Path(entry).is_dir():
                        problems.append(f"{dev} {prop} {entry} does not exist")
    return problems


def site_config(args, site: Site, db_port: int, default_host: str = "") -> dict:
    """The configuration this deployment writes, or DeployError saying why not."""
    if bool(args.simulated) == bool(args.config):
        raise DeployError(
            "say what the lab runs on:\n"
            "  --config hardware.json   the real instruments (serial URLs, camera backend); an example is\n"
            f"                           {Path(__file__).with_name('examples') / 'hardware.json'}\n"
            "  --simulated              the virtual bench, run by Starter like the other servers"
        )
    if args.simulated:
        simulated = load_config(None, args.lab, data_dir=site.data_dir, port=db_port)
        config = add_bench(simulated, db_port, fast=args.bench_fast)
        hosts = {site.host_of(si.name, default_host) for si in server_instances(config)}
        if len(hosts) > 1:  # servers on other hosts reach the bench by its host's name
            config = bench_on_host(config, site.host_of(f"{BENCH_SERVER}/lab", default_host))
    else:
        config = load_config(args.config, args.lab, data_dir=site.data_dir, port=db_port)
        with open(args.config) as f:
            problems = check_hardware(config, json.load(f))
        if problems:
            raise DeployError(
                f"{args.config} leaves devices on the simulated lab's settings:\n  "
                + "\n  ".join(problems)
                + "\nname them in the hardware file (or remove a device with null), or deploy --simulated"
            )
    problems = check_paths(config)
    if problems:
        raise DeployError("this installation lacks the Sardana code the servers would load:\n  " + "\n  ".join(problems)
                          + "\nreinstall tangodaq (pip install tangodaq) in the environment Starter runs")
    if site.access_control:
        config = add_laser_door(config)
    return config


def add_laser_door(config: dict) -> dict:
    """The configuration with a second Door for light (role ``laser_door``) beside the lab's Door.

    Light-making macros run only from it (``macros/lab_macros.py``), and only laser operators
    may run macros on it (TAC): a macro runs as the MacroServer's user, so the user's own rights
    on the laser do not reach it; the Door the user is allowed to use does."""
    from .access_control import laser_door_name

    out = copy.deepcopy(config)
    door = out.get("roles", {}).get("door")
    for insts in out.get("servers", {}).values():
        for classes in insts.values():
            doors = classes.get("Door") or {}
            if door and door in doors:
                name = laser_door_name(door)
                doors[name] = copy.deepcopy(doors[door])
                out["roles"]["laser_door"] = name
                return out
    return out


# --- Sardana description ----------------------------------------------------------------------------


def sardana_description(config: dict, sardana_json: str | Path | None, data_dir: str) -> dict:
    """What the Pool and MacroServer create at their start: sardana.json restricted to the lab's
    devices, with the roles' device names and the site's folders."""
    from . import sardana_setup

    sardana = sardana_setup.load_sardana_config(sardana_json, data_dir=data_dir, roles=config.get("roles"))
    controllers, groups, notes = sardana_setup.plan(sardana, sardana_setup.lab_devices(config))
    return {**sardana, "controllers": controllers, "measurement_groups": groups, "notes": notes}


def sardana_changes(db, description: dict) -> list[Change]:
    text = json.dumps(description, sort_keys=True)
    current = list(db.get_property("tangodaq", SARDANA_PROPERTY)[SARDANA_PROPERTY])
    if "".join(current) == text:
        return []
    names = [e["name"] for c in description["controllers"] for e in c.get("elements", [])]
    names += [m["name"] for m in description["measurement_groups"]]
    return [Change(
        "sardana",
        f"put_property(tangodaq, {SARDANA_PROPERTY}: {len(description['controllers'])} controllers, "
        f"{', '.join(names)}; environment {', '.join(description.get('environment', {}))})",
        lambda: db.put_property("tangodaq", {SARDANA_PROPERTY: [text]}),
    )]


def deployed_roles(config: dict, stored: dict[str, str]) -> dict[str, str]:
    """The roles after this deployment: the stored ones, with the roles of the devices this
    configuration deploys set on top. A deployment of part of the lab (a second host's servers)
    thus changes only its own devices' roles and keeps everyone else's."""
    devices = {dev.lower() for si in server_instances(config) for dev in si.devices}
    mine = {role: dev for role, dev in config.get("roles", {}).items() if dev.lower() in devices}
    return {**stored, **mine}


def roles_changes(db, config: dict) -> list[Change]:
    from .roles import ROLES_OBJECT, ROLES_PROPERTY, decode, write_roles

    stored = decode(db.get_property(ROLES_OBJECT, ROLES_PROPERTY)[ROLES_PROPERTY])
    roles = deployed_roles(config, stored)
    if roles == stored:
        return []
    shown = ", ".join(f"{k}={v}" for k, v in sorted(roles.items()) if stored.get(k) != v)
    return [Change("roles", f"put_property({ROLES_OBJECT}, {ROLES_PROPERTY}: {shown})", lambda: write_roles(db, roles))]


# --- Starter ----------------------------------------------------------------------------------------


def starter_level(server: str) -> int:
    level = BENCH_LEVEL if server == BENCH_SERVER else LEVELS.get(server, DEFAULT_LEVEL)
    return max(1, int(level) - STARTER_LEVEL_OFFSET)


def launcher_dir() -> Path:
    """Where deploy writes the launchers Starter runs for Sardana (in this environment)."""
    return Path(sys.prefix) / "share" / "tangodaq" / "starter"


def starter_changes(config: dict, db, host: str, ds_path: list[str], site: Site) -> list[Change]:
    """Starter's device and properties on every host that runs a server (``host`` unless the
    site's ``hosts`` names another), and every server controlled and registered on its host."""
    placed = {si.name: site.host_of(si.name, host) for si in server_instances(config)}
    changes: list[Change] = []
    for each in sorted(set(placed.values()), key=lambda h: (h != host, h)):
        changes += _starter_device_changes(db, each, ds_path, site)
    for si in server_instances(config):
        changes += _server_changes(db, si.name, si.server, placed[si.name])
    return changes


def _starter_device_changes(db, host: str, ds_path: list[str], site: Site) -> list[Change]:
    import tango

    changes: list[Change] = []
    starter = f"tango/admin/{host}"
    try:
        db.get_device_info(starter)
        exists = True
    except tango.DevFailed:
        exists = False
    if not exists:
        info = tango.DbDevInfo()
        info.name, info._class, info.server = starter, "Starter", f"Starter/{host}"
        changes.append(Change("starter", f"add_device({starter} (Starter in Starter/{host}))",
                              lambda i=info: db.add_device(i)))
    wanted = {
        "StartDsPath": ds_path,
        "AutoRestartDuration": [str(site.auto_restart_minutes)],
        "LogFileHome": [site.log_dir],
    }
    current = db.get_device_property(starter, list(wanted)) if exists else {}
    for prop, value in wanted.items():
        if list(current.get(prop, [])) != value:
            changes.append(Change("starter", f"put_device_property({starter}, {prop}={value})",
                                  lambda p=prop, v=value: db.put_device_property(starter, {p: v})))
    return changes


def _server_changes(db, name: str, server: str, host: str) -> list[Change]:
    """``name`` (Server/instance) controlled by the Starter of ``host``, at its level, listed there."""
    import tango

    changes: list[Change] = []
    level = starter_level(server)
    try:
        old = db.get_server_info(name)
        same = old.host == host and old.mode == 1 and old.level == level
    except tango.DevFailed:
        same = False
    if not same:
        info = tango.DbServerInfo()
        info.name, info.host, info.mode, info.level = name, host, 1, level
        changes.append(Change("starter", f"put_server_info({name}: host={host}, controlled, startup level {level})",
                              lambda i=info: db.put_server_info(i)))
    admin = f"dserver/{name}"
    try:
        known_host = db.get_device_info(admin).host
    except tango.DevFailed:
        known_host = ""
    if known_host.split(".")[0] != host:
        changes.append(Change("starter", f"register {name} on {host} (so Starter and Astor list it)",
                              lambda a=admin: register_on_host(db, a, host)))
    return changes


def register_on_host(db, admin_device: str, host: str) -> None:
    """Record the server's admin device on ``host`` as its own start and clean stop would."""
    import tango

    info = tango.DbDevExportInfo()
    info.name, info.ior, info.host, info.pid, info.version = admin_device, "nada", host, 0, "5"
    db.export_device(info)
    db.unexport_device(admin_device)


LAUNCHER = """#!{python}
# Written by `tangodaq deploy`: Starter runs the Tango server {server} through this file.
# {why}
import sys

from tango_db.sardana_servers import main

sys.exit(main(["{server}", *sys.argv[1:]]))
"""
LAUNCHER_WHY = {
    "MacroServer": "Sardana's MacroServer with its abort races closed (tango_db/sardana_servers.py).",
    "Pool": "Sardana's Pool, which creates the deployed elements at its start (tango_db/sardana_servers.py).",
}


def launcher_changes(config: dict, folder: Path) -> list[Change]:
    servers = {si.server for si in server_instances(config)}
    changes = []
    for server in LAUNCHED:
        if server not in servers:
            continue
        path = folder / server
        text = LAUNCHER.format(python=sys.executable, server=server, why=LAUNCHER_WHY[server])
        if path.exists() and path.read_text() == text and os.access(path, os.X_OK):
            continue

        def write(p=path, t=text) -> None:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(t)
            p.chmod(0o755)

        changes.append(Change("launchers", f"write {path}", write))
    return changes


def folder_changes(site: Site) -> list[Change]:
    """The site's folders, owned by the service user with the group able to read (and write)."""
    changes = []
    try:
        uid = pwd.getpwnam(site.service_user).pw_uid
        gid = grp.getgrnam(site.group_name).gr_gid
    except KeyError as exc:
        raise DeployError(f"the service user or group does not exist on this host: {exc}") from None
    for folder in site.folders():
        if folder.is_dir() and folder.stat().st_uid == uid and folder.stat().st_gid == gid:
            continue

        def make(f=folder) -> None:
            f.mkdir(parents=True, exist_ok=True)
            os.chown(f, uid, gid)
            f.chmod(0o2775)

        changes.append(Change("folders", f"mkdir {folder} (owner {site.service_user}:{site.group_name}, 2775)", make))
    return changes


# --- access control ---------------------------------------------------------------------------------

def tango_settings(name: str) -> str:
    """``name`` as cppTango's ``get_env_var`` finds it: the environment, ~/.tangorc, /etc/tangorc."""
    if os.environ.get(name):
        return os.environ[name]
    for path in (Path.home() / ".tangorc", Path("/etc/tangorc")):
        try:
            for line in path.read_text().splitlines():
                key, sep, value = line.strip().partition("=")
                if sep and key.strip() == name:
                    return value.strip()
        except OSError:
            continue
    return ""


def run_sql(statements: list[str]) -> None:
    """Run ``statements`` on the Tango database's MariaDB with the ``mariadb`` client, as the
    account DataBaseds uses (MYSQL_USER, MYSQL_PASSWORD, MYSQL_HOST, MYSQL_DATABASE)."""
    import shutil
    import subprocess

    user = tango_settings("MYSQL_USER")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if not user or not client:
        raise OSError("the access-control rules are written by SQL: set MYSQL_USER and MYSQL_PASSWORD (and "
                      "MYSQL_HOST) as for DataBaseds, in the environment or /etc/tangorc, and install the "
                      "mariadb client (apt-get install mariadb-client)")
    host, _, port = (tango_settings("MYSQL_HOST") or "localhost").partition(":")
    argv = [client, "--batch", f"--host={host}", f"--user={user}", tango_settings("MYSQL_DATABASE") or "tango"]
    if port:
        argv.insert(3, f"--port={port}")
    env = {**os.environ, "MYSQL_PWD": tango_settings("MYSQL_PASSWORD")}
    out = subprocess.run(argv, input="\n".join(statements), text=True, capture_output=True, env=env, timeout=60)
    if out.returncode:
        raise OSError(f"SQL on {host}: {out.stderr.strip()}")


def select_rows(db, query: str) -> set[tuple[str, ...]]:
    """Rows of a SELECT through the database device's DbMySqlSelect (no SQL account needed)."""
    (shape, values) = db.command_inout("DbMySqlSelect", query)
    columns = int(shape[-1]) if len(shape) else 1
    values = list(values)
    return {tuple(str(v) for v in values[i:i + columns]) for i in range(0, len(values), columns)}


def access_changes(db, config: dict, site: Site, sardana: dict | None, notes: list[str]) -> list[Change]:
    """The operator model (tango_db.access_control) into the database, in an order that never
    leaves the lab open: rules, read-only command lists, and last the service (from then on every
    new client asks TAC), registered only once TAC answers (else a note in ``notes``).

    The rules are rows written by SQL, with every column given: TAC 9.3.4's ``AddDeviceForUser``
    and ``AddAddressForUser`` leave out ``updated`` (``timestamp NOT NULL`` without a default
    since MariaDB 10.10 made ``explicit_defaults_for_timestamp`` the default), which strict mode
    refuses. The alternatives were a non-strict session for TAC (an option file for its client
    library, also read by every other client of the service user) or an ``ALTER TABLE`` giving
    ``updated`` a default (what Debian did for the property history tables, bug #1062979: a
    schema change the tango-db package owns). Plain INSERT/DELETE on two tables with the account
    DataBaseds already uses changes no server setting and no schema."""
    import tango

    from . import access_control as ac

    try:
        policy = ac.AccessPolicy.from_site(site.access_control, site.service_user)
    except ac.AccessConfigError as exc:
        raise DeployError(str(exc)) from None
    devices = {dev: cls for si in server_instances(config) for dev, cls in si.devices.items()}
    roles = deployed_roles(config, {})
    lab = ac.lab_devices(devices, roles, sardana)
    changes: list[Change] = []

    # the rules: rows on the lab's devices are this deployment's; other devices are left alone
    owned = {d.lower() for d in (*lab.plain, *lab.light, *lab.managers)}
    current = {(u, d.lower(), r) for u, d, r in select_rows(db, "SELECT user, device, rights FROM access_device")}
    wanted = ac.device_rules(policy, lab)
    stale = {row for row in current if row[1] in owned and row not in wanted}
    missing = wanted - current
    users = ac.managed_users(policy)
    current_addr = select_rows(db, "SELECT user, address FROM access_address")
    wanted_addr = ac.address_rules(policy)
    stale_addr = {row for row in current_addr if row[0] in users and row not in wanted_addr}
    missing_addr = wanted_addr - current_addr
    statements = [ac.delete_device_sql(*row) for row in sorted(stale)]
    statements += [ac.delete_address_sql(*row) for row in sorted(stale_addr)]
    statements += [ac.insert_device_sql(*row) for row in sorted(missing)]
    statements += [ac.insert_address_sql(*row) for row in sorted(missing_addr)]
    for user, address in sorted(missing_addr):
        changes.append(Change("access control", f"rule: {user} from {address}", lambda: None))
    for user, dev, rights in sorted(missing, key=lambda r: (r[0] != "*", r[0], r[1])):
        changes.append(Change("access control", f"rule: {user} {rights} {dev}", lambda: None))
    for user, dev, rights in sorted(stale):
        changes.append(Change("access control", f"remove rule: {user} {rights} {dev}", lambda: None))
    for user, address in sorted(stale_addr):
        changes.append(Change("access control", f"remove rule: {user} from {address}", lambda: None))
    if statements:
        changes.append(Change("access control", f"SQL: {len(statements)} rows of access_device/access_address "
                              "(INSERT with every column; the MYSQL_* account of DataBaseds)",
                              lambda st=statements: run_sql(st)))

    # what a read-only client may still run
    for cls, commands in ac.allowed_commands(set(devices.values())).items():
        have = sorted(db.get_class_property(cls, "AllowedAccessCmd")["AllowedAccessCmd"])
        if have == commands:
            continue
        if commands:
            changes.append(Change("access control", f"put_class_property({cls}, AllowedAccessCmd={commands})",
                                  lambda c=cls, v=commands: db.put_class_property(c, {"AllowedAccessCmd": v})))
        else:
            changes.append(Change("access control", f"delete_class_property({cls}, AllowedAccessCmd)",
                                  lambda c=cls: db.delete_class_property(c, ["AllowedAccessCmd"])))

    # TangoAccessControl's device (Debian's tango-db creates it); the server itself is a system
    # service started before Starter: Starter never starts it (StarterUtil.cpp leaves out
    # TangoAccessControl, DataBaseds, Starter and LogConsumer from a host's servers)
    try:
        db.get_device_info(ac.TAC_DEVICE)
    except tango.DevFailed:
        info = tango.DbDevInfo()
        info.name, info._class, info.server = ac.TAC_DEVICE, "TangoAccessControl", ac.TAC_SERVER
        changes.append(Change("access control", f"add_device({ac.TAC_DEVICE} (TangoAccessControl in {ac.TAC_SERVER}))",
                              lambda i=info: db.add_device(i)))

    # last: the service, which makes every new client ask TAC. Only once TAC answers: a client that
    # finds the service registered but unreachable may run no command at all, not even CloseShutter
    services = list(db.get_property("CtrlSystem", "Services")["Services"])
    line = f"{ac.ACCESS_SERVICE}:{ac.TAC_DEVICE}"
    kept = [s for s in services if s.split(":", 1)[0].lower() != ac.ACCESS_SERVICE.lower()]
    if line not in services:
        if tac_answers(db):
            changes.append(Change("access control", f"put_property(CtrlSystem, Services += {line})",
                                  lambda v=[*kept, line]: db.put_property("CtrlSystem", {"Services": v})))
        else:
            notes.append(f"{ac.TAC_DEVICE} does not answer: the rules are written, but the access-control service is "
                         f"not registered until it does. Start Debian's TangoAccessControl (apt-get install "
                         f"tango-accesscontrol; it needs MYSQL_USER/MYSQL_PASSWORD in /etc/tangorc), before Starter, "
                         f"then deploy again")
    return changes


def tac_answers(db) -> bool:
    """True when the TangoAccessControl device is exported and answers a ping."""
    import tango

    from .access_control import TAC_DEVICE
    from .proxies import DEFAULT_TIMEOUT_MS, device_proxy

    try:
        if not db.get_device_info(TAC_DEVICE).exported:
            return False
        proxy = device_proxy(TAC_DEVICE, DEFAULT_TIMEOUT_MS, f"{db.get_db_host()}:{db.get_db_port()}")
        proxy.ping()
        return True
    except tango.DevFailed:
        return False


# --- the command ------------------------------------------------------------------------------------


def plan(args, db, db_port: int) -> tuple[list[Change], list[tuple], dict]:
    site = Site.load(args.site)
    host = (args.starter_host or socket.gethostname()).split(".")[0]  # Starter's own name: tango/admin/<short host>
    config = site_config(args, site, db_port, host)
    folder = launcher_dir()
    ds_path = [str(folder), str(Path(sys.executable).parent)] if not args.start_ds_path else args.start_ds_path
    from .config import db_changes

    calls = db_changes(config, db)
    changes = [Change("configuration", line, lambda: None) for line in describe_calls(calls)]
    changes += roles_changes(db, config)
    sardana = None
    if any(si.server == "Pool" for si in server_instances(config)):  # a host without the Pool leaves it alone
        sardana = sardana_description(config, args.sardana, site.data_dir)
        changes += sardana_changes(db, sardana)
    changes += starter_changes(config, db, host, ds_path, site)
    changes += launcher_changes(config, folder)
    changes += folder_changes(site)
    notes = []
    placed: dict[str, list[str]] = {}
    for si in server_instances(config):
        placed.setdefault(site.host_of(si.name, host), []).append(si.name)
    others = {h: names for h, names in placed.items() if h != host}
    for other, names in sorted(others.items()):
        notes.append(f"{', '.join(names)} run on {other}: install this same release there and run this deploy "
                     f"there too, as root (it makes that host's folders and launchers; the database part is "
                     f"already written)")
    if site.access_control:
        changes += access_changes(db, config, site, sardana, notes)
    if not args.simulated and _has_server(db, f"{BENCH_SERVER}/lab"):
        notes.append(f"{BENCH_SERVER}/lab (the virtual bench of a simulated deployment) is still in the database "
                     f"and controlled by Starter: once the real instruments are deployed, stop it from Astor and "
                     f"remove it (tango_admin --delete-server {BENCH_SERVER}/lab)")
    return changes, calls, {"config": config, "site": site, "host": host, "hosts": sorted(placed, key=lambda h: (h != host, h)), "notes": notes}


def _has_server(db, name: str) -> bool:
    return bool(list(db.get_server_list(name)))


def run(args, say: Callable[[str], None]) -> int:
    import tango

    from . import embedded_db

    if not os.environ.get("TANGO_HOST"):
        say("set TANGO_HOST to the facility database (host:port) first")
        return 2
    host, port = embedded_db.tango_host()
    if not embedded_db.database_answers(host, port):
        say(f"no Tango database answers at {host}:{port}: check TANGO_HOST")
        return 2
    db = tango.Database(host, port)
    try:
        changes, _calls, info = plan(args, db, port)
    except DeployError as exc:
        say(f"not deployed: {exc}")
        return 2
    for note in info["notes"]:
        say(f"note: {note}")
    kind = "simulated lab (virtual bench)" if args.simulated else f"hardware from {args.config}"
    say(f"deploying the {kind} to the Tango database at {host}:{port}, Starter on {', '.join(info['hosts'])}, "
        f"servers run as {info['site'].service_user}:")
    if not changes:
        say("  nothing to change: the database, Starter and the folders already hold this deployment")
        return 0
    section = None
    for change in changes:
        if change.section != section:
            section = change.section
            say(f"  {section}:")
        say(f"    {change.description}")
    if not args.write:
        say("\nnothing was written (dry run): run again with --write to apply")
        return 0
    failed = []
    write_config(info["config"], db)
    for change in changes:
        if change.section == "configuration":
            continue
        try:
            change.apply()
        except (OSError, tango.DevFailed) as exc:
            failed.append(f"{change.description}: {exc}")
    if failed:
        say("\nwritten, except:\n  " + "\n  ".join(failed))
        if any("mkdir" in f or "write " in f for f in failed):
            say("run deploy again as root on the Starter host to create the folders and launchers")
        return 1
    hosts = info["hosts"]
    starters = ", ".join(f"tango/admin/{h}" for h in hosts)
    say(f"\nwritten. Start Starter on {', '.join(hosts)} as {info['site'].service_user} (or restart it: it reads "
        f"its properties at start), then start the servers from Astor, or: DevStartAll on {starters}")
    return 0
