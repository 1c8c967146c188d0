"""One loss counter per recorded stream, across the rings and dataset groups it goes through.

A recording follows a stream by name. Its producer may re-create the ring (a server restart, a
new ROI) and the recording then reads the new ring with a new :class:`~datawriter.ring_reader.RingReader`;
a changed layout also starts a new dataset group in the file. Records can go missing in four
ways, and each must be counted exactly once:

* overwritten in the ring before they were read, or torn while being read: the reader's own
  counter (:attr:`RingReader.lost`), which started before the recording took the reader over;
* written into a new ring before the recording found it (its first ``next_seq`` records);
* dropped by the recorder itself (a record still being compressed when the recording ended on
  an error);
* and, per dataset group, the part of all that which happened while the group was the current one
  (written as the group's ``lost_records``).

:class:`StreamLosses` is that bookkeeping in one place, with nothing else to do.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class CountsLosses(Protocol):
    """What a loss counter needs of a ring reader."""

    @property
    def lost(self) -> int: ...


R = TypeVar("R", bound=CountsLosses)


class StreamLosses(Generic[R]):
    """Records of one followed stream that did not reach the file, and the reader that counts
    them now (the one the recording reads the stream with)."""

    def __init__(self, reader: R, gone_before: int = 0) -> None:
        """``reader``: the reader taken over (its losses so far are not the recording's);
        ``gone_before``: records the producer wrote before the recording found the ring and that
        it can no longer read."""
        self._reader = reader
        self._reader_base = reader.lost
        self._settled = gone_before  # losses of readers already replaced, and records dropped
        self._segment_base = 0

    @property
    def reader(self) -> R:
        return self._reader

    @property
    def total(self) -> int:
        """Every record of the stream lost since the recording started."""
        return self._settled + self._reader.lost - self._reader_base

    @property
    def in_segment(self) -> int:
        """The records lost while the current dataset group was being written."""
        return self.total - self._segment_base

    def dropped(self, n: int = 1) -> None:
        """The recorder itself could not write ``n`` records it had read."""
        if n < 0:
            raise ValueError(f"cannot drop {n} records")
        self._settled += n

    def follow(self, reader: R, gone_before: int) -> None:
        """The ring was re-created: go on counting with ``reader``, whose ring already lost
        ``gone_before`` records (written before it was found)."""
        self._settled += self._reader.lost - self._reader_base + gone_before
        self._reader, self._reader_base = reader, reader.lost

    def start_segment(self, carried: int = 0) -> int:
        """A new dataset group begins; return the losses of the group that ended.

        ``carried``: losses already counted that belong to the new group (the records a new ring
        lost before it was found, when the new ring is also what starts the new group)."""
        ended = self.in_segment - carried
        self._segment_base = self.total - carried
        return ended
