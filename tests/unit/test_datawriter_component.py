"""The DataWriter's component without Tango: its state derived from its recordings, its counters
as Parameters, and the recorder thread never waiting for anyone (no Tango device here at all)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from datawriter.component import DataWriterComponent, RecordingRefused, WriterSettings
from datawriter.ring import ScalarStreamWriter
from deviceservers.common.component import DeviceState
from deviceservers.common.parameter import Reading
from tests.waiting import wait_until


def _write(stream: ScalarStreamWriter, records: int) -> None:
    for _ in range(records):
        stream.write(time.time() + np.arange(10) * 1e-4, np.ones(10))


class Heard:
    """What a device would hear: (state, status) changes and Parameter changes."""

    def __init__(self, component: DataWriterComponent) -> None:
        self.states: list[tuple[DeviceState, str]] = []
        self.readings: list[Reading] = []
        component.add_state_listener(lambda state, status: self.states.append((state, status)))
        for p in component.parameters:
            p.subscribe(self.readings.append)

    def values(self, name: str) -> list:
        return [r.value for r in self.readings if r.name == name]


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    made: list[DataWriterComponent] = []

    def build(streams: tuple[str, ...] = (), **kwargs) -> DataWriterComponent:
        settings = kwargs.pop("settings", None) or WriterSettings(str(tmp_path / "out"), streams)
        comp = DataWriterComponent("test/unit/dw", settings, **kwargs)
        made.append(comp)
        return comp

    yield build
    for comp in made:
        comp.finish_wait_s = 10.0
        comp.stop()


def test_a_recording_runs_and_ends_with_its_state_and_counters_derived(make, power) -> None:
    comp = make((power.name,))
    heard = Heard(comp)
    comp.start()
    assert comp.state is DeviceState.ON and comp.status.startswith("Idle: call StartRecording to record " + power.name)
    path = comp.start_recording("run", {}, 0.0)
    assert comp.state is DeviceState.RUNNING and comp.recording and comp.file_path == path
    _write(power, 7)
    wait_until(lambda: comp["RecordsWritten"].value == 7, what="7 records counted by the monitor")
    with pytest.raises(RecordingRefused) as busy:
        comp.start_recording("again", {}, 0.0)
    assert busy.value.reason == "DataWriter_Busy" and path in str(busy.value)
    assert comp.stop_recording(2.0) == path
    # everything final when the stop returns: the counters, Recording, the state
    assert not comp.recording and comp["Recording"].value is False and comp["RecordsWritten"].value == 7
    assert comp.state is DeviceState.ON and comp.status.startswith(f"Idle. Last recording: {path} (7 records, 0 lost")
    states = [s for i, (s, _) in enumerate(heard.states) if i == 0 or heard.states[i - 1][0] is not s]
    assert states == [DeviceState.ON, DeviceState.RUNNING, DeviceState.ON], heard.states
    assert heard.values("Recording") == [True, False] and heard.values("FilePath") == [path]
    assert comp.communication_ok and comp.error_count == 0
    assert comp.stop_recording(2.0) == path, "stopping again answers the same file"


def test_a_folder_it_cannot_write_is_fault_until_a_recording_starts(make, power, tmp_path) -> None:
    comp = make((power.name,), settings=WriterSettings("/proc/forbidden", (power.name,)))
    comp.start()
    with pytest.raises(RecordingRefused) as refused:
        comp.start_recording("x", {}, 0.0)
    assert refused.value.reason == "DataWriter_CannotWrite"
    assert comp.state is DeviceState.FAULT and not comp.communication_ok
    assert "OutputDir '/proc/forbidden'" in comp.status and "change OutputDir" in comp.status
    comp.configure(WriterSettings(str(tmp_path / "ok"), (power.name,)))  # the properties fixed, Init
    comp.start_recording("x", {}, 0.0)
    assert comp.state is DeviceState.RUNNING and comp.communication_ok
    comp.stop_recording(2.0)
    assert comp.state is DeviceState.ON


def test_a_compression_it_cannot_honour_is_fault_and_creates_nothing(make, tmp_path) -> None:
    comp = make(settings=WriterSettings(str(tmp_path / "out"), compression="lz77"))
    comp.start()
    assert comp.state is DeviceState.FAULT and "'lz77'" in comp.status and "run Init" in comp.status
    with pytest.raises(RecordingRefused) as refused:
        comp.start_recording("x", {}, 0.0)
    assert refused.value.reason == "DataWriter_BadConfiguration"
    assert not (tmp_path / "out").exists()


def test_a_stop_longer_than_its_wait_finishes_in_the_background(make, power) -> None:
    """The end manifest takes long (a slow device): the stop answers after its wait with the
    recording still finishing (RUNNING, Recording true), and the end arrives by itself."""
    release = threading.Event()
    calls: list[str] = []

    def slow_manifest(devices: list[str]) -> dict:
        calls.append(",".join(devices))
        if len(calls) == 2:  # the end manifest
            assert release.wait(20)
        return {}

    comp = make((power.name,), manifest_devices=lambda: ["lab/slow/1"], read_manifest=slow_manifest)
    heard = Heard(comp)
    comp.start()
    path = comp.start_recording("slow end", {}, 0.0)
    _write(power, 3)
    wait_until(lambda: comp["RecordsWritten"].value == 3, what="3 records")
    t0 = time.monotonic()
    assert comp.stop_recording(0.2) == path
    assert time.monotonic() - t0 < 1.0
    assert comp.state is DeviceState.RUNNING and comp.recording and comp["Recording"].value is True
    assert comp.status.startswith(f"Finishing {path}: writing the ") and "Recording turns False" in comp.status
    release.set()
    wait_until(lambda: comp.state is DeviceState.ON, what="the end to arrive by itself")
    assert heard.values("Recording")[-1] is False and calls == ["lab/slow/1"] * 2


def test_a_listener_removed_hears_nothing_more(make, power) -> None:
    comp = make((power.name,))
    heard: list[DeviceState] = []

    def listener(state: DeviceState, _status: str) -> None:
        heard.append(state)

    comp.add_state_listener(listener)
    comp.start()
    comp.remove_state_listener(listener)
    comp.start_recording("x", {}, 0.0)
    comp.stop_recording(2.0)
    assert heard == [DeviceState.ON]
