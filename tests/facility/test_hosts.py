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
