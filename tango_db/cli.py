"""The `tangodaq` command: run the simulated lab, or deploy it into a facility database.

tangodaq up [--foreground] [--config OVERLAY.json] [--lab LAB.json] [--timeout S]
tangodaq status
tangodaq down
tangodaq deploy [--config OVERLAY.json] [--starter-host HOST] [--write]
tangodaq bench ...          (the virtual bench, started by `up` when lab.json uses socket://)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import embedded_db, paths
from .config import LAB_JSON, describe_calls, load_config, server_instances, write_config
from .processes import STARTER_LEVEL_OFFSET, lab_specs
from .report import device_table, lab_report
from .supervisor import AlreadyRunning, Supervisor, alive, read_state, running_state, stop_lab


def _say(msg: str) -> None:
    print(msg, flush=True)


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


# --- up -----------------------------------------------------------------------------------------


def _already_running(state: dict, args) -> int:
    _say(f"a lab is already running from {paths.data_dir()} (supervisor pid {state['supervisor_pid']}):")
    requested = "{}:{}".format(*embedded_db.tango_host())
    if os.environ.get("TANGO_HOST") and requested != state["tango_host"]:
        _say(
            f"  (it uses TANGO_HOST={state['tango_host']}, not {requested}: `tangodaq down` first to change)"
        )
    if (_abs(args.config), _abs(args.lab)) != (state.get("overlay"), state.get("lab")) and (
        args.config or args.lab
    ):
        _say("  (it runs another configuration: `tangodaq down` first to change)")
    _say("")
    _say(lab_report(state))
    return 0


def cmd_up(args) -> int:
    state = running_state()
    if state:
        return _already_running(state, args)
    try:
        config = load_config(args.config, args.lab)
    except (OSError, ValueError) as exc:
        _say(f"cannot read the configuration: {exc}")
        return 2
    if args.foreground or args.supervisor_child:
        return _supervise(args, config)
    return _detach(args)


def _supervise(args, config: dict) -> int:
    host, port = embedded_db.tango_host()
    th = f"{host}:{port}"
    user_tango_host = os.environ.get("TANGO_HOST")
    os.environ["TANGO_HOST"] = th
    _say(f"tangodaq: starting the lab in {paths.data_dir()} (TANGO_HOST={th})")
    if embedded_db.database_answers(host, port):
        if not args.use_existing_db:
            _say(
                f"  database … a Tango database already answers at {th}, and `up` would write the simulated "
                "lab's settings (sim:// and socket:// URLs) into it.\n"
                "  If it is a facility database, deploy with `tangodaq deploy --config hardware.json` instead.\n"
                f"  To run the simulated lab on it anyway: tangodaq up --use-existing-db\n"
                "  To run it on its own embedded database: TANGO_HOST=127.0.0.1:<free port> tangodaq up"
            )
            return 2
        embedded = False
        _say(f"  database … a Tango database answers at {th}: using it (--use-existing-db)")
    elif embedded_db.port_open(host, port):
        _say("  database … FAILED: " + embedded_db.port_busy_message(host, port))
        return 2
    else:
        embedded = True

    lab_name = Path(args.lab).name if args.lab else LAB_JSON.name
    if args.config:
        lab_name += f" + {Path(args.config).name}"

    def load() -> str:
        import tango

        from .roles import write_roles

        db = tango.Database(host, port)
        calls = write_config(config, db)
        if write_roles(db, config["roles"]):
            calls.append(("put_property", ("tangodaq", "Roles"), {}))
        return (
            f"{lab_name} loaded ({len(calls)} change{'s' if len(calls) > 1 else ''})"
            if calls
            else f"{lab_name} already loaded"
        )

    resolved = paths.data_dir() / "lab.resolved.json"
    import json

    resolved.write_text(json.dumps(config, indent=2))
    try:
        specs = lab_specs(config, host, port, embedded, load)
    except SystemExit as exc:
        _say(f"  FAILED: {exc}")
        return 2
    sup = Supervisor(
        specs,
        meta={
            "tango_host": th,
            "embedded": embedded,
            "lab": _abs(args.lab),
            "overlay": _abs(args.config),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        env={"TANGO_HOST": th, "TANGODAQ_CONFIG": str(resolved)},
        say=_say,
    )
    hint = ""
    if not args.supervisor_child:
        hint = "supervising: stop with Ctrl-C or `tangodaq down`"
        if not user_tango_host:
            hint += f"\nclients (itango, Jive, Taurus) need: export TANGO_HOST={th}"
    try:
        return sup.run(
            args.timeout,
            on_ready=lambda: _say("\n" + lab_report(read_state()) + ("\n\n" + hint if hint else "")),
        )
    except AlreadyRunning:
        state = running_state()
        if state:
            return _already_running(state, args)
        _say(f"another `tangodaq up` is starting a lab from {paths.data_dir()}; see `tangodaq status`")
        return 1


def _detach(args) -> int:
    """Run the supervisor in the background, echo its progress, print the table, return."""
    log = paths.logs_dir() / "supervisor.log"
    offset = log.stat().st_size if log.exists() else 0
    argv = [
        sys.executable,
        "-u",
        "-m",
        "tango_db.cli",
        "up",
        "--supervisor-child",
        "--timeout",
        str(args.timeout),
    ]
    if args.config:
        argv += ["--config", _abs(args.config)]
    if args.lab:
        argv += ["--lab", _abs(args.lab)]
    if args.use_existing_db:
        argv += ["--use-existing-db"]
    with open(log, "ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    pending = ""
    up_seen = False

    def echo() -> None:
        nonlocal offset, pending, up_seen
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read()
        offset += len(data)
        pending += data.decode(errors="replace")
        *lines, pending = pending.split("\n")
        for line in lines:
            if not up_seen:
                _say(line)
            if line.startswith("lab is up"):
                up_seen = True

    try:
        while True:
            echo()
            code = child.poll()
            if code is not None:
                echo()
                if pending and not up_seen:
                    _say(pending)
                return code or 1
            state = read_state()
            if (
                up_seen
                and state
                and state.get("supervisor_pid") == child.pid
                and state.get("phase") == "running"
            ):
                _say("")
                _say(lab_report(state))
                _say(f"\nthe lab runs in the background (supervisor pid {child.pid}, log {log});")
                _say("`tangodaq status` shows it, `tangodaq down` stops it")
                if not os.environ.get("TANGO_HOST"):
                    _say(f"clients (itango, Jive, Taurus) need: export TANGO_HOST={state['tango_host']}")
                return 0
            time.sleep(0.1)
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping the lab …")
        os.kill(child.pid, signal.SIGTERM)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
        echo()
        return 130


# --- down / status --------------------------------------------------------------------------------


def cmd_down(args) -> int:
    state = read_state()
    if not state:
        _say(f"no lab is running from {paths.data_dir()}")
        return 0
    t0 = time.monotonic()
    if alive(state.get("supervisor_pid"), state.get("supervisor_starttime")):
        _say(
            f"stopping the lab at TANGO_HOST={state['tango_host']} (supervisor pid {state['supervisor_pid']}) …"
        )
    else:
        _say("the lab's supervisor is gone; removing whatever it left …")
    clean = stop_lab(state, timeout=args.timeout, say=_say)
    _say(f"lab stopped ({time.monotonic() - t0:.1f} s)" + ("" if clean else "; leftovers were killed"))
    return 0


def cmd_status(args) -> int:
    state = running_state()
    if state:
        _say(lab_report(state))
        return 0
    host, port = embedded_db.tango_host()
    if embedded_db.database_answers(host, port):
        config = load_config(args.config, args.lab)
        devices = {d: (cls, si.name) for si in server_instances(config) for d, cls in si.devices.items()}
        _say(
            f"no lab supervised from {paths.data_dir()}; the lab's devices in the database at {host}:{port}:\n"
        )
        _say(device_table(f"{host}:{port}", devices))
        return 0
    _say(f"no lab is running (nothing supervised from {paths.data_dir()}, no database at {host}:{port});")
    _say("start it with `tangodaq up`")
    return 3


# --- deploy -------------------------------------------------------------------------------------


def starter_changes(config: dict, db, starter_host: str, ds_path: str):
    """(description, function) pairs registering the lab's servers with Starter on starter_host."""
    import tango

    changes = []
    starter = f"tango/admin/{starter_host}"
    try:
        db.get_device_info(starter)
        exists = True
    except tango.DevFailed:
        exists = False
    if not exists:
        info = tango.DbDevInfo()
        info.name, info._class, info.server = starter, "Starter", f"Starter/{starter_host}"
        changes.append(
            (f"add_device({starter} (Starter in Starter/{starter_host}))", lambda i=info: db.add_device(i))
        )
    current = list(db.get_device_property(starter, "StartDsPath")["StartDsPath"]) if exists else []
    if ds_path not in current:
        new = [*current, ds_path]
        changes.append(
            (
                f"put_device_property({starter}, StartDsPath={new})",
                lambda: db.put_device_property(starter, {"StartDsPath": new}),
            )
        )
    from .processes import DEFAULT_LEVEL, LEVELS

    for si in server_instances(config):
        level = max(1, LEVELS.get(si.server, DEFAULT_LEVEL) - STARTER_LEVEL_OFFSET)
        try:
            old = db.get_server_info(si.name)
            same = old.host == starter_host and old.mode == 1 and old.level == level
        except tango.DevFailed:
            same = False
        if not same:
            info = tango.DbServerInfo()
            info.name, info.host, info.mode, info.level = si.name, starter_host, 1, level
            changes.append(
                (
                    f"put_server_info({si.name}: host={starter_host}, controlled, startup level {level})",
                    lambda i=info: db.put_server_info(i),
                )
            )
    return changes


