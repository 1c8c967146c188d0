"""Building blocks shared by the panels: model names, state labels, safe command buttons, forms.

Everything here is a thin layer over Taurus widgets. The one behaviour added is that a failing
command never opens a modal dialog (Taurus' default): a modal box would freeze a control-room
screen until someone clicks it, and would hang an unattended GUI test. The failure goes to the
window's message line instead, with the device's own reason.
"""

from __future__ import annotations

import os

import tango
from taurus.external.qt import Qt
from taurus.qt.qtgui.button import TaurusCommandButton
from taurus.qt.qtgui.display import TaurusLabel
from taurus.qt.qtgui.panel import TaurusForm

DEFAULT_TANGO_HOST = "127.0.0.1:10000"


def tango_host_from_env() -> str:
    """The lab's database address: ``TANGO_HOST``, else the lab's default ``127.0.0.1:10000``."""
    return os.environ.get("TANGO_HOST") or DEFAULT_TANGO_HOST


def model_name(tango_host: str, device: str, attribute: str | None = None) -> str:
    """Full Taurus model name (``tango://host:port/dev[/attr]``): independent of TANGO_HOST, so a
    GUI can watch a lab other than the default one."""
    name = f"tango://{tango_host}/{device}"
    return f"{name}/{attribute}" if attribute else name


def describe_error(exc: BaseException) -> str:
    """The human part of an exception: a DevFailed's first description, else ``str(exc)``."""
    if isinstance(exc, tango.DevFailed) and exc.args:
        return str(exc.args[0].desc).strip()
    return str(exc) or type(exc).__name__


class Messages(Qt.QObject):
    """Where panels report what a user should see (command failures, confirmations)."""

    message = Qt.pyqtSignal(str, bool)  # text, is_error

    def info(self, text: str) -> None:
        self.message.emit(text, False)

    def error(self, text: str) -> None:
        self.message.emit(text, True)


class CommandButton(TaurusCommandButton):
    """A TaurusCommandButton that reports failures on the message line instead of a modal box."""

    def __init__(self, device_model: str, command: str, text: str, messages: Messages,
                 parameters: list | None = None, tooltip: str = "") -> None:
        super().__init__(command=command, text=text, parameters=parameters)
        self._messages = messages
        self._device_label = device_model.split("/", 3)[-1]
        self.setModel(device_model)
        self.setMinimumHeight(30)
        if tooltip:
            self.setToolTip(tooltip)

    def onClicked(self, value=0):  # noqa: ARG002 - Qt passes the 'checked' flag
        """Run the command; report success or the device's reason, never raise into Qt."""
        device = self.getModelObj()
        if device is None or not hasattr(device, self._command):
            self._messages.error(f"{self._device_label} {self._command}: the device is not reachable "
                                 "(server down or not defined in the database)")
            return None
        try:
            result = self._onClicked()
        except Exception as exc:  # DevFailed, connection errors: show them, keep the GUI alive
            self._messages.error(f"{self._device_label} {self._command}: {describe_error(exc)}")
            return None
        self._messages.info(f"{self._device_label} {self._command}: done")
        return result


class CompactUnits:
    """Taurus formatter showing a quantity in the unit that fits its size (601.2 µW, 2.989 W):
    a power meter reading spans twelve decades, and '0.0006 W' hides what matters."""

    def __init__(self, digits: int = 4) -> None:
        self.digits = digits

    def __call__(self, dtype=None, basecomponent=None, **kwargs):  # noqa: ARG002 - Taurus API
        return self  # Taurus then calls .format(value, bc=widget)

    def format(self, value, **_kwargs) -> str:
        try:
            return f"{value.to_compact():~.{self.digits}g}"
        except (AttributeError, ValueError, TypeError):
            return str(value)


def state_label(model: str, big: bool = False) -> TaurusLabel:
    """A label showing a device State with the Tango state colours as background."""
    label = TaurusLabel()
    label.setModel(model)
    label.setBgRole("value")
    label.setAlignment(Qt.Qt.AlignCenter)
    label.setMinimumWidth(90)
    if big:
        font = label.font()
        font.setPointSize(font.pointSize() + 5)
        font.setBold(True)
        label.setFont(font)
        label.setMinimumHeight(36)
        label.setMinimumWidth(140)
    return label


def status_label(model: str) -> TaurusLabel:
    """A word-wrapped label showing a device Status (the sentence a person can act on)."""
    label = TaurusLabel()
    label.setModel(model)
    label.setBgRole("none")
    label.setAutoTrim(False)  # show the whole sentence, not a "..." link
    label.setWordWrap(True)
    label.setAlignment(Qt.Qt.AlignLeft | Qt.Qt.AlignVCenter)
    label.setSizePolicy(Qt.QSizePolicy.Expanding, Qt.QSizePolicy.Preferred)
    label.setMinimumHeight(36)
    return label


def attribute_form(models: list[str]) -> TaurusForm:
    """A TaurusForm (label, read value, write widget, unit per attribute) without Apply/Reset
    buttons: each writable value is applied when its own field is confirmed (Enter)."""
    form = TaurusForm()
    form.setWithButtons(False)
    form.setModel(models)
    return form


def group(title: str, *widgets: Qt.QWidget, layout: Qt.QLayout | None = None) -> Qt.QGroupBox:
    """A titled box stacking ``widgets`` (or holding ``layout``)."""
    box = Qt.QGroupBox(title)
    if layout is None:
        layout = Qt.QVBoxLayout()
        for widget in widgets:
            layout.addWidget(widget)
    box.setLayout(layout)
    return box


def device_header(tango_host: str, device: str, title: str) -> Qt.QWidget:
    """Title, big State and Status of one device: the first thing to read on a panel."""
    header = Qt.QWidget()
    layout = Qt.QHBoxLayout(header)
    layout.setContentsMargins(0, 0, 0, 0)
    name = Qt.QLabel(f"<b>{title}</b><br><span style='color:#666'>{device}</span>")
    name.setMinimumWidth(170)
    layout.addWidget(name)
    layout.addWidget(state_label(model_name(tango_host, device, "State"), big=True))
    layout.addWidget(status_label(model_name(tango_host, device, "Status")), 1)
    return header
