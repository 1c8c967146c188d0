"""The lab's taurusgui start-up: from a new process to every panel built and showing live values.

Each run is a fresh process (imports included, as an operator starting ``tangodaq gui``), offscreen,
attached to a lab: ``--tango-host H:P`` for a running one, else a private lab is started for the
run (``tangodaq up`` in a temporary folder on a free port) and stopped afterwards. Printed per run:
the time to import Taurus and Sardana's widgets, to build the GUI (every panel, Sardana's macro
panels included), and until every Taurus model of every panel has received its first value; and,
per panel, how many models it has and when its last one got a value. The target is 5 s for the
whole GUI (Taurus users report 4-5 s for 30-40 models); the ratio to it is printed, nothing is
asserted.

    python benchmarks/bench_gui.py [--tango-host H:P] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 5.0


def child(tango_host: str, settings: str) -> None:
    """One start-up, printed as one JSON line."""
    t0 = time.monotonic()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["TANGO_HOST"] = tango_host
    sys.path.insert(0, str(ROOT))
    from taurus.qt.qtgui.application import TaurusApplication

    app = TaurusApplication(["bench_gui"], cmd_line_parser=None, app_name="tangodaq-bench-gui")
    import sardana.taurus.qt.qtgui.extra_macroexecutor  # noqa: F401 - counted in the import time

    from taurus_gui import LabGui
    from taurus_gui.widgets import EventFeed

    imported = time.monotonic() - t0
    gui = LabGui(tango_host, settings=settings)
    gui.resize(1600, 1000)
    gui.show()
    from taurus.taurusstatecontroller import application

    application.application_started()
    built = time.monotonic() - t0

    def pending(widget) -> list[str]:
        """The models under ``widget`` without a first value yet."""
        out = []
        for child in widget.findChildren(EventFeed):
            if child.events == 0:
                out.append(child.model)
        from taurus.qt.qtgui.base import TaurusBaseComponent

        for child in widget.findChildren(Qt.QWidget):
            if isinstance(child, TaurusBaseComponent) and child.getModelName() and hasattr(child, "text"):
                if not child.getModelObj() or child.getModelValueObj() is None:
                    out.append(str(child.getModelName()))
        return out

    from taurus.external.qt import Qt

    panels = {name: gui.panel_widget(name) for name in gui.getPanelNames()}
    panels = {name: widget for name, widget in panels.items() if widget is not None}  # "Manual" without a browser
    ready_at: dict[str, float] = {}
    models: dict[str, int] = {}
    for name, widget in panels.items():
        models[name] = len(widget.findChildren(EventFeed)) + sum(
            1 for w in widget.findChildren(Qt.QWidget) if getattr(w, "getModelName", None) and w.getModelName())
    deadline = time.monotonic() + 30
    while len(ready_at) < len(panels) and time.monotonic() < deadline:
        app.processEvents()
        for name, widget in panels.items():
            if name not in ready_at and not pending(widget):
                ready_at[name] = time.monotonic() - t0
        time.sleep(0.01)
    print(json.dumps({"imported": imported, "built": built, "startup": gui.startup_s,
                      "ready": max(ready_at.values(), default=float("nan")),
                      "unready": sorted(set(panels) - set(ready_at)),
                      "panels": {n: [models[n], ready_at.get(n, float("nan"))] for n in panels}}), flush=True)
    os._exit(0)  # no settings saved, no teardown in the measurement


def start_lab() -> tuple[str, dict]:
    sys.path.insert(0, str(ROOT))
    from tests.ports import free_port_block

    home = tempfile.mkdtemp(prefix="bench-gui-")
    env = {**os.environ, "TANGODAQ_HOME": home, "TANGO_HOST": f"127.0.0.1:{free_port_block()}",
           "TANGODAQ_BENCH_FAST": "1"}
    env.pop("TANGODAQ_SHM_DIR", None)
    tangodaq = str(Path(sys.executable).parent / "tangodaq")
    subprocess.run([tangodaq, "up", "--timeout", "120"], env=env, check=True, stdout=subprocess.DEVNULL)
    return env["TANGO_HOST"], env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tango-host", help="a running lab (default: start a private one)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            child(args.tango_host, args.settings)
        except BaseException:  # noqa: BLE001 - Taurus' excepthook would open a modal box and hang
            import traceback

            traceback.print_exc()
            os._exit(1)
        return
    env = None
    tango_host = args.tango_host
    if tango_host is None:
        print("starting a private lab ...", flush=True)
        tango_host, env = start_lab()
    try:
        print(f"lab {tango_host}; target {TARGET_S:.1f} s for every panel with live values\n")
        print(f"{'run':>3} {'import s':>9} {'built s':>8} {'LabGui s':>9} {'all live s':>11} {'/target':>8}")
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, __file__, "--child", "--tango-host", tango_host,
                                      "--settings", str(Path(tmp) / "gui.ini")],
                                     capture_output=True, text=True, timeout=120, cwd=ROOT)
            line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
            if line is None:
                print(f"run {run} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
                continue
            r = json.loads(line)
            print(f"{run:>3} {r['imported']:9.2f} {r['built']:8.2f} {r['startup']:9.2f} {r['ready']:11.2f} "
                  f"{r['ready'] / TARGET_S:8.2f}" + (f"   not live: {r['unready']}" if r["unready"] else ""))
        print("\nlast run, per panel (models, s from process start to its last first value):")
        for name, (count, ready) in sorted(r["panels"].items(), key=lambda kv: kv[1][1]):
            print(f"  {name:<20} {count:>4} models  {ready:6.2f} s")
    finally:
        if env is not None:
            subprocess.run([str(Path(sys.executable).parent / "tangodaq"), "down"], env=env,
                           stdout=subprocess.DEVNULL, check=False)


if __name__ == "__main__":
    main()
