"""The launcher calls a MacroServer ready only when a macro can use the Pool's elements: its Door
is ON seconds before the restarted MacroServer has loaded them ("Moveable with name hwp does not
exist in any Pool []"). Tango is replaced by proxies that answer as Sardana's devices do."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import tango

from tango_db import processes, proxies
from tango_db.config import ServerInstance

POOL = "pool/lab/1"
MS = "macroserver/lab/1"
DOOR = "door/lab/1"


def elements(*items: tuple[str, str]) -> tuple[str, str]:
    """A Sardana ``Elements`` value: ("json", '{"new": [{"name", "type", ...}]}')."""
    return "json", json.dumps({"new": [{"name": n, "type": t, "full_name": f"x/{n}"} for n, t in items]})


class Lab:
    """The Pool, the MacroServer and its Door as the readiness check sees them."""

    def __init__(self) -> None:
        self.pool = elements(("motctrl", "Controller"), ("hwp", "Motor"), ("power", "CTExpChannel"),
                             ("mg_power", "MeasurementGroup"), ("lab_instrument", "Instrument"))
        self.macroserver = elements(("ascan", "MacroCode"))  # macros loaded, no Pool element yet
        self.door_state = tango.DevState.ON

    def proxy(self, name: str, timeout_ms: int = 0, tango_host: str = "") -> SimpleNamespace:
        value = {POOL: self.pool, MS: self.macroserver}.get(name)
        return SimpleNamespace(
            state=lambda: self.door_state if name == DOOR else tango.DevState.ON,
            get_property=lambda key: {key: [POOL]},
            read_attribute=lambda attr: SimpleNamespace(value=value),
        )


@pytest.fixture
def lab(monkeypatch) -> Lab:
    fake = Lab()
    monkeypatch.setattr(proxies, "device_proxy", fake.proxy)
    return fake


def test_the_macroserver_is_ready_only_once_it_knows_every_pool_element(lab) -> None:
    spec = processes.tango_server_spec(ServerInstance("MacroServer", "lab", {MS: "MacroServer", DOOR: "Door"}),
                                       "127.0.0.1:1")
    ok, detail = spec.ready()
    assert not ok and "hwp" in detail and "mg_power" in detail and "power" in detail, detail
    lab.macroserver = elements(("ascan", "MacroCode"), ("hwp", "Motor"))
    ok, detail = spec.ready()
    assert not ok and "hwp" not in detail and "mg_power" in detail, detail
    lab.macroserver = elements(("ascan", "MacroCode"), ("hwp", "Motor"), ("power", "CTExpChannel"),
                               ("mg_power", "MeasurementGroup"))
    ok, detail = spec.ready()
    assert ok and "3 Pool elements known" in detail, detail  # controllers and instruments are not waited for


def test_a_pool_that_does_not_answer_keeps_the_macroserver_not_ready(lab, monkeypatch) -> None:
    real = lab.proxy

    def pool_down(name: str, *args) -> SimpleNamespace:
        if name == POOL:
            err = tango.DevError()
            err.reason, err.desc = "API_CantConnectToDevice", "Failed to connect to device pool/lab/1"
            raise tango.DevFailed(err)
        return real(name, *args)

    monkeypatch.setattr(proxies, "device_proxy", pool_down)
    ready = processes.macroserver_ready("127.0.0.1:1", [MS, DOOR], MS)
    ok, detail = ready()
    assert not ok and "Pool's elements not known yet (Failed to connect to device pool/lab/1)" in detail, detail


def test_other_servers_keep_the_plain_check(lab) -> None:
    spec = processes.tango_server_spec(ServerInstance("Pool", "lab", {POOL: "Pool"}), "127.0.0.1:1")
    assert spec.ready() == (True, "ON")
