"""`tangodaq up / status / down` on an embedded database in a temporary folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from tango_db.environment import split_tango_host
from tests.waiting import wait_until

from .conftest import TANGODAQ, UP_TIMEOUT_S

pytestmark = pytest.mark.system


def test_client_reads_the_power_meter_through_the_database(lab):
    import tango

    db = tango.Database(*split_tango_host(lab.tango_host))
    info = db.get_device_info("lab/powermeter/1")
    assert info.ds_full_name == "Newport1830C/lab"
    # lab.json's ${PORT+4}: the bench's 1830-C just above the database port
    assert list(db.get_device_property("lab/powermeter/1", "SerialURL")["SerialURL"]) == [
        f"socket://127.0.0.1:{lab.port + 4}"
    ]

    pm = lab.proxy("lab/powermeter/1")
    wait_until(lambda: pm.state() == tango.DevState.ON, 15, 0.2, "the power meter to be ON")
    power = pm.read_attribute("Power").value
    assert isinstance(power, float)


def test_status_from_another_shell_reads_the_state_file(lab):
    env = {k: v for k, v in lab.env.items() if k != "TANGO_HOST"}  # another shell: no TANGO_HOST
    result = lab.tangodaq("status", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lab.tango_host in result.stdout
    assert "lab/powermeter/1" in result.stdout
    assert "Newport1830C/lab" in result.stdout


def test_second_up_says_so_instead_of_starting_another_lab(lab):
    before = lab.state()["supervisor_pid"]
    result = lab.tangodaq("up")
    assert result.returncode == 0
    assert "already running" in result.stdout
    assert lab.state()["supervisor_pid"] == before


def test_supervisor_restarts_a_server_that_dies(lab):
    import tango

    old = lab.pid_of("Newport1830C/lab")
    os.kill(old, signal.SIGKILL)
    new = wait_until(
        lambda: (lab.pid_of("Newport1830C/lab") or old) != old and lab.pid_of("Newport1830C/lab"),
        20,
        0.2,
        "a restart",
    )
    assert new != old
    pm = lab.proxy("lab/powermeter/1")

    def answers():
        try:
            return pm.state() == tango.DevState.ON
        except tango.DevFailed:
            return False

    wait_until(answers, 30, 0.2, "the restarted power meter to answer")
    assert next(p for p in lab.state()["processes"] if p["name"] == "Newport1830C/lab")["restarts"] >= 1
    log = (lab.home / "logs" / "supervisor.log").read_text()
    assert "exited with code -9" in log and "restarted" in log


def test_down_leaves_no_process_behind(lab_factory):
    lab = lab_factory()
    pids = [p["pid"] for p in lab.state()["processes"]] + [lab.state()["supervisor_pid"]]
    assert len(lab.leftovers()) >= 3  # supervisor, database, power meter
    result = lab.tangodaq("down")
    assert result.returncode == 0, result.stdout
    assert "lab stopped" in result.stdout
    assert lab.leftovers() == []
    assert not any(
        os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read() for pid in pids
    )
    assert not (lab.home / "state.json").exists()
    # down again is harmless
    assert "no lab is running" in lab.tangodaq("down").stdout
    # and the lab comes back on the same SQLite file
    lab.up()
    assert lab.proxy("lab/powermeter/1").state() is not None


def test_foreground_up_stops_everything_on_ctrl_c(lab_factory):
    lab = lab_factory(start=False)
    proc = subprocess.Popen(
        [TANGODAQ, "up", "--foreground", "--timeout", str(UP_TIMEOUT_S)],
        env=lab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            lambda: (lab.home / "state.json").exists() and lab.state().get("phase") == "running",
            UP_TIMEOUT_S,
            0.2,
            "up",
        )
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "lab is up" in out and "lab stopped" in out
    assert lab.leftovers() == []


def test_a_killed_supervisor_takes_its_children_along(lab_factory):
    lab = lab_factory()
    os.kill(lab.state()["supervisor_pid"], signal.SIGKILL)
    wait_until(lambda: lab.leftovers() == [], 15, 0.2, "the children to die with the supervisor")
    result = lab.tangodaq("status")
    assert result.returncode == 3 and "no lab is supervised" in result.stdout and "tangodaq up" in result.stdout
    assert "supervisor is gone" in lab.tangodaq("down").stdout


def test_busy_port_says_which_process_holds_it(lab_factory):
    lab = lab_factory(start=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", lab.port))
        sock.listen()
        result = lab.tangodaq("up", "--foreground", timeout=60)
    assert result.returncode == 2
    assert "taken by another program" in result.stdout and f"pid {os.getpid()}" in result.stdout
    assert lab.leftovers() == []
