"""``kill -USR1 <pid>`` writes every thread's Python stack to the server's log.

A server that is running but does not answer (Starter: "is running but not responding", clients:
``API_CommunicationFailed``) is most often a thread waiting for a lock or a reply that another
thread holds. The stacks say which, without stopping the server or attaching a debugger to a
process on a beamline: the output goes to the server's standard error, which Starter (its
``LogFileHome``) and ``tangodaq up`` (``logs/<Server>_<instance>.log``) keep in the server's log.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

STACK_DUMP_SIGNAL = signal.SIGUSR1


def enable_stack_dumps() -> None:
    """Dump all threads' stacks to standard error on SIGUSR1 (the server keeps running)."""
    try:
        faulthandler.register(STACK_DUMP_SIGNAL, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no usable stderr (a daemon with it closed): no dumps
        pass
