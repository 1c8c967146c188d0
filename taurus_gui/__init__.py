"""The lab's GUI: a taurusgui generated from the deployed lab, with Sardana built in.

This package is itself the taurusgui configuration: its upper-case attributes (``GUI_NAME``,
the ``PanelDescription`` objects, ``MACROSERVER_NAME``, ``DOOR_NAME``...) are worked out, on first
use, from the lab whose database is ``TANGO_HOST`` (``taurus_gui.config``), so the standard
launcher opens it as any taurusgui::

    TANGO_HOST=127.0.0.1:10000 taurus gui taurus_gui      # or the path of this folder

``tangodaq gui [--tango-host H:P] [--panel NAME]`` (:func:`main`) opens the same GUI through
:class:`LabGui`, which also keeps the user's layout without asking at close. Nothing in the GUI
talks to the instruments directly: every value is a Taurus widget bound to a Tango attribute, so
a device that is down shows as such and comes back by itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any

if "__path__" not in globals():
    # Loaded by file path (``taurus gui /path/to/taurus_gui``, or LabGui): TaurusGui executes this
    # file as a new module in place of the package; stay a package, with the submodules that
    # are already loaded as attributes.
    __path__ = [os.path.dirname(os.path.abspath(__file__))]
    for _name, _module in list(sys.modules.items()):
        if _name.startswith(f"{__name__}.") and "." not in _name[len(__name__) + 1:]:
            globals().setdefault(_name.rsplit(".", 1)[1], _module)

_EXPORTS = {"LabGui": "taurus_gui.main_window", "main": "taurus_gui.main_window"}


def configuration() -> dict[str, Any]:
    """The taurusgui configuration of the lab at ``TANGO_HOST`` (computed once per process and
    database, in ``taurus_gui.config``)."""
    from taurus_gui.config import cached_configuration
    from taurus_gui.widgets import tango_host_from_env

    return cached_configuration(tango_host_from_env())


def reset_configuration() -> None:
    """Forget the configuration (the next use reads the lab's roles again)."""
    from taurus_gui.config import clear_cache

    clear_cache()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name.isupper() and not name.startswith("__"):
        conf = configuration()
        if name in conf:
            return conf[name]
    raise AttributeError(f"module 'taurus_gui' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(configuration()))


__all__ = ["LabGui", "configuration", "main", "reset_configuration"]
