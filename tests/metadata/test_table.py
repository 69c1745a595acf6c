"""Partial tables from several software → one table: joined by name, each column from the right source."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryobus.services.metadata.prismpyp_layout import table_csv_bytes
from cryobus.services.metadata.relion_table import ctf_rows, motion_rows, particle_counts
from cryobus.services.metadata.table import COLUMNS, Partial, merge_partials
from cryobus.shared.errors import InputError

PRISMPYP_HEADER = "micrograph_name,rel_ice_thickness,ctf_fit,est_resolution,avg_motion,num_particles,mean_defocus"


def _ctffind(names, df=10000.0, cc=0.2) -> pd.DataFrame:
    n = len(names)
    return pd.DataFrame(
        {
            "micrograph_name": names,
            "mean_defocus": [df] * n,
            "defocus_u_A": [df + 50] * n,
            "defocus_v_A": [df - 50] * n,
            "defocus_angle_deg": [10.0] * n,
            "ctf_fit": [cc] * n,
            "est_resolution": [4.0] * n,
            "ctf_fit_source": ["ctffind_cross_correlation"] * n,
            "pixel_size_A": [1.4] * n,  # the fitted spectrum's pixel size
        }
    )


def _patch_ctf(names) -> pd.DataFrame:
    n = len(names)
    return pd.DataFrame(
        {
            "micrograph_name": names,
            "micrograph_uid": np.arange(n, dtype=np.uint64),
            "mean_defocus": [20000.0] * n,
            "defocus_u_A": [20100.0] * n,
            "defocus_v_A": [19900.0] * n,
            "defocus_angle_deg": [30.0] * n,
            "ctf_fit": [np.nan] * n,
            "ctf_fit_source": [None] * n,
            "est_resolution": [3.0] * n,
            "rel_ice_thickness": [1.05] * n,
            "pixel_size_A": [0.83] * n,
        }
    )


def test_each_column_group_comes_from_its_first_source_with_a_value() -> None:
    result = merge_partials(
        [
            Partial("cryosparc.exposures", _patch_ctf(["a", "b", "c"]), "J4.cs", pixel_size_A=0.83),
            Partial("ctffind.outputs", _ctffind(["a", "b"]), "J3/ctffind_output", pixel_size_A=1.4),
            Partial(
                "relion.ctf",
                pd.DataFrame(
                    {"micrograph_name": ["c"], "ctf_fit": [0.3], "ctf_fit_source": ["relion_figure_of_merit"]}
                ),
                "micrographs_ctf.star",
            ),
        ]
    )
    t = result.table.set_index("micrograph_name")
    # CTFFIND's own outputs win the CTF columns over Patch CTF, as a group (U, V, angle with the mean)
    assert t.loc["a", ["mean_defocus", "defocus_u_A", "defocus_v_A", "defocus_angle_deg"]].tolist() == [
        10000.0, 10050.0, 9950.0, 10.0
    ]  # fmt: skip
    assert (t.loc["a", "ctf_fit"], t.loc["a", "ctf_fit_source"]) == (0.2, "ctffind_cross_correlation")
    # where CTFFIND has no row, Patch CTF's defocus; the score comes with the name of its kind
    assert t.loc["c", "mean_defocus"] == 20000.0
    assert (t.loc["c", "ctf_fit"], t.loc["c", "ctf_fit_source"]) == (0.3, "relion_figure_of_merit")
    # ice thickness only CryoSPARC has; pixel size: the micrograph's (CryoSPARC), not CTFFIND's spectrum
    assert t["rel_ice_thickness"].tolist() == [1.05] * 3
    assert t["pixel_size_A"].tolist() == [0.83] * 3 and result.pixel_size_A == 0.83
    assert result.unmatched == {"cryosparc.exposures": [], "ctffind.outputs": ["c"], "relion.ctf": ["a", "b"]}


def test_partial_order_given_does_not_change_the_table() -> None:
    parts = [
        Partial("ctffind.outputs", _ctffind(["b", "a"]), "x"),
        Partial("cryosparc.exposures", _patch_ctf(["a", "c", "b"]), "y"),
        Partial("relion.particles", pd.DataFrame({"micrograph_name": ["c", "a"], "num_particles": [4, 2]}), "z"),
    ]
    rng = np.random.default_rng(3)
    shuffled = [Partial(p.source, p.frame.iloc[rng.permutation(len(p.frame))], p.file) for p in reversed(parts)]
    pd.testing.assert_frame_equal(merge_partials(parts).table, merge_partials(shuffled).table)


def test_num_particles_zero_only_when_a_particles_source_exists() -> None:
    ctf = Partial("ctffind.outputs", _ctffind(["a", "b"]), "x")
    with_particles = merge_partials(
        [ctf, Partial("cryosparc.particles", pd.DataFrame({"micrograph_name": ["b"], "num_particles": [9]}), "p.cs")]
    ).table
    assert with_particles["num_particles"].tolist() == [0, 9]
    assert str(with_particles["num_particles"].dtype) == "Int64"
    without = merge_partials([ctf]).table
    assert without["num_particles"].isna().all()
    assert without["rel_ice_thickness"].isna().all()  # nobody estimated it: no constant 1 invented


def test_motion_unavailable_is_kept_when_no_source_has_a_value() -> None:
    motion = pd.DataFrame(
        {
            "micrograph_name": ["a", "b"],
            "avg_motion": [np.nan, 0.6],
            "motion_source": ["unavailable", "relion_motion_star"],
        }
    )
    t = merge_partials([Partial("relion.motion", motion, "m.star")]).table
    assert t["motion_source"].tolist() == ["unavailable", "relion_motion_star"]
    assert math.isnan(t.loc[0, "avg_motion"])


def test_a_source_not_in_any_priority_list_comes_last() -> None:
    mine = pd.DataFrame({"micrograph_name": ["a", "b"], "mean_defocus": [1.0, 2.0]})
    theirs = pd.DataFrame({"micrograph_name": ["a"], "mean_defocus": [5.0]})
    t = merge_partials([Partial("warp.xml", mine, "w"), Partial("relion.ctf", theirs, "r")]).table
    assert t["mean_defocus"].tolist() == [5.0, 2.0]


def test_duplicate_names_in_one_partial_name_the_file_and_field() -> None:
    dup = pd.DataFrame({"micrograph_name": ["a", "a"], "num_particles": [1, 2]})
    with pytest.raises(InputError) as err:
        merge_partials([Partial("cryosparc.particles", dup, "/p/J9/J9_particles.cs")])
    assert err.value.file == "/p/J9/J9_particles.cs" and err.value.field == "micrograph_name"


def test_no_partials_give_the_header_only() -> None:
    result = merge_partials([])
    assert list(result.table.columns) == COLUMNS and result.table.empty
    assert result.unmatched == {} and result.pixel_size_A is None


def test_pixel_size_falls_back_to_the_most_common_row_value() -> None:
    frame = pd.DataFrame({"micrograph_name": ["a", "b", "c"], "pixel_size_A": [1.1, 1.0, 1.0]})
    assert merge_partials([Partial("relion.motion", frame, "m")]).pixel_size_A == 1.0


def test_real_relion_sources_through_partials(relion_project: Path) -> None:
    ctf, pixel_size = ctf_rows(relion_project / "CtfFind/job005/micrographs_ctf.star", relion_project)
    motion, _ = motion_rows(relion_project / "MotionCorr/job002/corrected_micrographs.star", relion_project)
    particles = particle_counts(relion_project / "Extract/job009/particles.star")
    result = merge_partials(
        [
            Partial("relion.particles", particles, "particles.star"),
            Partial("relion.motion", motion, "corrected_micrographs.star"),
            Partial("relion.ctf", ctf, "micrographs_ctf.star", pixel_size_A=pixel_size),
        ]
    )
    assert len(result.table) == 24 and result.pixel_size_A == 0.885
    assert result.table["num_particles"].sum() == 2374
    assert len(result.unmatched["relion.particles"]) == 14  # 14 micrographs had no particle extracted
    assert table_csv_bytes(result.table).decode().startswith(PRISMPYP_HEADER + ",")


def test_ten_thousand_micrographs_from_four_sources() -> None:
    names = [f"FoilHole_{i}_Data_{i * 7}" for i in range(10_000)]
    rng = np.random.default_rng(0)
    parts = [
        Partial("ctffind.outputs", _ctffind(names), "c"),
        Partial("cryosparc.exposures", _patch_ctf(list(rng.permutation(names))), "e"),
        Partial("relion.motion", pd.DataFrame({"micrograph_name": names[::2], "avg_motion": 0.5}), "m"),
        Partial("cryosparc.particles", pd.DataFrame({"micrograph_name": names[1::3], "num_particles": 3}), "p"),
    ]
    result = merge_partials(parts)
    assert len(result.table) == 10_000
    assert result.table["num_particles"].sum() == 3 * len(names[1::3])
    assert result.table["avg_motion"].notna().sum() == 5_000
