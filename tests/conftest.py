"""Test-wide fixtures: fresh in-process simulators for every test, private ring folder."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from collections.abc import Iterator

import pytest
import tango

from deviceservers.common import protocol_sim
from tests.requirements import unavailable

# Rings made by unit and device tests go to a folder of this session's own, removed at the end,
# so tests never collide with a running lab's rings nor leave shared memory behind. Labs started
# by system tests drop this variable and use their own per-TANGO_HOST folder.
_SHM = f"/dev/shm/tangodaq-tests-{os.getpid()}"
os.environ["TANGODAQ_SHM_DIR"] = _SHM
os.makedirs(_SHM, exist_ok=True)


# The test process holds DeviceProxies and event subscriptions until it exits; letting the
# interpreter tear them down after cppTango's client layer can crash at exit (PyTango#390, the
# same hook Sardana's tests use). Shut the Tango client API down first; calling it twice is safe.
atexit.register(tango.ApiUtil.cleanup)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SHM, ignore_errors=True)
    session.config._tangodaq_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without running C++ static destructors.

    With every test done and reported, the process could still die of SIGSEGV in cppTango's
    and omniORB's static destructors, after Python's own finalisation (faulthandler is already
    off by then, so nothing is printed). It is the known exit-time crash of the Tango client
    layer (PyTango#390 and relatives); ``ApiUtil.cleanup`` above makes it rarer but not gone.
    The exit status pytest computed is kept, so a failing run still fails.
    """
    status = getattr(config, "_tangodaq_exitstatus", None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    tango.ApiUtil.cleanup()
    os._exit(status)


@pytest.fixture(autouse=True)
def fresh_simulators():
    """Each test gets new sim:// instruments (state does not leak between tests)."""
    protocol_sim.forget_simulators()
    yield
    protocol_sim.forget_simulators()


@pytest.fixture
def ring_device() -> Iterator[str]:
    """A unique producer device name; every ring it produced is removed afterwards."""
    import uuid

    import datawriter

    dev = f"test/ring/{uuid.uuid4().hex[:10]}"
    yield dev
    prefix = dev.replace("/", ".") + "."
    for name in datawriter.list_streams():
        if name.startswith(prefix):
            datawriter.remove_stream(name)


@pytest.fixture
def power(ring_device: str) -> Iterator:
    """A power-meter stream of ``ring_device`` (10 samples per record), removed afterwards."""
    from datawriter.ring import create_scalar_stream

    stream = create_scalar_stream(ring_device, "power", units="W", rows_per_record=10)
    yield stream
    stream.close(unlink=True)


@pytest.fixture
def tiny_fs(tmp_path) -> Iterator[str]:
    """A 3 MB tmpfs: a really full disk, no simulation. Mounting needs root (CI runs as root)."""
    import subprocess

    if os.geteuid() != 0:
        unavailable("a really full disk needs a tmpfs mount, which needs root: run the suite as root (CI does)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    assert res.returncode == 0, f"cannot mount a tmpfs as root: {res.stderr.decode().strip()}"
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
