"""The `tangodaq` command: run the simulated lab, or deploy it into a facility database.

tangodaq up [--foreground] [--config OVERLAY.json] [--lab LAB.json] [--timeout S]
tangodaq status
tangodaq down
tangodaq deploy (--simulated | --config HARDWARE.json) [--site SITE.json] [--starter-host HOST] [--write]
tangodaq gui [--tango-host HOST:PORT] [--panel NAME]
tangodaq bench [--config LAB.json] ...   (the virtual bench, started by `up` when lab.json uses socket://)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import embedded_db, invocation, paths
from .config import LAB_JSON, load_config, server_instances, write_config
from .invocation import command
from .processes import lab_specs
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
            f"  (it uses TANGO_HOST={state['tango_host']}, not {requested}: `{command('down')}` first to change)"
        )
    if (_abs(args.config), _abs(args.lab)) != (state.get("overlay"), state.get("lab")) and (
        args.config or args.lab
    ):
        _say(f"  (it runs another configuration: `{command('down')}` first to change)")
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
                f"  If it is a facility database, deploy with `{command('deploy --config hardware.json')}` instead.\n"
                f"  To run the simulated lab on it anyway: {command('up --use-existing-db')}\n"
                f"  To run it on its own embedded database: TANGO_HOST=127.0.0.1:<free port> {command('up')}"
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
        if any(si.server == "Pool" for si in server_instances(config)):
            # the same description a facility deployment stores: the MacroServer (started through
            # tango_db.sardana_servers) restores missing environment variables at every (re)start,
            # so a MacroServer that crashed does not come back without ScanDir / ActiveMntGrp
            from .deploy import sardana_changes, sardana_description

            for change in sardana_changes(db, sardana_description(config, None, paths.data_dir())):
                change.apply()
                calls.append(("put_property", ("tangodaq", "Sardana"), {}))
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
        hint = f"supervising: stop with Ctrl-C or `{command('down')}`"
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
        _say(f"another `tangodaq up` is starting a lab from {paths.data_dir()}; see `{command('status')}`")
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
            # the supervisor's messages (echoed here) name the commands as this one was called
            env={**os.environ, invocation.VARIABLE: invocation.program()},
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
                _say(f"`{command('status')}` shows it, `{command('down')}` stops it")
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
    _say(f"no Tango database answers at {host}:{port}, and no lab is supervised from {paths.data_dir()}:")
    _say(f"  on a laptop, start the lab with `{command('up')}`;")
    _say(f"  on a facility database, {host} or the network to it is down: servers already running keep serving the "
         "clients connected to them; new clients (this command too) work again once the database answers")
    return 3


# --- deploy -------------------------------------------------------------------------------------


def cmd_deploy(args) -> int:
    from .deploy import run

    return run(args, _say)


# --- demo ---------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    """Bring the lab up (in the background) unless it runs, then run the demo against it."""
    state = running_state()
    if not state:
        args.foreground = args.supervisor_child = False
        code = cmd_up(args)
        if code != 0:
            _say(f"the lab did not start: see the messages above, then run `{command('demo')}` again")
            return code
        state = running_state()
    if not state:
        _say(f"the lab is not running after `up`: see `{command('status')}` and the logs in {paths.logs_dir()}")
        return 1
    os.environ["TANGO_HOST"] = state["tango_host"]
    from .demo import run_demo

    return run_demo(say=_say)


# --- gui ----------------------------------------------------------------------------------------


def cmd_gui(args) -> int:
    """Open the Taurus GUI on the running lab (its TANGO_HOST from the state file if not set)."""
    state = running_state()
    argv = list(args.args)
    given = any(a == "--tango-host" or a.startswith("--tango-host=") for a in argv)
    if state and not given and not os.environ.get("TANGO_HOST"):
        argv = ["--tango-host", state["tango_host"], *argv]
    from taurus_gui import main as gui_main

    return gui_main(argv) or 0


# --- bench --------------------------------------------------------------------------------------


def _resolved_lab(path: str | None) -> str:
    """A lab file the bench can read: placeholders (``${PORT+3}``...) resolved for this TANGO_HOST.

    ``tangodaq up`` hands the bench its resolved configuration; a person starting the bench by
    hand gives lab.json itself (or nothing: the packaged one)."""
    import json

    text = Path(path).read_text() if path else ""
    if path and "${" not in text:
        return path
    resolved = paths.data_dir() / "bench.resolved.json"
    resolved.write_text(json.dumps(load_config(lab=path), indent=2))
    return str(resolved)


def cmd_bench(args) -> int:
    from deviceservers.bench import main as bench_main

    argv = list(args.args)
    if "-h" in argv or "--help" in argv:
        return bench_main(argv) or 0
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            _say("tangodaq bench: --config needs a file")
            return 2
        argv[i + 1] = _resolved_lab(argv[i + 1])
    elif not os.environ.get("TANGODAQ_CONFIG"):
        argv = ["--config", _resolved_lab(None), *argv]
    return bench_main(argv) or 0


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
        "deploy",
        help="write the lab into the facility database (TANGO_HOST) for Starter and Astor",
        description="Write the lab into a facility's Tango database for Starter (see docs/deployment.md). "
        "Dry run unless --write.",
    )
    what = deploy.add_mutually_exclusive_group()
    what.add_argument("--config", metavar="HARDWARE.json",
                      help="the site's hardware: serial URLs and camera backend merged on top of lab.json "
                      "(example: tango_db/examples/hardware.json)")
    what.add_argument("--simulated", action="store_true",
                      help="the virtual bench as a Starter-run server, every serial URL pointing at it")
    deploy.add_argument("--bench-fast", action="store_true",
                        help="with --simulated: a bench with short warm-up and delays (tests, quick rehearsals)")
    deploy.add_argument("--lab", metavar="LAB.json", help=f"use this file instead of {LAB_JSON.name}")
    deploy.add_argument("--site", metavar="SITE.json",
                        help="service user, group and folders (example: tango_db/examples/site.json)")
    deploy.add_argument("--sardana", metavar="SARDANA.json", help="Pool elements and environment (default: the packaged one)")
    deploy.add_argument("--starter-host", help="host whose Starter runs the servers (default: this one)")
    deploy.add_argument(
        "--start-ds-path", action="append",
        help="Starter's StartDsPath (repeatable; default: the Sardana launchers, then this environment's bin)",
    )
    deploy.add_argument("--write", action="store_true", help="apply the changes (default: show them)")
    deploy.set_defaults(func=cmd_deploy)

    gui = sub.add_parser("gui", help="the lab's taurusgui with Sardana's macro panels (attaches to the running lab)")
    gui.add_argument("args", nargs=argparse.REMAINDER, help="--tango-host HOST:PORT, --panel NAME, --settings FILE.ini")
    gui.set_defaults(func=cmd_gui)

    bench = sub.add_parser("bench", help="serve the instrument simulators on TCP ports")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


#: commands that take their own options (argparse would eat --help and options meant for them)
PASS_THROUGH = {"gui": cmd_gui, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        args = argparse.Namespace(command=argv[0], args=argv[1:], func=PASS_THROUGH[argv[0]])
    else:
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
