#!/usr/bin/env bash
# The two commands of the README, each doing its own set-up:
#   ./run.sh demo    start the simulated lab on the embedded database and run the demo experiment
#   ./run.sh test    run the whole test suite
# Anything after the command is passed on (./run.sh test -k esp300, ./run.sh demo --help).
# The lab's other commands go to tangodaq in the virtual environment, which a fresh clone does not
# have on its PATH: ./run.sh status, ./run.sh down, ./run.sh gui, ./run.sh up, ./run.sh deploy ...
set -euo pipefail
CALLED_AS=$0   # tangodaq's hints name its commands so (./run.sh down), in TANGODAQ_CLI
CALLED_FROM=$PWD  # the lab's commands run there: relative paths (--config hardware.json) are the caller's
cd "$(dirname "$0")"

VENV=${TANGODAQ_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Debian's own Python creates virtual environments only with its pythonX.Y-venv package.
venv_support() {
    "$PY" -c "import ensurepip, venv" >/dev/null 2>&1 && return 0
    pkg="python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $pkg (Debian's Python needs it for virtual environments)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    else
        echo "!! $PY cannot create a virtual environment: sudo apt-get install $pkg" >&2
        exit 1
    fi
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        venv_support
        echo "== creating the virtual environment in $VENV"
        "$PY" -m venv "$VENV"
    fi
    # Re-install only when the project's dependencies changed.
    stamp="$VENV/.tangodaq-installed"
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "== installing tangodaq and its dependencies (first run takes a few minutes)"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e '.[test]'
        echo "$want" > "$stamp"
    fi
}

# Shared libraries the PyQt5 wheel needs to render offscreen (the GUI tests); Debian only.
QT_DEBS="libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0"
# The facility tier (tests/facility): Debian's MariaDB, C++ Tango database and Starter, started by
# the tests themselves (invoke-rc.d may be blocked, and the tests use their own ports and folders);
# ip and nsenter for the several-hosts tests (network namespaces made and removed by the tests).
FACILITY_DEBS="mariadb-server tango-db tango-starter tango-accesscontrol python3-venv iproute2 util-linux"
# A test process that dies in native code (cppTango, omniORB, Qt) shows no Python frame for the
# thread that crashed: its core file and gdb give the native stacks.
CRASH_DEBS="gdb"

# Debian asks where the Tango database is and whether to create it: the tests create their own.
preseed_tango() {
    command -v debconf-set-selections >/dev/null 2>&1 || return 0
    debconf-set-selections <<'SEL'
tango-common tango-common/tango-host string localhost:10000
tango-db tango-db/dbconfig-install boolean false
tango-db tango-db/dbconfig-upgrade boolean false
tango-accesscontrol tango-accesscontrol/dbconfig-install boolean false
SEL
}

system_packages() {
    missing=""
    for pkg in $QT_DEBS $FACILITY_DEBS $CRASH_DEBS; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Debian packages (Qt offscreen, the facility's Tango stack):$missing"
        preseed_tango
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "!! the GUI and facility tests need these Debian packages:$missing (sudo apt-get install$missing)" >&2
    fi
}

# After a test run whose process died in native code: every thread's native stack from its core
# (printed last, so that the end of the output says where it crashed), then the core removed.
native_stacks_of_a_crash() {
    [ -f core ] || return 0
    echo "== the test process crashed: native stacks of every thread (gdb, from ./core)"
    if command -v gdb >/dev/null 2>&1; then
        timeout 300 gdb -batch -nx -ex "thread apply all bt 8" -ex "echo \\n== the thread that crashed:\\n" \
            -ex "bt 40" "$VENV/bin/python" core 2>&1 | grep -v "^\[New LWP\|^warning: " | tail -n 300 || true
    else
        echo "(gdb is not installed: apt-get install gdb, then gdb $VENV/bin/python core)"
    fi
    rm -f core
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup
        TANGODAQ_CLI=$CALLED_AS exec "$VENV/bin/tangodaq" demo "$@"
        ;;
    test)
        system_packages
        setup
        export PYTHONFAULTHANDLER=1  # a crash in a C extension prints the Python stacks
        ulimit -c unlimited 2>/dev/null || true  # ... and leaves a core for the native ones
        rm -f core
        status=0
        "$VENV/bin/python" -m pytest "$@" || status=$?
        native_stacks_of_a_crash
        exit "$status"
        ;;
    up|down|status|gui|deploy|bench)
        # down and status use the environment the lab runs from as it is: a pip install first
        # (pyproject.toml changed since) could fail and leave the lab running
        case "$cmd" in down|status) [ -x "$VENV/bin/tangodaq" ] || setup ;; *) setup ;; esac
        tangodaq=$(cd "$VENV/bin" && pwd)/tangodaq
        cd "$CALLED_FROM"
        TANGODAQ_CLI=$CALLED_AS exec "$tangodaq" "$cmd" "$@"
        ;;
    *)
        echo "usage: ./run.sh demo|test [args...]" >&2
        echo "       ./run.sh status|down|up|gui|deploy [args...]   (the lab's tangodaq commands)" >&2
        exit 2
        ;;
esac
