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
import sys
import threading
from pathlib import Path

import pytest
import tango

from tango_db import embedded_db, roles
from tests.ports import free_port_block
from tests.roles_b12 import B12_CLASSES, B12_ROLES
from tests.system.qt_app import app_instance
from tests.waiting import wait_until

pytestmark = pytest.mark.system

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

ROOT = Path(__file__).resolve().parents[2]



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
        for device, device_class in B12_CLASSES.items():
            info = tango.DbDevInfo()
            info.name, info._class, info.server = device, device_class, f"{device_class}/b12"
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


@pytest.fixture(scope="module")
def window(b12_db, tmp_path_factory):
    """The lab's taurusgui on the b12 database (its roles; no server runs there)."""
    import taurus

    patch = pytest.MonkeyPatch()
    app_instance()
    taurus.Manager()
    threads_before = {t.ident for t in threading.enumerate()}
    from taurus_gui import LabGui

    win = LabGui(b12_db, settings=str(tmp_path_factory.mktemp("b12-gui") / "gui.ini"))
    win.show()
    app_instance().processEvents()
    yield win
    win.close()
    win.deleteLater()
    app_instance().processEvents()
    patch.undo()
    roles._cache.clear()

    def left_behind():
        return [t.name for t in threading.enumerate() if t.ident not in threads_before]

    wait_until(lambda: not left_behind(), timeout=8, what=f"the GUI's threads to end: {left_behind()}")


def model_devices(win) -> set[str]:
    """The device part of every Taurus model in the window's panels (``tango://h:p/a/b/c[/attr]``)."""
    from taurus.external.qt import Qt

    from taurus_gui.widgets import EventFeed

    models: list[str] = []
    for widget in win.findChildren(Qt.QObject):
        if isinstance(widget, EventFeed):
            models.append(widget.model)
            continue
        get = getattr(widget, "getModelName", None)
        if get is not None and isinstance(widget, Qt.QWidget):
            names = get()
            models.extend(names if isinstance(names, list | tuple) else [names])
    for trend_set in win.panel_widget("Power meter").trend.getTrendSets():
        models.append(trend_set.getFullModelName())
    devices = set()
    for model in filter(None, models):
        path = str(model).split("://", 1)[-1].split("/", 1)[-1]
        devices.add("/".join(path.split("/")[:3]).lower())
    return devices


def test_window_shows_the_devices_the_roles_name(window, b12_db):
    """The renamed, larger lab gets its panels: every device of its roles, the facility's own
    mount on the Motion panel by its class; no Sardana panels (its MacroServer is not defined)."""
    from taurus_gui.config import INSTRUMENT_PANELS, SARDANA_PANELS

    assert window.tango_host == b12_db
    names = set(window.getPanelNames())
    assert set(INSTRUMENT_PANELS) <= names and not set(SARDANA_PANELS) & names, names
    overview = window.panel_widget("Lab overview")
    assert set(overview.states) == set(B12_ROLES.values())
    assert window.panel_widget("Laser").device == "b12/laser/maitai"
    motion = window.panel_widget("Motion")
    assert set(motion.rows) == {"b12/stage/x", "b12/stage/y", "b12/stage/z", "b12/mount/hwp",
                                "b12/mount/pol", "b12/mount/qwp", "b12/mount/analyser"}
    assert "home" in motion.rows["b12/mount/analyser"]  # a mount by its class: Home offered
    assert "home" not in motion.rows["b12/stage/x"]
    assert window.layout_info.door == "b12/door/1"
    bound = model_devices(window)
    assert bound <= set(B12_ROLES.values()), f"widgets bound to other devices: {bound - set(B12_ROLES.values())}"
    assert {"b12/meter/1830c", "b12/camera/bsi", "b12/laser/maitai", "b12/door/1"} <= bound


def test_a_command_on_a_device_of_the_roles_reports_it_down(window):
    """The b12 devices have no server: a click says which device is unreachable, nothing raises."""
    window.panel_widget("Laser").buttons["On"].click()
    app_instance().processEvents()
    _, text, is_error = window.history[-1]
    assert is_error and text.startswith("b12/laser/maitai On") and "not reachable" in text, text


def test_the_standard_taurusgui_launcher_opens_the_configuration(b12_db, tmp_path):
    """``taurus gui taurus_gui`` (Taurus' own launcher, any taurusgui user's command) opens the
    same panels for the lab of TANGO_HOST: started offscreen, it builds them and stays up."""
    env = {**os.environ, "TANGO_HOST": b12_db, "QT_QPA_PLATFORM": "offscreen",
           "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    script = (
        "import sys, taurus\n"
        "from taurus.qt.qtgui.taurusgui import taurusgui as tg\n"
        "from taurus.external.qt import Qt\n"
        "def check():\n"
        "    gui = [w for w in Qt.QApplication.topLevelWidgets() if isinstance(w, tg.TaurusGui)][0]\n"
        "    print('PANELS', sorted(gui.getPanelNames()), flush=True)\n"
        "    Qt.QApplication.instance().exit(0)\n"
        "show = tg.TaurusGui.show\n"
        "def shown(self):\n"
        "    show(self)\n"
        "    Qt.QTimer.singleShot(0, check)  # once the launcher's event loop runs\n"
        "tg.TaurusGui.show = shown\n"
        "sys.argv = ['taurusgui', 'taurus_gui']\n"
        "tg.gui_cmd(standalone_mode=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PANELS")), "")
    assert line, f"no GUI: {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for name in ("Lab overview", "Laser", "Motion", "Power meter", "Camera"):
        assert repr(name) in line, line


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
