"""deviceservers.common.procfs: a pid with its start time identifies a live process; a killed,
unreaped child (zombie) is dead; a recycled pid (other start time) is not the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from deviceservers.common import procfs
from tests.waiting import wait_until


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0]


def test_alive_with_start_time_and_zombies_are_dead() -> None:
    me = procfs.own_start_time()
    assert me is not None and procfs.alive(os.getpid(), me)
    assert procfs.alive(os.getpid(), str(me)), "the decimal text older journals stored"
    assert not procfs.alive(os.getpid(), me + 1), "same pid, other start time: a recycled pid"
    assert not procfs.alive(os.getpid(), "not a number")
    assert not procfs.alive(0) and not procfs.alive(None) and procfs.start_time(-1) is None

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = procfs.start_time(child.pid)
        assert started is not None and procfs.alive(child.pid, started)
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: _state(child.pid) == "Z", 10, what="the killed child to be a zombie")
        assert os.path.exists(f"/proc/{child.pid}/stat"), "still in /proc until reaped"
        assert procfs.start_time(child.pid) is None
        assert not procfs.alive(child.pid, started) and not procfs.alive(child.pid)
    finally:
        child.kill()
        child.wait(10)
    assert not procfs.alive(child.pid, started), "reaped: gone"
