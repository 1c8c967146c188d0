"""The operator model's rules (tango_db/access_control.py), evaluated as TangoAccessControl 9.3.4
evaluates them (a transcription of its DbUtils.cpp below), and the light-Door check."""

from __future__ import annotations

import pytest

from deviceservers.MaiTai.lease import LightRefused, check_light_door
from tango_db import access_control as ac
from tango_db import deploy
from tango_db.config import load_config, server_instances

PORT = 21000
LASER = "lab/maitai/1"


def tac_match(expression: str, member: str) -> bool:
    """TangoAccessControl::match."""
    if expression in ("*", member):
        return True
    pos = expression.find("*")
    if pos < 0:
        return False
    if pos == 0:
        return expression[1:] in member
    before, after = expression[:pos], expression[pos + 1:]
    return member.startswith(before) if not after else member.startswith(before) and member.find(after) == pos


def tac_rights(rows: list[tuple[str, str, str]], device: str) -> str:
    """TangoAccessControl::get_rigths: one match gives its rights, several give read if any is read."""
    members = device.lower().split("/")
    matches = [r for _u, d, r in rows if all(tac_match(e, m) for e, m in zip(d.lower().split("/"), members, strict=True))]
    if not matches:
        return "unknown"
    if len(matches) == 1:
        return matches[0]
    return "read" if "read" in matches else "write"


def tac_access(device_rows, address_rows, user: str, ips: list[str], device: str) -> str:
    """GetAccessForMultiIp: the address pass, then the device pass (TAC 9.3.4's DbUtils.cpp)."""
    own = [a for u, a in address_rows if u == user]
    candidates = own if own else [a for u, a in address_rows if u in (user, "*")]

    def address_ok(ip: str) -> bool:
        p = ip.split(".")
        forms = {"*.*.*.*", f"{p[0]}.*.*.*", f"{p[0]}.{p[1]}.*.*", f"{p[0]}.{p[1]}.{p[2]}.*", ip}
        return any(a in forms for a in candidates)

    if not any(address_ok(ip) for ip in ips):
        return "read"
    mine = [r for r in device_rows if r[0] == user]
    others = [r for r in device_rows if r[0] == "*"]
    if not mine and not others:
        return "read"
    rights = tac_rights(mine, device)
    if rights != "unknown":
        return rights
    return "write" if tac_rights(others, device) == "write" else "read"  # cppTango: anything but write is read


#: what the tango-db package installs (init_tac_tables): everyone writes everything from anywhere
DEFAULT_DEVICE_ROWS = [("*", "*/*/*", "write")]
DEFAULT_ADDRESS_ROWS = [("*", "*.*.*.*")]


@pytest.fixture(scope="module")
def lab():
    config = deploy.add_laser_door(load_config(None, None, data_dir="/srv/lab", port=PORT))
    devices = {dev: cls for si in server_instances(config) for dev, cls in si.devices.items()}
    sardana = deploy.sardana_description(config, None, "/srv/lab")
    return config, ac.lab_devices(devices, config["roles"], sardana)


@pytest.fixture(scope="module")
def policy():
    groups = {"laser": {"lena"}, "optics": {"otto", "lena"}}
    return ac.AccessPolicy.from_site(
        {"operators": {"groups": ["optics"], "users": ["Olga"]}, "laser_operators": {"groups": ["laser"]},
         "lab_hosts": ["10.1.2.*"]},
        "tango", members=lambda g: groups[g])


def access(policy, lab, user: str, device: str, ip: str = "10.1.2.7") -> str:
    rows = DEFAULT_DEVICE_ROWS + sorted(ac.device_rules(policy, lab))
    addresses = DEFAULT_ADDRESS_ROWS + sorted(ac.address_rules(policy))
    return tac_access(rows, addresses, user, [ip], device)


def test_groups_expand_to_users_and_a_laser_operator_is_not_also_a_plain_operator(policy):
    assert policy.operators == {"otto", "olga"}
    assert policy.laser_operators == {"lena"}


def test_the_laser_door_sits_beside_the_lab_door(lab):
    config, devices = lab
    assert config["roles"]["laser_door"] == "door/lab/laser"
    assert devices.light == ["door/lab/laser", LASER]
    assert devices.managers == ["macroserver/lab/1", "pool/lab/1"]
    assert "door/lab/1" in devices.plain and "*/movable_ctrl/*" in devices.plain and "mntgrp/*/mg_power" in devices.plain


