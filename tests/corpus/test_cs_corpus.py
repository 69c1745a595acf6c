"""CryoSPARC ``.cs`` files with wrong dtypes, wrong shapes, missing fields, pickled objects and
headers that promise more rows than the file holds: every reader refuses them by name."""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from cryosparc.dataset import CSDAT_FORMAT, Dataset
from hypothesis import given
from hypothesis import strategies as st

from cryobus.services.metadata import cryosparc_exposures, cryosparc_particles
from cryobus.services.render import picks
from cryobus.shared.formats.cryosparc import read_cs, require_fields

from .corrupt import FEW_MB, PROMISED_100_GB, corpus_settings, fresh_dir, npy_bytes, npy_promising, outcome, saved

PARTICLE_FIELDS = ["location/micrograph_path", "location/micrograph_uid", "location/center_x_frac",
                   "location/center_y_frac", "location/micrograph_shape", "blob/shape", "blob/psize_A"]
EXPOSURE_FIELDS = ["micrograph_blob/path", "micrograph_blob/psize_A", "micrograph_blob_non_dw/path",
                   "micrograph_blob_non_dw/psize_A", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad",
                   "ctf/cross_corr_ctffind4", "ctf/fig_of_merit_gctf", "ctf/ctf_fit_to_A", "ctf_stats/ice_thickness_rel",
                   "ctf_stats/ctf_fit_to_A", "rigid_motion/path", "rigid_motion/psize_A", "movie_blob/psize_A"]  # fmt: skip
FIELDS = ["uid", *PARTICLE_FIELDS, *EXPOSURE_FIELDS]
DTYPES = ["<u8", "<u4", "<i4", "<i8", "<f4", "<f8", ">f4", "<f2", "|b1", "S1", "S24", "U6", "<c8", "V8", "<M8[s]",
          ("<f4", (2,)), ("<u4", (3,)), ("S24", (2,)), ("<f8", (0,))]  # fmt: skip
# Paths that the string fields take; "J2/motion/*.npy" are planted trajectories (good and bad).
PATHS = [b"J2/motioncorrected/123_m1_patch_aligned_doseweighted.mrc", b"J2/motioncorrected/124_m2.mrc", b"", b".",
         b">J2/motion/traj_ok.npy", b"J2/motion/traj_bad_shape.npy", b"J2/motion/traj_huge.npy",
         b"J2/motion/traj_pickle.npy", b"J2/motion/missing.npy", b"/etc/passwd", b"\xff\xfe", b"../../x.mrc"]  # fmt: skip


@st.composite
def cs_arrays(draw) -> np.ndarray:
    """A 1-D structured array of drawn fields and dtypes, bytes from a seeded generator (NaN, inf,
    huge uids, invalid UTF-8 …) and string fields set from :data:`PATHS`."""
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=8))
    dtype = np.dtype([(n, *((d,) if isinstance(d, str) else d)) for n, d in zip(names, draw(
        st.lists(st.sampled_from(DTYPES), min_size=len(names), max_size=len(names))))])  # fmt: skip
    rows = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = np.zeros(rows, dtype)
    if dtype.itemsize:
        arr = np.frombuffer(bytearray(rng.bytes(rows * dtype.itemsize)), dtype=dtype).copy()
    for name in names:
        if dtype[name].kind == "S" and rows:
            arr[name] = np.array(draw(st.lists(st.sampled_from(PATHS), min_size=rows, max_size=rows)),
                                 dtype=dtype[name].base).reshape(arr[name].shape[:1] + (1,) * (arr[name].ndim - 1))  # fmt: skip
        if draw(st.booleans()) and dtype[name].kind in "fiu" and rows:  # in-range values too, not only noise
            arr[name] = draw(st.sampled_from({"u": [0, 1, 123], "i": [0, 1, -1, 123],
                                              "f": [0.0, 1.0, -1.0, 0.5, 1e30, float("nan")]}[dtype[name].kind]))  # fmt: skip
    return arr


def _project(tmp_path: Path) -> Path:
    """A CryoSPARC project folder with the planted trajectories that :data:`PATHS` name."""
    project = fresh_dir(tmp_path)
    motion = project / "J2" / "motion"
    motion.mkdir(parents=True)
    np.save(motion / "traj_ok.npy", np.cumsum(np.ones((1, 5, 2)), axis=1))
    np.save(motion / "traj_bad_shape.npy", np.ones((3, 3)))
    huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 10000000000, 2), }"
    (motion / "traj_huge.npy").write_bytes(npy_bytes(huge, b"\0" * 64))
    (motion / "traj_pickle.npy").write_bytes(saved(np.array([{}], dtype=object), allow_pickle=True))
    return project


def exercise(path: Path, project: Path) -> None:
    """Every ``.cs`` entry point; an error may also name a trajectory of the project."""
    named = [path, project]
    arr, error = outcome(read_cs, path, files=named)
    if error is None:
        assert arr.ndim == 1 and arr.dtype.names is not None
        _, error = outcome(require_fields, arr, ["uid", "location/micrograph_path"], file=path, files=named)
        if error is not None:
            assert error.field in {"uid", "location/micrograph_path"}
    _, error = outcome(cryosparc_exposures.load_dataset, path, files=named)
    for fn, kwargs in [
        (cryosparc_exposures.exposure_rows, {"project_dir": project}),
        (cryosparc_particles.particle_counts, {}),
        (cryosparc_particles.particle_counts, {"uid_names": {123: "m1"}}),
        (cryosparc_particles.particle_counts_by_uid, {}),
        (picks.cryosparc_particles, {}),
    ]:
        outcome(fn, path, files=named, **kwargs)


