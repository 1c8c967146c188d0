"""The lab's Tango configuration: ``lab.json`` (dsconfig format) plus an optional overlay.

The overlay (e.g. the facility's hardware file with real ``/dev/serial/by-id/...`` URLs and
``Backend=pyvcam``) is merged on top of lab.json key by key: dictionaries merge, any other value
replaces, and ``null`` removes the key (a whole server, instance, device or property).

Writing into a database uses dsconfig's Python API (``get_dict_from_db`` + ``configure``, the
same diff json2tango computes) through the standard Database API only, so it works on the C++
DataBaseds and on pytango-db's PyDatabaseds alike (json2tango's own entry point needs
``DbMySqlSelect``, which PyDatabaseds lacks). Only the server instances named in the
configuration are touched.

Property values may name places that only exist at run time, resolved by ``load_config``:
``${TANGODAQ_CONTROLLERS}`` and ``${TANGODAQ_MACROS}`` (the installed controllers and macros, for
the Pool's PoolPath and the MacroServer's MacroPath: site-packages in a release, the source tree
in a developer's editable install), ``${TANGODAQ_DATA}`` (the lab's data folder: the launcher's
folder on a laptop, the site's data folder in a facility deployment) and ``${PORT+N}``.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .environment import database_address

LAB_JSON = Path(__file__).with_name("lab.json")


@dataclass
class ServerInstance:
    server: str  # executable / server name, e.g. "Newport1830C"
    instance: str  # e.g. "lab"
    devices: dict[str, str] = field(default_factory=dict)  # device name -> class
    properties: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # device -> props

    @property
    def name(self) -> str:
        return f"{self.server}/{self.instance}"


def _merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _strip_comments(value: Any) -> Any:
    """Drop every key starting with ``_`` at any depth: configuration files explain themselves
    with ``"_why": "..."`` entries (dsconfig only drops them at the top)."""
    if isinstance(value, dict):
        return {k: _strip_comments(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def _as_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, bool):
        return [str(value).lower()]
    return [str(value)]


def _normalize_values(config: dict) -> None:
    """dsconfig wants every property value as a list of strings; accept scalars too."""

    def fix(props: dict) -> None:
        for name, value in list(props.items()):
            props[name] = _as_list(value)

    for insts in config.get("servers", {}).values():
        for classes in insts.values():
            for devices in classes.values():
                for dev in devices.values():
                    fix(dev.get("properties", {}))
                    for attr in dev.get("attribute_properties", {}).values():
                        fix(attr)
    for cls in config.get("classes", {}).values():
        fix(cls.get("properties", {}))


def package_folder(package: str) -> Path:
    """Where an installed package of this distribution lives (site-packages, or the source tree
    for an editable install)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {package} is not installed: reinstall tangodaq (pip install tangodaq)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def sardana_paths() -> dict[str, str]:
    """The Pool's PoolPath and the MacroServer's MacroPath entries of this installation."""
    return {
        "TANGODAQ_CONTROLLERS": str(package_folder("tangodaq_controllers")),
        "TANGODAQ_MACROS": str(package_folder("tangodaq_macros")),
    }


def substitutions(data_dir: str | Path | None = None) -> dict[str, str]:
    """The ``${NAME}`` placeholders property values may use, with their values on this machine."""
    from . import paths

    return {**sardana_paths(), "TANGODAQ_DATA": str(data_dir or paths.data_dir())}


_PORT_OFFSET = re.compile(r"\$\{PORT\+(\d+)\}")


def lab_port() -> int:
    """The port of this lab's database (TANGO_HOST's, or the embedded default)."""
    return database_address()[1]


def _substitute(config: dict, data_dir: str | Path | None = None, port: int | None = None) -> None:
    """Replace the ``${NAME}`` placeholders (see ``substitutions``) and ``${PORT+N}`` in property values.

    ``${PORT+N}`` is the lab's database port plus N: the virtual bench's instruments sit just
    above the database port, so two labs on two TANGO_HOSTs (a developer's and the tests') never
    fight for the same ports.
    """
    subs = {f"${{{k}}}": v for k, v in substitutions(data_dir).items()}
    base = port if port is not None else lab_port()

    def fix(values: list[str]) -> list[str]:
        out = []
        for value in values:
            for key, replacement in subs.items():
                value = value.replace(key, replacement)
            value = _PORT_OFFSET.sub(lambda m: str(base + int(m.group(1))), value)
            out.append(value)
        return out

    for insts in config.get("servers", {}).values():
        for classes in insts.values():
            for devices in classes.values():
                for dev in devices.values():
                    props = dev.get("properties", {})
                    for name, values in props.items():
                        props[name] = fix(values)


def load_config(
    overlay: str | Path | None = None,
    lab: str | Path | None = None,
    data_dir: str | Path | None = None,
    port: int | None = None,
) -> dict:
    """lab.json (or ``lab``) with ``overlay`` merged on top, normalised by dsconfig, placeholders
    resolved (``data_dir`` and ``port`` default to the launcher's folder and TANGO_HOST's port)."""
    from dsconfig.formatting import clean_metadata, normalize_config

    lab_path = Path(lab) if lab else LAB_JSON
    with open(lab_path) as f:
        config = json.load(f)
    if overlay:
        with open(overlay) as f:
            config = _merge(config, json.load(f))
    config = _strip_comments(config)
    roles = config.pop("roles", None)  # tangodaq's own section (tango_db/roles.py), not dsconfig's
    config = clean_metadata(normalize_config(config))
    config = json.loads(json.dumps(config))  # plain dicts, not dsconfig's SetterDicts
    _normalize_values(config)
    _substitute(config, data_dir, port)
    from .roles import roles_from_config

    config["roles"] = roles_from_config({"roles": roles})
    return config


def dsconfig_part(config: dict) -> dict:
    """The configuration without tangodaq's own sections, as dsconfig expects it."""
    return {k: v for k, v in config.items() if k != "roles"}


def server_instances(config: dict) -> list[ServerInstance]:
    out = []
    for server, insts in sorted(config.get("servers", {}).items()):
        for instance, classes in sorted(insts.items()):
            si = ServerInstance(server, instance)
            for cls, devices in classes.items():
                for dev, data in devices.items():
                    si.devices[dev] = cls
                    si.properties[dev] = dict(data.get("properties", {}))
            out.append(si)
    return out


def db_changes(config: dict, db) -> list[tuple[str, tuple, dict]]:
    """The Database API calls that bring ``db`` to ``config`` (nothing is written)."""
    from dsconfig.configure import configure
    from dsconfig.tangodb import get_dict_from_db
    from dsconfig.utils import ObjectWrapper

    config = dsconfig_part(config)
    original, _moved = get_dict_from_db(db, config)
    wrapper = ObjectWrapper()
    configure(config, original, update=False, ignore_case=True, db=wrapper)
    return wrapper.calls


def write_config(config: dict, db) -> list[tuple[str, tuple, dict]]:
    """Apply ``config`` to ``db`` (json2tango -w semantics restricted to its servers)."""
    calls = db_changes(config, db)
    for method, args, kwargs in calls:
        getattr(db, method)(*args, **kwargs)
    return calls


def describe_calls(calls) -> list[str]:
    """One human line per database call."""
    lines = []
    for method, args, _kwargs in calls:
        shown = []
        for a in args:
            if hasattr(a, "name") and hasattr(a, "server"):  # DbDevInfo
                shown.append(f"{a.name} ({a._class} in {a.server})")
            else:
                shown.append(repr(a) if not isinstance(a, str) else a)
        lines.append(f"{method}({', '.join(shown)})")
    return lines
