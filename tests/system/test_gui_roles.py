"""A deployment that names its devices ``b12/...``: the GUI, the Sardana controllers and the
experiment code follow the roles stored in its database, not the simulated lab's names.

One embedded Tango database for the module (no device servers: what is checked is which devices
the clients address, and a GUI must open on a lab whose devices are down anyway). The roles are
written as ``tangodaq up``/``deploy`` write them (``tango_db.roles.write_roles``); one device of
class Ell14 is defined under a role of the facility's own (``analyser``) to show that the device's
class puts it on the Motion panel. Starts a server: run under the lab lock (tests/README rules).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import threading
from pathlib import Path

import pytest
import tango

from tango_db import embedded_db, roles
from tests.ports import free_port_block
from tests.waiting import wait_until

pytestmark = pytest.mark.system

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

ROOT = Path(__file__).resolve().parents[2]

B12_ROLES = {
    "laser": "b12/laser/maitai",
    "meter": "b12/meter/1830c",
    "camera": "b12/camera/bsi",
    "datawriter": "b12/daq/writer",
    "stage_x": "b12/stage/x",
    "stage_y": "b12/stage/y",
    "stage_z": "b12/stage/z",
    "hwp": "b12/mount/hwp",
    "pol": "b12/mount/pol",
    "qwp": "b12/mount/qwp",
    "analyser": "b12/mount/analyser",
    "pool": "b12/pool/1",
    "macroserver": "b12/macroserver/1",
    "door": "b12/door/1",
}


@pytest.fixture(scope="module")
def b12_db(tmp_path_factory):
    """An embedded database on a free port holding the b12 roles; yields its TANGO_HOST."""
    folder = tmp_path_factory.mktemp("b12-db")
    port = free_port_block(span=1)
    host = "127.0.0.1"
    env = {**os.environ, **embedded_db.database_env(folder / "tango_database.db")}
    log = open(folder / "database.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(embedded_db.database_argv(host, port), env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or embedded_db.database_answers(host, port, 1.0),
                   timeout=30, what="the embedded database to answer")
        assert proc.poll() is None, (folder / "database.log").read_text()
        db = tango.Database(host, port)
        roles.write_roles(db, B12_ROLES)
        info = tango.DbDevInfo()
        info.name, info._class, info.server = "b12/mount/analyser", "Ell14", "Ell14/b12"
        db.add_device(info)
        yield f"{host}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        roles._cache.clear()  # no b12 roles left cached for later tests of this session


@pytest.fixture
def b12_default_db(b12_db, monkeypatch):
    """TANGO_HOST pointing at the b12 database, as in a process of that facility (Pool, CLI)."""
    monkeypatch.setenv("TANGO_HOST", b12_db)
    roles._cache.clear()
    yield b12_db
    roles._cache.clear()


def app_instance():
    from taurus.qt.qtgui.application import TaurusApplication

    return TaurusApplication.instance() or TaurusApplication(
        ["test_gui_roles"], cmd_line_parser=None, app_name="tangodaq-gui-test")


@pytest.fixture(scope="module")
def window(b12_db):
    import taurus

    app_instance()
    taurus.Manager()
    threads_before = {t.ident for t in threading.enumerate()}
    from taurus_gui import LabWindow

    win = LabWindow(b12_db)  # roles read from that database, not from TANGO_HOST
    win.show()
    app_instance().processEvents()
    yield win
    win.close()
    win.deleteLater()
    app_instance().processEvents()

    def left_behind():
        return [t.name for t in threading.enumerate() if t.ident not in threads_before]

    wait_until(lambda: not left_behind(), timeout=8, what=f"the GUI's threads to end: {left_behind()}")


def model_devices(win) -> set[str]:
    """The device part of every Taurus model in the window (``tango://h:p/a/b/c[/attr]``)."""
    from taurus.external.qt import Qt

    models: list[str] = []
    for widget in win.findChildren(Qt.QWidget):
        get = getattr(widget, "getModelName", None)
        if get is not None:
            names = get()
            models.extend(names if isinstance(names, list | tuple) else [names])
    for trend_set in win.power_meter.trend.getTrendSets():
        models.append(trend_set.getFullModelName())
    models.append(win.camera.feed._attribute.getFullName())
    devices = set()
    for model in filter(None, models):
        path = str(model).split("://", 1)[-1].split("/", 1)[-1]
        devices.add("/".join(path.split("/")[:3]).lower())
    return devices


def test_window_shows_the_devices_the_roles_name(window, b12_db):
    assert window.tango_host == b12_db
    assert set(window.lab.states) == set(B12_ROLES.values())
    assert set(window.panels) == {"Lab", "Laser", "Motion", "Power meter", "Camera"}
    assert window.laser.device == "b12/laser/maitai"
    assert set(window.motion.rows) == {"b12/stage/x", "b12/stage/y", "b12/stage/z", "b12/mount/hwp",
                                       "b12/mount/pol", "b12/mount/qwp", "b12/mount/analyser"}
    assert "home" in window.motion.rows["b12/mount/analyser"]  # a mount by its class: Home offered
    assert "home" not in window.motion.rows["b12/stage/x"]
    assert window.layout_info.door == "b12/door/1"
    assert window.layout_info.macroserver == "b12/macroserver/1"
    bound = model_devices(window)
    assert bound <= set(B12_ROLES.values()), f"widgets bound to other devices: {bound - set(B12_ROLES.values())}"
    assert {"b12/meter/1830c", "b12/camera/bsi", "b12/laser/maitai", "b12/door/1"} <= bound


def test_a_command_on_a_device_of_the_roles_reports_it_down(window):
    """The b12 devices have no server: a click says which device is unreachable, nothing raises."""
    window.laser.buttons["On"].click()
    app_instance().processEvents()
    _, text, is_error = window.history[-1]
    assert is_error and text.startswith("b12/laser/maitai On") and "not reachable" in text, text


def load_controller(name: str):
    spec = importlib.util.spec_from_file_location(f"ctrl_{name}", ROOT / "controllers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_controllers_default_to_the_devices_of_the_roles(b12_default_db):
    from sardana.pool.controller import DefaultValue

    meter = load_controller("PowerMeterController").PowerMeterController("pm", {})
    meter.AddDevice(1)
    assert meter.GetAxisExtraPar(1, "TangoDevice") == "b12/meter/1830c"
    assert meter.GetAxisAttributes(1)["TangoDevice"][DefaultValue] == "b12/meter/1830c"

    camera = load_controller("CameraController").CameraTwoDController("cam", {})
    camera.AddDevice(1)
    assert camera.GetAxisExtraPar(1, "TangoDevice") == "b12/camera/bsi"
    assert camera.GetAxisExtraPar(1, "DataWriter") == "b12/daq/writer"
    attrs = camera.GetAxisAttributes(1)
    assert (attrs["TangoDevice"][DefaultValue], attrs["DataWriter"][DefaultValue]) == (
        "b12/camera/bsi", "b12/daq/writer")
    camera.SetAxisExtraPar(1, "TangoDevice", "b12/camera/other")  # the memorized value wins
    assert camera.GetAxisExtraPar(1, "TangoDevice") == "b12/camera/other"


def test_experiment_addresses_the_roles_devices(b12_default_db):
    from tango_db import experiment

    assert experiment.device("door") == "b12/door/1"
    assert experiment.device("camera") == "b12/camera/bsi"
    with pytest.raises(tango.DevFailed) as failed:  # the laser's server is not defined there
        experiment.proxy("laser")
    assert "b12/laser/maitai" in str(failed.value)
    with pytest.raises(experiment.ExperimentError, match="no device for the role 'spectrometer'"):
        experiment.device("spectrometer")
