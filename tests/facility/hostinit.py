"""PID 1 of one simulated host (``tests/facility/hosts.py``): make the host, then reap its orphans.

Run as ``hostinit.py NAME HOSTS_FILE`` in fresh UTS, mount and PID namespaces inside the host's
network namespace. It gives the host what a real one has and a network namespace alone lacks:

- its own host name (Starter serves ``tango/admin/<hostname>``; a server records the host it
  runs on in the database, and Starter lists a host's servers by that name);
- the network's ``/etc/hosts`` (every host resolves the others by name, and its own name to its
  own address, which omniORB and ZMQ then advertise);
- its own ``/dev/shm`` (shared-memory rings are local to a host: a DataWriter on one host cannot
  read a ring made on another);
- an init that reaps: Starter starts servers detached, and a dead server left as a zombie looks
  "running but not responding" to Starter.

It prints ``ready`` once the host is made and lives until SIGTERM; when it leaves, the kernel
ends every process of the host with it.
"""

import os
import signal
import socket
import subprocess
import sys


def main() -> int:
    name, hosts_file = sys.argv[1], sys.argv[2]
    socket.sethostname(name)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", hosts_file, "/etc/hosts"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1g", f"shm-{name}", "/dev/shm"], check=True)
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    print("ready", flush=True)
    while True:
        sig = signal.sigwait(wanted)
        if sig != signal.SIGCHLD:
            return 0
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break


if __name__ == "__main__":
    sys.exit(main())
