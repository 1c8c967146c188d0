"""PID 1 of the facility's PID namespace: start one command, reap every orphan, leave with it.

Starter starts servers detached, so a server that dies is reparented to the namespace's PID 1.
On a real host that is the init system, which reaps it; a PID 1 that does not (``runuser``, a
plain shell) leaves a zombie, which Starter still finds in /proc and takes for a server that is
"running but not responding", never restarting it. This is the few lines of an init that reaps.
"""

import os
import signal
import subprocess
import sys


def main() -> int:
    child = subprocess.Popen(sys.argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child.pid:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
