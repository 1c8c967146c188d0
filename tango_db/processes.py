"""What the lab runs: the table of processes, their start order and how each says "ready".

The supervisor starts the lab level by level, like Starter's startup levels: a level starts once
every process of the lower levels answers; processes of one level start together. Every Tango
server named in the configuration is a process; its level comes from ``LEVELS`` (by server
name, default ``DEFAULT_LEVEL``). Non-Tango processes and one-shot steps live in ``EXTRA``.

To add a process to the lab:

- a Tango server (Esp300, Ell14, ..., Sardana's Pool and MacroServer): add it to ``lab.json``;
  if it must start after others, give its server name a level in ``LEVELS`` (one line);
- a non-Tango process (the virtual bench): one ``Extra(...)`` line in ``EXTRA`` with its command,
  level, readiness check and the condition under which the lab needs it.

Levels 0-2 are the launcher's own (database, configuration, bench); Tango servers start at 3.
Sardana's one-shot steps sit between: elements at 4.5 (Pool up, MacroServer not yet), environment
at 5.5 (see ``sardana_steps``).
``tangodaq deploy`` maps a server's level to its Starter startup level (``level - 1``: the virtual
bench 1, hardware servers 2, Pool 3, MacroServer 4; see ``tango_db.deploy``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

from . import embedded_db
from .config import ServerInstance, server_instances
from .environment import find_executable

# --- the table --------------------------------------------------------------------------------

DEFAULT_LEVEL = 3  # hardware servers and the DataWriter
LEVELS = {
    # Sardana: the Pool needs the hardware servers, the MacroServer needs the Pool.
    "Pool": 4,
    "MacroServer": 5,
}


@dataclass
class Extra:
    """A non-Tango process of the lab, started with the tangodaq CLI itself."""

    name: str
    args: list[str]  # arguments after `tangodaq`
    level: int
    ready: Callable[[dict], Callable[[], tuple[bool, str]]]  # config -> readiness check
    needed: Callable[[dict], bool]  # config -> does the lab need it?


def socket_urls(config: dict) -> list[tuple[str, int]]:
    """(host, port) of every ``socket://`` SerialURL in the configuration."""
    out = []
    for si in server_instances(config):
        for props in si.properties.values():
            for url in props.get("SerialURL", []):
                if url.startswith("socket://"):
                    parsed = urlparse(url)
                    if parsed.hostname and parsed.port:
                        out.append((parsed.hostname, parsed.port))
    return sorted(set(out))


def _ports_answer(config: dict) -> Callable[[], tuple[bool, str]]:
    ports = socket_urls(config)

    def check() -> tuple[bool, str]:
        closed = [f"{h}:{p}" for h, p in ports if not embedded_db.port_open(h, p, 0.3)]
        return (not closed, "listening" if not closed else "waiting for " + ", ".join(closed))

    return check


EXTRA: list[Extra] = [
    # the virtual bench serves the simulators on the TCP ports lab.json's socket:// URLs name
    Extra("bench", ["bench"], level=2, ready=_ports_answer, needed=lambda c: bool(socket_urls(c))),
]

# --- specs built from the table -----------------------------------------------------------------


@dataclass
class ProcessSpec:
    """One child process of the lab (see supervisor.Supervisor)."""

    name: str  # "database", "bench", "Newport1830C/lab"
    level: int
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], tuple[bool, str]] | None = None  # None: running is ready
    devices: dict[str, str] = field(default_factory=dict)  # device -> class (Tango servers)
    action: Callable[[], str] | None = None  # a one-shot step instead of a process
    restart: bool = True

    @property
    def log_name(self) -> str:
        return self.name.replace("/", "_") + ".log"


SETTLE_S = 5.0  # how long a device may stay INIT/FAULT right after it first answers


def tango_ready(tango_host: str, devices: list[str]) -> Callable[[], tuple[bool, str]]:
    """Ready when every device answers State(). A device that answers INIT or FAULT gets
    ``SETTLE_S`` more seconds to connect to its instrument before its state is taken as is."""
    first_answer: list[float] = []

    def check() -> tuple[bool, str]:
        import tango

        from .proxies import PROBE_TIMEOUT_MS, device_proxy

        states = []
        for dev in devices:
            try:
                proxy = device_proxy(dev, PROBE_TIMEOUT_MS, tango_host)
                states.append(proxy.state())
            except tango.DevFailed as exc:
                first_answer.clear()
                return False, f"{dev}: {exc.args[0].desc.strip().splitlines()[0]}"
        if not first_answer:
            first_answer.append(time.monotonic())
        detail = ", ".join(dict.fromkeys(str(s) for s in states))
        settling = any(s in (tango.DevState.INIT, tango.DevState.FAULT) for s in states)
        if settling and time.monotonic() - first_answer[0] < SETTLE_S:
            return False, detail + " (settling)"
        return True, detail

    return check


#: what a MacroServer must know of its Pools before a macro can use them (not the controllers)
POOL_ELEMENT_TYPES = {"Motor", "PseudoMotor", "CTExpChannel", "ZeroDExpChannel", "OneDExpChannel", "TwoDExpChannel",
                      "PseudoCounter", "MeasurementGroup", "IORegister", "TriggerGate"}


