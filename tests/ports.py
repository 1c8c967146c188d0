"""Free TCP ports for labs started by tests."""

from __future__ import annotations

import random
import socket

# Linux hands out ephemeral (client and port-0) ports from 32768 up; a block below that range is
# not taken from under us by some unrelated connection between our check and the lab's bind.
_LOW, _HIGH = 20000, 32000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(span: int = 10, attempts: int = 200) -> int:
    """The first port of ``span`` consecutive free ports on loopback.

    A lab uses its database port and the next nine (the bench's instruments at +1..+4, its
    control port at +9), so all of them must be free, not only the first.
    """
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_LOW, _HIGH - span)
        if all(_bindable(base + i) for i in range(span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports between {_LOW} and {_HIGH}")
