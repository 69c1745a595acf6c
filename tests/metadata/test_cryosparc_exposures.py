"""A CryoSPARC project's exposures and particles → rows of the metadata table, joined by name.

No real CryoSPARC exposure ``.cs`` exists in the shared data (PROVENANCE.md: "NOT found"), so every
exposures file here is synthetic: written with cryosparc-tools' own ``Dataset`` API
(``Dataset.allocate`` → fields → ``save``) in the field layout of cryosparc-tools' exposure models
(``ctf/df1_A`` …, CryoSPARC's default 0 for what a job did not estimate). The particle files without
``location/*`` fields are the real cryoDRGN ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from cryobus.services.metadata.cryosparc_exposures import exposure_rows, infer_project_dir, uid_names
from cryobus.services.metadata.cryosparc_particles import particle_counts, particle_counts_by_uid, resolve_uids
from cryobus.services.metadata.table import Partial, merge_partials
from cryobus.shared.errors import InputError

UID_1, UID_2, UID_10 = 771234567890123451, 881234567890123452, 991234567890123450


def _write_cs(path: Path, columns: dict[str, list], uids: list[int] | None = None) -> Path:
    """A synthetic CryoSPARC dataset saved by cryosparc-tools (strings 'O', numbers float32 as CryoSPARC)."""
    n = len(next(iter(columns.values())))
    fields = [(name, "O" if isinstance(values[0], str) else "f4") for name, values in columns.items()]
    ds = Dataset.allocate(n, fields)
    if uids is not None:
        ds["uid"] = uids
    for name, values in columns.items():
        ds[name] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save(path)
    return path


def _mic_path(uid: int, movie: str) -> str:
    return f"J2/motioncorrected/{uid}_{movie}_patch_aligned_doseweighted.mrc"


def _ctffind4_cs(path: Path) -> Path:
    """Like a CTFFIND4 job's exposures: CTFFIND's numbers in ctf/*, rows deliberately not sorted."""
    return _write_cs(
        path,
        {
            "micrograph_blob/path": [_mic_path(UID_2, "mic_2"), _mic_path(UID_10, "mic_10"), _mic_path(UID_1, "mic_1")],
            "micrograph_blob/psize_A": [0.83, 0.83, 0.83],
            "ctf/df1_A": [12000.5, 22000.25, 32000.0],
            "ctf/df2_A": [11000.5, 21000.75, 31000.0],
            "ctf/df_angle_rad": [math.pi / 2, math.pi / 4, 0.0],
            "ctf/ctf_fit_to_A": [3.5, 4.25, 6.0],
            "ctf/cross_corr_ctffind4": [0.125, 0.25, 0.0625],
        },
        uids=[UID_2, UID_10, UID_1],
    )


def _patch_ctf_cs(path: Path, movies: tuple[str, ...] = ("mic_1", "mic_2", "mic_10")) -> Path:
    """Like Patch CTF (+ Curate Exposures): ice thickness, its own defocus, no CTFFIND score (0)."""
    uid = {"mic_1": UID_1, "mic_2": UID_2, "mic_10": UID_10}
    n = len(movies)
    return _write_cs(
        path,
        {
            "micrograph_blob/path": [_mic_path(uid[m], m) for m in movies],
            "micrograph_blob/psize_A": [0.83] * n,
            "ctf/df1_A": [10000.0 + i for i in range(n)],
            "ctf/df2_A": [10100.0 + i for i in range(n)],
            "ctf/df_angle_rad": [0.5] * n,
            "ctf/ctf_fit_to_A": [0.0] * n,
            "ctf/cross_corr_ctffind4": [0.0] * n,
            "ctf_stats/ctf_fit_to_A": [2.75 + i for i in range(n)],
            "ctf_stats/ice_thickness_rel": [1.0625 + i / 8 for i in range(n)],
        },
        uids=[uid[m] for m in movies],
    )


# --- one exposures file ---------------------------------------------------------------------------


def test_ctffind4_fields_give_prismpyp_columns_in_their_units(tmp_path: Path) -> None:
    frame, pixel_size, missing = exposure_rows(_ctffind4_cs(tmp_path / "P1/J3/J3_exposures_success.cs"))
    assert frame["micrograph_name"].tolist() == ["mic_1", "mic_10", "mic_2"]  # uid and suffix dropped, sorted
    row = frame.set_index("micrograph_name").loc["mic_10"]
    assert row["mean_defocus"] == (22000.25 + 21000.75) / 2  # (df1 + df2) / 2, not df1 as prismPYP
    assert (row["defocus_u_A"], row["defocus_v_A"]) == (22000.25, 21000.75)
    assert row["defocus_angle_deg"] == pytest.approx(45.0, abs=1e-5)
    assert (row["est_resolution"], row["ctf_fit"]) == (4.25, 0.25)
    assert row["ctf_fit_source"] == "ctffind_cross_correlation"
    assert row["pixel_size_A"] == 0.83 and pixel_size == 0.83  # float32 0.83 read as 0.83
    assert row["micrograph_uid"] == UID_10
    assert frame["rel_ice_thickness"].isna().all()  # CTFFIND4 estimates no ice thickness
    assert frame["avg_motion"].isna().all() and frame["motion_source"].isna().all()
    assert missing == []
    assert uid_names(frame) == {UID_1: "mic_1", UID_2: "mic_2", UID_10: "mic_10"}


def test_patch_ctf_has_no_ctffind_cross_correlation(tmp_path: Path) -> None:
    frame, _, _ = exposure_rows(_patch_ctf_cs(tmp_path / "P1/J4/J4_exposures_accepted.cs"))
    assert frame["ctf_fit"].isna().all()  # ctf/cross_corr_ctffind4 is CryoSPARC's default 0 here
    assert frame["ctf_fit_source"].isna().all()
    by_name = frame.set_index("micrograph_name")
    assert by_name.loc["mic_1", "rel_ice_thickness"] == 1.0625
    assert by_name.loc["mic_1", "est_resolution"] == 2.75  # ctf/ctf_fit_to_A is 0: ctf_stats/ctf_fit_to_A
    assert by_name.loc["mic_2", "mean_defocus"] == (10001.0 + 10101.0) / 2


def test_missing_field_groups_are_nan_and_the_non_dw_path_names_rows(tmp_path: Path) -> None:
    cs = _write_cs(
        tmp_path / "P1/J5/J5_micrographs.cs",
        {"micrograph_blob_non_dw/path": [_mic_path(UID_1, "mic_1")], "micrograph_blob_non_dw/psize_A": [1.5]},
        uids=[UID_1],
    )
    frame, pixel_size, _ = exposure_rows(cs)
    assert frame["micrograph_name"].tolist() == ["mic_1"] and pixel_size == 1.5
    for col in ("mean_defocus", "defocus_angle_deg", "ctf_fit", "est_resolution", "rel_ice_thickness", "avg_motion"):
        assert math.isnan(frame.at[0, col]), col


def test_a_cs_without_either_path_field_cannot_name_its_rows(tmp_path: Path) -> None:
    cs = _write_cs(tmp_path / "J6_exposures.cs", {"movie_blob/path": ["J1/imported/a.tif"], "ctf/df1_A": [1.0]})
    with pytest.raises(InputError) as err:
        exposure_rows(cs)
    assert err.value.field == "micrograph_blob/path" and err.value.file == str(cs)


def test_a_text_file_named_cs_is_an_input_error(tmp_path: Path) -> None:
    cs = tmp_path / "J7_exposures.cs"
    cs.write_text("uid,micrograph_blob/path\n1,a.mrc\n")
    with pytest.raises(InputError) as err:
        exposure_rows(cs)
    assert err.value.file == str(cs) and "not a CryoSPARC dataset" in err.value.reason


def test_two_rows_with_one_name_are_refused(tmp_path: Path) -> None:
    cs = _write_cs(
        tmp_path / "J8_exposures.cs",
        {"micrograph_blob/path": ["J1/imported/111111111111111_a.mrc", "J9/imported/222222222222222_a.mrc"]},
        uids=[111111111111111, 222222222222222],
    )
    with pytest.raises(InputError) as err:
        exposure_rows(cs)
    assert err.value.field == "micrograph_blob/path" and "'a'" in err.value.reason


# --- rigid motion ---------------------------------------------------------------------------------


def _motion_cs(project: Path, traj_paths: list[str]) -> Path:
    n = len(traj_paths)
    return _write_cs(
        project / "J2/J2_micrographs.cs",
        {
            "micrograph_blob/path": [_mic_path(UID_1 + i, f"m{i}") for i in range(n)],
            "micrograph_blob/psize_A": [1.0] * n,
            "rigid_motion/path": traj_paths,
            "rigid_motion/psize_A": [0.5] * n,
        },
        uids=[UID_1 + i for i in range(n)],
    )


def test_rigid_motion_trajectory_gives_the_mean_frame_to_frame_drift_in_angstrom(tmp_path: Path) -> None:
    project = tmp_path / "P1"
    traj = project / "J2/motioncorrected/m0_traj.npy"
    traj.parent.mkdir(parents=True)
    # shifts in movie pixels; steps of 5, 0 and 5 px → mean 10/3 px at 0.5 Å/px
    np.save(traj, np.array([[[0, 0], [3, 4], [3, 4], [6, 8]]], dtype=np.float32))
    cs = _motion_cs(project, ["J2/motioncorrected/m0_traj.npy", "J2/motioncorrected/m1_traj.npy"])
    frame, _, missing = exposure_rows(cs)
    by_name = frame.set_index("micrograph_name")
    assert by_name.loc["m0", "avg_motion"] == pytest.approx(10 / 3 * 0.5)
    assert by_name.loc["m0", "motion_source"] == "cryosparc_rigid_trajectory"
    assert math.isnan(by_name.loc["m1", "avg_motion"]) and by_name.loc["m1", "motion_source"] == "unavailable"
    assert missing == [(str(project / "J2/motioncorrected/m1_traj.npy"), str(cs), "rigid_motion/path")]


def test_a_corrupt_trajectory_is_an_input_error_naming_it(tmp_path: Path) -> None:
    project = tmp_path / "P1"
    traj = project / "J2/motioncorrected/m0_traj.npy"
    traj.parent.mkdir(parents=True)
    np.save(traj, np.zeros((3, 3)))  # not (n_frames, 2)
    with pytest.raises(InputError) as err:
        exposure_rows(_motion_cs(project, ["J2/motioncorrected/m0_traj.npy"]))
    assert err.value.file == str(traj) and err.value.field == "rigid_motion/path"


def test_exported_group_resolves_its_project_and_relative_paths(tmp_path: Path) -> None:
    project = tmp_path / "P1"
    group = project / "exports/groups/J2_micrographs"
    np.save(_mkparent(group / "J2/motioncorrected/m0_traj.npy"), np.array([[0, 0], [0, 2]], dtype=np.float32))
    np.save(_mkparent(project / "J2/motioncorrected/m1_traj.npy"), np.array([[0, 0], [4, 0]], dtype=np.float32))
    cs = _write_cs(
        group / "J2_micrographs_exported.cs",
        {
            "micrograph_blob/path": [">" + _mic_path(UID_1, "m0"), ">" + _mic_path(UID_2, "m1")],
            "rigid_motion/path": [">J2/motioncorrected/m0_traj.npy", ">J2/motioncorrected/m1_traj.npy"],
            "rigid_motion/psize_A": [1.0, 1.0],
        },
        uids=[UID_1, UID_2],
    )
    assert infer_project_dir(cs) == project
    frame, _, missing = exposure_rows(cs)
    # ">" paths: beside the exported file first (m0), then in the project (m1)
    assert frame["avg_motion"].tolist() == [2.0, 4.0] and missing == []


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- joining with other sources -----------------------------------------------------------------


def test_uid_prefixed_cryosparc_names_join_relion_and_plain_names(tmp_path: Path) -> None:
    frame, _, _ = exposure_rows(_ctffind4_cs(tmp_path / "P1/J3/J3_exposures.cs"))
    relion = pd.DataFrame(
        {"micrograph_name": ["mic_1", "mic_2"], "avg_motion": [0.5, 0.75], "motion_source": ["relion_motion_star"] * 2}
    )  # as motion_rows gives for MotionCorr/job002/Movies/mic_1.mrc
    plain = pd.DataFrame({"micrograph_name": ["mic_10"], "num_particles": [7]})
    result = merge_partials(
        [
            Partial("cryosparc.exposures", frame, "J3_exposures.cs"),
            Partial("relion.motion", relion, "corrected_micrographs.star"),
            Partial("relion.particles", plain, "particles.star"),
        ]
    )
    table = result.table.set_index("micrograph_name")
    assert list(table.index) == ["mic_1", "mic_10", "mic_2"]
    assert table.loc["mic_2", "avg_motion"] == 0.75 and table.loc["mic_2", "ctf_fit"] == 0.125
    assert table["num_particles"].tolist() == [0, 7, 0]
    assert result.unmatched["relion.motion"] == ["mic_10"]
    assert result.unmatched["cryosparc.exposures"] == []


def test_a_micrograph_curation_rejected_is_nan_there_and_reported(tmp_path: Path) -> None:
    # prismPYP's cryoSPARC builder dies with "Length of values does not match" on exactly this input.
    ctffind, _, _ = exposure_rows(_ctffind4_cs(tmp_path / "P1/J3/J3_exposures_success.cs"))
    curated, _, _ = exposure_rows(_patch_ctf_cs(tmp_path / "P1/J4/J4_exposures_accepted.cs", ("mic_2", "mic_1")))
    result = merge_partials(
        [Partial("cryosparc.exposures", ctffind, "J3.cs"), Partial("cryosparc.exposures", curated, "J4.cs")]
    )
    table = result.table.set_index("micrograph_name")
    assert math.isnan(table.loc["mic_10", "rel_ice_thickness"])
    assert table.loc["mic_10", "mean_defocus"] == (22000.25 + 21000.75) / 2
    assert result.unmatched == {"cryosparc.exposures:J3.cs": [], "cryosparc.exposures:J4.cs": ["mic_10"]}


def test_unsorted_files_never_misalign_names_and_values(tmp_path: Path) -> None:
    """prismPYP assigns the patch file's names, in file order, to rows in sorted key order: with the
    patch file in order [mic_2, mic_10, mic_1] row "mic_2" would get mic_10's values."""
    ctffind, _, _ = exposure_rows(_ctffind4_cs(tmp_path / "P1/J3/J3_exposures_success.cs"))  # [mic_2, mic_10, mic_1]
    patch_cs = _patch_ctf_cs(tmp_path / "P1/J4/J4_exposures_accepted.cs", ("mic_2", "mic_10", "mic_1"))
    patch, _, _ = exposure_rows(patch_cs)
    result = merge_partials(
        [Partial("cryosparc.exposures", ctffind, "J3.cs"), Partial("cryosparc.exposures", patch, "J4.cs")]
    )
    table = result.table.set_index("micrograph_name")
    # ice thickness of each name is its own row's value in the patch file (written in file order)
    assert table.loc["mic_2", "rel_ice_thickness"] == 1.0625
    assert table.loc["mic_10", "rel_ice_thickness"] == 1.1875
    assert table.loc["mic_1", "rel_ice_thickness"] == 1.3125
    # and the CTFFIND values of each name are its own (mic_2: df 12000.5 / 11000.5)
    assert table.loc["mic_2", "mean_defocus"] == 11500.5 and table.loc["mic_2", "ctf_fit"] == 0.125
    assert table.loc["mic_1", "mean_defocus"] == 31500.0


# --- particles ------------------------------------------------------------------------------------


def test_particle_counts_from_location_paths_strip_the_micrograph_uid(tmp_path: Path) -> None:
    paths = [_mic_path(UID_1, "mic_1")] * 3 + [_mic_path(UID_2, "mic_2")] * 2
    cs = _write_cs(
        tmp_path / "J9_particles.cs", {"location/micrograph_path": paths, "location/center_x_frac": [0.5] * 5}
    )
    ds = Dataset.load(cs)
    ds.add_fields([("location/micrograph_uid", "u8")])
    ds["location/micrograph_uid"] = [UID_1] * 3 + [UID_2] * 2
    ds.save(cs)
    counts = particle_counts(cs)
    assert counts.to_dict("list") == {"micrograph_name": ["mic_1", "mic_2"], "num_particles": [3, 2]}
    assert counts["num_particles"].dtype == np.int64


def test_uid_only_particles_are_resolved_through_the_exposures(tmp_path: Path) -> None:
    exposures, _, _ = exposure_rows(_ctffind4_cs(tmp_path / "P1/J3/J3_exposures.cs"))
    cs = tmp_path / "J9_particles.cs"
    ds = Dataset.allocate(4, [("location/micrograph_uid", "u8")])
    ds["location/micrograph_uid"] = [UID_10, UID_1, UID_10, 42]
    ds.save(cs)
    by_uid = particle_counts_by_uid(cs)
    assert by_uid.to_dict("list") == {"micrograph_uid": [42, UID_1, UID_10], "num_particles": [1, 1, 2]}
    frame, unknown = resolve_uids(by_uid, uid_names(exposures))
    assert frame.to_dict("list") == {"micrograph_name": ["mic_1", "mic_10"], "num_particles": [1, 2]}
    assert unknown == [42]
    with pytest.raises(InputError) as err:
        particle_counts(cs)  # no uid map given
    assert err.value.field == "location/micrograph_uid"
    with pytest.raises(InputError) as err:
        particle_counts(cs, uid_names=uid_names(exposures))  # uid 42 is unknown
    assert err.value.field == "location/micrograph_uid" and "42" in err.value.reason


@pytest.mark.parametrize("name", ["cryosparc_J2_particles_exported.cs", "empiar_10076_7.cs"])
def test_real_particle_files_without_location_fields_are_refused(shared_data: Path, name: str) -> None:
    path = shared_data / "ml-struct-bio__cryodrgn/tests/data" / name
    with pytest.raises(InputError) as err:
        particle_counts(path)
    assert err.value.field == "location/micrograph_path" and err.value.file == str(path)
