"""The loss bookkeeping of one recorded stream, on its own (datawriter/losses.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from datawriter.losses import StreamLosses
from datawriter.ring import RingReader, create_scalar_stream


@dataclass
class Reader:
    lost: int = 0


def test_a_reader_taken_over_brings_none_of_its_earlier_losses() -> None:
    r = Reader(lost=7)  # lost before the recording started: not the recording's
    losses = StreamLosses(r)
    assert losses.total == 0 and losses.in_segment == 0
    r.lost = 10
    assert losses.total == 3 and losses.in_segment == 3


def test_a_ring_found_late_counts_what_it_lost_before() -> None:
    losses = StreamLosses(Reader(lost=0), gone_before=5)
    assert losses.total == 5 and losses.in_segment == 5


def test_records_dropped_by_the_recorder_count_once() -> None:
    losses = StreamLosses(Reader())
    losses.dropped()
    losses.dropped(2)
    assert losses.total == 3
    with pytest.raises(ValueError):
        losses.dropped(-1)


def test_a_recreated_ring_keeps_the_old_readers_losses_and_adds_the_new_rings_gap() -> None:
    old = Reader(lost=2)
    losses = StreamLosses(old)
    old.lost = 6  # 4 lost while recording
    new = Reader(lost=1)  # a reader's counter does not start at 0 in general
    losses.follow(new, gone_before=3)  # 3 records written before the new ring was found
    assert losses.total == 4 + 3
    old.lost = 100  # the old reader no longer counts
    new.lost = 3
    assert losses.total == 4 + 3 + 2
    assert losses.reader is new


def test_a_new_dataset_group_reports_the_ended_groups_losses_and_starts_with_what_it_carries() -> None:
    old = Reader()
    losses = StreamLosses(old)
    old.lost = 4
    new = Reader()
    losses.follow(new, gone_before=3)
    # the new ring has another layout: a new group, which the 3 records of the gap belong to
    assert losses.start_segment(carried=3) == 4
    assert losses.in_segment == 3
    new.lost = 5
    assert losses.in_segment == 8 and losses.total == 12
    assert losses.start_segment() == 8 and losses.in_segment == 0 and losses.total == 12


def test_with_a_real_ring_the_overwritten_records_are_the_losses(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TANGODAQ_SHM_DIR", str(tmp_path))
    with create_scalar_stream("test/losses/1", "power", rows_per_record=1, slot_count=4) as w:
        w.write([1.0], [0.0])
        r = RingReader(w.name, start="oldest")
        losses = StreamLosses(r)
        for i in range(10):  # 10 more records into 4 slots, nothing read
            w.write([2.0 + i], [float(i)])
        read = [rec.batch.column("value").to_numpy()[0] for rec in r.records(timeout=0)]
        # the reader jumps past what the writer may be overwriting: every record not read is lost
        assert 1 <= len(read) <= 4 and losses.total == 11 - len(read)
        np.testing.assert_array_equal(read, np.arange(10 - len(read), 10, dtype=float))
        r.close()
