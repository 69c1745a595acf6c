"""Hostile NextPYP ``.pkl`` files: code execution, small pickles that would allocate gigabytes,
frames rebuilt without or from crafted state, and legitimate pickles with bytes flipped or cut.
The restricted unpickler refuses them all by file, runs nothing, allocates little."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryobus.services.metadata.nextpyp import load_pkl, pkl_row, pkl_rows

from .corrupt import FEW_MB, corpus_settings, fresh_dir, global_ref, hostile_pickles, max_rss, outcome

RESIDENT_LIMIT = 64 << 20

CTF_INDEX = ["mean_df", "cc", "DF1", "DF2", "ANGAST", "ccc", "x", "y", "z", "pixel_size", "voltage",
             "magnification", "cccc", "counts"]  # fmt: skip


def _nextpyp_dict(seed: int = 0) -> dict:
    """A dict shaped like NextPYP's ``LocalMetadata`` pickle (ctf, drift, box, image frames)."""
    rng = np.random.default_rng(seed)
    ctf = [15000.0, 0.1, 15500.0, 14500.0, 42.0, 0.1, 5760, 4092, 1, 1.08, 300, 0, 3.5, 0]
    return {
        "mode": "spr",
        "image": pd.DataFrame(np.array([[5760, 4092, 1]]), columns=["x", "y", "z"]),
        "ctf": pd.DataFrame(np.array(ctf, dtype=float).reshape(14, 1), index=pd.Index(CTF_INDEX, dtype=object),
                            columns=["ctf"]),  # fmt: skip
        "drift": pd.DataFrame(rng.normal(size=(6, 6)), columns=["m00", "m01", "m02", "m03", "dx", "dy"]),
        "box": pd.DataFrame(rng.uniform(0, 2, size=(5, 6)).round(),
                            columns=["x", "y", "Xsize", "Ysize", "inside", "selection"]),  # fmt: skip
    }


GOOD = {protocol: pickle.dumps(_nextpyp_dict(), protocol=protocol) for protocol in (2, 3, 4, 5)}


@pytest.mark.parametrize("case", sorted(hostile_pickles(Path("/nonexistent"))))
def test_hostile_pickle_is_refused_without_running_or_allocating(tmp_path, case):
    marker = tmp_path / "pwned"
    path = tmp_path / "mic_0001.pkl"
    path.write_bytes(hostile_pickles(marker)[case])
    _, error = outcome(load_pkl, path, files=path, limit=FEW_MB)
    assert error is not None and error.field == "pickle", error
    assert "MemoryError" not in error.reason and "allocate" not in error.reason, error
    assert not marker.exists()
    _, error = outcome(pkl_row, path, files=path, limit=FEW_MB)
    assert error is not None


def _shell(cls_module: str, cls_name: str, state: bytes | None) -> bytes:
    """A protocol-2 pickle of ``{'ctf': cls.__new__(cls)}`` with ``state`` BUILT in (or none)."""
    obj = global_ref(cls_module, cls_name) + b")\x81" + (state + b"b" if state is not None else b"")
    return b"\x80\x02}(X\x03\x00\x00\x00ctf" + obj + b"u."


@pytest.mark.parametrize(
    "state",
    [None, b"}", b"}(X\x04\x00\x00\x00_mgrK\x05X\x04\x00\x00\x00_typX\t\x00\x00\x00dataframeu", b"K\x07"],
    ids=["no state", "empty state", "manager is an int", "state is an int"],
)
def test_frames_rebuilt_without_or_from_crafted_state_are_refused(tmp_path, state):
    path = tmp_path / "mic_0002.pkl"
    path.write_bytes(_shell("pandas.core.frame", "DataFrame", state))
    _, error = outcome(pkl_row, path, files=path)
    assert error is not None and error.field in {"ctf", "pickle"}, error


@corpus_settings(100)
@given(
    protocol=st.sampled_from(sorted(GOOD)),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_real_pickles_with_flipped_bytes_or_cut(tmp_path, protocol, flips, cut):
    """Flipped opcodes and arguments reach every allowed global with arguments nobody wrote."""
    raw = bytearray(GOOD[protocol])
    for offset, value in flips:
        raw[offset % len(raw)] = value
    if cut is not None:
        del raw[cut:]
    path = fresh_dir(tmp_path) / "mic_0003.pkl"
    path.write_bytes(bytes(raw))
    # Resident memory, not tracemalloc: CPython's unpickler reserves the length a BINBYTES /
    # BYTEARRAY8 opcode claims before it finds the data missing; those pages are never touched.
    before = max_rss()
    row, error = outcome(pkl_row, path, files=path, limit=None)
    assert max_rss() - before < RESIDENT_LIMIT
    assert error is not None or row["micrograph_name"] == "mic_0003"


def test_one_hostile_pkl_costs_only_its_own_row(tmp_path):
    """Beside good pkls, each bad one is a failure naming it; the good rows are all there."""
    folder = tmp_path / "pkl"
    folder.mkdir()
    for i in range(3):
        (folder / f"good_{i}.pkl").write_bytes(GOOD[4])
    hostile = hostile_pickles(tmp_path / "pwned")
    for i, case in enumerate(sorted(hostile)):
        (folder / f"bad_{i:02d}.pkl").write_bytes(hostile[case])
    (frame, _pixel, failures), error = outcome(pkl_rows, sorted(folder.glob("*.pkl")), files=folder)
    assert error is None
    assert sorted(frame["micrograph_name"]) == ["good_0", "good_1", "good_2"]
    assert sorted(Path(f).name for f, _reason, _field in failures) == [f"bad_{i:02d}.pkl" for i in range(len(hostile))]
    assert all(reason and field == "pickle" for _f, reason, field in failures)
    assert not (tmp_path / "pwned").exists()