@corpus_settings(100)
@given(arr=cs_arrays(), saver=st.sampled_from(["numpy", "cryosparc", "csdat"]))
def test_generated_datasets_with_any_field_dtype(tmp_path, arr, saver):
    project = _project(tmp_path)
    path = project / "J3" / "J3_particles.cs"
    path.parent.mkdir()
    if saver == "numpy":
        path.write_bytes(saved(arr))
    else:
        try:  # cryosparc-tools' own writer, for the layouts it accepts
            ds = Dataset(arr)
            ds.save(path, format=CSDAT_FORMAT) if saver == "csdat" else ds.save(path)
        except Exception:  # noqa: BLE001 - a dtype its writer refuses is written by numpy instead
            path.write_bytes(saved(arr))
    exercise(path, project)


def _not_a_dataset() -> dict[str, bytes]:
    structured = np.zeros(3, dtype=[("uid", "<u8"), ("location/micrograph_path", "S8")])
    return {
        "2-D structured": saved(np.zeros((2, 3), dtype=structured.dtype)),
        "0-d structured": saved(np.zeros((), dtype=structured.dtype)),
        "plain floats": saved(np.zeros(4)),
        "object field": saved(np.zeros(2, dtype=[("uid", "<u8"), ("location/micrograph_path", "O")]), allow_pickle=True),
        "object array": saved(np.array([{"uid": 1}], dtype=object), allow_pickle=True),
        "npz archive": _npz(structured),
        "pickled dict": pickle.dumps({"uid": [1, 2]}),
        "text": b"uid,location/micrograph_path\n1,a.mrc\n",
        "empty": b"",
        "magic only": b"\x93NUMPY",
        "header cut": saved(structured)[:40],
        "data cut": saved(structured)[:-5],
        "header not a dict": npy_bytes("[1, 2, 3]"),
        "header syntax error": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,"),
        "negative shape": npy_bytes("{'descr': [('uid', '<u8')], 'fortran_order': False, 'shape': (-3,), }"),
        "unknown descr": npy_bytes("{'descr': '<x9', 'fortran_order': False, 'shape': (3,), }"),
        "header version 9": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", version=(9, 0)),
        "csdat garbage": b"\x95CSDAT" + b"\xff" * 64,
        "csdat header not json": b"\x95CSDAT" + struct.pack("<I", 5) + b"{oops",
        "csdat header length lies": b"\x95CSDAT" + struct.pack("<I", 2**31) + b"{}",
    }


def _npz(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=arr)
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(_not_a_dataset()))
def test_files_that_are_not_cryosparc_datasets(tmp_path, case):
    project = _project(tmp_path)
    path = project / "J3_particles.cs"
    path.write_bytes(_not_a_dataset()[case])
    exercise(path, project)
    _, error = outcome(read_cs, path, files=path)
    assert error is not None and "CryoSPARC" in error.reason


def _csdat_promising(nbytes: int) -> bytes:
    """A CSDAT stream (cryosparc-tools' compressed format) whose header promises ``nbytes`` of rows."""
    row = 8 + 8 * 1000  # a wide field keeps the row count within the int32 that cryosparc-tools takes
    header = json.dumps({"length": nbytes // row, "dtype": [["uid", "<u8"], ["blob/shape", "<f8", [1000]]],
                         "compression": None, "compressed_fields": []}).encode()  # fmt: skip
    return b"\x95CSDAT" + struct.pack("<I", len(header)) + header + struct.pack("<I", 16) + b"\0" * 16


@pytest.mark.parametrize("kind", ["numpy", "csdat"])
def test_header_promising_100_gb_is_refused_before_allocation(tmp_path, kind):
    path = tmp_path / "J9" / "J9_particles.cs"
    path.parent.mkdir()
    path.write_bytes(npy_promising(PROMISED_100_GB) if kind == "numpy" else _csdat_promising(PROMISED_100_GB))
    readers = [cryosparc_exposures.load_dataset, cryosparc_exposures.exposure_rows, cryosparc_particles.particle_counts,
               cryosparc_particles.particle_counts_by_uid]  # fmt: skip
    if kind == "numpy":  # read_cs (numpy only) is what the render service's pick overlay uses
        readers += [read_cs, picks.cryosparc_particles]
    for fn in readers:
        _, error = outcome(fn, path, files=path, limit=FEW_MB)
        assert error is not None, fn
        assert "allocate" not in error.reason and "Memory" not in error.reason, error


def test_trajectory_promising_100_gb_is_refused_before_allocation(tmp_path):
    path = tmp_path / "traj.npy"
    path.write_bytes(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 6250000000, 2), }", b"\0" * 64))
    _, error = outcome(cryosparc_exposures.mean_frame_displacement_A, path, 1.0, files=path, limit=FEW_MB)
    assert error is not None and error.field == "rigid_motion/path"
    assert "allocate" not in error.reason