def test_everyone_else_reads_the_lab_but_not_the_rest_of_the_facility(policy, lab):
    _config, devices = lab
    for dev in (LASER, "lab/esp300/x", "door/lab/1", "door/lab/laser", "motor/movable_ctrl/4", "pool/lab/1"):
        assert access(policy, devices, "guest", dev) == "read", dev
    assert access(policy, devices, "guest", "b12/other/device") == "write"  # the facility's default, untouched


def test_operators_move_and_measure_but_make_no_light(policy, lab):
    _config, devices = lab
    for dev in ("lab/esp300/x", "lab/ell14/hwp", "lab/camera/1", "lab/datawriter/1", "door/lab/1",
                "motor/movable_ctrl/4", "mntgrp/pool_lab_1/mg_power", "controller/tangomovablecontroller/movable_ctrl"):
        assert access(policy, devices, "otto", dev) == "write", dev
    for dev in (LASER, "door/lab/laser", "pool/lab/1", "macroserver/lab/1"):
        assert access(policy, devices, "otto", dev) == "read", dev


def test_laser_operators_make_light_only_from_the_lab_hosts(policy, lab):
    _config, devices = lab
    assert access(policy, devices, "lena", LASER) == "write"
    assert access(policy, devices, "lena", "door/lab/laser") == "write"
    assert access(policy, devices, "lena", LASER, ip="192.168.0.9") == "read"
    assert access(policy, devices, "tango", LASER) == "write"  # the servers' own account (MacroServer, Pool)
    assert access(policy, devices, "tango", LASER, ip="192.168.0.9") == "read"


def test_read_only_clients_may_make_safe_and_never_make_light():
    lists = ac.allowed_commands({"MaiTai", "Esp300", "Ell14", "Pvcam", "DataWriter", "Door", "Pool", "Newport1830C"})
    assert lists["MaiTai"] == ["CloseShutter", "Off"]
    assert "StopMacro" in lists["Door"] and "AbortMacro" in lists["Door"] and "RunMacro" not in lists["Door"]
    assert lists["DataWriter"] == ["StopRecording"] and "Stop" in lists["Motor"]
    assert lists["Newport1830C"] == []
    for cls, commands in ac.SAFE_COMMANDS.items():
        assert not set(commands) & set(ac.LIGHT_COMMANDS), cls
        assert not {"ResumeMacro", "RunMacro", "CreateController", "CreateElement", "SendToController",
                    "PutFile", "SetMacroCode", "SetControllerCode"} & set(commands), cls


def test_rows_are_plain_sql_with_every_column():
    assert ac.insert_device_sql("otto", LASER, "read") == (
        "INSERT INTO access_device (user, device, rights, updated, accessed) VALUES "
        "('otto', 'lab/maitai/1', 'read', NOW(), NOW());")
    assert "updated" in ac.insert_address_sql("otto", "10.1.2.*")
    with pytest.raises(ac.AccessConfigError):
        ac.insert_device_sql("otto'; DROP TABLE device; --", LASER, "read")


@pytest.mark.parametrize("section, reason", [
    ({"operator": {}}, "unknown keys operator"),
    ({"operators": {"users": ["a b"]}}, "is not a user name"),
    ({"operators": {"users": ["*"]}}, "is not a user name"),
    ({"lab_hosts": ["10.0.0.0/24"]}, "not an IPv4 address"),
    ({"lab_hosts": ["10.0.300.1"]}, "not an IPv4 address"),
])
def test_a_bad_section_is_refused_with_the_reason(section, reason):
    with pytest.raises(ac.AccessConfigError, match=reason):
        ac.AccessPolicy.from_site(section, "tango", members=lambda g: set(), addresses=lambda: ["10.0.0.1"])


def test_lab_hosts_default_to_this_hosts_addresses():
    policy = ac.AccessPolicy.from_site({}, "tango")
    assert policy.lab_hosts == ac.local_addresses() and policy.lab_hosts
    assert all(not ip.startswith("127.") for ip in policy.lab_hosts) or len(policy.lab_hosts) == 1


