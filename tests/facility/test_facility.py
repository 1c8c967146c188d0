"""A release on the facility's Tango: deployed with `tangodaq deploy`, run by Starter, used
through the Starter device (as Astor does) and the Door. See conftest.py for how it is built.

The tests run in file order and share one facility: the deploy checks first, then Starter's
start of the whole lab, macros, the operator model (TangoAccessControl: users of each role act
from client processes of their own accounts), one server stopped and started, the MacroServer's environment
across a restart, a second deploy with a hardware overlay that renames every device, and last
Starter's automatic restart of a killed server (Starter only restarts servers that ran for at
least AutoRestartDuration, one minute).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from pathlib import Path

import h5py
import pytest

from tango_db.access_control import local_addresses
from tango_db.door_client import run_macro
from tests.waiting import wait_until

pytestmark = pytest.mark.facility

LAB_SERVERS = [
    "DataWriter/lab", "Ell14/lab", "Esp300/lab", "MacroServer/lab", "MaiTai/lab",
    "Newport1830C/lab", "Pool/lab", "Pvcam/lab", "VirtualBench/lab",
]

#: the state each device settles in once its server runs (the laser is cold: OFF)
IDLE = {
    "lab/bench/1": "ON", "lab/esp300/x": "ON", "lab/esp300/y": "ON", "lab/esp300/z": "ON",
    "lab/ell14/hwp": "ON", "lab/ell14/pol": "ON", "lab/ell14/qwp": "ON", "lab/maitai/1": "OFF",
    "lab/powermeter/1": "ON", "lab/camera/1": "ON", "lab/datawriter/1": "ON",
    "pool/lab/1": "ON", "macroserver/lab/1": "ON", "door/lab/1": "ON", "door/lab/laser": "ON",
}
START_TIMEOUT_S = 180  # nine Python servers started by Starter level by level on two cores


def states(facility, devices) -> dict[str, str]:
    out = {}
    for dev in devices:
        try:
            out[dev] = str(facility.proxy(dev, timeout_ms=3000).state())
        except Exception as exc:  # noqa: BLE001 - not exported yet, starting
            out[dev] = type(exc).__name__
    return out


def wait_idle(facility, expected: dict[str, str], timeout: float = START_TIMEOUT_S) -> None:
    last: dict[str, str] = {}

    def settled() -> bool:
        last.clear()
        last.update(states(facility, expected))
        return last == expected

    try:
        wait_until(settled, timeout=timeout, interval=1.0, what="every device idle")
    except AssertionError:
        raise AssertionError(f"not idle after {timeout} s: {last}\n{facility.logs()}\n"
                             f"{facility.stack_dumps()}") from None


def starter_states(facility) -> dict[str, str]:
    """Server -> the state Starter holds for it (its ``Servers`` lines: name, state, ...)."""
    lines = facility.starter().read_attribute("Servers").value or ()
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines if "\t" in line}


def wait_running(facility, servers) -> None:
    """Until Starter holds every one of ``servers`` as running (ON). A device can answer before
    Starter's ping thread has moved its server from "starting" to ON, and Starter ignores a
    DevStop/DevStopAll for a server it still sees starting."""
    wait_until(lambda: all(starter_states(facility).get(s) == "ON" for s in servers), timeout=60,
               interval=0.5, what=f"Starter sees {', '.join(servers)} running")


def wait_stopped(facility, server: str) -> None:
    """Until the server's process is gone and Starter holds it as stopped (FAULT, the only state
    in which it accepts DevStart; its ping thread notices a stop a moment after the process ends)."""

    def stopped() -> bool:
        return server not in facility.server_pids() and starter_states(facility).get(server) == "FAULT"

    wait_until(stopped, timeout=60, interval=0.5, what=f"{server} stopped for Starter")


def door(facility, name: str = "door/lab/1") -> str:
    return f"tango://{facility.tango_host}/{name}"


def macro(facility, *args, timeout: float = 120, door_name: str = "door/lab/1"):
    return run_macro(door(facility, door_name), *args, say=lambda _line: None, timeout=timeout)


def laser_macro(facility, *args, timeout: float = 180):
    """A macro that makes light: only on the laser Door (deployed with access control)."""
    return macro(facility, *args, timeout=timeout, door_name="door/lab/laser")


# --- deploy ------------------------------------------------------------------------------------------


def test_deploy_refuses_without_saying_what_the_lab_runs_on(facility):
    result = facility.tangodaq("deploy", "--site", str(facility.site_file))
    assert result.returncode == 2
    assert "--config hardware.json" in result.stdout and "--simulated" in result.stdout


def test_deploy_refuses_a_hardware_file_that_leaves_simulator_addresses(facility, tmp_path):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"servers": {"MaiTai": {"lab": {"MaiTai": {
        "lab/maitai/1": {"properties": {"SerialURL": ["/dev/serial/by-id/usb-laser"]}}}}}}}))
    os.chmod(tmp_path, 0o755)
    os.chmod(partial, 0o644)
    result = facility.tangodaq("deploy", "--config", str(partial), "--site", str(facility.site_file))
    assert result.returncode == 2, result.stdout
    assert "lab/powermeter/1 (Newport1830C): no SerialURL in the hardware file" in result.stdout
    assert "lab/camera/1 (Pvcam): no Backend" in result.stdout
    assert "lab/maitai/1" not in result.stdout.split("leaves devices")[1]


def test_a_second_deploy_changes_nothing(facility):
    result = facility.tangodaq("deploy", "--simulated", "--bench-fast", "--site", str(facility.site_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to change" in result.stdout, result.stdout


def test_the_release_runs_from_its_own_installation(facility):
    """PoolPath, MacroPath and StartDsPath point into the installed release, not a checkout."""
    db = facility.database()
    site_packages = next((facility.venv / "lib").glob("python3*/site-packages"))
    pool_path = list(db.get_device_property("pool/lab/1", "PoolPath")["PoolPath"])
    macro_path = list(db.get_device_property("macroserver/lab/1", "MacroPath")["MacroPath"])
    assert pool_path == [str(site_packages / "tangodaq_controllers")]
    assert macro_path == [str(site_packages / "tangodaq_macros")]
    assert (site_packages / "tangodaq_macros" / "lab_macros.py").is_file()
    starter = f"tango/admin/{facility.host}"
    ds_path = list(db.get_device_property(starter, "StartDsPath")["StartDsPath"])
    assert ds_path == [str(facility.venv / "share" / "tangodaq" / "starter"), str(facility.venv / "bin")]
    assert list(db.get_device_property(starter, "AutoRestartDuration")["AutoRestartDuration"]) == ["1"]
    env = list(db.get_device_property("macroserver/lab/1", "EnvironmentDb")["EnvironmentDb"])
    assert env == [str(facility.data_dir / "macroserver" / "environment")]


def test_astor_lists_every_server_right_after_deploy(facility):
    """Before any server ran, the host's server list (what Astor and Starter show) is complete."""
    # the database and access control: system services running here, which Starter leaves alone
    assert sorted(set(facility.servers_before_start) - {"DataBaseds/2", "TangoAccessControl/1"}) == LAB_SERVERS


