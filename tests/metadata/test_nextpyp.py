"""NextPYP per-micrograph .pkl → metadata rows, read with the restricted unpickler.

No real NextPYP pkl is available to the team (prismPYP's tutorial data lives on Zenodo, unreachable
here), so the fixtures are built with pandas from the layout NextPYP's LocalMetadata writes
(/work/shared/reference/prismpyp-metadata.md §1.2: a dict of DataFrames ctf 14×1 indexed by
mean_df, cc, DF1, …; drift m00..m03,dx,dy; box x,y,Xsize,Ysize,inside,selection; float64
as np.loadtxt gives). One fixture was pickled by pandas 2.2.3 / numpy 1.26.4 (the versions of
NextPYP's era) and is embedded below, so the legacy numpy.core / pandas.core.frame
spellings are exercised too.
"""

from __future__ import annotations

import base64
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryobus.services.metadata.nextpyp import (
    ALLOWED_GLOBALS,
    MOTION_FROM_NEXTPYP_DRIFT,
    load_pkl,
    pkl_partial,
    pkl_row,
    pkl_rows,
)
from cryobus.services.metadata.table import COLUMNS, NEXTPYP_PKL, merge_partials
from cryobus.shared.errors import InputError

CTF_INDEX = ["mean_df", "cc", "DF1", "DF2", "ANGAST", "ccc", "x", "y", "z", "pixel_size", "voltage",
             "magnification", "cccc", "counts"]

# pickle.dumps(protocol=4) by pandas 2.2.3 / numpy 1.26.4 of {"mode": "spr", "ctf": DF1 15500, DF2 14500,
# mean_df 15000, ANGAST 42, cc 0.25, cccc 3.5, pixel_size 1.08; "drift": dx,dy = (0,0),(3,4),(3,4);
# "box": inside/selection = (1,0),(0,0),(1,-1)}, zlib-compressed, base64.
LEGACY_PANDAS2_PKL = (
    "eNqlVctOFEEUnWfzCIIvRBOjG2Nw4fByYYxxBkFQR0eDLjQydqq7a6Y69Ctd1TIQSTARGJJamFD+hu7c6geo8Rf8A9y501vVM2AP"
    "qEFr0vfW497bVeec6lnNvZ7XUqqtiGGec30LC56lQQjWZDXBjwTIsxAtmH6IC7UQubDeM40YmlH9LXHhhVCpuluHpDO/htsew6GH"
    "HFpwkYfqOKSC9113fHPhbjyGdH6ilaE7tkF3UwQf0CMvsM0FB+uGzJHBg17kBktxdTdymI3CEC1BVT3Epu9RFkYmk4F5FSh4F9RW"
    "IVuinFoTU2lDbIg5MVxOw69/XZBjPG+xpUCehGdql8VmM17P8vRVUalUbv+Apkw5xYSxORUotO58KsWwfSkqN/M5Hs99bM3fSK6v"
    "vovH39+25reLN78uH38z+y1e/xC25tutb2cs4LW824hsOK4HuOSpY5tYHUieQm63nJF2TVSBiJNJBizcwLRgIAq89eoeXtRvyTlI"
    "Jxd5vt1XDFrAqiBHyaBEigzt4ASD0zxzL4HN8w5sihKbqiBZJHeb86Q2KtE6hJMRMgblycTeyv0wuLIpN93lYuTpFugtY5ogvemZ"
    "MWXHBdcmK7OTDx5KPcqldAMeIDa9DOcJ7AZ2dGovw+G6nvkOA1EJfshFdc+u2SZitu8JnjNVpmb6kceowLBDUow3h6UB7YICQNYS"
    "gLbEdRczpBCpAuSIMRDvChTRaw6qq+4Qchx/kepWFDjyXVh3kIFBuU0aGaCq0K4xQbT4fpAe0kcG9kKglbMgwrPNqVdtWaT2bf86"
    "392S0eHSQeOl7Mh50Ji2R2N/oFTboTTrjo4KaceUHVd2Agi2GtIsJXggI/zUfroNkScZ7Z2T/hexQh7cA4ZCBreA5yjzAwGyhA6G"
    "TnqXW/KEzJMqeUr0FUEQPKZiJ2v4jQNzc66U9Pc7fCe2l0pJ3xnf2a6Vkv539bff/y837UuUfxTfnfzj2GvwgbHlP0APxQ421fVJ"
    "0kRexuiT9XKKbJSzpPl3tKPCT+6eBSM="
)


