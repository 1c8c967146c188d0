"""The camera's frames into the shared-memory Arrow ring (device layer: the only place that
knows about :mod:`datawriter.ring`; the component and the backends only see a FrameSink)."""

from __future__ import annotations

import logging

import numpy as np

from datawriter import ring


class RingFrameSink:
    """One frame stream ``<device with dots>.frames`` whose ring is re-created when the frame
    shape changes (ROI, binning): a ring holds frames of one shape."""

    def __init__(self, device_name: str, ring_size_mb: float, logger: logging.Logger | None = None) -> None:
        self.device_name = device_name
        self.ring_size_mb = ring_size_mb
        self.stream = ring.stream_name(device_name, "frames")
        self.log = logger or logging.getLogger("tangodaq.Pvcam.ring")
        self._writer: ring.FrameStreamWriter | None = None
        self._shape: tuple[int, int] | None = None

    def for_shape(self, height: int, width: int) -> RingFrameSink:
        """Called at each acquisition start: keep the ring if the shape is unchanged."""
        if self._writer is None or self._shape != (height, width):
            self.close()
            self._writer = ring.create_frame_stream(
                self.device_name, "frames", height=height, width=width, dtype=np.uint16, units="ADU",
                ring_size_mb=self.ring_size_mb, description="PVCAM camera frames",
                extra={"pixel_size_um": 6.5},
            )
            self._shape = (height, width)
            self.log.info("frame stream %s: %dx%d, %d slots", self.stream, width, height, self._writer.ring.slot_count)
        return self

    def write_frame(self, frame: np.ndarray, frame_number: int, timestamp_bof: float, timestamp_eof: float,
                    exposure_s: float) -> None:
        assert self._writer is not None
        self._writer.write(frame, frame_number, timestamp_bof, timestamp_eof, exposure_s)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._shape = None
