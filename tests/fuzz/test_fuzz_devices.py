"""Fuzz tier: every writable attribute and every command of every device class, found at run
time, gets non-finite, huge, negative, out-of-range, wrong-type, empty, very long and malformed
values.

Each value must be refused with a clear DevFailed (a reason a client can switch on, no raw
``PyDs_PythonError`` with an OverflowError or RecursionError) or accepted inside the documented
range; a refusal changes neither the State nor the set point (the attribute's write value); the
server survives (pinged after each class). Attributes and commands are enumerated from the
running devices (``attribute_list_query`` / ``command_list_query``), so new ones are covered
without editing this file. One server process holds all six classes against their simulators.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tango
from tango import AttrWriteType, CmdArgType, DevState

from datawriter.device import DataWriter
from deviceservers.Ell14.device import Ell14
from deviceservers.Esp300.device import Esp300
from deviceservers.MaiTai.device import MaiTai
from deviceservers.Newport1830C.device import Newport1830C
from deviceservers.Pvcam.device import Pvcam
from tests.harness import in_state, served
from tests.waiting import wait_until

PID = os.getpid()
DEVICES: dict[str, tuple[type, dict[str, Any]]] = {
    f"fuzz/esp300/{PID}": (Esp300, {"SerialURL": "sim://esp300?reply_delay_s=0&char_time_s=0", "Axis": 1,
                                    "TimeoutS": 0.3, "PollPeriodMs": 200}),
    f"fuzz/ell14/{PID}": (Ell14, {"SerialURL": "sim://ell14?addresses=2&reply_delay_s=0", "Address": "2",
                                  "TimeoutS": 0.3, "PollPeriodMs": 200}),
    f"fuzz/maitai/{PID}": (MaiTai, {"SerialURL": "sim://maitai?reply_delay_s=0", "TimeoutS": 0.3,
                                    "PollPeriodMs": 200}),
    f"fuzz/newport1830c/{PID}": (Newport1830C, {"SerialURL": "sim://newport1830c?reply_delay_s=0&reading_delay_s=0",
                                                "TimeoutS": 0.3, "PollPeriodMs": 200}),
    f"fuzz/pvcam/{PID}": (Pvcam, {"Backend": "sim", "RingSizeMB": 16.0, "PollPeriodMs": 200}),
    f"fuzz/datawriter/{PID}": (DataWriter, {}),
}

#: commands not called, and why
SKIPPED_COMMANDS = {
    "Init": "re-creates the device: covered by the device tests, and it is no argument to fuzz",
    "State": "standard read, no argument", "Status": "standard read, no argument",
}
#: attributes not written, and why
SKIPPED_ATTRIBUTES: dict[str, str] = {}
#: void commands that undo whatever an accepted call may have started (a move, a recording...)
SETTLE_COMMANDS = ("Stop", "StopAcquisition", "StopRecording", "CloseShutter")

LONG = "x" * 100_000
_INT_TYPES = {CmdArgType.DevShort, CmdArgType.DevLong, CmdArgType.DevLong64, CmdArgType.DevUShort,
              CmdArgType.DevULong, CmdArgType.DevULong64, CmdArgType.DevUChar}
_FLOAT_TYPES = {CmdArgType.DevDouble, CmdArgType.DevFloat}
# Besides the plainly bad values, some that pass the type and range checks but that the
# instrument may refuse (a binning or gain the camera does not offer, a velocity above the
# stage's maximum): the refusal then comes from the hardware write, after validation.
BAD_FLOATS: list[Any] = [math.nan, math.inf, -math.inf, 1e308, -1e308, -1.0, 0.0, 1e9, 10**400, "abc", "", LONG,
                         [1.0, 2.0]]
BAD_INTS: list[Any] = [-1, 0, 3, 7, 1000, 2**31, -(2**31) - 1, 2**63, 10**30, math.nan, 1.5, "abc", "", []]
BAD_STRINGS: list[Any] = ["", LONG, "bad\x00name", "../../../etc/passwd", "{\"unclosed\": ", "\udcff", 42]
# (not 2**31: the client wraps it into a 16-bit enum index before sending, 2**31 -> 0 = valid)
BAD_ENUMS: list[Any] = [-1, 99, 32767, -32768, "NO_SUCH_LABEL", ""]
BAD_ARRAYS: list[Any] = [[], [1], [1, 2], [-1, -1, -1, -1], [2**31 - 1] * 4, [0] * 1000, "abc"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, tango.DeviceProxy]]:
    out = tmp_path_factory.mktemp("fuzz-data")
    DEVICES[f"fuzz/datawriter/{PID}"][1]["OutputDir"] = str(out)
    by_class: dict[type, dict[str, dict[str, Any]]] = {}
    for name, (cls, props) in DEVICES.items():
        by_class.setdefault(cls, {})[name] = props
    connected = in_state(*(s for s in DevState.values.values() if s not in (DevState.INIT, DevState.FAULT)))
    with served(by_class, ready=connected, timeout_s=30, proxy_timeout_ms=5000) as server:
        yield server.proxies


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


def bad_values(cfg: tango.AttributeInfoEx) -> list[Any]:
    """Bad values for one attribute, from its type and documented range."""
    if cfg.data_format != tango.AttrDataFormat.SCALAR:
        return BAD_ARRAYS
    t = cfg.data_type
    if t == CmdArgType.DevEnum:
        return BAD_ENUMS + [len(cfg.enum_labels)]
    values: list[Any]
    if t in _FLOAT_TYPES:
        values = list(BAD_FLOATS)
    elif t in _INT_TYPES:
        values = list(BAD_INTS)
    elif t == CmdArgType.DevString:
        values = list(BAD_STRINGS)
    else:
        return []
    for bound, step in ((cfg.min_value, -1), (cfg.max_value, +1)):
        try:
            limit = float(bound)
        except ValueError:
            continue  # "Not specified"
        values.append(limit + step * max(1.0, abs(limit)) if t in _FLOAT_TYPES else int(limit) + step)
    return values


def bad_arguments(in_type: CmdArgType) -> list[Any]:
    if in_type in _FLOAT_TYPES:
        return [v for v in BAD_FLOATS if not isinstance(v, list)]
    if in_type in _INT_TYPES:
        return [v for v in BAD_INTS if not isinstance(v, list)]
    if in_type == CmdArgType.DevString:
        return BAD_STRINGS
    if in_type == CmdArgType.DevBoolean:
        return ["maybe", [1, 2]]
    if in_type in (CmdArgType.DevVarStringArray,):
        return [[], [LONG], ["bad\x00"], ["a"] * 1000, "notalist"]
    if in_type in (CmdArgType.DevVarDoubleArray, CmdArgType.DevVarLongArray, CmdArgType.DevVarShortArray):
        return [[], [math.nan], [1e308] * 3, "abc"]
    return [None]


def assert_clear_refusal(err: tango.DevFailed, what: str) -> None:
    top = err.args[0]
    text = " ".join(f"{e.reason} {e.desc}" for e in err.args)
    assert top.reason != "PyDs_PythonError", f"{what}: raw Python error {top.desc[:300]}"
    for raw in ("OverflowError", "RecursionError", "Traceback", "MemoryError"):
        assert raw not in text, f"{what}: {raw} leaked: {text[:300]}"
    assert top.desc.strip(), f"{what}: refusal without a message"


def snapshot(p: tango.DeviceProxy, attr: str) -> Any:
    w = p.read_attribute(attr).w_value
    return None if w is None else np.array(w).tolist()


def settle(p: tango.DeviceProxy, commands: set[str]) -> None:
    for name in SETTLE_COMMANDS:
        if name in commands:
            try:
                p.command_inout(name)
            except tango.DevFailed:
                pass
    wait_until(lambda: p.State() not in (DevState.MOVING, DevState.RUNNING, DevState.INIT), 15,
               what=f"{p.dev_name()} at rest ({_safe(p.Status)})")


def same_state_soon(p: tango.DeviceProxy, before: DevState) -> bool:
    """The State is unchanged (re-read briefly: background changes such as a poll are not a write's)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if p.State() == before:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("device", list(DEVICES))
def test_every_writable_attribute_refuses_bad_values(lab, device):
    p = lab[device]
    commands = {c.cmd_name for c in p.command_list_query()}
    settle(p, commands)
    problems: list[str] = []
    tried = 0
    for cfg in p.attribute_list_query_ex():
        if cfg.writable == AttrWriteType.READ or cfg.name in SKIPPED_ATTRIBUTES:
            continue
        if cfg.data_type == CmdArgType.DevBoolean:
            # The client turns any value into True/False before it is sent: nothing malformed
            # reaches the server, and a True could switch something on (a shutter).
            continue
        for value in bad_values(cfg):
            what = f"{device}.{cfg.name} = {str(value)[:40]!r}"
            state, setpoint = p.State(), snapshot(p, cfg.name)
            try:
                p.write_attribute(cfg.name, value)
            except tango.DevFailed as err:
                tried += 1
                assert_clear_refusal(err, what)
                if snapshot(p, cfg.name) != setpoint:
                    problems.append(f"{what}: set point {setpoint} became {snapshot(p, cfg.name)} after a refusal")
                if not same_state_soon(p, state):
                    problems.append(f"{what}: State {state} became {p.State()} after a refusal")
                continue
            except (TypeError, ValueError, OverflowError):
                continue  # refused by the client library before anything was sent
            tried += 1
            # accepted: it must lie inside the documented range; then put the old set point back
            got = p.read_attribute(cfg.name).w_value
            for bound, inside in ((cfg.min_value, lambda v, b: v >= b), (cfg.max_value, lambda v, b: v <= b)):
                try:
                    b = float(bound)
                except ValueError:
                    continue
                if np.ndim(got) == 0 and got is not None and not inside(float(got), b):
                    problems.append(f"{what}: accepted as {got}, outside the documented range")
            settle(p, commands)
            if setpoint is not None:
                try:
                    p.write_attribute(cfg.name, setpoint)
                except tango.DevFailed:
                    pass
                wait_until(lambda: p.State() not in (DevState.MOVING, DevState.RUNNING, DevState.INIT), 15,
                           what=f"{p.dev_name()} at rest after {cfg.name} was put back")
    assert p.ping() > 0
    assert not problems, "\n".join(problems)
    assert tried > 0 or device.startswith("fuzz/datawriter"), f"{device}: nothing was tried"


@pytest.mark.parametrize("device", list(DEVICES))
def test_every_command_refuses_bad_arguments(lab, device):
    p = lab[device]
    infos = p.command_list_query()
    commands = {c.cmd_name for c in infos}
    settle(p, commands)
    problems: list[str] = []
    for info in infos:
        if info.cmd_name in SKIPPED_COMMANDS or info.in_type == CmdArgType.DevVoid:
            continue  # void commands take no argument to get wrong
        for value in bad_arguments(info.in_type):
            what = f"{device}.{info.cmd_name}({str(value)[:40]!r})"
            state = p.State()
            try:
                p.command_inout(info.cmd_name, value)
            except tango.DevFailed as err:
                assert_clear_refusal(err, what)
                if not same_state_soon(p, state):
                    problems.append(f"{what}: State {state} became {p.State()} after a refusal")
                continue
            except (TypeError, ValueError, OverflowError):
                continue  # the client library refused to encode it
            settle(p, commands)  # accepted (a relative move of -1 mm is a fine request)
    assert p.ping() > 0
    assert not problems, "\n".join(problems)
