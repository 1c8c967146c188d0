"""The lab overview: the panel an operator runs a shift on.

One screen answers the questions of a shift: is the laser emitting and is its shutter open (big,
coloured, readable across the room); is every device well (State in the Tango colours and, for
each FAULT or ALARM, the device's own reason, its Status); is the DataWriter recording, how far
behind it is and whether it lost anything; and what went wrong recently (a timed log of every
FAULT/ALARM with its reason, every recovery, every new communication error a device reports in
``LastError`` and every command the GUI sent that a device refused).

Everything arrives by Tango change events (State, Status, LastError and the values are pushed by
the devices); the log is kept in the GUI, newest first, ``MAX_LOG`` entries.
"""

from __future__ import annotations

import html

from taurus.external.qt import Qt
from taurus.qt.qtgui.display import TaurusLabel

from taurus_gui.panels import ModelPanel, value_label
from taurus_gui.widgets import (
    CompactUnits,
    EventFeed,
    FlagLabel,
    group,
    message_hub,
    now_text,
    split_model,
    state_label,
    status_label,
)

BAD_STATES = frozenset({"FAULT", "ALARM"})
MAX_LOG = 200

RED, ORANGE, GREEN, GREY = "#ff4040", "#ffa040", "#60d060", "#dddddd"


class LabOverview(ModelPanel):
    """Every device of the lab with State and Status, the laser and the DataWriter at a glance,
    and the log of recent errors.

    The model is the list of the lab's devices (full Taurus names); set before it (the
    configuration's ``widget_properties``): ``descriptions`` (device -> what it is), ``laser``
    and ``datawriter`` (their full names, "" if the lab has none) and ``health_devices`` (the
    devices that have ``LastError``).
    """

    shortMessage = Qt.pyqtSignal(str)  # noqa: N815 - taurusgui's shared-data signal name

    def __init__(self, parent: Qt.QWidget | None = None) -> None:
        super().__init__(parent)
        self.descriptions: dict[str, str] = {}
        self.laser = ""
        self.datawriter = ""
        self.health_devices: list[str] = []
        self.states: dict[str, TaurusLabel] = {}
        self.statuses: dict[str, TaurusLabel] = {}
        self.log: list[str] = []
        self._seen: dict[str, dict[str, object]] = {}
        message_hub().message.connect(self._on_message)

    # ------------------------------------------------------------------ content
    def build(self, body: Qt.QWidget, model: list[str]) -> None:
        layout = Qt.QVBoxLayout(body)
        top = Qt.QHBoxLayout()
        if self.laser:
            top.addWidget(self._laser_box(self.laser), 3)
        if self.datawriter:
            top.addWidget(self._datawriter_box(self.datawriter), 2)
        layout.addLayout(top)

        grid = Qt.QGridLayout()
        grid.setHorizontalSpacing(12)
        for column, caption in enumerate(["Device", "", "State", "Status (the reason of a FAULT or ALARM)"]):
            grid.addWidget(Qt.QLabel(f"<b>{caption}</b>"), 0, column)
        self.states, self.statuses, self._seen = {}, {}, {}
        hosts = set()
        for row, full_name in enumerate(model, start=1):
            tango_host, device = split_model(full_name)
            hosts.add(tango_host)
            description = self.descriptions.get(full_name) or self.descriptions.get(device, "")
            grid.addWidget(Qt.QLabel(f"<b>{device}</b>"), row, 0)
            grid.addWidget(Qt.QLabel(f"<span style='color:#555'>{description}</span>"), row, 1)
            self.states[device] = state_label(f"{full_name}/State")
            self.statuses[device] = status_label(f"{full_name}/Status")
            grid.addWidget(self.states[device], row, 2)
            grid.addWidget(self.statuses[device], row, 3)
            self._watch(body, full_name, device)
        grid.setColumnStretch(3, 1)
        layout.addWidget(group(f"Lab on {', '.join(sorted(hosts))}", layout=grid))

        self.log_view = Qt.QListWidget()
        self.log_view.setMinimumHeight(120)
        self.log_view.setWordWrap(True)
        layout.addWidget(group("Recent errors (newest first)", self.log_view), 1)
        for text in reversed(self.log):  # entries logged before a rebuild
            self.log_view.addItem(text)

    def _laser_box(self, full_name: str) -> Qt.QGroupBox:
        _, device = split_model(full_name)
        row = Qt.QHBoxLayout()
        self.emission = FlagLabel(f"{full_name}/Emission", "Emission", ("ON", "off"), (RED, GREEN))
        self.shutter = FlagLabel(f"{full_name}/Shutter", "Shutter", ("OPEN", "closed"), (RED, GREEN))
        row.addWidget(self.emission)
        row.addWidget(self.shutter)
        column = Qt.QFormLayout()
        self.laser_state = state_label(f"{full_name}/State", big=True)
        column.addRow("State", self.laser_state)
        self.laser_warmup = value_label(f"{full_name}/WarmupPercent")
        column.addRow("Warm-up", self.laser_warmup)
        self.laser_power = value_label(f"{full_name}/Power")
        self.laser_power.setFormat(CompactUnits())
        column.addRow("Output power", self.laser_power)
        row.addLayout(column, 1)
        return group(f"Laser {device}", layout=row)

    def _datawriter_box(self, full_name: str) -> Qt.QGroupBox:
        _, device = split_model(full_name)
        form = Qt.QFormLayout()
        self.recording = FlagLabel(f"{full_name}/Recording", "Recording", ("YES", "no"), (GREEN, GREY))
        self.recording.setMinimumSize(120, 44)
        form.addRow(self.recording)
        self.backlog = value_label(f"{full_name}/Backlog")
        form.addRow("Backlog (records)", self.backlog)
        self.losses = value_label(f"{full_name}/DroppedRecords")
        form.addRow("Lost (records)", self.losses)
        self.write_rate = value_label(f"{full_name}/WriteRate")
        form.addRow("Write rate", self.write_rate)
        self.file_path = TaurusLabel()
        self.file_path.setModel(f"{full_name}/FilePath")
        self.file_path.setBgRole("none")
        self.file_path.setAutoTrim(False)
        self.file_path.setWordWrap(True)
        form.addRow("File", self.file_path)
        return group(f"DataWriter {device}", layout=form)

    # ------------------------------------------------------------------ the log
    def _watch(self, body: Qt.QWidget, full_name: str, device: str) -> None:
        """Follow the device's State, Status (and LastError) events for the log."""
        seen: dict[str, object] = {"state": None, "status": None, "logged": None, "error": None}
        self._seen[device] = seen
        EventFeed(f"{full_name}/State", body, slot=lambda v, d=device: self._on_state(d, "state", v))
        EventFeed(f"{full_name}/Status", body, slot=lambda v, d=device: self._on_state(d, "status", v))
        if full_name in self.health_devices or device in self.health_devices:
            EventFeed(f"{full_name}/LastError", body, slot=lambda v, d=device: self._on_last_error(d, v))

    #: a device pushes its State, then its Status: the log waits this long for the reason that
    #: goes with a new state, so an entry never pairs a FAULT with the status from before it
    SETTLE_MS = 250

    def _on_state(self, device: str, key: str, value) -> None:
        seen = self._seen.get(device)
        if seen is None or value is None:
            return
        # a State arrives as Taurus' DevState enum (str() gives "DevState.FAULT"): keep its name
        seen[key] = getattr(value, "name", None) if key == "state" else str(value)
        if not seen.get("pending"):
            seen["pending"] = True
            Qt.QTimer.singleShot(self.SETTLE_MS, lambda d=device: self._log_state(d))

    def _log_state(self, device: str) -> None:
        """Log a device's new FAULT/ALARM (with its reason) or its recovery, once."""
        seen = self._seen.get(device)
        if seen is None:
            return
        seen["pending"] = False
        state, status = seen["state"], seen["status"]
        if state is None:
            return
        if state in BAD_STATES:
            if status is not None and seen["logged"] != (state, status):
                seen["logged"] = (state, status)
                self.add_log(f"{device} {state}: {status}")
        elif seen["logged"] is not None:
            seen["logged"] = None
            self.add_log(f"{device} recovered: {state}")

    def _on_last_error(self, device: str, value) -> None:
        seen = self._seen.get(device)
        if seen is None or not value or value == seen["error"]:
            return
        seen["error"] = value
        self.add_log(f"{device} error: {value}")

    def _on_message(self, text: str, is_error: bool) -> None:
        self.shortMessage.emit(text)
        if is_error:
            self.add_log(f"command refused: {text}")

    def add_log(self, text: str) -> None:
        """Add a timed entry at the top of the log (and of ``self.log``)."""
        entry = f"{now_text()} {text}"
        self.log.insert(0, entry)
        del self.log[MAX_LOG:]
        view = getattr(self, "log_view", None)
        if view is not None and self._body is not None:
            item = Qt.QListWidgetItem(entry)
            if " FAULT: " in text or " ALARM: " in text or "refused" in text:
                item.setForeground(Qt.QColor("#b00000"))
            item.setToolTip(html.escape(entry))
            view.insertItem(0, item)
            while view.count() > MAX_LOG:
                view.takeItem(view.count() - 1)

    def release(self) -> None:
        self._seen = {}
        super().release()
