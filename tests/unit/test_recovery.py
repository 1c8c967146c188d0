"""Crash recovery of recordings (datawriter.recovery) against writers really killed with SIGKILL:
the file is repaired for plain h5py, cut to what the journal says was flushed (nothing the
continuation re-writes is kept twice), records committed after the last flush are counted lost,
a file closed properly before the kill is left alone, and a journal is taken for a crash only
when its writer is gone (a zombie is gone; this process is not)."""

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
from datawriter.ring import ScalarStreamWriter
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "test/dw/1"

# A writer in its own process: records the stream with a journal (rewritten at every flush) and
# stops at a point given by its mode, says so on stdout and waits to be killed:
#   stopping  after a flush of 30 rows, marked stopping (as StopRecording does);
#   ahead     the journal stays at 30 rows; the writer then takes 2 more records (test's "more")
#             and flushes them: killed between a flush and its journal update;
#   closed    like ahead, then the file is closed properly and the journal kept: killed between
#             closing the file and removing the journal.
_WRITER = """
import sys, time
from datawriter import recovery
from datawriter.hdf5_sink import Hdf5Sink, StreamSpec
from datawriter.recorder import Recorder
from datawriter.ring import RingReader
path, stream, folder, mode, device = sys.argv[1:6]
r = RingReader(stream, start="oldest")
sink = Hdf5Sink(path, [StreamSpec(stream, r.schema, r.description)], title="t")
journal = recovery.Journal(recovery.journal_path(folder, device), {"path": path, "name": "t", "metadata": {}})
frozen, seen = False, [0]
def on_flush(progress):
    seen[0] = next(iter(progress["groups"].values()))["rows"]
    if not frozen:
        journal.update(progress)
rec = Recorder(sink, {stream: r}, on_flush=on_flush, flush_interval=0.05)
rec.start()
while journal.data["groups"] == {} or next(iter(journal.data["groups"].values()))["rows"] < 30:
    time.sleep(0.01)
if mode == "stopping":
    journal.set_state("stopping")
else:
    frozen = True
    print("more", flush=True)
    while seen[0] < 50:
        time.sleep(0.01)
    if mode == "closed":
        assert rec.stop(10)
print("done", flush=True)
time.sleep(60)
"""


def _write(pm: ScalarStreamWriter, values: range) -> None:
    for i in values:
        pm.write(time.time() + np.arange(10) * 1e-3, np.full(10, float(i)))


def run_writer(path: str, pm: ScalarStreamWriter, folder: Path, mode: str, device: str = DEVICE) -> subprocess.Popen[str]:
    """Start a writer of ``device`` on records 0-2 of ``pm`` (a stream of 10 rows per record),
    and 3-4 when it asks for more; return it when it is where ``mode`` says, still running, for
    the caller to kill (the DataWriter's device tests use it too)."""
    _write(pm, range(3))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, pm.name, str(folder), mode, device], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if line == "more":
            _write(pm, range(3, 5))
            line = proc.stdout.readline().strip()
        assert line == "done", f"writer said {line!r}"
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_killed_while_stopping_is_repaired_and_losses_counted(tmp_path, power) -> None:
    pm = power
    path = str(tmp_path / "rec.h5")
    kill(run_writer(path, pm, tmp_path, "stopping"))
    _write(pm, range(3, 7))  # committed after the writer died: in no file
    journal = wait_until(lambda: recovery.stale_journal(str(tmp_path), DEVICE), 5, what="a stale journal")
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


