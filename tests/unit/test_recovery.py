"""Recovery of a recording whose writer was killed while stopping: the file is repaired for
plain h5py and the records the producer committed after the last flush are counted as lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from datawriter import recovery
from datawriter.ring import create_scalar_stream
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

# A writer in its own process: records the stream with a journal, flushes, marks itself stopping
# (as StopRecording does), says so and waits to be killed.
_WRITER = """
import sys, time
from datawriter import recovery
from datawriter.hdf5_sink import Hdf5Sink, StreamSpec
from datawriter.recorder import Recorder
from datawriter.ring import RingReader
path, stream, folder = sys.argv[1:4]
r = RingReader(stream, start="oldest")
sink = Hdf5Sink(path, [StreamSpec(stream, r.schema, r.description)], title="t")
journal = recovery.Journal(recovery.journal_path(folder, "test/dw/1"), {"path": path, "name": "t", "metadata": {}})
rec = Recorder(sink, {stream: r}, on_flush=journal.update, flush_interval=0.05)
rec.start()
while rec.stats().records_written < 3 or journal.data["flushed"] is None or journal.data["groups"] == {} \\
        or next(iter(journal.data["groups"].values()))["rows"] < 30:
    time.sleep(0.01)
journal.set_state("stopping")
print("flushed", flush=True)
time.sleep(60)
"""


def test_killed_while_stopping_is_repaired_and_losses_counted(tmp_path, ring_device) -> None:
    pm = create_scalar_stream(ring_device, "power", units="W", rows_per_record=10)
    for i in range(3):
        pm.write(time.time() + np.arange(10) * 1e-3, np.full(10, float(i)))
    path = str(tmp_path / "rec.h5")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, pm.name, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "flushed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    for i in range(3, 7):  # committed after the writer died: in no file
        pm.write(time.time() + np.arange(10) * 1e-3, np.full(10, float(i)))
    journal = wait_until(lambda: recovery.stale_journal(str(tmp_path), "test/dw/1"), 5, what="a stale journal")
    assert journal["state"] == "stopping" and journal["path"] == path
    report = recovery.repair(journal)
    assert report.ok, report.error
    assert report.records == 30 and report.lost == 4, report.text()
    with h5py.File(path, "r") as f:  # plain h5py
        grp = f[journal["streams"][pm.name]["group"]]
        assert grp["value"].shape == (30,) and int(grp["lost_records"][()]) == 4
        assert f["entry/end_time"][()].decode() == journal["flushed"]
        assert f["entry"].attrs["ended_abnormally"] and b"died" in f["entry/ended_abnormally"][()]
        assert "continued_in" not in f["entry"].attrs
    assert "30 records kept" in report.text() and "4 lost" in report.text()
    json.dumps(journal)  # the journal stays plain JSON
    pm.close(unlink=True)
