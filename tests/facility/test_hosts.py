"""The lab over several hosts: the database, the motion/laser host, the acquisition host and a
users' workstation, each a network namespace with its own name, /etc/hosts and /dev/shm
(``tests/facility/hosts.py``), deployed once with `tangodaq deploy` and run by a Starter on each
server host. Everything the tests do, they do from the ``client`` host, as a user would.
"""

from __future__ import annotations

import h5py
import pytest

from tests.facility.conftest import HOST_SERVERS
from tests.waiting import wait_until

pytestmark = pytest.mark.facility

IDLE = {
    "lab/bench/1": "ON", "lab/esp300/x": "ON", "lab/esp300/y": "ON", "lab/esp300/z": "ON",
    "lab/ell14/hwp": "ON", "lab/ell14/pol": "ON", "lab/ell14/qwp": "ON", "lab/maitai/1": "OFF",
    "lab/powermeter/1": "ON", "lab/camera/1": "ON", "lab/datawriter/1": "ON",
    "pool/lab/1": "ON", "macroserver/lab/1": "ON", "door/lab/1": "ON",
}
START_TIMEOUT_S = 180


def states(lab) -> dict[str, str]:
    return lab.client.call(
        "result = {}\n"
        f"for d in {sorted(IDLE)!r}:\n"
        "    try:\n        result[d] = str(proxy(d, 3000).state())\n"
        "    except Exception as exc:\n        result[d] = type(exc).__name__\n", timeout=120)


def test_the_deploy_places_each_server_on_its_host(hosts_lab):
    out = hosts_lab.deploy_output
    assert "Starter on motion, acq" in out, out
    assert "DataWriter/lab, Pvcam/lab run on acq" in out, out
    db = hosts_lab.client.call(
        "db = tango.Database()\n"
        "result = {h: sorted(db.get_host_server_list(h)) for h in ('motion', 'acq')}")
    assert db == HOST_SERVERS
    # the bench listens on the motion host's name, so the camera on acq reaches its scene
    props = hosts_lab.client.call(
        "db = tango.Database()\n"
        "result = [db.get_device_property('lab/esp300/x', 'SerialURL')['SerialURL'][0],"
        " db.get_device_property('lab/camera/1', 'BenchScene')['BenchScene'][0]]")
    assert props[0].startswith("socket://motion:") and props[1].startswith("motion:"), props


def test_starters_bring_the_lab_up_on_both_hosts(hosts_lab):
    last = {}

    def settled() -> bool:
        last.clear()
        last.update(states(hosts_lab))
        return last == IDLE

    try:
        wait_until(settled, timeout=START_TIMEOUT_S, interval=1.0, what="every device idle")
    except AssertionError:
        raise AssertionError(f"not idle: {last}\n{hosts_lab.logs()}") from None

    def elements() -> str:  # the Pool creates the deployed elements once it answers
        return hosts_lab.client.call(
            "pool = proxy('pool/lab/1')\n"
            "result = ' '.join(pool.read_attribute('MotorList').value or ()) + ' '"
            " + ' '.join(pool.read_attribute('ExpChannelList').value or ())")

    wait_until(lambda: '"hwp"' in elements() and '"camera"' in elements(), timeout=60, interval=0.5,
               what="the Pool's deployed elements")


def test_events_cross_hosts_from_addresses_the_client_can_reach(hosts_lab):
    client = hosts_lab.client
    endpoints = client.call(
        "result = {}\n"
        "for server in ('Esp300/lab', 'Pvcam/lab'):\n"
        "    reply = proxy('dserver/' + server).command_inout('ZmqEventSubscriptionChange', ['info'])\n"
        "    result[server] = ' '.join(reply[1])\n")
    assert "tcp://10.77.0.2:" in endpoints["Esp300/lab"] and "127.0.0.1" not in endpoints["Esp300/lab"], endpoints
    assert "tcp://10.77.0.3:" in endpoints["Pvcam/lab"] and "127.0.0.1" not in endpoints["Pvcam/lab"], endpoints
    # and events really arrive from both hosts
    client.call("subscribe('lab/esp300/x', 'Position'); subscribe('lab/camera/1', 'ExposureTime')")
    client.call("proxy('lab/esp300/x').write_attribute('Position', 0.25)\n"
                "proxy('lab/camera/1').write_attribute('ExposureTime', 0.012)")

    def received() -> bool:
        got = client.call("with lock:\n    result = {k: list(v) for k, v in events.items()}")
        return (any(kind == "value" and abs(v - 0.25) < 1e-3 for kind, v in got["lab/esp300/x/position"])
                and any(kind == "value" and abs(v - 0.012) < 1e-6 for kind, v in got["lab/camera/1/exposuretime"]))

    wait_until(received, timeout=20, interval=0.3, what="events from the motion and acquisition hosts")