def ctf_frame(*, df1=15000.0, df2=14000.0, angast=30.0, cc=0.12, cccc=4.2, pixel_size=1.1, mean_df=None,
              drop=()) -> pd.DataFrame:
    values = {"mean_df": (df1 + df2) / 2 if mean_df is None else mean_df, "cc": cc, "DF1": df1, "DF2": df2,
              "ANGAST": angast, "ccc": cc, "x": 5760, "y": 4092, "z": 1, "pixel_size": pixel_size,
              "voltage": 300, "magnification": 0, "cccc": cccc, "counts": 0}
    index = [k for k in CTF_INDEX if k not in drop]
    return pd.DataFrame(np.array([values[k] for k in index], dtype=float).reshape(-1, 1), index=index,
                        columns=["ctf"])


def drift_frame(dx, dy) -> pd.DataFrame:
    n = len(dx)
    return pd.DataFrame({"m00": np.ones(n), "m01": np.zeros(n), "m02": np.zeros(n), "m03": np.ones(n),
                         "dx": np.asarray(dx, float), "dy": np.asarray(dy, float)})


def box_frame(inside, selection) -> pd.DataFrame:
    n = len(inside)
    return pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n, dtype=float), "Xsize": 64.0,
                         "Ysize": 64.0, "inside": np.asarray(inside, float),
                         "selection": np.asarray(selection, float)})


