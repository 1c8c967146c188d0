"""One way to reach a device: every client of the tree builds its proxies with
:func:`tango_db.proxies.device_proxy`, so each time-out is chosen on purpose (issue: thirteen
call sites each with their own, from 1 s to 10 s, some with Tango's default by accident)."""

from __future__ import annotations

import ast

import tango

from tango_db.proxies import DEFAULT_TIMEOUT_MS, device_proxy, full_name
from tests.unit.test_imports import project_modules


def test_full_name_puts_a_device_on_the_named_database():
    assert full_name("lab/maitai/1", "db:10000") == "tango://db:10000/lab/maitai/1"
    assert full_name("/lab/maitai/1", "db:10000") == "tango://db:10000/lab/maitai/1"
    assert full_name("lab/maitai/1") == "lab/maitai/1"  # this process's database
    assert full_name("tango://other:10000/lab/maitai/1", "db:10000") == "tango://other:10000/lab/maitai/1"
    assert full_name("hwp", "db:10000") == "tango://db:10000/hwp"  # an alias stays an alias on that database


def test_a_proxy_is_built_on_the_full_name_with_the_time_out_asked_for(monkeypatch):
    built = []

    class Proxy:  # tango.DeviceProxy connects to the database when built: record what it gets
        def __init__(self, name):
            built.append(self)
            self.name, self.timeout_ms = name, None

        def set_timeout_millis(self, ms):
            self.timeout_ms = ms

    monkeypatch.setattr(tango, "DeviceProxy", Proxy)
    slow = device_proxy("lab/maitai/1", 10000, "db:10000")
    plain = device_proxy("lab/maitai/1")
    assert (slow.name, slow.timeout_ms) == ("tango://db:10000/lab/maitai/1", 10000)
    assert (plain.name, plain.timeout_ms) == ("lab/maitai/1", DEFAULT_TIMEOUT_MS)
    assert len(built) == 2


def test_no_module_builds_its_own_device_proxy():
    """Outside tango_db/proxies.py, no module of the product calls ``DeviceProxy(...)``."""
    offenders = []
    for module, path in project_modules().items():
        if module == "tango_db.proxies":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name == "DeviceProxy":
                    offenders.append(f"{path.relative_to(path.parents[len(module.split('.')) - 1])}:{node.lineno}")
    assert not offenders, f"use tango_db.proxies.device_proxy instead: {offenders}"
