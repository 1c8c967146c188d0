"""The panels of the lab window: Lab overview, Laser, Motion, Power meter, Camera.

Each panel takes the lab's database address and the names of the devices it shows; the window
(``main_window``) takes those names from the lab's roles (``tango_db.roles``), so the same panels
serve the simulated lab (``lab/maitai/1``) and a facility that names its laser
``b12/laser/maitai``. Panels keep references to their key widgets as attributes
(``panel.warmup``, ``panel.buttons["On"]``...) so tests and scripts can drive them the way a user
does.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import taurus
from taurus.core import TaurusEventType
from taurus.external.qt import Qt
from taurus.qt.qtgui.display import TaurusLabel
from taurus.qt.qtgui.input import TaurusValueLineEdit
from taurus_pyqtgraph import TaurusTrend

from taurus_gui.widgets import (
    CommandButton,
    CompactUnits,
    Messages,
    attribute_form,
    device_header,
    group,
    model_name,
    state_label,
    status_label,
)


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


class LaserPanel(Qt.QWidget):
    """Mai Tai: warm-up, emission, shutter, wavelength and power.

    Switching on is two steps on the real laser (On starts the diode warm-up; On again at 100 %
    starts emission), so the buttons are the laser's own commands, not a macro: what the panel
    does is exactly what the laser is told.
    """

    def __init__(self, tango_host: str, messages: Messages, device: str) -> None:
        super().__init__()
        self.device = device
        dev = model_name(tango_host, device)
        layout = Qt.QVBoxLayout(self)
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
            "On": CommandButton(dev, "On", "On", messages,
                                tooltip="First On starts the warm-up; On at 100 % starts emission"),
            "Off": CommandButton(dev, "Off", "Off", messages, tooltip="Stop emission"),
            "OpenShutter": CommandButton(dev, "OpenShutter", "Open shutter", messages),
            "CloseShutter": CommandButton(dev, "CloseShutter", "Close shutter", messages),
        }
        layout.addWidget(group("Commands", button_row(self.buttons)))

        self.form = attribute_form([
            f"{dev}/Wavelength", f"{dev}/WavelengthSetpoint", f"{dev}/Tuning",
            f"{dev}/Power", f"{dev}/PumpPower", f"{dev}/WarmupPercent", f"{dev}/Shutter",
            f"{dev}/Humidity", f"{dev}/Identity", f"{dev}/CommunicationOk", f"{dev}/LastError",
        ])
        layout.addWidget(group("Parameters (type a value and press Enter to apply)", self.form))
        layout.addStretch(1)


class MotionPanel(Qt.QWidget):
    """ESP300 stage axes and ELL14 rotation mounts: one row per axis.

    A row is what a user needs while aligning: where it is, where to send it, and Stop next to it.
    """

    def __init__(self, tango_host: str, messages: Messages,
                 axes: dict[str, str], mounts: dict[str, str]) -> None:
        """``axes`` and ``mounts``: row title -> device name (a group with none is left out)."""
        super().__init__()
        self.rows: dict[str, dict[str, Qt.QWidget]] = {}
        layout = Qt.QVBoxLayout(self)
        # Home is offered for the mounts only (clockwise, the mount's usual direction): homing
        # the stage drives it to a switch across its travel, a move to decide at the optics.
        for title, devices, homing in (("Newport ESP300 stage", axes, False),
                                       ("Thorlabs ELL14 rotation mounts", mounts, True)):
            if not devices:
                continue
            grid = Qt.QGridLayout()
            for column, caption in enumerate(["", "State", "Position", "Move to (Enter)", "", "", ""]):
                grid.addWidget(Qt.QLabel(f"<i>{caption}</i>"), 0, column)
            for row, (name, device) in enumerate(devices.items(), start=1):
                dev = model_name(tango_host, device)
                widgets = {
                    "name": Qt.QLabel(f"<b>{name}</b><br><span style='color:#666'>{device}</span>"),
                    "state": state_label(f"{dev}/State"),
                    "position": value_label(f"{dev}/Position"),
                    "target": TaurusValueLineEdit(),
                    "stop": CommandButton(dev, "Stop", "Stop", messages,
                                          tooltip="Stop this axis now (urgent lane)"),
                    "status": status_label(f"{dev}/Status"),
                }
                if homing:
                    widgets["home"] = CommandButton(dev, "Home", "Home", messages, parameters=["0"],
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


class PowerMeterPanel(Qt.QWidget):
    """Newport 1830-C: reading, settings and a live trend of Power."""

    def __init__(self, tango_host: str, messages: Messages, device: str) -> None:
        super().__init__()
        dev = model_name(tango_host, device)
        layout = Qt.QVBoxLayout(self)
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
            "Zero": CommandButton(dev, "Zero", "Zero", messages,
                                  tooltip="Store the current reading as zero offset (block the beam first)"),
            "StoreReference": CommandButton(dev, "StoreReference", "Store reference", messages),
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


class ImageFeed(Qt.QObject):
    """Forwards an image attribute's Taurus events (Tango change events, or Taurus polling when
    events are unavailable) to the GUI thread. Events arrive on Tango's threads, where Qt widgets
    must not be touched; a queued signal carries the array across."""

    received = Qt.pyqtSignal(object)

    def __init__(self, model: str) -> None:
        super().__init__()
        self.frames = 0
        self._attribute = taurus.Attribute(model)
        self._attribute.addListener(self._on_event)

    def _on_event(self, source, event_type, value) -> None:  # noqa: ARG002 - Taurus' signature
        if event_type not in (TaurusEventType.Change, TaurusEventType.Periodic):
            return
        data = getattr(value, "rvalue", None)
        if data is None:
            return
        data = np.asarray(getattr(data, "magnitude", data))
        if data.ndim == 2 and data.size:
            self.frames += 1
            self.received.emit(data)

    def close(self) -> None:
        self._attribute.removeListener(self._on_event)


class CameraPanel(Qt.QWidget):
    """Prime BSI: live view of ``LastImage`` (the device's preview, a few frames per second) and
    the acquisition settings.

    The view repaints at most ``REFRESH_HZ`` from the newest frame received, so a fast camera
    cannot flood the GUI; levels follow each frame unless the user fixes them.
    """

    REFRESH_HZ = 4

    def __init__(self, tango_host: str, messages: Messages, device: str) -> None:
        super().__init__()
        dev = model_name(tango_host, device)
        layout = Qt.QHBoxLayout(self)

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
            "StartAcquisition": CommandButton(dev, "StartAcquisition", "Start live", messages),
            "StopAcquisition": CommandButton(dev, "StopAcquisition", "Stop", messages),
            "Snap": CommandButton(dev, "Snap", "Snap", messages, tooltip="Acquire one frame"),
        }
        right.addWidget(button_row(self.buttons))
        self.form = attribute_form([
            f"{dev}/ExposureTime", f"{dev}/FrameRate", f"{dev}/FramesAcquired",
            f"{dev}/FramesLost", f"{dev}/NbFrames", f"{dev}/Binning", f"{dev}/TriggerMode",
            f"{dev}/Temperature",
        ])
        right.addWidget(group("Acquisition", self.form))
        right.addStretch(1)
        layout.addLayout(right, 2)

        self.image: np.ndarray | None = None
        self.frames_shown = 0
        self._pending: np.ndarray | None = None
        self.feed = ImageFeed(f"{dev}/LastImage")
        self.feed.received.connect(self._store, Qt.Qt.QueuedConnection)
        self._timer = Qt.QTimer(self)
        self._timer.timeout.connect(self._refresh)
        self._timer.start(int(1000 / self.REFRESH_HZ))

    def _store(self, data: np.ndarray) -> None:
        self._pending = data

    def _refresh(self) -> None:
        if self._pending is None:
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

    def close_feed(self) -> None:
        self._timer.stop()
        self.feed.close()


class LabPanel(Qt.QWidget):
    """Every device of the lab with its State (Tango colours) and Status: the overview."""

    def __init__(self, tango_host: str, devices: dict[str, str]) -> None:
        super().__init__()
        layout = Qt.QVBoxLayout(self)
        grid = Qt.QGridLayout()
        grid.setHorizontalSpacing(12)
        for column, caption in enumerate(["Device", "", "State", "Status"]):
            grid.addWidget(Qt.QLabel(f"<b>{caption}</b>"), 0, column)
        self.states: dict[str, TaurusLabel] = {}
        self.statuses: dict[str, TaurusLabel] = {}
        for row, (device, description) in enumerate(devices.items(), start=1):
            grid.addWidget(Qt.QLabel(f"<b>{device}</b>"), row, 0)
            grid.addWidget(Qt.QLabel(f"<span style='color:#555'>{description}</span>"), row, 1)
            self.states[device] = state_label(model_name(tango_host, device, "State"))
            self.statuses[device] = status_label(model_name(tango_host, device, "Status"))
            grid.addWidget(self.states[device], row, 2)
            grid.addWidget(self.statuses[device], row, 3)
        grid.setColumnStretch(3, 1)
        box = group(f"Lab on {tango_host}", layout=grid)
        layout.addWidget(box)
        layout.addStretch(1)
