"""Every component of the tree meets the contract its Tango device relies on
(:class:`deviceservers.common.capabilities.ParameterComponent`), with the types it promises, and
every device server is typed against it. A component class added later without a case here
fails :func:`test_every_component_class_is_checked`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable

import pytest

import datawriter
import deviceservers
from datawriter.component import DataWriterComponent, WriterSettings
from deviceservers.common.capabilities import ParameterComponent
from deviceservers.common.component import Component, DeviceState, StateReporter
from deviceservers.common.device import ParameterDevice
from deviceservers.common.parameter import ParameterSet
from deviceservers.common.serial_link import LinkSettings
from deviceservers.Ell14.component import Ell14Component
from deviceservers.Esp300.component import Esp300AxisComponent
from deviceservers.MaiTai.component import MaiTaiComponent
from deviceservers.Newport1830C.component import Newport1830CComponent
from deviceservers.Pvcam.component import PvcamComponent
from deviceservers.Pvcam.sim import SimulatedPrimeBsi


def _settings(instrument: str) -> LinkSettings:
    return LinkSettings(url=f"sim://{instrument}?reply_delay_s=0&seed=77")


#: component class -> how to build one (not started: nothing is connected)
BUILDERS: dict[type, Callable[[], object]] = {
    Esp300AxisComponent: lambda: Esp300AxisComponent(_settings("esp300"), axis=1),
    Ell14Component: lambda: Ell14Component(_settings("ell14"), "2"),
    MaiTaiComponent: lambda: MaiTaiComponent(_settings("maitai")),
    Newport1830CComponent: lambda: Newport1830CComponent(_settings("newport1830c")),
    PvcamComponent: lambda: PvcamComponent(lambda: SimulatedPrimeBsi("pvcamUSB_0"), None, poll_period_s=0.1),
    DataWriterComponent: lambda: DataWriterComponent("test/capabilities/dw", WriterSettings("/nonexistent/out")),
}
#: the packages whose components and devices are checked
PACKAGES = (deviceservers, datawriter)


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] in {p.__name__ for p in PACKAGES}


def _import_every_module() -> None:
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("pyvcam_backend"):
                continue  # needs the optional PyVCAM; its component is PvcamComponent, checked here
            importlib.import_module(info.name)


def test_every_component_class_is_checked():
    _import_every_module()
    concrete = {c for c in _all_subclasses(StateReporter) if _ours(c)}
    abstract = {c for c in concrete if any(c in b.__mro__[1:] for b in concrete)}  # bases of others
    assert concrete - abstract <= set(BUILDERS), f"components without a case here: {concrete - abstract - set(BUILDERS)}"


@pytest.mark.parametrize("cls", list(BUILDERS), ids=lambda c: c.__name__)
def test_a_component_meets_the_contract_with_the_types_it_promises(cls):
    comp = BUILDERS[cls]()
    try:
        assert isinstance(comp, ParameterComponent)
        assert isinstance(comp.parameters, ParameterSet) and len(list(comp.parameters)) > 0
        assert isinstance(comp.state, DeviceState) and isinstance(comp.status, str) and comp.status
        assert isinstance(comp.communication_ok, bool)
        assert isinstance(comp.error_count, int) and isinstance(comp.last_error, str)
        heard = []
        comp.add_state_listener(lambda state, status: heard.append(state))
        comp.update_state()  # derives again; a listener hears only real changes
        assert all(isinstance(s, DeviceState) for s in heard)
    finally:
        comp.stop()


def test_every_device_server_is_typed_against_the_contract():
    """Each device's ``component`` annotation names the contract or a class that meets it."""
    _import_every_module()
    devices = [c for c in _all_subclasses(ParameterDevice) if _ours(c)]
    assert devices, "no ParameterDevice found"
    assert any(d.__module__ == "datawriter.device" for d in devices), "the DataWriter is a ParameterDevice"
    for device in [ParameterDevice, *devices]:
        owner = next(k for k in device.__mro__ if "component" in k.__dict__.get("__annotations__", {}))
        annotation = owner.__annotations__["component"]
        resolved = eval(annotation, vars(sys.modules[owner.__module__])) if isinstance(annotation, str) else annotation
        assert resolved is ParameterComponent or resolved is Component or resolved in BUILDERS, (device, resolved)