def _macro(*args: object, timeout: float = 120) -> str:
    """The client code that runs a macro through the lab's Door and waits for its end."""
    return f"run_macro('door/lab/1', *{list(args)!r}, say=lambda line: None, timeout={timeout})"


def _last_scan(lab):
    """The newest entry of the lab's scan file (Sardana's HDF5 recorder, written on motion)."""
    path = lab.data_dir / "scans" / "scans.h5"
    with h5py.File(path, "r", locking=False) as f:
        name = sorted(f.keys(), key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else -1)[-1]
        entry = f[name]
        return {key: item[()] for key, item in entry["measurement"].items() if isinstance(item, h5py.Dataset)}


def test_a_scan_with_channels_on_two_hosts_references_the_frames_recorded_on_acq(hosts_lab):
    client = hosts_lab.client
    client.call(_macro("senv", "ActiveMntGrp", "mg_camera"))
    try:
        client.call(_macro("ascan", "hwp", 0, 20, 4, 0.02), timeout=150)
    finally:
        client.call(_macro("senv", "ActiveMntGrp", "mg_power"))
    scan = _last_scan(hosts_lab)
    assert len(scan["hwp"]) == 5 and len(scan["power"]) == 5  # the meter, on motion
    refs = [r.decode() if isinstance(r, bytes) else str(r) for r in scan["camera"]]  # the camera, on acq
    assert all(r.startswith("h5file://") and "#index=" in r for r in refs), refs
    files = {r[len("h5file://"):].split("::")[0] for r in refs}
    assert len(files) == 1
    frames_file = files.pop()
    assert frames_file.startswith(str(hosts_lab.data_dir / "data")), frames_file
    with h5py.File(frames_file, "r", locking=False) as f:
        dataset = f[refs[0].split("::")[1].split("#")[0]]
        indexes = [int(r.split("#index=")[1]) for r in refs]
        assert indexes == sorted(indexes) and max(indexes) < len(dataset)
        assert dataset[indexes[-1]].ndim == 2 and dataset[indexes[-1]].any()


def _state(client, device: str) -> str:
    return client.call(f"result = str(proxy({device!r}, 3000).state())", timeout=30)


def _start_scan(client, *args: object) -> None:
    """A scan started from the client in the background, returned once it has recorded points
    (its elements are in use: preparing a scan may still need the database)."""
    client.call("scan_lines = []\n"
                f"background('scan', run_macro, 'door/lab/1', *{list(args)!r}, say=scan_lines.append, timeout=180)")

    def points() -> int:
        return client.call("import re\nresult = sum(bool(re.match(r'\\s*\\d+\\s+-?\\d', line)) for line in scan_lines)")

    wait_until(lambda: points() >= 2 or client.call("result = outcome('scan')"), timeout=30, interval=0.1,
               what="the scan to record its first points")
    assert client.call("result = outcome('scan')") is None, "the scan ended before the test could cut a link"


def _scan_outcome(client, timeout: float) -> dict:
    wait_until(lambda: client.call("result = outcome('scan')") is not None, timeout=timeout, interval=0.3,
               what="the scan to end")
    return client.call("result = outcome('scan')")