def test_deploys_dry_run_shows_the_access_rules(facility):
    """Everything the write applies, read first: the rules of each role, what read-only clients may
    run, and the service registration (last)."""
    dry = facility.dry_run_output
    assert "nothing was written (dry run)" in dry
    shown = [line for line in dry.splitlines() if line.strip().startswith(("rule:", "put_class_property", "SQL:"))]
    assert shown and all(line in facility.deploy_output.splitlines() for line in shown)  # what --write applied
    viewer, operator, laser = (facility.users[k] for k in ("viewer", "operator", "laser_operator"))
    for line in ("rule: * read lab/maitai/1", "rule: * read door/lab/1", f"rule: {operator} read lab/maitai/1",
                 f"rule: {operator} read door/lab/laser", f"rule: {operator} write lab/ell14/hwp",
                 f"rule: {operator} write */movable_ctrl/*", f"rule: {laser} write lab/maitai/1",
                 f"rule: {laser} write door/lab/laser", "rule: tango write lab/maitai/1",
                 "put_class_property(MaiTai, AllowedAccessCmd=['CloseShutter', 'Off'])",
                 "put_property(CtrlSystem, Services += AccessControl/tango:sys/access_control/1)"):
        assert line in dry, line
    assert viewer not in dry  # a viewer is nobody in particular: the * rules
    assert dry.index("Services +=") > dry.index("rule: ")


