"""Live camera view for aligning beams: image, frame number and time, losses, ROI statistics, profiles.

``CameraView(device_name)`` watches a Pvcam device (``LastImage`` and the ``LastImageFrameNumber``
/ ``LastImageTime`` the device pushes just before each preview) through PyTango change events,
not Taurus attributes, because the view must pair each image with its own frame number: the
three events of one preview come in order on the device's event channel, so an image is paired
with the number received just before it and never with an older one. An image that arrives
without its number is shown as "frame ?" (only while no numbered frame was shown) and not counted; an image
whose frame was already shown (same or older frame time) is dropped. So the view never shows a stale frame as new.

Why it keeps up with a fast camera: the event thread only keeps the newest preview and wakes the
GUI thread; the GUI thread draws whatever is newest when it gets to it (previews it had no time
for are counted as skipped by the view, not queued), with the colour map and levels fixed (a
level change is an explicit user action: "Auto levels once", or the "Auto every frame" box),
so a frame costs one lookup-table pass, a few numpy reductions on the ROI and two profiles.

What it shows: the image (colour map and levels kept between frames), the frame number, its time
and age, the view's own update rate, the device's ``FramesLost`` (red when frames are lost) and
``FrameRate``; a rectangular ROI (drag or resize it) with sum, mean, max and centroid; horizontal
and vertical profiles through the crosshair (drag the lines). ROI numbers and profiles are in the
preview's pixels; ``PreviewBinning`` (shown) says how many sensor pixels one of them averages. The
centroid is weighted by ``pixel - min(ROI)`` so the camera's offset does not pull it to the ROI
centre.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np
import pyqtgraph as pg
import tango
from taurus.external.qt import Qt

from tango_db.proxies import device_proxy

COLOUR_MAPS = ("viridis", "inferno", "magma", "plasma", "cividis", "grey")
RATE_WINDOW_S = 2.0


def roi_statistics(image: np.ndarray, x: int, y: int, width: int, height: int) -> dict[str, float]:
    """Sum, mean, max and centroid (x, y in image pixels) of ``image[y:y+height, x:x+width]``,
    clipped to the image; the centroid weights are ``pixel - min`` of the region."""
    h, w = image.shape
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(w, int(x) + int(width)), min(h, int(y) + int(height))
    if x1 <= x0 or y1 <= y0:
        return {"sum": 0.0, "mean": float("nan"), "max": float("nan"), "cx": float("nan"), "cy": float("nan"),
                "pixels": 0}
    region = image[y0:y1, x0:x1].astype(np.float64)
    weights = region - region.min()
    total = weights.sum()
    if total > 0:
        cx = float((weights.sum(axis=0) * np.arange(x0, x1)).sum() / total)
        cy = float((weights.sum(axis=1) * np.arange(y0, y1)).sum() / total)
    else:
        cx, cy = (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0
    return {"sum": float(region.sum()), "mean": float(region.mean()), "max": float(region.max()), "cx": cx, "cy": cy,
            "pixels": int(region.size)}


class _Bridge(Qt.QObject):
    """Carries 'something new arrived' from the PyTango event thread into the GUI thread."""

    preview = Qt.pyqtSignal()
    scalar = Qt.pyqtSignal(str, object)


class CameraView(Qt.QWidget):
    """The live view of one camera device (any name ``tango.DeviceProxy`` accepts)."""

    def __init__(self, device_name: str, parent: Qt.QWidget | None = None) -> None:
        super().__init__(parent)
        self.device_name = str(device_name)
        # ---- state shared with the event thread (under _lock)
        self._lock = threading.Lock()
        self._pending_number: int | None = None
        self._pending_time: float | None = None
        self._newest: tuple[int | None, float | None, np.ndarray] | None = None
        self.received = 0  # previews received (event thread)
        self._dead = False  # set when the Qt side is gone (unsubscribing from a callback could deadlock)
        # ---- state of the GUI thread
        self.image: np.ndarray | None = None
        self.frame_number: int | None = None
        self.frame_time: float | None = None
        self.shown: collections.deque[int] = collections.deque(maxlen=10000)  # frame numbers drawn, in order
        self.repeats_dropped = 0
        self.unpaired = 0
        self.skipped = 0
        self.lost = 0
        self.binning = 1
        self._shown_times: collections.deque[float] = collections.deque()
        self._levels: tuple[float, float] | None = None
        self._bridge = _Bridge()
        self._bridge.preview.connect(self._draw_newest, Qt.Qt.QueuedConnection)
        self._bridge.scalar.connect(self._on_scalar, Qt.Qt.QueuedConnection)
        self._build()
        self._proxy: tango.DeviceProxy | None = None
        self._subscriptions: list[int] = []
        self._age_timer = Qt.QTimer(self)
        self._age_timer.timeout.connect(self._refresh_info)
        self._age_timer.start(250)
        self._connect()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = Qt.QGridLayout(self)
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setMinimumSize(520, 420)
        self.image_plot = self.plots.addPlot(row=0, col=0)
        self.image_plot.setAspectLocked(True)
        self.image_plot.invertY(True)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_plot.addItem(self.image_item)
        self.v_profile_plot = self.plots.addPlot(row=0, col=1)
        self.v_profile_plot.invertY(True)
        self.v_profile_plot.setYLink(self.image_plot)
        self.v_profile_plot.setMaximumWidth(150)
        self.v_profile_plot.setLabel("bottom", "ADU")
        self.h_profile_plot = self.plots.addPlot(row=1, col=0)
        self.h_profile_plot.setXLink(self.image_plot)
        self.h_profile_plot.setMaximumHeight(150)
        self.h_profile_plot.setLabel("left", "ADU")
        self.h_profile = self.h_profile_plot.plot(pen=pg.mkPen("y"))
        self.v_profile = self.v_profile_plot.plot(pen=pg.mkPen("c"))
        self.h_line = pg.InfiniteLine(angle=0, movable=True, pen=pg.mkPen("y", style=Qt.Qt.DashLine))
        self.v_line = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen("c", style=Qt.Qt.DashLine))
        self.image_plot.addItem(self.h_line)
        self.image_plot.addItem(self.v_line)
        self.h_line.sigPositionChanged.connect(self._update_profiles)
        self.v_line.sigPositionChanged.connect(self._update_profiles)
        self.roi = pg.RectROI([0, 0], [64, 64], pen=pg.mkPen("r", width=2))
        self.image_plot.addItem(self.roi)
        self.roi.sigRegionChanged.connect(self._update_roi_stats)
        layout.addWidget(self.plots, 0, 0, 1, 4)

        self.frame_label = Qt.QLabel("no frame yet")
        self.rate_label = Qt.QLabel("view: 0.0 updates/s")
        self.lost_label = Qt.QLabel("lost: 0")
        self.roi_label = Qt.QLabel("ROI: -")
        self.roi_label.setTextInteractionFlags(Qt.Qt.TextSelectableByMouse)
        for col, w in enumerate((self.frame_label, self.rate_label, self.lost_label)):
            layout.addWidget(w, 1, col)
        layout.addWidget(self.roi_label, 2, 0, 1, 4)

        controls = Qt.QHBoxLayout()
        controls.addWidget(Qt.QLabel("Colour map"))
        self.colour_map = Qt.QComboBox()
        self.colour_map.addItems(COLOUR_MAPS)
        self.colour_map.currentTextChanged.connect(self.set_colour_map)
        controls.addWidget(self.colour_map)
        controls.addWidget(Qt.QLabel("Levels"))
        self.level_min = Qt.QDoubleSpinBox()
        self.level_max = Qt.QDoubleSpinBox()
        for box in (self.level_min, self.level_max):
            box.setRange(-1e9, 1e9)
            box.setDecimals(0)
            box.setKeyboardTracking(False)
            box.valueChanged.connect(self._levels_from_boxes)
            controls.addWidget(box)
        self.auto_once = Qt.QPushButton("Auto levels once")
        self.auto_once.clicked.connect(self.auto_levels)
        controls.addWidget(self.auto_once)
        self.auto_each = Qt.QCheckBox("Auto every frame")
        controls.addWidget(self.auto_each)
        controls.addStretch(1)
        layout.addLayout(controls, 3, 0, 1, 4)
        self.set_colour_map(COLOUR_MAPS[0])

    # ------------------------------------------------------------------ events (PyTango thread)
    def _connect(self) -> None:
        try:
            self._proxy = device_proxy(self.device_name)
            # LastImage first: its first event (read at subscription) comes unpaired and is drawn as
            # such, instead of a live image newer than a number read just before it
            for attr in ("LastImage", "LastImageFrameNumber", "LastImageTime"):
                self._subscriptions.append(
                    self._proxy.subscribe_event(attr, tango.EventType.CHANGE_EVENT, self._on_event))
            for attr in ("FramesLost", "FrameRate", "PreviewBinning"):
                self._subscriptions.append(
                    self._proxy.subscribe_event(attr, tango.EventType.CHANGE_EVENT, self._on_scalar_event))
        except tango.DevFailed as exc:
            self.frame_label.setText(f"cannot watch {self.device_name}: {exc.args[0].desc.strip()}")

    def _on_event(self, ev: tango.EventData) -> None:
        if ev.err or ev.attr_value is None or self._dead:
            return
        name = ev.attr_value.name.lower()
        value = ev.attr_value.value
        with self._lock:
            if name == "lastimageframenumber":
                self._pending_number = int(value)
            elif name == "lastimagetime":
                self._pending_time = float(value)
            elif name == "lastimage":
                # the number and time pushed just before this image are its own: take them once
                number, when = self._pending_number, self._pending_time
                self._pending_number = self._pending_time = None
                if not (isinstance(value, np.ndarray) and value.ndim == 2 and value.size):
                    return  # no frame yet
                if self._newest is not None:
                    self.skipped += 1  # the GUI had no time for the previous one
                self._newest = (number, when, value)
                self.received += 1
            else:
                return
        if name == "lastimage":
            try:
                self._bridge.preview.emit()
            except RuntimeError:  # the widget was deleted without being closed: ignore what follows
                self._dead = True

    def _on_scalar_event(self, ev: tango.EventData) -> None:
        if not ev.err and ev.attr_value is not None and not self._dead:
            try:
                self._bridge.scalar.emit(ev.attr_value.name.lower(), ev.attr_value.value)
            except RuntimeError:  # the widget was deleted without being closed
                self._dead = True

    # ------------------------------------------------------------------ GUI thread
    def _on_scalar(self, name: str, value: Any) -> None:
        if name == "frameslost":
            self.lost = int(value)
        elif name == "previewbinning":
            self.binning = int(value)
        elif name == "framerate":
            self._camera_fps = float(value)
        self._refresh_info()

    def _draw_newest(self) -> None:
        with self._lock:
            newest, self._newest = self._newest, None
        if newest is None:
            return
        number, when, image = newest
        if self._is_old(number, when):
            self.repeats_dropped += 1  # the same (or an older) frame again: not news
            return
        if number is None and self.shown:
            self.unpaired += 1  # an image without its number (e.g. re-sent at a re-subscription):
            return  # it cannot be told apart from a stale one, so it does not replace a known frame
        first = self.image is None or self.image.shape != image.shape
        self.image = image
        self.frame_number, self.frame_time = number, when
        if number is None:
            self.unpaired += 1  # shown as "frame ?" only while no numbered frame was
        else:
            self.shown.append(number)
            now = time.monotonic()
            self._shown_times.append(now)
        if first or self.auto_each.isChecked() or self._levels is None:
            self._auto_levels_from(image)
        self.image_item.setImage(image, autoLevels=False, levels=self._levels)
        if first:
            h, w = image.shape
            self.h_line.setValue(h / 2)
            self.v_line.setValue(w / 2)
            self.roi.setPos((w / 4, h / 4), finish=False)
            self.roi.setSize((w / 2, h / 2), finish=False)
            self.image_plot.autoRange()
        self._update_profiles()
        self._update_roi_stats()
        self._refresh_info()

    def _is_old(self, number: int | None, when: float | None) -> bool:
        """Already shown? Frame times grow across acquisitions (numbers restart at 1 in each)."""
        if self.image is None:
            return False
        if when is not None and self.frame_time is not None:
            return when <= self.frame_time
        return number is not None and number == self.frame_number

    def _auto_levels_from(self, image: np.ndarray) -> None:
        step = max(1, image.size // 250_000)  # percentiles on a sample: a few ms on a full frame
        sample = image.ravel()[::step]
        lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.9)))
        self.set_levels(lo, hi if hi > lo else lo + 1)

    def _levels_from_boxes(self) -> None:
        lo, hi = self.level_min.value(), self.level_max.value()
        if hi > lo and (lo, hi) != self._levels:
            self._levels = (lo, hi)
            self.image_item.setLevels(self._levels)

    def _update_profiles(self) -> None:
        if self.image is None:
            return
        h, w = self.image.shape
        row = int(np.clip(round(self.h_line.value()), 0, h - 1))
        col = int(np.clip(round(self.v_line.value()), 0, w - 1))
        self.h_profile.setData(np.arange(w), self.image[row, :].astype(np.float64))
        self.v_profile.setData(self.image[:, col].astype(np.float64), np.arange(h))

    def roi_rect(self) -> tuple[int, int, int, int]:
        """The ROI as integer (x, y, width, height) in preview pixels."""
        (x, y), (w, h) = self.roi.pos(), self.roi.size()
        return int(round(x)), int(round(y)), int(round(w)), int(round(h))

    def _update_roi_stats(self) -> None:
        if self.image is None:
            return
        self.stats = roi_statistics(self.image, *self.roi_rect())
        s = self.stats
        x, y, w, h = self.roi_rect()
        self.roi_label.setText(
            f"ROI x={x} y={y} {w}x{h} px (binning {self.binning}): sum {s['sum']:.6g}  mean {s['mean']:.2f}  "
            f"max {s['max']:.0f}  centroid ({s['cx']:.2f}, {s['cy']:.2f})")

    def _refresh_info(self) -> None:
        now = time.monotonic()
        while self._shown_times and now - self._shown_times[0] > RATE_WINDOW_S:
            self._shown_times.popleft()
        if self.image is not None:
            number = "?" if self.frame_number is None else str(self.frame_number)
            if self.frame_time:
                stamp = time.strftime("%H:%M:%S", time.localtime(self.frame_time)) + f".{int(self.frame_time % 1 * 1000):03d}"
                age = f", {max(0.0, time.time() - self.frame_time):.1f} s ago"
            else:
                stamp, age = "time ?", ""
            self.frame_label.setText(f"frame {number} at {stamp}{age}")
        fps = getattr(self, "_camera_fps", 0.0)
        self.rate_label.setText(f"view: {self.updates_per_s():.1f} updates/s (camera {fps:.1f} fps)")
        if self.lost:
            self.lost_label.setText(f"LOST: {self.lost} frame(s)")
            self.lost_label.setStyleSheet("color: white; background: #c0392b; font-weight: bold")
        else:
            self.lost_label.setText("lost: 0")
            self.lost_label.setStyleSheet("")

    # ------------------------------------------------------------------ public API
    def updates_per_s(self) -> float:
        """Distinct frames drawn per second over the last couple of seconds."""
        times = self._shown_times
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else 0.0

    def set_colour_map(self, name: str) -> None:
        cmap = pg.colormap.get("CET-L1" if name == "grey" else name)
        self.image_item.setColorMap(cmap)
        index = self.colour_map.findText(name)
        if index >= 0 and self.colour_map.currentIndex() != index:
            self.colour_map.setCurrentIndex(index)

    def set_levels(self, low: float, high: float) -> None:
        """Fix the display levels (kept for every following frame)."""
        self._levels = (float(low), float(high))
        for box, v in ((self.level_min, low), (self.level_max, high)):
            box.blockSignals(True)
            box.setValue(v)
            box.blockSignals(False)
        self.image_item.setLevels(self._levels)

    def auto_levels(self) -> None:
        """Levels from the current image, then kept."""
        if self.image is not None:
            self._auto_levels_from(self.image)

    def set_roi(self, x: float, y: float, width: float, height: float) -> None:
        self.roi.setPos((x, y), finish=False)
        self.roi.setSize((width, height))

    def close_events(self) -> None:
        """Unsubscribe (also done when the widget is closed)."""
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            for sid in self._subscriptions:
                try:
                    proxy.unsubscribe_event(sid)
                except tango.DevFailed:
                    pass
        self._subscriptions.clear()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.close_events()
        super().closeEvent(event)