def test_light_only_from_the_laser_door():
    check_light_door("door/lab/1", "")  # no access control: any Door
    check_light_door("tango://host:10000/Door/Lab/Laser", "door/lab/laser")
    with pytest.raises(LightRefused, match="only from the laser Door door/lab/laser"):
        check_light_door("door/lab/1", "door/lab/laser")


def test_the_example_site_file_holds_a_valid_operator_model():
    from tango_db.config import LAB_JSON

    site = deploy.Site.load(LAB_JSON.parent / "examples" / "site.json")
    policy = ac.AccessPolicy.from_site(site.access_control, site.service_user, members=lambda g: {f"{g}-member"})
    assert policy.operators == {"alice", "lab-operators-member"}
    assert policy.laser_operators == {"bob", "laser-safety-trained-member"}
    assert policy.lab_hosts == ["192.168.12.*"]


class FakeDatabase:
    """The few database calls deploy's access-control step makes, over in-memory tables."""

    def __init__(self) -> None:
        self.device_rows = {("*", "*/*/*", "write")}
        self.address_rows = {("*", "*.*.*.*")}
        self.class_props: dict[str, list[str]] = {}
        self.free_props: dict[tuple[str, str], list[str]] = {}

    def command_inout(self, command: str, query: str):
        assert command == "DbMySqlSelect"
        rows = sorted(self.device_rows if "access_device" in query else self.address_rows)
        columns = len(rows[0]) if rows else 1
        return [[1] * (len(rows) * columns) + [columns], [v for row in rows for v in row]]

    def get_class_property(self, cls, name):
        return {name: self.class_props.get(cls, [])}

    def put_class_property(self, cls, props):
        self.class_props[cls] = list(props["AllowedAccessCmd"])

    def get_device_info(self, _name):
        return object()

    def get_property(self, obj, name):
        return {name: self.free_props.get((obj, name), [])}

    def put_property(self, obj, props):
        for name, value in props.items():
            self.free_props[(obj, name)] = list(value)

    def run_sql(self, statements: list[str]) -> None:
        import re

        for st in statements:
            values = tuple(re.findall(r"'([^']*)'", st))
            table = self.device_rows if "access_device" in st else self.address_rows
            row = values[:3] if table is self.device_rows else values[:2]
            (table.add if st.startswith("INSERT") else table.discard)(row)


def test_deploy_writes_the_rules_once_and_registers_the_service_only_when_tac_answers(monkeypatch, lab):
    config, _devices = lab
    db = FakeDatabase()
    monkeypatch.setattr(deploy, "run_sql", db.run_sql)
    site = deploy.Site(access_control={"operators": {"users": ["otto"]}, "laser_operators": {"users": ["lena"]},
                                       "lab_hosts": ["10.1.2.*"]})
    sardana = deploy.sardana_description(config, None, "/srv/lab")

    monkeypatch.setattr(deploy, "tac_answers", lambda _db: False)
    notes: list[str] = []
    changes = deploy.access_changes(db, config, site, sardana, notes)
    shown = [c.description for c in changes]
    assert "rule: otto read lab/maitai/1" in shown and "rule: lena from 10.1.2.*" in shown
    assert not any("Services" in d for d in shown) and "does not answer" in notes[0]
    for change in changes:
        change.apply()
    assert ("otto", "lab/maitai/1", "read") in db.device_rows and db.class_props["MaiTai"] == ["CloseShutter", "Off"]

    monkeypatch.setattr(deploy, "tac_answers", lambda _db: True)
    changes = deploy.access_changes(db, config, site, sardana, [])
    assert [c.description for c in changes] == [
        "put_property(CtrlSystem, Services += AccessControl/tango:sys/access_control/1)"]
    changes[0].apply()
    assert deploy.access_changes(db, config, site, sardana, []) == []  # a second deploy changes nothing

    # otto leaves the operators: his rows on the lab's devices go, the facility's default stays
    site.access_control["operators"]["users"] = []
    changes = deploy.access_changes(db, config, site, sardana, [])
    assert "remove rule: otto read lab/maitai/1" in [c.description for c in changes]
    for change in changes:
        change.apply()
    assert not any(row[0] == "otto" for row in db.device_rows) and ("*", "*/*/*", "write") in db.device_rows
