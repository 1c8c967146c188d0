"""The lab's Taurus GUI: one window to watch and drive the running lab from anywhere.

It attaches to the lab through Tango only (``TANGO_HOST``, or ``--tango-host``), so it runs on any
machine that reaches the lab's database, and shows the devices the lab's roles name there
(``taurus_gui.layout``); nothing in it talks to the instruments directly. Every value on screen
is a Taurus widget bound to a Tango attribute, so a device that is down shows as such (grey,
``-----``) instead of breaking the window, and comes back by itself when the device does.

``tangodaq gui``, ``python -m taurus_gui`` or :func:`main` opens it; tests build
:class:`LabWindow` directly.
"""

from taurus_gui.main_window import LabWindow, lab_devices, main

__all__ = ["LabWindow", "lab_devices", "main"]
