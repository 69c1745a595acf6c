"""A file is announced only once it has finished being written."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from cryobus.services.ingest.stability import StabilityTracker

MICROGRAPH = (
    "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/"
    "24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_a_file_still_growing_is_not_stable(tmp_path):
    clock = FakeClock()
    # settle_s far above the test's real duration: only the fake clock can settle the file
    tracker = StabilityTracker(settle_s=3600, clock=clock)
    movie = tmp_path / "movie_0001.tif"
    movie.write_bytes(b"II*\x00" + b"\x00" * 100)  # synthetic bytes: TIFF content is not read
    assert not tracker.is_stable(movie)
    clock.now += 4000
    with movie.open("ab") as f:
        f.write(b"\x01" * 100)  # the detector is still writing
    assert not tracker.is_stable(movie)
    clock.now += 1000
    assert not tracker.is_stable(movie)  # unchanged, but not yet for settle_s
    clock.now += 3000
    assert tracker.is_stable(movie)


def test_an_old_file_is_stable_at_once(tmp_path):
    tracker = StabilityTracker(settle_s=60, clock=FakeClock())
    movie = tmp_path / "old.eer"
    movie.write_bytes(b"\x00" * 64)
    _age(movie, 7200)
    assert tracker.is_stable(movie)


def test_a_fresh_file_with_the_same_content_waits(tmp_path):
    tracker = StabilityTracker(settle_s=3600, clock=FakeClock())
    movie = tmp_path / "new.tiff"
    movie.write_bytes(b"\x00" * 64)
    assert not tracker.is_stable(movie)
    assert not tracker.is_stable(movie)


def test_a_touched_file_starts_settling_again(tmp_path):
    clock = FakeClock()
    tracker = StabilityTracker(settle_s=3600, clock=clock)
    f = tmp_path / "a.tif"
    f.write_bytes(b"\x00" * 64)
    assert not tracker.is_stable(f)
    clock.now += 3600
    assert tracker.is_stable(f)
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 5_000_000))  # same size, new mtime
    assert not tracker.is_stable(f)


def test_a_complete_old_mrc_is_stable(shared_data, tmp_path):
    mrc = tmp_path / "mic.mrc"
    shutil.copyfile(shared_data / MICROGRAPH, mrc)
    _age(mrc, 7200)
    assert StabilityTracker(settle_s=60).is_stable(mrc)


def test_a_truncated_mrc_is_never_stable(shared_data, tmp_path):
    data = (shared_data / MICROGRAPH).read_bytes()
    mrc = tmp_path / "half.mrc"
    mrc.write_bytes(data[: len(data) // 2])
    _age(mrc, 7200)  # old and unchanged, yet shorter than its header promises
    clock = FakeClock()
    tracker = StabilityTracker(settle_s=60, clock=clock)
    assert not tracker.is_stable(mrc)
    clock.now += 600
    assert not tracker.is_stable(mrc)


def test_a_missing_file_is_not_stable_and_is_forgotten(tmp_path):
    tracker = StabilityTracker(settle_s=0)
    f = tmp_path / "gone.tif"
    f.write_bytes(b"x")
    assert tracker.is_stable(f)
    assert len(tracker) == 1
    f.unlink()
    assert not tracker.is_stable(f)
    assert len(tracker) == 0


def test_prune_drops_vanished_files(tmp_path):
    tracker = StabilityTracker(settle_s=3600)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    tracker.is_stable(a)
    tracker.is_stable(b)
    b.unlink()
    assert tracker.prune(Path.exists) == 1
    assert len(tracker) == 1


def test_negative_settle_time_is_refused():
    with pytest.raises(ValueError):
        StabilityTracker(settle_s=-1)