def test_the_database_cut_mid_scan(hosts_lab):
    """Running servers keep serving, the scan goes on, a new client is told what is wrong, and
    everything works again once the database host is back."""
    lab, client = hosts_lab, hosts_lab.client
    _state(client, "lab/maitai/1")  # the client knows the laser before the cut, as a GUI would
    _start_scan(client, "ascan", "hwp", 0, 40, 40, 0.1)
    lab.network.cut("db")
    try:
        status = lab.tangodaq("client", "status", timeout=60)
        assert status.returncode == 3, status.stdout + status.stderr
        assert "no Tango database answers at db:10000" in status.stdout and "network" in status.stdout
        assert _state(client, "lab/maitai/1") == "OFF"  # served from the motion host, no database needed
        outcome = _scan_outcome(client, timeout=90)
        assert outcome["ok"], outcome
    finally:
        lab.network.restore("db")
    status = lab.tangodaq("client", "status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "lab/camera/1" in status.stdout and "lab/maitai/1" in status.stdout
    assert len(_last_scan(lab)["hwp"]) == 41


def test_the_client_cut_mid_macro(hosts_lab):
    """The macro completes without its client; the client, back, gets its end and new events.

    The cut ends as soon as an observer on the motion host sees the Door back ON: a workstation's
    short outage (a switch rebooting, Wi-Fi roaming), shorter than the events' heartbeat, after
    which the Door's events are late, not lost (a longer one: ``MacroEndUnknown``)."""
    lab, client = hosts_lab, hosts_lab.client
    observer = lab.observer
    client.call("subscribe('lab/esp300/y', 'Position')")
    _start_scan(client, "ascan", "hwp", 0, 9, 9, 0.1)
    lab.network.cut("client")
    try:
        wait_until(lambda: observer.call("result = str(proxy('door/lab/1', 3000).state())") == "ON", timeout=60,
                   interval=0.05, what="the macro to finish while its client is cut off")
    finally:
        lab.network.restore("client")
    outcome = _scan_outcome(client, timeout=60)
    assert outcome["ok"], outcome  # the client saw the macro's own end
    assert len(_last_scan(lab)["hwp"]) == 10
    client.call(_macro("mv", "stage_y", 1.5))

    def moved() -> bool:
        got = client.call("with lock:\n    result = list(events['lab/esp300/y/position'])")
        return any(kind == "value" and abs(value - 1.5) < 1e-3 for kind, value in got)

    wait_until(moved, timeout=20, interval=0.3, what="the client's Position events after its link came back")


def test_the_acquisition_host_cut_mid_recording(hosts_lab):
    """The scan says which channel failed; the recording on the cut host stays a readable file
    with its frames and its loss counts."""
    lab, client = hosts_lab, hosts_lab.client
    client.call(_macro("senv", "ActiveMntGrp", "mg_camera"))
    try:
        _start_scan(client, "ascan", "hwp", 0, 40, 40, 0.05)
        wait_until(lambda: client.call("result = proxy('lab/datawriter/1').read_attribute('Recording').value"),
                   timeout=30, interval=0.1, what="the camera's recording to start")
        lab.network.cut("acq")
        try:
            outcome = _scan_outcome(client, timeout=90)
        finally:
            lab.network.restore("acq")
    finally:
        client.call(_macro("senv", "ActiveMntGrp", "mg_power"))
    assert not outcome["ok"], outcome
    assert "Fault state" in outcome["error"] and "lab/camera/1" in outcome["error"], outcome  # which, and why
    writer = "proxy('lab/datawriter/1')"
    path = client.call(f"result = {writer}.read_attribute('FilePath').value")
    if client.call(f"result = {writer}.read_attribute('Recording').value"):
        client.call(f"{writer}.command_inout('StopRecording')")
    wait_until(lambda: not client.call(f"result = {writer}.read_attribute('Recording').value"), timeout=30,
               what="the recording to close")
    camera = "entry/instrument/lab_camera_1/frames"
    with h5py.File(path, "r") as f:  # plain h5py, as a scientist opens it
        frames = f[f"{camera}/data"]
        assert frames.ndim == 3 and len(frames) >= 2 and frames[len(frames) - 1].any()  # the points before the cut
        assert len(f[f"{camera}/timestamp_bof"]) == len(frames)
        assert int(f[f"{camera}/lost_records"][()]) == 0  # counted, and none lost: the ring and the file share a host
        assert "end_time" in f["entry"]