def write_pkl(path: Path, data: dict, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def nextpyp_dict(**ctf_kwargs) -> dict:
    return {"mode": "spr", "image": pd.DataFrame([[5760, 4092, 1]], columns=["x", "y", "z"]),
            "ctf": ctf_frame(**ctf_kwargs), "drift": drift_frame([0, 1, 3], [0, 0, 0]),
            "box": box_frame([1, 1], [0, 0])}


# --- mapping and units ---------------------------------------------------------------------------


def test_ctf_rows_map_to_columns_in_angstrom(tmp_path):
    path = write_pkl(tmp_path / "FoilHole_1_Data_2.pkl", nextpyp_dict(df1=21000.0, df2=19000.0, angast=-12.5,
                                                                      cc=0.083, cccc=3.9, pixel_size=0.83))
    row = pkl_row(path)
    assert row["micrograph_name"] == "FoilHole_1_Data_2"
    assert row["defocus_u_A"] == 21000.0 and row["defocus_v_A"] == 19000.0
    assert row["mean_defocus"] == 20000.0
    assert row["defocus_angle_deg"] == -12.5
    assert row["ctf_fit"] == 0.083 and row["ctf_fit_source"] == "ctffind_cross_correlation"
    assert row["est_resolution"] == 3.9
    assert row["pixel_size_A"] == 0.83
    assert math.isnan(row["rel_ice_thickness"])  # NextPYP has none; prismPYP's constant 1 is not invented
    assert set(row) == set(COLUMNS)


def test_avg_motion_is_mean_frame_to_frame_drift_in_angstrom(tmp_path):
    rng = np.random.default_rng(7)
    dx, dy = np.cumsum(rng.normal(0, 2, 40)), np.cumsum(rng.normal(0, 2, 40))
    data = nextpyp_dict(pixel_size=1.35)
    data["drift"] = drift_frame(dx, dy)
    row = pkl_row(write_pkl(tmp_path / "m.pkl", data))
    # independent computation: a Python loop over consecutive frames
    steps = [math.dist((dx[i], dy[i]), (dx[i + 1], dy[i + 1])) for i in range(len(dx) - 1)]
    assert row["avg_motion"] == pytest.approx(sum(steps) / len(steps) * 1.35, rel=1e-12)
    assert row["motion_source"] == MOTION_FROM_NEXTPYP_DRIFT
    # prismPYP's sqrt(mean|dx|² + mean|dy|²) px is another quantity
    prismpyp = math.hypot(np.abs(dx).mean(), np.abs(dy).mean())
    assert not math.isclose(row["avg_motion"], prismpyp, rel_tol=1e-3)


def test_known_track_and_edge_cases_of_motion(tmp_path):
    data = nextpyp_dict(pixel_size=2.0)
    data["drift"] = drift_frame([0, 3, 3, 0], [0, 4, 4, 0])  # steps 5, 0, 5 px → 10/3 px → 20/3 Å
    assert pkl_row(write_pkl(tmp_path / "a.pkl", data))["avg_motion"] == pytest.approx(20 / 3)
    data["drift"] = drift_frame([1.0], [2.0])  # one frame: no displacement to average
    one = pkl_row(write_pkl(tmp_path / "b.pkl", data))
    assert math.isnan(one["avg_motion"]) and one["motion_source"] == "unavailable"
    del data["drift"]  # movie alignment never ran
    none = pkl_row(write_pkl(tmp_path / "c.pkl", data))
    assert math.isnan(none["avg_motion"]) and none["motion_source"] is None


def test_num_particles_counts_inside_and_not_excluded_and_absent_box_is_unknown(tmp_path):
    data = nextpyp_dict()
    data["box"] = box_frame(inside=[1, 1, 0, 1, 0, 1], selection=[0, 3, 0, -1, -1, 1])
    assert pkl_row(write_pkl(tmp_path / "a.pkl", data))["num_particles"] == 3
    assert pkl_row(tmp_path / "a.pkl", extract_cls=2)["num_particles"] == 1
    data["box"] = box_frame([], [])  # picking ran and found nothing
    assert pkl_row(write_pkl(tmp_path / "b.pkl", data))["num_particles"] == 0
    del data["box"]  # picking never ran: unknown, not 0
    assert pkl_row(write_pkl(tmp_path / "c.pkl", data))["num_particles"] is None


def test_ctffind_failure_record_gives_empty_ctf_columns(tmp_path):
    # NextPYP writes zeros for every value when CTFFIND fails (pyp/ctf/core.py)
    row = pkl_row(write_pkl(tmp_path / "f.pkl", nextpyp_dict(df1=0.0, df2=0.0, cc=0.0, cccc=0.0, angast=0.0)))
    for col in ("ctf_fit", "est_resolution", "mean_defocus", "defocus_u_A", "defocus_v_A", "defocus_angle_deg"):
        assert math.isnan(row[col]), col
    assert row["ctf_fit_source"] is None
    assert row["pixel_size_A"] == 1.1


def test_contradicting_mean_df_and_missing_rows_name_the_field(tmp_path):
    bad_mean = write_pkl(tmp_path / "a.pkl", nextpyp_dict(mean_df=9999.0))
    with pytest.raises(InputError) as e:
        pkl_row(bad_mean)
    assert e.value.field == "ctf.mean_df" and e.value.file == str(bad_mean)
    no_cc = write_pkl(tmp_path / "b.pkl", nextpyp_dict(drop=("cc",)))
    with pytest.raises(InputError) as e:
        pkl_row(no_cc)
    assert e.value.field == "ctf.cc"
    no_angast = pkl_row(write_pkl(tmp_path / "c.pkl", nextpyp_dict(drop=("ANGAST", "mean_df"))))
    assert math.isnan(no_angast["defocus_angle_deg"]) and no_angast["mean_defocus"] == 14500.0


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_installed_pandas_pickles_load_with_every_protocol(tmp_path, protocol):
    data = nextpyp_dict()
    data["series"] = pd.Series([1.0, 2.0], index=["a", "b"])
    data["scalar"] = np.float64(2.5)
    loaded = load_pkl(write_pkl(tmp_path / "p.pkl", data, protocol=protocol))
    pd.testing.assert_frame_equal(loaded["ctf"], data["ctf"])
    pd.testing.assert_frame_equal(loaded["box"], data["box"])
    pd.testing.assert_series_equal(loaded["series"], data["series"])
    assert loaded["scalar"] == 2.5 and loaded["mode"] == "spr"


def test_pickle_written_by_pandas2_numpy1_loads(tmp_path):
    path = tmp_path / "legacy_mic.pkl"
    path.write_bytes(zlib.decompress(base64.b64decode("".join(LEGACY_PANDAS2_PKL))))
    assert b"numpy.core.multiarray" in path.read_bytes() and b"pandas.core.frame" in path.read_bytes()
    row = pkl_row(path)
    assert (row["defocus_u_A"], row["defocus_v_A"], row["mean_defocus"]) == (15500.0, 14500.0, 15000.0)
    assert (row["ctf_fit"], row["est_resolution"], row["defocus_angle_deg"]) == (0.25, 3.5, 42.0)
    assert row["avg_motion"] == pytest.approx((5 + 0) / 2 * 1.08)
    assert row["num_particles"] == 1


# --- the restricted unpickler --------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_naming_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"ctf": ctf_frame(), "x": _Payload(marker)}, protocol=4))
    # the payload works: a plain pickle.loads would run it (checked on a copy, marker removed after)
    pickle.loads(evil.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError) as e:
        load_pkl(evil)
    assert not marker.exists()
    assert e.value.field == "pickle" and e.value.file == str(evil)
    assert "forbidden global" in e.value.reason and "system" in e.value.reason
    frame, _, failures = pkl_rows([evil])
    assert not marker.exists() and frame.empty
    assert failures[0][0] == str(evil) and failures[0][2] == "pickle"


@pytest.mark.parametrize("target", [eval, getattr, __import__, pd.read_csv, np.load])
def test_other_dangerous_globals_are_refused(tmp_path, target):
    class Reduce:
        def __reduce__(self):
            return (target, ("1",))

    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps(Reduce(), protocol=2))
    with pytest.raises(InputError, match="forbidden global"):
        load_pkl(path)