def test_site_folders_belong_to_the_service_user(facility):
    tango_uid = pwd.getpwnam("tango").pw_uid
    for sub in ("data", "scans", "macroserver", "setups"):
        folder = facility.data_dir / sub
        assert folder.stat().st_uid == tango_uid, folder
        assert folder.stat().st_mode & 0o2070 == 0o2070, oct(folder.stat().st_mode)


# --- Starter -----------------------------------------------------------------------------------------


def test_starter_brings_the_whole_lab_up(facility):
    wait_idle(facility, IDLE)
    starter = facility.starter()
    wait_until(lambda: sorted(starter.read_attribute("RunningServers").value or ()) == LAB_SERVERS,
               timeout=60, interval=0.5, what="Starter sees every server running")


def test_servers_run_as_the_service_user(facility):
    tango_uid = pwd.getpwnam("tango").pw_uid
    pids = facility.server_pids()
    assert sorted(pids) == LAB_SERVERS, pids
    for name, pid in pids.items():
        uid = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Uid:"))
        assert uid == tango_uid, name


def test_a_server_writes_its_stacks_to_its_starter_log_on_sigusr1(facility):
    """What an engineer does with a server Starter calls "running but not responding"."""
    from tests.facility.conftest import stack_dumps_under

    pids = facility.server_pids()
    dumps = stack_dumps_under(facility.base, {name: pids[name] for name in ("MacroServer/lab", "Esp300/lab")})
    sections = dumps.split("===== stacks of ")[1:]
    assert len(sections) == 2 and all("most recent call first" in part and " in main" in part
                                      for part in sections), dumps
    assert facility.server_pids() == pids, "the servers keep running"


def test_a_scan_and_a_recording_through_the_door(facility):
    macro(facility, "wa")
    macro(facility, "ct", 0.1)
    macro(facility, "ascan", "hwp", 0, 90, 9, 0.1)
    scans = facility.data_dir / "scans" / "scans.h5"
    assert scans.is_file()
    assert scans.stat().st_uid == pwd.getpwnam("tango").pw_uid
    with h5py.File(scans, "r") as f:
        entry = f[sorted(f.keys())[-1]]
        assert len(entry["measurement/hwp"]) == 10

    laser_macro(facility, "laser_on")
    meter = facility.proxy("lab/powermeter/1")
    meter.write_attribute("Streaming", True)  # the meter's server (user tango) produces into its ring
    path = macro(facility, "record_start", "facility", 0)
    assert str(path).startswith(str(facility.data_dir / "data"))
    wait_until(lambda: facility.proxy("lab/datawriter/1").read_attribute("RecordsWritten").value > 0,
               timeout=30, what="records written")
    assert macro(facility, "record_stop") == path
    meter.write_attribute("Streaming", False)
    macro(facility, "laser_off")
    assert facility.proxy("lab/maitai/1").read_attribute("Shutter").value is False
    assert Path(path).stat().st_uid == pwd.getpwnam("tango").pw_uid
    with h5py.File(path, "r") as f:  # plain h5py, as a scientist opens it
        powers = [ds for name, ds in _datasets(f) if name.endswith("power/value")]
        assert powers and len(powers[0]) > 0


# --- who may do what (TangoAccessControl) --------------------------------------------------------------

REFUSED = "API_ReadOnlyMode"


