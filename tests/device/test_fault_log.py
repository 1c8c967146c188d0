"""Fault history: faults, recoveries and refusals of a real server, with their times, in the
server's fault log file (TANGODAQ_LOG_DIR) as `tangodaq up` sets it."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import tango

from datawriter.device import DataWriter
from deviceservers.Newport1830C.device import Newport1830C
from deviceservers.Newport1830C.simulator import Newport1830CSimulator
from tests.harness import SIMULATOR_URL, in_state, served
from tests.waiting import wait_state, wait_until

LINE = re.compile(r"^(\S+) (\S+) ([A-Z_]+) (.*)$")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("logs")
    old = os.environ.get("TANGODAQ_LOG_DIR")
    os.environ["TANGODAQ_LOG_DIR"] = str(folder)  # inherited by the device processes
    yield folder
    if old is None:
        os.environ.pop("TANGODAQ_LOG_DIR", None)
    else:
        os.environ["TANGODAQ_LOG_DIR"] = old


def events(folder: Path, server: str) -> list[tuple[dt.datetime, str, str, str]]:
    """The parsed lines of a server's fault log: (time, device, event, text)."""
    files = list(folder.glob(f"{server}*.faults.log"))
    if not files:
        return []
    assert len(files) == 1, files
    out = []
    for line in files[0].read_text().splitlines():
        m = LINE.match(line)
        assert m, f"malformed fault log line {line!r}"
        out.append((dt.datetime.fromisoformat(m[1]), m[2], m[3], m[4]))
    return out


def test_link_loss_recovery_and_refusal_are_logged_with_their_time(log_dir) -> None:
    sim = Newport1830CSimulator(reply_delay_s=0.0, reading_delay_s=0.005, noise=0.0, seed=3)
    props = {"SerialURL": SIMULATOR_URL, "PollPeriodMs": 100, "TimeoutS": 0.5}
    with served({Newport1830C: {"test/nodb/newport1830c": props}}, simulator=sim,
                ready=in_state(tango.DevState.ON)) as server:
        meter = server.only
        name = meter.dev_name()
        before = dt.datetime.now(dt.UTC)
        sim.unplug()  # the cable is pulled
        wait_state(meter, tango.DevState.FAULT, 10)
        with pytest.raises(tango.DevFailed):
            meter.Wavelength = 700  # refused: no link (out-of-range values Tango refuses itself)
        sim.plug()
        wait_state(meter, tango.DevState.ON, 10)
        after = dt.datetime.now(dt.UTC)

        def logged() -> list:
            evs = [e for e in events(log_dir, "Newport1830C") if e[1] == name and e[0] >= before]
            kinds = [e[2] for e in evs]
            return evs if {"FAULT", "RECOVERED", "REFUSED"} <= set(kinds) else []

        evs = wait_until(logged, 10, what="FAULT, RECOVERED and REFUSED in the fault log")
    fault = next(e for e in evs if e[2] == "FAULT")
    recovered = next(e for e in evs if e[2] == "RECOVERED")
    refused = next(e for e in evs if e[2] == "REFUSED")
    assert before <= fault[0] <= refused[0] <= recovered[0] <= after
    assert "No communication" in fault[3]
    assert recovered[3].startswith("ON (after FAULT for ")
    assert "Wavelength=700" in refused[3] and "LinkDown" in refused[3]


def test_datawriter_fault_is_logged(log_dir) -> None:
    with served({DataWriter: {"test/nodb/datawriter": {"OutputDir": "/proc/forbidden"}}}, ready=None) as server:
        dw = server.only
        with pytest.raises(tango.DevFailed):
            dw.StartRecording('{"name": "x"}')
        assert dw.state() == tango.DevState.FAULT
        with pytest.raises(tango.DevFailed):
            dw.StartRecording('{"nmae": "x"}')
        name = dw.dev_name()
        evs = wait_until(lambda: [e for e in events(log_dir, "DataWriter") if e[1] == name], 10, what="DataWriter events")
    assert [e[2] for e in evs] == ["FAULT", "REFUSED"]
    assert "OutputDir" in evs[0][3] and "nmae" in evs[1][3]