def cmd_deploy(args) -> int:
    import tango

    from .config import db_changes

    host, port = embedded_db.tango_host()
    if not os.environ.get("TANGO_HOST"):
        _say("set TANGO_HOST to the facility database (host:port) first")
        return 2
    if not embedded_db.database_answers(host, port):
        _say(f"no Tango database answers at {host}:{port}: check TANGO_HOST")
        return 2
    config = load_config(args.config, args.lab)
    db = tango.Database(host, port)
    starter_host = args.starter_host or socket.gethostname().split(".")[0]
    ds_path = args.start_ds_path or str(Path(sys.executable).parent)
    calls = db_changes(config, db)
    starter = starter_changes(config, db, starter_host, ds_path)
    _say(f"deploying to the Tango database at {host}:{port} (Starter host {starter_host}):")
    lines = describe_calls(calls) + [d for d, _ in starter]
    if not lines:
        _say("  nothing to change: the database already holds this configuration")
        return 0
    for line in lines:
        _say(f"  {line}")
    if not args.write:
        _say("\nnothing was written (dry run): run again with --write to apply")
        return 0
    write_config(config, db)
    for _, apply in starter:
        apply()
    _say(f"\nwritten. Start the servers from Astor, or: tango_admin --ping-device tango/admin/{starter_host}")
    return 0


