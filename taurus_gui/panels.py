"""The instrument panels of the lab's taurusgui: Laser, Motion, Power meter, Camera.

TaurusGui builds a panel from its ``PanelDescription`` (``taurus_gui.config``) as Taurus does for
any panel: the class is called with no argument, then ``setModel(model)`` gives it its device(s)
as full Taurus names (``tango://host:port/a/b/c``). The configuration takes those names from the
lab's roles (``tango_db.roles``), so the same panels serve the simulated lab (``lab/maitai/1``)
and a facility that names its laser ``b12/laser/maitai``. Panels keep references to their key
widgets as attributes (``panel.warmup``, ``panel.buttons["On"]``...) so tests and scripts can
drive them the way a user does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyqtgraph as pg
from taurus.core import TaurusEventType
from taurus.external.qt import Qt
from taurus.qt.qtgui.display import TaurusLabel
from taurus.qt.qtgui.input import TaurusValueLineEdit
from taurus_pyqtgraph import TaurusTrend

from taurus_gui.widgets import (
    CommandButton,
    CompactUnits,
    EventFeed,
    attribute_form,
    device_header,
    group,
    model_name,
    split_model,
    state_label,
    status_label,
)

try:  # the live image with ROI and profiles, where the tree has it
    from taurus_gui.camera_view import CameraView
except ImportError:  # pragma: no cover - depends on the tree's state
    CameraView = None


def value_label(model: str) -> TaurusLabel:
    """A read-only value with its unit, quality as background (ALARM orange, INVALID grey)."""
    label = TaurusLabel()
    label.setModel(model)
    label.setMinimumWidth(120)
    label.setAlignment(Qt.Qt.AlignRight | Qt.Qt.AlignVCenter)
    return label


def button_row(buttons: dict[str, CommandButton]) -> Qt.QWidget:
    row = Qt.QWidget()
    layout = Qt.QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for button in buttons.values():
        layout.addWidget(button)
    layout.addStretch(1)
    return row


def detach(widget: Qt.QWidget) -> None:
    """Detach every Taurus widget under ``widget`` from its model and close every event feed,
    so a closed panel leaves no listener, subscription or poller behind."""
    for child in widget.findChildren(Qt.QObject):
        close = getattr(child, "close_feed", None) or getattr(child, "close_events", None)  # CameraView's
        if close is not None:
            close()
        elif isinstance(child, EventFeed):
            child.close()
    for child in widget.findChildren(Qt.QWidget):
        if isinstance(child, TaurusTrend):
            for trend_set in child.getTrendSets():
                trend_set.setModel(None)
            continue
        set_model = getattr(child, "setModel", None)
        if set_model is not None and hasattr(child, "getModelName"):
            try:
                set_model(None)
            except Exception:  # noqa: BLE001 - best effort while closing
                pass


class ModelPanel(Qt.QWidget):
    """Base of the panels: empty until ``setModel``, which builds the content for the model
    (a new model rebuilds it); ``closeEvent`` detaches every Taurus widget."""

    #: ``build(body, model)``: fill ``body`` for ``model``; every panel class defines it (checked
    #: when the class is made: Qt's metaclass does not mix with abc's)
    build: Callable[[Qt.QWidget, Any], None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not callable(getattr(cls, "build", None)):
            raise TypeError(f"{cls.__name__} must define build(body, model): what the panel shows for a model")

    def __init__(self, parent: Qt.QWidget | None = None) -> None:
        super().__init__(parent)
        self._outer = Qt.QVBoxLayout(self)
        self._outer.setContentsMargins(4, 4, 4, 4)
        self._body: Qt.QWidget | None = None
        self._model: Any = None

    def getModel(self) -> Any:  # noqa: N802 - Taurus' name
        return self._model

    def setModel(self, model: Any) -> None:  # noqa: N802 - Taurus' name
        """Build the panel for ``model`` (a device's full name, or a list of them)."""
        if model == self._model and self._body is not None:
            return
        self.release()
        self._model = model
        if not model:
            return
        self._body = Qt.QWidget()
        self._outer.addWidget(self._body)
        self.build(self._body, model)

    def release(self) -> None:
        """Detach the content from its models and drop it."""
        if self._body is not None:
            detach(self._body)
            self._body.setParent(None)
            self._body.deleteLater()
            self._body = None

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.release()
        super().closeEvent(event)


class LaserPanel(ModelPanel):
    """Mai Tai: warm-up, emission, shutter, wavelength and power.

    Switching on is two steps on the real laser (On starts the diode warm-up; On again at 100 %
    starts emission), so the buttons are the laser's own commands, not a macro: what the panel
    does is exactly what the laser is told.
    """

    def build(self, body: Qt.QWidget, model: str) -> None:
        tango_host, device = split_model(model)
        self.device = device
        dev = model_name(tango_host, device)
        layout = Qt.QVBoxLayout(body)
        layout.addWidget(device_header(tango_host, device, "Mai Tai laser"))

        big = Qt.QGridLayout()
        self.warmup = value_label(f"{dev}/WarmupPercent")
        self.power = value_label(f"{dev}/Power")
        self.power.setFormat(CompactUnits())
        self.shutter = value_label(f"{dev}/Shutter")
        self.emission = value_label(f"{dev}/Emission")
        for column, (title, widget) in enumerate(
            [("Warm-up", self.warmup), ("Output power", self.power),
             ("Emission", self.emission), ("Shutter open", self.shutter)]
        ):
            caption = Qt.QLabel(title)
            caption.setAlignment(Qt.Qt.AlignCenter)
            font = widget.font()
            font.setPointSize(font.pointSize() + 4)
            widget.setFont(font)
            widget.setAlignment(Qt.Qt.AlignCenter)
            widget.setMinimumHeight(34)
            big.addWidget(caption, 0, column)
            big.addWidget(widget, 1, column)
        layout.addWidget(group("At a glance", layout=big))

        self.buttons = {
            "On": CommandButton(dev, "On", "On",
                                tooltip="First On starts the warm-up; On at 100 % starts emission"),
            "Off": CommandButton(dev, "Off", "Off", tooltip="Stop emission"),
            "OpenShutter": CommandButton(dev, "OpenShutter", "Open shutter"),
            "CloseShutter": CommandButton(dev, "CloseShutter", "Close shutter"),
        }
        layout.addWidget(group("Commands", button_row(self.buttons)))

        self.form = attribute_form([
            f"{dev}/Wavelength", f"{dev}/WavelengthSetpoint", f"{dev}/Tuning",
            f"{dev}/Power", f"{dev}/PumpPower", f"{dev}/WarmupPercent", f"{dev}/Shutter",
            f"{dev}/Humidity", f"{dev}/Identity", f"{dev}/CommunicationOk", f"{dev}/LastError",
        ])
        layout.addWidget(group("Parameters (type a value and press Enter to apply)", self.form))
        layout.addStretch(1)


class MotionPanel(ModelPanel):
    """ESP300 stage axes and ELL14 rotation mounts: one row per axis.

    A row is what a user needs while aligning: where it is, where to send it, and Stop next to it.
    The model is the list of the axes' devices; ``sections`` (set by the configuration before
    the model) groups them: ``[(group title, {row title: device}, offer Home), ...]``.
    """

    def __init__(self, parent: Qt.QWidget | None = None) -> None:
        super().__init__(parent)
        self.sections: list = []
        self.rows: dict[str, dict[str, Qt.QWidget]] = {}

    def build(self, body: Qt.QWidget, model: list[str]) -> None:
        self.rows = {}
        layout = Qt.QVBoxLayout(body)
        sections = self.sections or [("Axes", {split_model(m)[1]: m for m in model}, False)]
        # Home is offered for the mounts only (clockwise, the mount's usual direction): homing
        # the stage drives it to a switch across its travel, a move to decide at the optics.
        for title, devices, homing in sections:
            if not devices:
                continue
            grid = Qt.QGridLayout()
            for column, caption in enumerate(["", "State", "Position", "Move to (Enter)", "", "", ""]):
                grid.addWidget(Qt.QLabel(f"<i>{caption}</i>"), 0, column)
            for row, (name, full_name) in enumerate(devices.items(), start=1):
                tango_host, device = split_model(full_name)
                dev = model_name(tango_host, device)
                widgets = {
                    "name": Qt.QLabel(f"<b>{name}</b><br><span style='color:#666'>{device}</span>"),
                    "state": state_label(f"{dev}/State"),
                    "position": value_label(f"{dev}/Position"),
                    "target": TaurusValueLineEdit(),
                    "stop": CommandButton(dev, "Stop", "Stop",
                                          tooltip="Stop this axis now (urgent lane)"),
                    "status": status_label(f"{dev}/Status"),
                }
                if homing:
                    widgets["home"] = CommandButton(dev, "Home", "Home", parameters=["0"],
                                                    tooltip="Home clockwise (find the index mark)")
                widgets["target"].setModel(f"{dev}/Position")
                widgets["target"].setMinimumWidth(110)
                widgets["stop"].setStyleSheet("QPushButton { color: #a00; font-weight: bold }")
                for column, key in enumerate(["name", "state", "position", "target", "stop", "home"]):
                    if key in widgets:
                        grid.addWidget(widgets[key], row * 2 - 1, column)
                grid.addWidget(widgets["status"], row * 2, 1, 1, 6)
                self.rows[device] = widgets
            grid.setColumnStretch(6, 1)
            layout.addWidget(group(title, layout=grid))
        layout.addStretch(1)


class PowerMeterPanel(ModelPanel):
    """Newport 1830-C: reading, settings and a live trend of Power."""

    def build(self, body: Qt.QWidget, model: str) -> None:
        tango_host, device = split_model(model)
        self.device = device
        dev = model_name(tango_host, device)
        layout = Qt.QVBoxLayout(body)
        layout.addWidget(device_header(tango_host, device, "Newport 1830-C power meter"))

        top = Qt.QHBoxLayout()
        self.power = value_label(f"{dev}/Power")
        self.power.setFormat(CompactUnits())
        font = self.power.font()
        font.setPointSize(font.pointSize() + 8)
        font.setBold(True)
        self.power.setFont(font)
        self.power.setAlignment(Qt.Qt.AlignCenter)
        self.power.setMinimumHeight(50)
        self.form = attribute_form([
            f"{dev}/Wavelength", f"{dev}/Range", f"{dev}/Filter", f"{dev}/Attenuator",
            f"{dev}/PowerDbm", f"{dev}/Saturated", f"{dev}/OverRange",
        ])
        self.form.setMinimumHeight(250)
        left = group("Power", self.power)
        left.setMinimumWidth(260)
        top.addWidget(left)
        top.addWidget(group("Settings", self.form), 1)
        layout.addLayout(top)

        self.buttons = {
            "Zero": CommandButton(dev, "Zero", "Zero",
                                  tooltip="Store the current reading as zero offset (block the beam first)"),
            "StoreReference": CommandButton(dev, "StoreReference", "Store reference"),
        }
        layout.addWidget(button_row(self.buttons))

        self.trend = TaurusTrend()
        self.trend.setModel([f"{dev}/Power"])
        self.trend.setMaxDataBufferSize(20000)
        self.trend.setLabel("left", "Power", units="W")
        self.trend.showGrid(x=True, y=True, alpha=0.3)
        self.trend.setMinimumHeight(260)
        layout.addWidget(group("Power trend (events from the meter)", self.trend), 1)

    def curves(self) -> list:
        """The trend's curves (one per trended attribute)."""
        return [curve for trend_set in self.trend.getTrendSets() for curve in trend_set]


class ImageFeed(EventFeed):
    """An image attribute's events (``LastImage``) as 2-D arrays in the GUI thread; counts them."""

    def __init__(self, model: str, parent: Qt.QObject | None = None, slot=None) -> None:
        self.frames = 0
        super().__init__(model, parent, slot=slot)

    def _on_event(self, source, event_type, value) -> None:  # noqa: ARG002 - Taurus' signature
        data = getattr(value, "rvalue", None) if event_type != TaurusEventType.Error else None
        data = getattr(data, "magnitude", data)
        if isinstance(data, np.ndarray) and data.ndim == 2 and data.size:
            self.frames += 1
            self.received.emit(data)

    def _count(self, data) -> None:
        if isinstance(data, np.ndarray) and data.ndim == 2 and data.size:
            self.frames += 1


class CameraPanel(ModelPanel):
    """Prime BSI: live view of the camera and its acquisition settings.

    Where the tree has ``taurus_gui.camera_view.CameraView`` (live image with ROI and profiles),
    the panel embeds it; otherwise it shows ``LastImage`` (the device's preview, a few frames per
    second) in a plain image view that repaints at most ``REFRESH_HZ`` from the newest frame
    received, so a fast camera cannot flood the GUI; levels follow each frame unless fixed.
    """

    REFRESH_HZ = 4

    def build(self, body: Qt.QWidget, model: str) -> None:
        tango_host, device = split_model(model)
        self.device = device
        dev = model_name(tango_host, device)
        layout = Qt.QHBoxLayout(body)

        self.camera_view = None
        self.view = None
        if CameraView is not None:
            self.camera_view = CameraView(dev, body)
            layout.addWidget(self.camera_view, 3)
        else:
            left = Qt.QVBoxLayout()
            self.view = pg.ImageView()
            self.view.ui.roiBtn.hide()
            self.view.ui.menuBtn.hide()
            self.view.setMinimumSize(480, 400)
            self.view.getView().invertY(True)
            self.view.setPredefinedGradient("viridis")
            self.info = Qt.QLabel("no frame yet")
            left.addWidget(self.view, 1)
            info_row = Qt.QHBoxLayout()
            info_row.addWidget(self.info, 1)
            self.auto_levels = Qt.QCheckBox("Auto levels")
            self.auto_levels.setChecked(True)
            info_row.addWidget(self.auto_levels)
            left.addLayout(info_row)
            layout.addLayout(left, 3)

        right = Qt.QVBoxLayout()
        right.addWidget(device_header(tango_host, device, "Prime BSI camera"))
        self.buttons = {
            "StartAcquisition": CommandButton(dev, "StartAcquisition", "Start live"),
            "StopAcquisition": CommandButton(dev, "StopAcquisition", "Stop"),
            "Snap": CommandButton(dev, "Snap", "Snap", tooltip="Acquire one frame"),
        }
        right.addWidget(button_row(self.buttons))
        self.form = attribute_form([
            f"{dev}/ExposureTime", f"{dev}/FrameRate", f"{dev}/FramesAcquired",
            f"{dev}/FramesLost", f"{dev}/NbFrames", f"{dev}/Binning", f"{dev}/TriggerMode",
            f"{dev}/Temperature",
        ])
        self.form.setMinimumHeight(280)  # every setting visible beside the image, no scrolling
        right.addWidget(group("Acquisition", self.form))
        right.addStretch(1)
        layout.addLayout(right, 2)

        self.image: np.ndarray | None = None
        self.frames_shown = 0
        self._pending: np.ndarray | None = None
        self.feed = None
        if self.view is not None:
            self.feed = ImageFeed(f"{dev}/LastImage", body, slot=self._store)
            self._timer = Qt.QTimer(body)
            self._timer.timeout.connect(self._refresh)
            self._timer.start(int(1000 / self.REFRESH_HZ))

    def _store(self, data) -> None:
        if isinstance(data, np.ndarray) and data.ndim == 2 and data.size:
            self._pending = data

    def _refresh(self) -> None:
        if self._pending is None or self.view is None:
            return
        data, self._pending = self._pending, None
        first = self.image is None or self.image.shape != data.shape
        self.image = data
        # ImageView's first axis is x: transpose the row-major frame.
        self.view.setImage(data.T, autoLevels=self.auto_levels.isChecked() or first,
                           autoRange=first, autoHistogramRange=first)
        self.frames_shown += 1
        y, x = np.unravel_index(int(np.argmax(data)), data.shape)
        self.info.setText(f"{data.shape[1]} x {data.shape[0]} px   max {int(data.max())} at "
                          f"({x}, {y})   mean {float(data.mean()):.1f}   frames shown "
                          f"{self.frames_shown}")

    def release(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.stop()
        super().release()
