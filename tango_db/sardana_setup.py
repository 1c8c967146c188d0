"""Create the Pool's elements and the MacroServer's environment from ``tango_db/sardana.json``.

Why through the Pool's own commands (``CreateController``, ``CreateElement``,
``CreateMeasurementGroup``) and not by writing devices into the database: the Pool checks every
request (library found, class implements the type, roles filled) and registers the element in
the database itself, exactly as spock's ``defctrl`` / ``defelem`` / ``defmeas`` do; sardana's
YAML tool (``sardana-config``) is not a dependency of this project.

Both steps are idempotent: what exists is left alone (axis attributes are rewritten only when
they differ; environment variables only set when undefined, so a user's ``senv`` survives a
restart). ``tangodaq up`` runs them as one-shot steps: elements after the Pool answers and before
the MacroServer starts (so the MacroServer sees them at once), the environment after the
MacroServer answers.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from .config import _strip_comments, server_instances, substitutions
from .environment import split_tango_host

SARDANA_JSON = Path(__file__).with_name("sardana.json")
ELEMENTS_LEVEL = 4.5  # after the Pool (4), before the MacroServer (5)
ENVIRONMENT_LEVEL = 5.5  # after the MacroServer


_ROLE = re.compile(r"\$\{ROLE:([A-Za-z0-9_]+)\}")


def load_sardana_config(
    path: str | Path | None = None, data_dir: str | Path | None = None, roles: dict[str, str] | None = None
) -> dict:
    """sardana.json with its placeholders resolved: ``${TANGODAQ_DATA}`` and the other folders
    (see ``config.substitutions``) and ``${ROLE:name}``, the device playing that role (the
    configuration's roles, else the database's: tango_db.roles)."""
    with open(path or SARDANA_JSON) as f:
        text = f.read()
    for key, value in substitutions(data_dir).items():
        text = text.replace(f"${{{key}}}", value)
    if roles is None:
        from .roles import lab_roles

        roles = lab_roles()

    def role(match: re.Match) -> str:
        try:
            return roles[match.group(1)]
        except KeyError:
            raise ValueError(f"sardana.json names the role {match.group(1)!r}, which the lab's roles lack") from None

    return _strip_comments(json.loads(_ROLE.sub(role, text)))  # `_`-keys are comments, as in lab.json


def lab_devices(config: dict) -> set[str]:
    return {dev.lower() for si in server_instances(config) for dev in si.devices}


ANSWER_TIMEOUT_S = 30.0  # how long an element device may take to be exported by a (re)starting Pool


def _proxy(name: str, tango_host: str, timeout_ms: int = 10000, wait_s: float = ANSWER_TIMEOUT_S):
    """A proxy to a device that answers, waiting up to ``wait_s`` for it to be exported.

    Why wait: on a restart the Pool answers before it has exported every element it re-creates
    from the database (stage_x may still be "not exported" for a second), and a DeviceProxy that
    failed once refuses to reconnect for 1 s ("The connection request was delayed"): so each
    attempt uses a fresh proxy."""
    import tango

    from .proxies import device_proxy

    deadline = time.monotonic() + wait_s
    while True:
        proxy = device_proxy(name, timeout_ms, tango_host)
        try:
            proxy.ping()
            return proxy
        except tango.DevFailed as exc:
            if time.monotonic() > deadline:
                desc = exc.args[0].desc.strip().splitlines()[0] if exc.args else str(exc)
                raise RuntimeError(f"{name} does not answer after {wait_s:.0f} s: {desc}") from None
            time.sleep(0.3)


def _existing(pool, tango_host: str) -> set[str]:
    """Names of the Pool's elements, once every one of them answers.

    Why not just the Pool's ``ControllerList``/``MotorList``: on a restart the Pool answers
    before it has re-created (and exported) all the elements it keeps in the database, so those
    lists can be incomplete for a moment. The database is the truth: every device of the Pool's
    server but the Pool itself is an element, known by its alias; we wait until each answers."""
    import tango

    db = tango.Database(*split_tango_host(tango_host))
    server = db.get_device_info(pool.name()).ds_full_name
    listing = list(db.get_device_class_list(server).value_string)
    names: set[str] = set()
    for device, klass in zip(listing[::2], listing[1::2], strict=True):
        if klass in ("DServer", "Pool"):
            continue
        try:
            alias = db.get_alias_from_device(device)
        except tango.DevFailed:
            continue
        _proxy(alias, tango_host)  # wait until exported
        names.add(alias.lower())
    for attr in ("ControllerList", "MotorList", "ExpChannelList", "MeasurementGroupList"):
        for item in pool.read_attribute(attr).value or ():
            names.add(json.loads(item)["name"].lower())
    return names


def plan(sardana: dict, devices: set[str]) -> tuple[list[dict], list[dict], list[str]]:
    """(controllers, measurement groups, notes) restricted to the devices the lab runs."""
    notes: list[str] = []
    absent: list[str] = []
    controllers: list[dict] = []
    present: set[str] = set()
    for ctrl in sardana.get("controllers", []):
        if "roles" in ctrl:
            controllers.append(ctrl)  # pseudo: decided below, once the physical motors are known
            continue
        kept = []
        for elem in ctrl.get("elements", []):
            dev = elem.get("attributes", {}).get("TangoDevice", "").lower()
            if dev and dev not in devices:
                absent.append(elem["name"])
                continue
            kept.append(elem)
            present.add(elem["name"].lower())
        if kept:
            controllers.append({**ctrl, "elements": kept})
    declared = {e["name"].lower() for c in sardana.get("controllers", []) for e in c.get("elements", [])}
    final = []
    for ctrl in controllers:
        if "roles" in ctrl:
            physical = [m for m in ctrl["roles"].values() if m.lower() in declared]
            missing = [m for m in physical if m.lower() not in present]
            if missing:
                absent.extend(m for m in ctrl["roles"].values() if m not in physical)
                continue
            present.update(m.lower() for m in ctrl["roles"].values())
        final.append(ctrl)
    groups = []
    for mg in sardana.get("measurement_groups", []):
        if any(c.lower() not in present for c in mg["channels"]):
            absent.append(mg["name"])
            continue
        groups.append(mg)
    if absent:
        notes.append("skipped (their devices are not in the lab's configuration): " + ", ".join(absent))
    return final, groups, notes


def wait_answers(name: str, tango_host: str, wait_s: float) -> None:
    """Wait until device ``name`` answers (a server's own set-up thread runs before it serves)."""
    _proxy(name, tango_host, wait_s=wait_s)


def create_elements(config: dict | None, tango_host: str, sardana: dict | None = None, planned: bool = False) -> str:
    """The one-shot step: create what is missing in the Pool; returns a one-line summary.

    ``planned``: ``sardana`` is already restricted to the lab's devices (the description that
    ``tangodaq deploy`` stored), so no configuration is needed."""
    sardana = sardana or load_sardana_config()
    pool = _proxy(sardana["pool"], tango_host)
    if planned:
        controllers, groups, notes = sardana["controllers"], sardana["measurement_groups"], list(sardana.get("notes", []))
    else:
        controllers, groups, notes = plan(sardana, lab_devices(config or {}))
    declared = {e["name"].lower() for c in controllers for e in c.get("elements", [])}
    existing = _existing(pool, tango_host)
    created: list[str] = []
    for ctrl in controllers:
        name = ctrl["name"]
        if name.lower() not in existing:
            args = [ctrl["type"], ctrl["library"], ctrl["klass"], name]
            args += [f"{role}={motor}" for role, motor in ctrl.get("roles", {}).items()]
            for prop, value in ctrl.get("properties", {}).items():
                args += [prop, str(value)]
            pool.command_inout("CreateController", args)
            created.append(name)
            if "roles" in ctrl:  # the pseudo motors it created (the physical roles exist already)
                created.extend(m for m in ctrl["roles"].values() if m.lower() not in existing | declared)
        for elem in ctrl.get("elements", []):
            if elem["name"].lower() not in existing:
                pool.command_inout("CreateElement", [ctrl["type"], name, str(elem["axis"]), elem["name"]])
                created.append(elem["name"])
            _write_attributes(elem["name"], elem.get("attributes", {}), tango_host)
    for mg in groups:
        new_group = mg["name"].lower() not in existing
        if new_group:
            pool.command_inout("CreateMeasurementGroup", [mg["name"], *mg["channels"]])
            created.append(mg["name"])
        if mg.get("value_ref"):
            _enable_value_ref(mg["name"], mg["value_ref"], tango_host)
        if new_group and mg.get("plot"):  # a default only: Experiment Config's choice survives restarts
            _plot_channels(mg["name"], mg["plot"], tango_host)
        if mg.get("attributes"):
            _write_attributes(mg["name"], mg["attributes"], tango_host)
    summary = f"created {', '.join(created)}" if created else "all elements exist"
    return summary + ("; " + "; ".join(notes) if notes else "")


def _write_attributes(element: str, attributes: dict[str, Any], tango_host: str) -> None:
    proxy = _proxy(element, tango_host)
    for attr, value in attributes.items():
        if proxy.read_attribute(attr).value != value:
            proxy.write_attribute(attr, value)


def _enable_value_ref(group: str, channels: list[str], tango_host: str) -> None:
    mg = _proxy(group, tango_host)
    conf = json.loads(mg.read_attribute("Configuration").value)
    wanted = {c.lower() for c in channels}
    changed = False
    for ctrl in conf.get("controllers", {}).values():
        for ch in ctrl.get("channels", {}).values():
            if ch.get("name", "").lower() in wanted and not ch.get("value_ref_enabled"):
                ch["value_ref_enabled"] = True
                changed = True
    if changed:
        mg.write_attribute("Configuration", json.dumps(conf))


def _plot_channels(group: str, channels: list[str], tango_host: str) -> None:
    """Plot ``channels`` against the scanned motor in the live scan plot (Experiment Config's
    "Plot type" 1, axis ``<mov>``): without it the GUI's scan plot stays empty."""
    mg = _proxy(group, tango_host)
    conf = json.loads(mg.read_attribute("Configuration").value)
    wanted = {c.lower() for c in channels}
    for ctrl in conf.get("controllers", {}).values():
        for ch in ctrl.get("channels", {}).values():
            if ch.get("name", "").lower() in wanted:
                ch["plot_type"], ch["plot_axes"] = 1, ["<mov>"]
    mg.write_attribute("Configuration", json.dumps(conf))


def set_environment(tango_host: str, sardana: dict | None = None) -> str:
    """The second step: define the MacroServer environment variables that are not defined yet."""
    from taurus.core.util.codecs import CodecFactory

    sardana = sardana or load_sardana_config()
    wanted = sardana.get("environment", {})
    if not wanted:
        return "nothing to set"
    ms = _proxy(sardana["macroserver"], tango_host)
    codec = CodecFactory().getCodec("pickle")
    current = codec.decode(ms.read_attribute("Environment").value)[1].get("new", {})
    new = {k: v for k, v in wanted.items() if k not in current}
    if not new:
        return "environment already set"
    scan_dir = new.get("ScanDir")
    if scan_dir:
        Path(scan_dir).mkdir(parents=True, exist_ok=True)
    ms.write_attribute("Environment", codec.encode(("", {"new": new})))
    return "set " + ", ".join(f"{k}={v}" for k, v in new.items())