# --- demo ---------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    """Bring the lab up (in the background) unless it runs, then run the demo against it."""
    state = running_state()
    if not state:
        args.foreground = args.supervisor_child = False
        code = cmd_up(args)
        if code != 0:
            _say("the lab did not start: see the messages above, then run `tangodaq demo` again")
            return code
        state = running_state()
    if not state:
        _say("the lab is not running after `up`: see `tangodaq status` and the logs in " + str(paths.logs_dir()))
        return 1
    os.environ["TANGO_HOST"] = state["tango_host"]
    from .demo import run_demo

    return run_demo(say=_say)


# --- gui ----------------------------------------------------------------------------------------


def cmd_gui(args) -> int:
    """Open the Taurus GUI on the running lab (its TANGO_HOST from the state file if not set)."""
    state = running_state()
    argv = list(args.args)
    if state and "--tango-host" not in argv and not os.environ.get("TANGO_HOST"):
        argv = ["--tango-host", state["tango_host"], *argv]
    from taurus_gui import main as gui_main

    return gui_main(argv) or 0


# --- bench --------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    try:
        from deviceservers.bench import main as bench_main  # type: ignore[attr-defined]
    except ImportError:
        _say("the virtual bench is not available yet (deviceservers.bench has no main)")
        return 2
    return bench_main(args.args) or 0


# --- main ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tangodaq", description="Run the simulated lab or deploy it.")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_options(p):
        p.add_argument(
            "--config", metavar="OVERLAY.json", help="JSON merged on top of lab.json (hardware URLs, ...)"
        )
        p.add_argument("--lab", metavar="LAB.json", help=f"use this file instead of {LAB_JSON.name}")

    up = sub.add_parser("up", help="start the lab (database, servers) and supervise it")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument("--foreground", action="store_true", help="supervise in this terminal until Ctrl-C")
    mode.add_argument("--detach", action="store_true", help="supervise in the background (the default)")
    mode.add_argument("--supervisor-child", action="store_true", help=argparse.SUPPRESS)
    config_options(up)
    up.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole lab to answer (60)")
    up.add_argument(
        "--use-existing-db",
        action="store_true",
        help="write the simulated lab into the database that already answers at TANGO_HOST",
    )
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="start the lab if needed, then run the demo experiment")
    config_options(demo)
    demo.add_argument("--timeout", type=float, default=90.0, help="seconds for the lab to start (90)")
    demo.add_argument("--use-existing-db", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)

    down = sub.add_parser("down", help="stop the lab")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds before the supervisor is killed")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="print the lab's devices and processes")
    config_options(status)
    status.set_defaults(func=cmd_status)

    deploy = sub.add_parser(
        "deploy", help="write the lab into the facility database (TANGO_HOST) for Starter"
    )
    config_options(deploy)
    deploy.add_argument("--starter-host", help="host whose Starter runs the servers (default: this one)")
    deploy.add_argument(
        "--start-ds-path", help="Starter's StartDsPath entry (default: this environment's bin)"
    )
    deploy.add_argument("--write", action="store_true", help="apply the changes (default: show them)")
    deploy.set_defaults(func=cmd_deploy)

    gui = sub.add_parser("gui", help="the lab's Taurus GUI (attaches to the running lab)")
    gui.add_argument("args", nargs=argparse.REMAINDER, help="--tab Camera, --tango-host HOST:PORT")
    gui.set_defaults(func=cmd_gui)

    bench = sub.add_parser("bench", help="serve the instrument simulators on TCP ports")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    finally:
        if "tango" in sys.modules:
            # Close the Tango client layer before the interpreter tears down the proxies it
            # still holds (PyTango#390: otherwise an occasional crash at exit).
            sys.modules["tango"].ApiUtil.cleanup()


if __name__ == "__main__":
    sys.exit(main())
