"""`tangodaq deploy`'s decisions that need no database: what a hardware file must name, which
roles a partial deployment may change, the bench's ports, and the Sardana description."""

from __future__ import annotations

import json

import pytest

from deviceservers.bench.device import parse_ports
from tango_db import deploy
from tango_db.config import LAB_JSON, load_config, sardana_paths
from tango_db.sardana_setup import load_sardana_config

PORT = 21000


@pytest.fixture(scope="module")
def simulated():
    return load_config(None, None, data_dir="/srv/lab", port=PORT)


def test_a_hardware_file_must_name_every_instrument(simulated):
    overlay = {"servers": {"MaiTai": {"lab": {"MaiTai": {"lab/maitai/1": {"properties": {"SerialURL": ["/dev/ttyS0"]}}}}}}}
    problems = deploy.check_hardware(simulated, overlay)
    named = " ".join(problems)
    assert "lab/maitai/1" not in named
    assert "lab/powermeter/1 (Newport1830C): no SerialURL" in named
    assert "lab/camera/1 (Pvcam): no Backend" in named
    assert len([p for p in problems if "SerialURL" in p]) == 7  # 3 axes, 3 mounts, the meter


def test_the_example_hardware_file_is_complete():
    example = LAB_JSON.parent / "examples" / "hardware.json"
    config = load_config(example, None, data_dir="/srv/lab", port=PORT)
    assert deploy.check_hardware(config, json.loads(example.read_text())) == []
    camera = config["servers"]["Pvcam"]["lab"]["Pvcam"]["lab/camera/1"]["properties"]
    assert camera["Backend"] == ["pyvcam"] and "BenchScene" not in camera


def test_in_process_simulators_are_refused_even_when_named(simulated):
    overlay = {"servers": {"Newport1830C": {"lab": {"Newport1830C": {
        "lab/powermeter/1": {"properties": {"SerialURL": ["sim://newport1830c"]}}}}}}}
    merged = load_config(None, None, data_dir="/srv/lab", port=PORT)
    merged["servers"]["Newport1830C"]["lab"]["Newport1830C"]["lab/powermeter/1"]["properties"]["SerialURL"] = [
        "sim://newport1830c"]
    assert any("in-process simulator" in p for p in deploy.check_hardware(merged, overlay))


def test_a_partial_deployment_keeps_the_other_hosts_roles(simulated):
    stored = dict(simulated["roles"], laser="b12/laser/maitai")
    acquisition = {"servers": {"Pvcam": simulated["servers"]["Pvcam"]},
                   "roles": dict(simulated["roles"], camera="lab/camera/1")}
    roles = deploy.deployed_roles(acquisition, stored)
    assert roles["laser"] == "b12/laser/maitai"  # not this deployment's device: kept
    assert roles["camera"] == "lab/camera/1"


def test_the_bench_serves_every_socket_url_and_its_control_port(simulated):
    config = deploy.add_bench(simulated, PORT, fast=True)
    props = config["servers"]["VirtualBench"]["lab"]["VirtualBench"]["lab/bench/1"]["properties"]
    ports, control = parse_ports(props["Ports"])
    assert ports == {"esp300": ("127.0.0.1", PORT + 1), "ell14": ("127.0.0.1", PORT + 2),
                     "maitai": ("127.0.0.1", PORT + 3), "newport1830c": ("127.0.0.1", PORT + 4)}
    assert control == ("127.0.0.1", PORT + deploy.BENCH_CONTROL_OFFSET)
    assert props["Fast"] == ["true"]
    assert deploy.starter_level("VirtualBench") < deploy.starter_level("MaiTai") < deploy.starter_level("Pool") \
        < deploy.starter_level("MacroServer")


def test_sardana_paths_point_at_the_installed_packages(simulated):
    paths = sardana_paths()
    pool = simulated["servers"]["Pool"]["lab"]["Pool"]["pool/lab/1"]["properties"]["PoolPath"]
    assert pool == [paths["TANGODAQ_CONTROLLERS"]]
    assert deploy.check_paths(simulated) == []
    broken = json.loads(json.dumps(simulated))
    broken["servers"]["Pool"]["lab"]["Pool"]["pool/lab/1"]["properties"]["PoolPath"] = ["/nowhere/controllers"]
    assert deploy.check_paths(broken) == ["pool/lab/1 PoolPath /nowhere/controllers does not exist"]


def test_the_sardana_description_follows_the_roles_and_the_site():
    roles = {"stage_x": "b12/esp300/x", "stage_y": "b12/esp300/y", "stage_z": "b12/esp300/z",
             "hwp": "b12/ell14/hwp", "pol": "b12/ell14/pol", "qwp": "b12/ell14/qwp", "laser": "b12/maitai/1",
             "meter": "b12/powermeter/1", "camera": "b12/camera/1", "datawriter": "b12/datawriter/1",
             "pool": "pool/b12/1", "macroserver": "macroserver/b12/1"}
    sardana = load_sardana_config(data_dir="/srv/b12", roles=roles)
    devices = {e["attributes"]["TangoDevice"] for c in sardana["controllers"] for e in c.get("elements", [])}
    assert devices == {v for k, v in roles.items() if k not in ("pool", "macroserver", "datawriter")}
    assert sardana["pool"] == "pool/b12/1"
    assert sardana["environment"]["ScanDir"] == "/srv/b12/scans"
    with pytest.raises(ValueError, match="role 'hwp'"):
        load_sardana_config(roles={k: v for k, v in roles.items() if k != "hwp"})


def test_comments_are_allowed_anywhere_in_a_configuration(tmp_path):
    overlay = tmp_path / "hw.json"
    overlay.write_text(json.dumps({"_what": "x", "servers": {"MaiTai": {"lab": {"MaiTai": {
        "_why": "comment", "lab/maitai/1": {"_why": "comment", "properties": {"_BaudRate": ["115200"]}}}}}}}))
    config = load_config(overlay, None, data_dir="/srv/lab", port=PORT)
    props = config["servers"]["MaiTai"]["lab"]["MaiTai"]["lab/maitai/1"]["properties"]
    assert "_BaudRate" not in props and "BaudRate" not in props and props["SerialURL"]


def test_a_site_places_servers_on_hosts_by_server_or_instance(tmp_path):
    site_file = tmp_path / "site.json"
    site_file.write_text(json.dumps({"hosts": {"Pvcam": "acq1", "DataWriter/lab": "acq1", "Pvcam/lab2": "acq2"}}))
    site = deploy.Site.load(site_file)
    assert site.host_of("Pvcam/lab", "motion") == "acq1"
    assert site.host_of("Pvcam/lab2", "motion") == "acq2"  # the instance's own entry wins
    assert site.host_of("DataWriter/lab", "motion") == "acq1"
    assert site.host_of("MaiTai/lab", "motion") == "motion"
    site_file.write_text(json.dumps({"hosts": {"Pvcam": "acq1.example.org"}}))
    with pytest.raises(deploy.DeployError, match="short host name"):
        deploy.Site.load(site_file)


def test_a_bench_on_another_host_than_some_servers_is_reached_by_its_host_name(simulated):
    config = deploy.bench_on_host(deploy.add_bench(simulated, PORT, fast=True), "motion")
    props = config["servers"]["VirtualBench"]["lab"]["VirtualBench"]["lab/bench/1"]["properties"]
    ports, control = parse_ports(props["Ports"])
    assert set(ports.values()) == {("motion", PORT + n) for n in (1, 2, 3, 4)} and control[0] == "motion"
    text = json.dumps(config)
    assert "127.0.0.1" not in text and f"socket://motion:{PORT + 1}" in text
