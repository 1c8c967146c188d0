"""The lab over several hosts: the database, the motion/laser host, the acquisition host and a
users' workstation, each a network namespace with its own name, /etc/hosts and /dev/shm
(``tests/facility/hosts.py``), deployed once with `tangodaq deploy` and run by a Starter on each
server host. Everything the tests do, they do from the ``client`` host, as a user would.
"""

from __future__ import annotations

import json
import time

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