def test_rows_flushed_after_the_last_journal_update_are_cut(tmp_path, power) -> None:
    """The file holds 50 rows (5 records) but the journal, written after each flush, still says
    30 rows and next record 3: the continuation re-reads records 3-4 from the ring, so the
    repaired file must end at row 30 (else records 3-4 are in both files), and a repair without
    continuation counts them lost once, not kept and lost."""
    pm = power
    path = str(tmp_path / "rec.h5")
    kill(run_writer(path, pm, tmp_path, "ahead"))
    journal = recovery.stale_journal(str(tmp_path), DEVICE)
    assert journal is not None
    stream = journal["streams"][pm.name]
    assert stream["next_seq"] == 3 and journal["groups"][stream["group"]]["rows"] == 30
    with recovery.open_unfinished(path) as f:  # what the dead writer left: 50 rows in every dataset
        assert {ds.shape[0] for ds in f[stream["group"]].values()} == {50}
    report = recovery.repair(journal)
    assert report.ok, report.error
    assert report.records == 30 and report.lost == 2, report.text()
    with h5py.File(path, "r") as f:
        grp = f[stream["group"]]
        assert {ds.shape[0] for ds in grp.values() if ds.ndim} == {30}
        assert list(grp["value"][::10]) == [0.0, 1.0, 2.0] and grp.attrs["records"] == 30
        assert int(grp["lost_records"][()]) == 2


def test_file_closed_before_the_kill_is_left_alone(tmp_path, power) -> None:
    """Killed after the file was closed (end time, losses, records) but before the journal was
    removed: the file is finished; nothing is cut, nothing marked abnormal, nothing recovered."""
    pm = power
    path = str(tmp_path / "rec.h5")
    kill(run_writer(path, pm, tmp_path, "closed"))
    journal = recovery.stale_journal(str(tmp_path), DEVICE)
    assert journal is not None and journal["groups"][journal["streams"][pm.name]["group"]]["rows"] == 30
    with h5py.File(path, "r") as f:  # closed properly: plain h5py opens it
        end_time = f["entry/end_time"][()]
    before = Path(path).read_bytes()
    report = recovery.repair(journal, continued_in=str(tmp_path / "next.h5"))
    with h5py.File(path, "r") as f:
        grp = f[journal["streams"][pm.name]["group"]]
        assert grp["value"].shape == (50,) and grp.attrs["records"] == 50
        assert f["entry/end_time"][()] == end_time and "ended_abnormally" not in f["entry"]
        assert "continued_in" not in f["entry"].attrs
    assert Path(path).read_bytes() == before, "the finished file is not touched"
    assert report.ok and report.closed_cleanly, report.text()
    assert report.records == 0 and report.lost == 0 and not report.continued_in
    assert "closed properly" in report.text() and "nothing to recover" in report.text()


def test_journal_of_a_killed_unreaped_writer_is_stale(tmp_path, power) -> None:
    """A writer killed but not yet reaped by its parent (a zombie) is dead: its recording is
    recovered, not left alone as if it still ran."""
    pm = power
    path = str(tmp_path / "rec.h5")
    proc = run_writer(path, pm, tmp_path, "stopping")
    try:
        assert recovery.stale_journal(str(tmp_path), DEVICE) is None, "its writer runs"
        os.kill(proc.pid, signal.SIGKILL)

        def zombie() -> bool:
            with open(f"/proc/{proc.pid}/stat") as fh:
                return fh.read().rpartition(")")[2].split()[0] == "Z"

        wait_until(zombie, 10, what="the killed writer to be a zombie")
        journal = recovery.stale_journal(str(tmp_path), DEVICE)
        assert journal is not None and journal["path"] == path
    finally:
        proc.kill()
        proc.wait(10)


def test_journal_of_this_process_is_never_stale(tmp_path) -> None:
    """This process's own journal belongs to a recording it is still writing or finishing (an
    Init while a stop drains): never a crash to recover."""
    journal = recovery.Journal(recovery.journal_path(str(tmp_path), DEVICE),
                               {"path": str(tmp_path / "rec.h5"), "name": "t", "metadata": {}})
    try:
        assert recovery.stale_journal(str(tmp_path), DEVICE) is None
        data = json.loads(Path(journal.path).read_text())
        data["pid_start"] = int(data["pid_start"]) - 1  # a previous process that had our pid
        Path(journal.path).write_text(json.dumps(data))
        assert recovery.stale_journal(str(tmp_path), DEVICE) is not None
    finally:
        journal.remove()
