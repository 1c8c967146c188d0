"""The Pool's set-point records: written off the motion path, newest kept, retried until stored."""

from __future__ import annotations

import threading

from tango_db.set_point_recorder import SetPointRecorder


class FlakyDatabase:
    """A database that can be made unreachable (every write fails) or slow (a write waits)."""

    def __init__(self) -> None:
        self.down = False
        self.release = threading.Event()
        self.release.set()
        self.writes: list[tuple[str, dict]] = []
        self.attempts = 0
        self.entered = threading.Event()

    def write(self, device: str, data: dict) -> None:
        self.attempts += 1
        self.entered.set()
        self.release.wait()
        if self.down:
            raise ConnectionError("database unreachable")
        self.writes.append((device, data))


def test_recording_never_waits_for_a_slow_database():
    db = FlakyDatabase()
    db.release.clear()  # the database holds the first write
    recorder = SetPointRecorder(db.write, retry_s=0.01)
    recorder.record("motor/ctrl/1", {"v": 1})
    assert db.entered.wait(5)
    done = threading.Event()
    threading.Thread(target=lambda: (recorder.record("motor/ctrl/1", {"v": 2}), done.set()), daemon=True).start()
    assert done.wait(5), "record() waited for the database"
    db.release.set()
    assert recorder.wait_written(5)
    assert db.writes == [("motor/ctrl/1", {"v": 1}), ("motor/ctrl/1", {"v": 2})]


def test_while_the_database_is_away_the_newest_set_point_is_kept_and_stored_once_it_answers():
    db = FlakyDatabase()
    db.down = True
    recorder = SetPointRecorder(db.write, retry_s=0.01)
    for value in range(5):
        recorder.record("motor/ctrl/1", {"v": value})
    recorder.record("motor/ctrl/2", {"v": 10})
    assert not recorder.wait_written(0.2)  # nothing can be stored
    assert db.attempts > 1  # retried
    db.down = False
    assert recorder.wait_written(5)
    assert sorted(db.writes, key=lambda w: w[0]) == [("motor/ctrl/1", {"v": 4}), ("motor/ctrl/2", {"v": 10})]


def test_the_pool_launcher_patches_sardanas_motor():
    from sardana.tango.pool.Motor import Motor

    from tango_db.set_point_recorder import record_motor_set_points_in_background

    original = Motor.set_write_dial_position_to_db
    try:
        record_motor_set_points_in_background()
        assert Motor.set_write_dial_position_to_db is not original
    finally:
        Motor.set_write_dial_position_to_db = original
