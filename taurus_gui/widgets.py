"""Building blocks shared by the panels: model names, state labels, safe command buttons, forms.

Everything here is a thin layer over Taurus widgets. The one behaviour added is that a failing
command never opens a modal dialog (Taurus' default): a modal box would freeze a control-room
screen until someone clicks it, and would hang an unattended GUI test. The failure goes to the
window's message line instead, with the device's own reason.
"""

from __future__ import annotations

import time

import numpy as np
import tango
import taurus
from taurus.core import TaurusEventType
from taurus.external.qt import Qt
from taurus.qt.qtgui.button import TaurusCommandButton
from taurus.qt.qtgui.display import TaurusLabel
from taurus.qt.qtgui.panel import TaurusForm

from tango_db import environment

DEFAULT_TANGO_HOST = "127.0.0.1:10000"


def tango_host_from_env() -> str:
    """The lab's database address as Tango finds it (``TANGO_HOST``, ``~/.tangorc``,
    ``/etc/tangorc``), else the lab's default ``127.0.0.1:10000``."""
    return environment.tango_host() or DEFAULT_TANGO_HOST


def model_name(tango_host: str, device: str, attribute: str | None = None) -> str:
    """Full Taurus model name (``tango://host:port/dev[/attr]``): independent of TANGO_HOST, so a
    GUI can watch a lab other than the default one."""
    name = f"tango://{tango_host}/{device}"
    return f"{name}/{attribute}" if attribute else name


def split_model(model: str) -> tuple[str, str]:
    """``tango://host:port/a/b/c`` -> (``host:port``, ``a/b/c``); a bare ``a/b/c`` gets the
    default Tango host (``TANGO_HOST``), as Taurus resolves it."""
    text = str(model)
    if text.startswith("tango://"):
        host, _, device = text[len("tango://"):].partition("/")
        return host, device
    return tango_host_from_env(), text


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


_hub: Messages | None = None


def message_hub() -> Messages:
    """The GUI's one message hub: every panel's command outcomes go here; the window shows them
    on its status bar and the overview keeps the errors in its log."""
    global _hub
    if _hub is None:
        _hub = Messages()
    return _hub


class EventFeed(Qt.QObject):
    """One Taurus attribute's events (Tango change events; Taurus' polling only where a device
    has none), delivered in the GUI thread as ``received(value)``, ``value`` None when the
    attribute cannot be read. Events arrive on Tango's threads, where Qt widgets must not be
    touched: a queued signal carries the value across."""

    received = Qt.pyqtSignal(object)

    def __init__(self, model: str, parent: Qt.QObject | None = None, slot=None) -> None:
        """``slot``: connected (queued) before listening, so it also gets the first value, which
        Taurus hands to a new listener at once."""
        super().__init__(parent)
        self.model = model
        self.events = 0
        if slot is not None:
            self.received.connect(slot, Qt.Qt.QueuedConnection)
        self._attribute = taurus.Attribute(model)
        self._attribute.addListener(self._on_event)

    def _on_event(self, source, event_type, value) -> None:  # noqa: ARG002 - Taurus' signature
        if event_type == TaurusEventType.Config:
            return
        data = None if event_type == TaurusEventType.Error else getattr(value, "rvalue", None)
        if data is not None:
            data = getattr(data, "magnitude", data)
            if isinstance(data, np.ndarray) and data.ndim == 0:
                data = data.item()
        self.events += 1
        self.received.emit(data)

    def close(self) -> None:
        """Stop listening (the Tango subscription ends with the last listener)."""
        if self._attribute is not None:
            self._attribute.removeListener(self._on_event)
            self._attribute = None


class FlagLabel(Qt.QLabel):
    """A boolean attribute shown as a word on a colour a person sees across the room (the
    laser's shutter and emission): ``texts``/``colours`` are (for True, for False)."""

    UNKNOWN = "#bbbbbb"

    def __init__(self, model: str, title: str, texts: tuple[str, str], colours: tuple[str, str],
                 parent: Qt.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title, self.texts, self.colours = title, texts, colours
        self.value: bool | None = None
        self.setAlignment(Qt.Qt.AlignCenter)
        self.setMinimumSize(170, 54)
        font = self.font()
        font.setPointSize(font.pointSize() + 5)
        font.setBold(True)
        self.setFont(font)
        self._show(None)
        self.feed = EventFeed(model, self, slot=self._show)

    def _show(self, value) -> None:
        self.value = None if value is None else bool(value)
        if self.value is None:
            text, colour = "?", self.UNKNOWN
        else:
            text, colour = (self.texts[0], self.colours[0]) if self.value else (self.texts[1], self.colours[1])
        self.setText(f"{self.title}\n{text}")
        self.setStyleSheet(f"QLabel {{ background: {colour}; color: black; border-radius: 4px; }}")

    def close_feed(self) -> None:
        self.feed.close()


def now_text() -> str:
    return time.strftime("%H:%M:%S")


class CommandButton(TaurusCommandButton):
    """A TaurusCommandButton that reports failures on the message line instead of a modal box."""

    def __init__(self, device_model: str, command: str, text: str, messages: Messages | None = None,
                 parameters: list | None = None, tooltip: str = "") -> None:
        super().__init__(command=command, text=text, parameters=parameters)
        self._messages = messages or message_hub()
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