def acting_as(facility, role: str, script: str) -> dict[str, str]:
    result = facility.as_user(facility.users[role], script)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_viewer_reads_and_makes_safe_but_makes_no_light_and_moves_nothing(facility):
    laser = facility.proxy("lab/maitai/1")
    assert laser.read_attribute("Shutter").value is False
    out = acting_as(facility, "viewer", """
laser = proxy("lab/maitai/1")
attempt("read", laser.read_attribute, "Shutter")
attempt("state", laser.state)
attempt("On", laser.command_inout, "On")
attempt("OpenShutter", laser.command_inout, "OpenShutter")
attempt("OpenShutterWithLease", laser.command_inout, "OpenShutterWithLease", 2.0)
attempt("Shutter=True", laser.write_attribute, "Shutter", True)
attempt("CloseShutter", laser.command_inout, "CloseShutter")
attempt("Off", laser.command_inout, "Off")
attempt("move", proxy("lab/ell14/hwp").write_attribute, "Position", 5.0)
attempt("Stop", proxy("lab/ell14/hwp").command_inout, "Stop")
door = proxy("door/lab/1")
attempt("RunMacro", door.command_inout, "RunMacro", ["wa"])
attempt("StopMacro", door.command_inout, "StopMacro")
attempt("RunMacro laser Door", proxy("door/lab/laser").command_inout, "RunMacro", ["laser_on"])
""")
    for allowed in ("read", "state", "CloseShutter", "Off", "Stop"):
        assert out[allowed] == "ok", (allowed, out)
    assert not out["StopMacro"].startswith(REFUSED), out  # let through (the Door has no macro to stop)
    for refused in ("On", "OpenShutter", "OpenShutterWithLease", "Shutter=True", "move", "RunMacro",
                    "RunMacro laser Door"):
        assert out[refused].startswith(REFUSED), (refused, out)
    assert laser.read_attribute("Shutter").value is False and laser.read_attribute("Emission").value is False


def test_an_operator_moves_and_runs_scans_but_cannot_make_light(facility):
    hwp = facility.proxy("lab/ell14/hwp")
    target = 12.0 if abs(hwp.read_attribute("Position").value - 12.0) > 1 else 24.0
    out = acting_as(facility, "operator", f"""
from tango_db.access_control import local_addresses
from tango_db.door_client import run_macro
laser = proxy("lab/maitai/1")
attempt("move", proxy("lab/ell14/hwp").write_attribute, "Position", {target})
attempt("On", laser.command_inout, "On")
attempt("OpenShutter", laser.command_inout, "OpenShutter")
attempt("RunMacro laser Door", proxy("door/lab/laser").command_inout, "RunMacro", ["laser_on"])
attempt("CreateController", proxy("pool/lab/1").command_inout, "CreateController", ["Motor", "x", "y", "z"])
attempt("ct", run_macro, "door/lab/1", "ct", 0.1, say=lambda _line: None, timeout=60)
attempt("laser_on", run_macro, "door/lab/1", "laser_on", say=lambda _line: None, timeout=60)
attempt("defctrl", run_macro, "door/lab/1", "defctrl", "DummyMotorController", "x_ctrl", say=lambda _line: None,
        timeout=60)
attempt("relctrllib", run_macro, "door/lab/1", "relctrllib", "TangoMovableController", say=lambda _line: None,
        timeout=60)
""")
    assert out["move"] == "ok" and out["ct"] == "ok", out
    # Sardana's expert macros run as the service account and change the Pool's code: laser Door only
    for expert in ("defctrl", "relctrllib"):
        assert f"{expert} changes the Pool's controllers" in out[expert], (expert, out)
    assert "x_ctrl" not in str(facility.proxy("pool/lab/1").read_attribute("ControllerList").value)
    for refused in ("On", "OpenShutter", "RunMacro laser Door", "CreateController"):
        assert out[refused].startswith(REFUSED), (refused, out)
    assert "only from the laser Door door/lab/laser" in out["laser_on"], out  # the Door runs it; the macro refuses
    wait_until(lambda: abs(hwp.read_attribute("Position").value - target) < 0.1, timeout=30, what="the mount moved")
    laser = facility.proxy("lab/maitai/1")
    assert laser.read_attribute("Shutter").value is False and laser.read_attribute("Emission").value is False


