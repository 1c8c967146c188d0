"""``kill -USR1`` on a server writes its stacks to standard error and the server goes on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = """
import os, signal, threading
from deviceservers.common.stack_dump import STACK_DUMP_SIGNAL, enable_stack_dumps

def waiting_for_a_reply(event):
    event.wait()

enable_stack_dumps()
event = threading.Event()
worker = threading.Thread(target=waiting_for_a_reply, args=(event,), name="worker")
worker.start()
os.kill(os.getpid(), STACK_DUMP_SIGNAL)
event.set()
worker.join()
print("still running")
"""


def test_sigusr1_dumps_every_thread_and_the_process_goes_on():
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert done.stderr.count("most recent call first") == 2, done.stderr
    assert "waiting_for_a_reply" in done.stderr