def test_allowlist_is_explicit_and_small():
    assert ("posix", "system") not in ALLOWED_GLOBALS
    assert ("copyreg", "_reconstructor") not in ALLOWED_GLOBALS
    assert {m for m, _ in ALLOWED_GLOBALS} <= {
        "builtins", "__builtin__", "_codecs", "numpy", "numpy._core.multiarray", "numpy._core.numeric",
        "numpy.core.multiarray", "numpy.core.numeric", "pandas", "pandas.arrays", "pandas._libs.internals",
        "pandas.core.frame", "pandas.core.series", "pandas.core.indexes.base", "pandas.core.indexes.range",
        "pandas.core.internals.managers", "pyarrow.lib"}
    assert len(ALLOWED_GLOBALS) < 32


def test_non_pickles_name_the_file(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("micrograph notes\nnot a pickle\n")
    good = write_pkl(tmp_path / "good.pkl", nextpyp_dict())
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(good.read_bytes()[:-40])
    not_dict = write_pkl(tmp_path / "list.pkl", [1, 2])  # type: ignore[arg-type]
    for path in (text, truncated, not_dict):
        with pytest.raises(InputError) as e:
            load_pkl(path)
        assert e.value.file == str(path) and e.value.field == "pickle"
    with pytest.raises(InputError) as e:
        load_pkl(tmp_path / "missing.pkl")
    assert e.value.file == str(tmp_path / "missing.pkl")


# --- many files: bad ones cost only their own row --------------------------------------------------


def test_good_rows_survive_beside_bad_ones(tmp_path):
    pkl = tmp_path / "pkl"
    pkl.mkdir()
    write_pkl(pkl / "mic_002.pkl", nextpyp_dict(pixel_size=1.1))
    write_pkl(pkl / "mic_001.pkl", nextpyp_dict(pixel_size=1.1, df1=30000.0, df2=29000.0))
    no_box = nextpyp_dict(pixel_size=0.9)
    del no_box["box"]
    write_pkl(pkl / "mic_003_DW.pkl", no_box)
    write_pkl(pkl / "no_ctf.pkl", {"mode": "spr", "drift": drift_frame([0, 1], [0, 1])})
    (pkl / "truncated.pkl").write_bytes((pkl / "mic_002.pkl").read_bytes()[:100])
    (pkl / "readme.pkl").write_text("hello")
    # same micrograph_name as mic_001.pkl; the first path in sorted order ("mic_001.mrc.pkl") wins
    write_pkl(pkl / "mic_001.mrc.pkl", nextpyp_dict(pixel_size=1.1, df1=20000.0, df2=19000.0))

    frame, pixel_size, failures = pkl_rows(pkl.glob("*.pkl"))

    assert list(frame.columns) == COLUMNS
    assert frame["micrograph_name"].tolist() == ["mic_001", "mic_002", "mic_003"]
    assert frame["mean_defocus"].tolist() == [19500.0, 14500.0, 14500.0]
    assert frame["num_particles"].dtype == "Int64"
    assert frame["num_particles"].tolist()[:2] == [2, 2] and frame["num_particles"].isna().tolist()[2]
    assert pixel_size == 1.1
    by_file = {Path(f).name: (reason, field) for f, reason, field in failures}
    assert set(by_file) == {"no_ctf.pkl", "truncated.pkl", "readme.pkl", "mic_001.pkl"}
    assert by_file["no_ctf.pkl"][1] == "ctf"
    assert by_file["truncated.pkl"][1] == "pickle" and by_file["readme.pkl"][1] == "pickle"
    assert by_file["mic_001.pkl"][1] == "micrograph_name" and "mic_001.mrc.pkl" in by_file["mic_001.pkl"][0]


def test_partial_merges_by_name(tmp_path):
    write_pkl(tmp_path / "b.pkl", nextpyp_dict(pixel_size=1.25))
    write_pkl(tmp_path / "a.pkl", nextpyp_dict(pixel_size=1.25))
    partial, failures = pkl_partial(sorted(tmp_path.glob("*.pkl")), file=str(tmp_path))
    assert partial.source == NEXTPYP_PKL and partial.pixel_size_A == 1.25 and not failures
    merged = merge_partials([partial])
    assert merged.table["micrograph_name"].tolist() == ["a", "b"]
    assert merged.table["avg_motion"].tolist() == pytest.approx([1.5 * 1.25] * 2)
    assert merged.pixel_size_A == 1.25


def test_executor_gives_the_same_result_and_no_box_anywhere_stays_unknown(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    for i in range(7):
        data = nextpyp_dict(df1=10000.0 + i, df2=9000.0)
        del data["box"]
        write_pkl(tmp_path / f"m{i}.pkl", data)
    (tmp_path / "bad.pkl").write_text("x")
    serial = pkl_rows(tmp_path.glob("*.pkl"))
    with ThreadPoolExecutor(2) as pool:
        pooled = pkl_rows(tmp_path.glob("*.pkl"), executor=pool, chunk=3)
    pd.testing.assert_frame_equal(serial[0], pooled[0])
    assert serial[1:] == pooled[1:] and len(serial[2]) == 1
    partial, _ = pkl_partial(tmp_path.glob("*.pkl"), file=str(tmp_path))
    assert "num_particles" not in partial.frame.columns
    assert merge_partials([partial]).table["num_particles"].isna().all()
