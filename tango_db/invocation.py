"""How the person reading tangodaq's messages types its next command.

A hint such as "`tangodaq down` stops it" is only useful if that command works where it is
read. In a fresh clone the README's ``./run.sh demo`` runs ``.venv/bin/tangodaq`` from a virtual
environment that is not activated, so ``tangodaq`` is not on the PATH there; the hints say
``./run.sh down`` then (``run.sh`` passes its own name in ``TANGODAQ_CLI``), ``tangodaq down``
when that name on the PATH is this installation, else the script's own path.
"""

from __future__ import annotations

import os
import shutil
import sys

#: set by ``run.sh`` to how it was called (``./run.sh``): it passes tangodaq's commands on
VARIABLE = "TANGODAQ_CLI"


def program() -> str:
    """What to type for ``tangodaq``: ``$TANGODAQ_CLI``, ``tangodaq`` when the PATH finds this
    script (or tangodaq was not started as its script: ``python -m``, a library call), else the
    script's path, relative to the current folder when it is below it."""
    given = os.environ.get(VARIABLE, "").strip()
    if given:
        return given
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) != "tangodaq":
        return "tangodaq"
    on_path = shutil.which("tangodaq")
    if on_path and os.path.realpath(on_path) == os.path.realpath(script):
        return "tangodaq"
    relative = os.path.relpath(script)
    return script if relative.startswith("..") else relative


def command(arguments: str) -> str:
    """``tangodaq <arguments>`` as the reader types it, e.g. ``command("down")``."""
    return f"{program()} {arguments}"