def element_names(elements: tuple[str, bytes | str] | list, types: set[str] | None = None) -> set[str]:
    """The names in a Sardana ``Elements`` attribute value (``("json", '{"new": [...]}')``),
    of the given types only if ``types``."""
    import json

    data = elements[1]
    info = json.loads(data.decode() if isinstance(data, bytes) else data)
    return {e["name"] for e in info.get("new", []) if types is None or e.get("type") in types}


def macroserver_ready(tango_host: str, devices: list[str], macroserver: str) -> Callable[[], tuple[bool, str]]:
    """Ready when the MacroServer and its Door answer (:func:`tango_ready`) *and* the MacroServer
    knows every motor, channel and measurement group of its Pools. Its Door is ON a few seconds
    before that after a (re)start, and a macro run then fails with "Moveable ... does not exist
    in any Pool []": the launcher says "ready" (and "answers again" after a restart) only when a
    macro can run."""
    answers = tango_ready(tango_host, devices)

    def check() -> tuple[bool, str]:
        ok, detail = answers()
        if not ok:
            return ok, detail
        import tango

        from .proxies import PROBE_TIMEOUT_MS, device_proxy

        try:
            ms = device_proxy(macroserver, PROBE_TIMEOUT_MS, tango_host)
            pools = list(ms.get_property("PoolNames")["PoolNames"])
            known = element_names(ms.read_attribute("Elements").value)
            wanted: set[str] = set()
            for pool in pools:
                wanted |= element_names(device_proxy(pool, PROBE_TIMEOUT_MS, tango_host).read_attribute("Elements").value,
                                        POOL_ELEMENT_TYPES)
        except (tango.DevFailed, ValueError, KeyError, TypeError) as exc:
            text = exc.args[0].desc.strip().partition("\n")[0] if isinstance(exc, tango.DevFailed) else str(exc)
            return False, f"{detail}, its Pool's elements not known yet ({text})"
        missing = sorted(wanted - known)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            return False, f"{detail}, loading the Pool's elements ({shown} not known yet)"
        return True, f"{detail}, {len(wanted)} Pool elements known"

    return check


# Servers started through a wrapper of ours instead of their own script (same Tango server name).
WRAPPED = {
    # Sardana's MacroServer with its abort races closed: see tango_db.sardana_servers
    "MacroServer": [sys.executable, "-m", "tango_db.sardana_servers", "MacroServer"],
}


def server_argv(server: str, instance: str) -> list[str]:
    """The command line that starts Tango server ``server`` as ``instance``."""
    return [*WRAPPED.get(server, [find_executable(server)]), instance]


def tango_server_spec(si: ServerInstance, tango_host: str) -> ProcessSpec:
    macroservers = [d for d, cls in si.devices.items() if cls == "MacroServer"]
    ready = (macroserver_ready(tango_host, list(si.devices), macroservers[0]) if macroservers
             else tango_ready(tango_host, list(si.devices)))
    return ProcessSpec(
        name=si.name,
        level=LEVELS.get(si.server, DEFAULT_LEVEL),
        argv=server_argv(si.server, si.instance),
        ready=ready,
        devices=dict(si.devices),
    )


def lab_specs(
    config: dict, host: str, port: int, embedded: bool, load: Callable[[], str]
) -> list[ProcessSpec]:
    """Everything `tangodaq up` runs, in the order of the table."""
    tango_host = f"{host}:{port}"
    specs: list[ProcessSpec] = []
    if embedded:
        specs.append(
            ProcessSpec(
                name="database",
                level=0,
                argv=embedded_db.database_argv(host, port),
                env=embedded_db.database_env(),
                ready=lambda: (embedded_db.database_answers(host, port, 1.0), "ok"),
                devices={"sys/database/2": "DataBase"},
            )
        )
    specs.append(ProcessSpec(name="configuration", level=1, action=load, restart=False))
    for extra in EXTRA:
        if extra.needed(config):
            specs.append(
                ProcessSpec(
                    name=extra.name,
                    level=extra.level,
                    argv=[find_executable("tangodaq"), *extra.args],
                    ready=extra.ready(config),
                )
            )
    specs.extend(tango_server_spec(si, tango_host) for si in server_instances(config))
    specs.extend(sardana_steps(config, tango_host))
    return specs


def sardana_steps(config: dict, tango_host: str) -> list[ProcessSpec]:
    """When the lab runs a Pool: create its elements (after the Pool) and the MacroServer's
    environment (after the MacroServer) from tango_db/sardana.json; see sardana_setup."""
    from . import sardana_setup

    servers = {si.server for si in server_instances(config)}
    steps = []
    if "Pool" in servers and sardana_setup.SARDANA_JSON.exists():
        sardana = sardana_setup.load_sardana_config(roles=config.get("roles"))
        steps.append(
            ProcessSpec(
                name="sardana elements",
                level=sardana_setup.ELEMENTS_LEVEL,
                action=lambda: sardana_setup.create_elements(config, tango_host, sardana),
                restart=False,
            )
        )
        if "MacroServer" in servers:
            steps.append(
                ProcessSpec(
                    name="sardana environment",
                    level=sardana_setup.ENVIRONMENT_LEVEL,
                    action=lambda: sardana_setup.set_environment(tango_host, sardana),
                    restart=False,
                )
            )
    return steps