def test_a_laser_operator_opens_and_closes_the_shutter_from_the_lab_host(facility):
    out = acting_as(facility, "laser_operator", """
laser = proxy("lab/maitai/1")
attempt("OpenShutter", laser.command_inout, "OpenShutter")
results["open"] = str(laser.read_attribute("Shutter").value)
attempt("CloseShutter", laser.command_inout, "CloseShutter")
attempt("Shutter=True", laser.write_attribute, "Shutter", True)
attempt("Shutter=False", laser.write_attribute, "Shutter", False)
""")
    assert out == {"OpenShutter": "ok", "open": "True", "CloseShutter": "ok", "Shutter=True": "ok",
                   "Shutter=False": "ok"}, out
    assert facility.proxy("lab/maitai/1").read_attribute("Shutter").value is False
    # the same account from a host outside lab_hosts: TAC answers read (its rows allow this host only)
    tac = facility.proxy("sys/access_control/1")
    user = facility.users["laser_operator"]
    assert tac.command_inout("GetAccessForMultiIp", [user, "lab/maitai/1", "198.51.100.7"]) == "read"
    assert tac.command_inout("GetAccessForMultiIp", [user, "lab/maitai/1", *local_addresses()]) == "write"


def test_renewals_that_stop_arriving_close_the_shutter_though_the_macroserver_lives(facility):
    """What the laser's server sees when the link from the MacroServer's host to the laser's host
    is cut: the macro is alive but its renewals stop arriving (here: the MacroServer frozen with
    SIGSTOP, so nothing it sends leaves it). The laser's server closes the shutter when the lease
    runs out; when the link is back, the renewal is refused and the macro stops instead of
    measuring in the dark. Nothing reopens the shutter."""
    import threading

    laser = facility.proxy("lab/maitai/1")
    outcome: dict[str, object] = {}

    def scan() -> None:
        try:
            outcome["result"] = laser_macro(facility, "polarization_scan", "hwp", 0, 180, 90, 0.2)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    worker = threading.Thread(target=scan, daemon=True)
    worker.start()
    wait_until(lambda: laser.read_attribute("Shutter").value is True, timeout=60, interval=0.1,
               what="the macro opened the shutter")
    pid = facility.server_pids()["MacroServer/lab"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_until(lambda: laser.read_attribute("Shutter").value is False, timeout=15, interval=0.1,
                   what="the laser's server closed the shutter nobody renews")
        closed_after = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert closed_after <= 8.0  # lease 5 s + a poll + the shutter's travel
    worker.join(120)
    assert not worker.is_alive() and "error" in outcome, outcome  # stopped, not finished in the dark
    assert "lease" in str(outcome["error"]).lower() or "closed" in str(outcome["error"]).lower(), outcome
    assert laser.read_attribute("Shutter").value is False
    # the Door is free again (ALARM: Sardana's state after a macro that ended in an error)
    assert states(facility, ["door/lab/laser"])["door/lab/laser"] in ("ON", "ALARM")


def _datasets(group, prefix: str = ""):
    for name, item in group.items():
        if isinstance(item, h5py.Dataset):
            yield f"{prefix}/{name}", item
        else:
            yield from _datasets(item, f"{prefix}/{name}")


def test_one_server_stopped_and_started_through_starter(facility):
    starter = facility.starter()
    wait_running(facility, ["Newport1830C/lab"])
    starter.DevStop("Newport1830C/lab")
    wait_stopped(facility, "Newport1830C/lab")
    starter.DevStart("Newport1830C/lab")
    wait_idle(facility, {"lab/powermeter/1": "ON"}, timeout=90)


def test_the_macroserver_environment_survives_a_restart(facility):
    macro(facility, "senv", "FacilityNote", "kept")
    starter = facility.starter()
    wait_running(facility, ["MacroServer/lab"])
    starter.DevStop("MacroServer/lab")
    wait_stopped(facility, "MacroServer/lab")
    starter.DevStart("MacroServer/lab")
    wait_idle(facility, {"macroserver/lab/1": "ON", "door/lab/1": "ON"}, timeout=120)
    from taurus.core.util.codecs import CodecFactory

    raw = facility.proxy("macroserver/lab/1").read_attribute("Environment").value
    env = CodecFactory().getCodec("pickle").decode(raw)[1]["new"]
    assert env["FacilityNote"] == "kept"
    assert env["ActiveMntGrp"] == "mg_power"
    assert env["ScanDir"] == str(facility.data_dir / "scans")


# --- the same lab renamed, on a hardware file ----------------------------------------------------------


def renamed_overlay(facility) -> dict:
    """A hardware file that renames every device b12/... and names every instrument's URL
    (the bench's ports, as a terminal server's would be)."""
    from tango_db.config import load_config
    from tango_db.environment import split_tango_host

    sim = load_config(None, None, data_dir=facility.data_dir, port=split_tango_host(facility.tango_host)[1])
    rename = {}
    servers: dict = {}
    for server, insts in sim["servers"].items():
        for inst, classes in insts.items():
            for cls, devices in classes.items():
                for dev, data in devices.items():
                    new = "b12/" + dev.split("/", 1)[1] if dev.startswith("lab/") else dev
                    rename[dev] = new
                    props = dict(data.get("properties", {}))
                    if "SerialURL" in props:
                        props["SerialURL"] = [u.replace("127.0.0.1", "localhost") for u in props["SerialURL"]]
                    target = servers.setdefault(server, {}).setdefault(inst, {}).setdefault(cls, {})
                    if new != dev:
                        target[dev] = None
                    target[new] = {"properties": props}
    roles = {role: rename.get(dev, dev) for role, dev in sim["roles"].items()}
    return {"roles": roles, "servers": servers}


def test_a_renamed_lab_on_a_hardware_file_runs_the_same_macros(facility):
    overlay = renamed_overlay(facility)
    path = facility.base / "hardware-b12.json"
    path.write_text(json.dumps(overlay, indent=1))
    path.chmod(0o644)
    result = facility.tangodaq("deploy", "--config", str(path), "--site", str(facility.site_file), "--write")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "b12/maitai/1" in result.stdout
    roles = overlay["roles"]

    starter = facility.starter()
    wait_running(facility, LAB_SERVERS)
    for level in (4, 3, 2):
        starter.DevStopAll(level)
    for server in LAB_SERVERS:
        if server != "VirtualBench/lab":
            wait_stopped(facility, server)
    for level in (2, 3, 4):
        starter.DevStartAll(level)
    old_roles = {"laser": "lab/maitai/1", "meter": "lab/powermeter/1", "camera": "lab/camera/1",
                 "datawriter": "lab/datawriter/1", "hwp": "lab/ell14/hwp", "stage_x": "lab/esp300/x"}
    renamed = {roles[role]: IDLE[old] for role, old in old_roles.items()}
    renamed.update({"pool/lab/1": "ON", "macroserver/lab/1": "ON", "door/lab/1": "ON", "door/lab/laser": "ON"})
    wait_idle(facility, renamed)
    assert str(facility.proxy(roles["laser"]).read_attribute("Shutter").value) == "False"
    macro(facility, "ct", 0.1)
    macro(facility, "ascan", "hwp", 0, 10, 2, 0.1)
    laser_macro(facility, "laser_on")
    assert facility.proxy(roles["laser"]).read_attribute("Emission").value is True
    macro(facility, "laser_off")
    pool_motor = facility.proxy("hwp")
    assert pool_motor.read_attribute("TangoDevice").value == roles["hwp"]


def process_age_s(pid: int) -> float:
    """Seconds since the process started (/proc/<pid>/stat field 22, in clock ticks since boot)."""
    start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


# --- Starter restarts what dies ------------------------------------------------------------------------


def test_a_killed_server_is_restarted_by_starter(facility):
    """kill -9 of a server that ran longer than AutoRestartDuration (1 min): Starter restarts it.
    The bench's server: it has run since Starter started (the others were restarted by the
    rename), and the instrument servers must then find their instruments again by themselves."""
    name = "VirtualBench/lab"
    wait_running(facility, [name])
    pid = facility.server_pids()[name]
    wait_until(lambda: process_age_s(pid) > 65, timeout=90, interval=1.0,
               what="the server has run longer than AutoRestartDuration")
    os.kill(pid, signal.SIGKILL)
    new = wait_until(lambda: facility.server_pids().get(name) not in (None, pid) and facility.server_pids()[name],
                     timeout=120, interval=0.5, what="Starter restarted the killed server")
    assert new != pid
    wait_idle(facility, {"lab/bench/1": "ON"}, timeout=90)
    meter = facility.database().get_property("tangodaq", "Roles")["Roles"]
    meter = next(line.split("=", 1)[1] for line in meter if line.startswith("meter="))
    wait_idle(facility, {meter: "ON"}, timeout=90)  # reconnected to the restarted bench
