"""The client's side of the shutter lease (deviceservers.MaiTai.lease) as the lab macros use it.

No Tango server here: the laser is a recorder of the commands a real DeviceProxy would carry
(``command_inout``), which fails the way the test needs (a DevFailed from the server, or any other
exception from the client library). The lease against the real device server is in
tests/device/test_maitai_device.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import tango
from sardana.macroserver.msparameter import Type

from tests.waiting import wait_until

# A MacroServer registers its parameter types (``Type.Float``...) before it loads macros: the
# names lab_macros declares its parameters with are registered here the same way.
for _name in ("Float", "Integer", "String", "Boolean", "Moveable", "Motor"):
    if not hasattr(Type, _name):
        Type.addType(_name)

import tangodaq_macros.lab_macros as lab_macros  # noqa: E402

LASER = "lab/maitai/1"


def dev_failed(desc: str) -> tango.DevFailed:
    try:
        tango.Except.throw_exception("API_CommandFailed", desc, "test")
    except tango.DevFailed as exc:
        return exc
    raise AssertionError("throw_exception did not raise")


class Laser:
    """What the macros send to the laser, and how it answers (``fail``: command -> exception)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: dict[str, BaseException] = {}
        self.shutter = False

    def command_inout(self, name: str, *args: Any) -> Any:
        self.sent.append((name, args))
        if name in self.fail:
            raise self.fail[name]
        if name == "OpenShutterWithLease":
            self.shutter = True
        elif name == "CloseShutter":
            self.shutter = False
        return args[0] if args else None

    def read_attribute(self, name: str) -> SimpleNamespace:
        assert name == "Shutter"
        return SimpleNamespace(value=self.shutter)

    def commands(self) -> list[str]:
        return [name for name, _ in self.sent]


@pytest.fixture
def laser(monkeypatch) -> Laser:
    dev = Laser()
    monkeypatch.setattr(lab_macros, "proxy", lambda name, timeout_ms=10000: dev)
    monkeypatch.setattr(lab_macros, "device", lambda role: {"laser": LASER}[role])
    return dev


def running_macro(name: str = "polarization_scan") -> SimpleNamespace:
    """A macro on its Door's stack, Door not paused (what ShutterHold asks Sardana)."""
    macro = SimpleNamespace(_name=name, parent_macro=None, door=SimpleNamespace(get_state=lambda: None))
    macro.executor = SimpleNamespace(getRunningMacro=lambda: macro)
    return macro


class FakeLabMacro(lab_macros.LabMacro):
    """The LabMacro mixin with the Macro API it uses recorded instead of sent to a MacroServer."""

    _name = "wavelength_scan"

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.stopped: list[str] = []
        self.executor = SimpleNamespace(getRunningMacro=lambda: self)
        self.parent_macro = None
        self.door = SimpleNamespace(get_state=lambda: None)

    def warning(self, msg: str, *args: Any) -> None:
        self.log.append(("warning", msg % args))

    def error(self, msg: str, *args: Any) -> None:
        self.log.append(("error", msg % args))

    def output(self, msg: str, *args: Any) -> None:
        self.log.append(("output", msg % args))

    def getMoveable(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(stop=lambda: self.stopped.append(name))

    def check_motor_range(self, name: str, *targets: float) -> None:
        pass

    env: dict[str, Any] = {}

    def getName(self) -> str:  # noqa: N802 - Sardana's Macro API
        return self._name

    def getEnv(self, name: str) -> Any:  # noqa: N802
        return self.env[name]  # KeyError, as Sardana's UnknownEnv, when not set

    def setEnv(self, name: str, value: Any) -> None:  # noqa: N802
        self.env = {**self.env, name: value}

    def unsetEnv(self, name: str) -> None:  # noqa: N802
        self.env = {k: v for k, v in self.env.items() if k != name}


def test_a_renewing_thread_that_fails_outside_tango_is_a_lost_lease(laser, monkeypatch) -> None:
    """Any exception in the thread (here: no proxy can be made) is kept, and ensure_open raises."""
    made = []

    def proxy(name: str, timeout_ms: int = 10000) -> Laser:
        made.append(name)
        if len(made) > 1:  # the thread's own proxy
            raise OSError("cannot reach the database")
        return laser

    monkeypatch.setattr(lab_macros, "proxy", proxy)
    hold = lab_macros.ShutterHold(running_macro(), LASER)
    hold.open()
    wait_until(lambda: hold.lost, 3, what="the thread's failure to be kept")
    assert "cannot reach the database" in hold.lost
    with pytest.raises(RuntimeError, match="measuring in the dark"):
        hold.ensure_open()


def test_a_renewal_that_raises_anything_is_a_lost_lease(laser) -> None:
    laser.fail["RenewShutterLease"] = TypeError("a bug in the client library")
    hold = lab_macros.ShutterHold(running_macro(), LASER)
    hold.open()
    wait_until(lambda: hold.lost, 5, what="the failed renewal to be kept")
    with pytest.raises(RuntimeError, match="a bug in the client library"):
        hold.ensure_open()


def test_ensure_open_raises_when_nobody_renews_any_more(laser) -> None:
    """The thread ended (it could not tell that the macro still runs): the lease will run out."""
    macro = running_macro()
    gone = {"yes": False}
    macro.executor = SimpleNamespace(getRunningMacro=lambda: None if gone["yes"] else macro)
    hold = lab_macros.ShutterHold(macro, LASER)
    hold.open()
    wait_until(lambda: laser.commands().count("RenewShutterLease") >= 1, 5, what="a renewal")
    assert hold.ensure_open() is False and not hold.lost  # renewing: nothing to reopen, nothing lost
    assert all(args == (lab_macros.MACRO_LEASE_S,) for _, args in laser.sent)
    gone["yes"] = True
    wait_until(lambda: not hold._thread.is_alive(), 5, what="the renewing thread to end")
    with pytest.raises(RuntimeError, match="nobody renews"):
        hold.ensure_open()
    hold.release()


def test_make_safe_raises_a_failed_close_after_the_other_steps_but_not_from_the_hooks(laser) -> None:
    macro = FakeLabMacro()
    macro.uses("wavelength_tracked")
    macro.open_shutter()
    laser.fail["CloseShutter"] = dev_failed("SHUTter 0 not confirmed")
    with pytest.raises(RuntimeError, match="could not close the laser shutter.*SHUTter 0 not confirmed"):
        macro.make_safe()
    assert macro.stopped == ["wavelength_tracked"]  # the motors were stopped first
    assert not macro._hold  # and the lease is no longer renewed (the laser server closes it)
    assert any(kind == "error" and "COULD NOT CLOSE" in text for kind, text in macro.log)
    macro.on_stop()  # the hooks log it: Sardana is ending the macro anyway
    macro.on_abort()
    del laser.fail["CloseShutter"]
    macro.make_safe()
    assert not laser.shutter and not macro._opened_shutter


def test_a_failed_opening_is_made_safe(laser) -> None:
    """OpenShutterWithLease timed out (the shutter may open late): the macro still closes it."""
    laser.fail["OpenShutterWithLease"] = dev_failed("the shutter did not open within 2 s")
    macro = FakeLabMacro()
    with pytest.raises(tango.DevFailed):
        lab_macros.wavelength_scan.run(macro, 700.0, 800.0, 2, 0.1, False)
    assert laser.commands() == ["OpenShutterWithLease", "CloseShutter"]
    assert macro.stopped == ["wavelength_tracked"]
    # the scan never started: the run is resumable, from its first point
    assert macro.env["LabScanProgress"]["scan"] == ["wavelength_tracked", 700.0, 800.0, 2, 0.1]
