"""A finished RELION run → prismPYP's micrograph_metadata.csv, pixel_size.txt and micrographs list."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryobus.services.metadata.prismpyp_layout import (
    micrographs_list_bytes,
    pixel_size_txt,
    table_csv_bytes,
    table_parquet_bytes,
)
from cryobus.services.metadata.relion_table import (
    COLUMNS,
    ctf_rows,
    merge_sources,
    motion_rows,
    particle_counts,
)
from cryobus.shared.errors import InputError

CTF_STAR = "CtfFind/job005/micrographs_ctf.star"
MOTION_STAR_LIST = "MotionCorr/job002/corrected_micrographs.star"
PARTICLES_STAR = "Extract/job009/particles.star"
PRISMPYP_HEADER = "micrograph_name,rel_ice_thickness,ctf_fit,est_resolution,avg_motion,num_particles,mean_defocus"


def _stem(relion_name: str) -> str:
    return relion_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def ctf(relion_project: Path) -> tuple[pd.DataFrame, float | None]:
    return ctf_rows(relion_project / CTF_STAR, relion_project)


@pytest.fixture(scope="module")
def motion(relion_project: Path):
    return motion_rows(relion_project / MOTION_STAR_LIST, relion_project)


@pytest.fixture(scope="module")
def particles(relion_project: Path) -> pd.DataFrame:
    return particle_counts(relion_project / PARTICLES_STAR)


# --- CTF ----------------------------------------------------------------------------------------


def test_ctf_rows_equal_the_star_values(relion_project: Path, ctf) -> None:
    table, pixel_size = ctf
    raw = starfile.read(relion_project / CTF_STAR)["micrographs"]
    expected = {
        _stem(r.rlnMicrographName): (
            (r.rlnDefocusU + r.rlnDefocusV) / 2,
            r.rlnCtfMaxResolution,
            r.rlnCtfFigureOfMerit,
            r.rlnDefocusU,
            r.rlnDefocusV,
            r.rlnDefocusAngle,
        )
        for r in raw.itertuples()
    }
    assert len(table) == 24
    assert table["micrograph_name"].tolist() == sorted(expected)
    for row in table.itertuples():
        assert (
            row.mean_defocus,
            row.est_resolution,
            row.ctf_fit,
            row.defocus_u_A,
            row.defocus_v_A,
            row.defocus_angle_deg,
        ) == pytest.approx(expected[row.micrograph_name], rel=1e-12)
    assert set(table["ctf_fit_source"]) == {"relion_figure_of_merit"}
    assert (table["pixel_size_A"] == 0.885).all()
    assert pixel_size == 0.885


@pytest.mark.parametrize("mic", ["20170629_00021_frameImage", "20170629_00022_frameImage"])
def test_relion_figure_of_merit_is_ctffinds_cross_correlation(relion_project: Path, ctf, mic: str) -> None:
    from cryobus.shared.formats.ctffind import read_ctffind_txt

    table, _ = ctf
    [fit] = read_ctffind_txt(relion_project / f"CtfFind/job005/Movies/{mic}_PS.txt")
    row = table.set_index("micrograph_name").loc[mic]
    assert row["ctf_fit"] == pytest.approx(fit.cross_correlation, abs=1e-6)
    assert row["est_resolution"] == pytest.approx(fit.fit_resolution_A, abs=1e-6)
    assert row["mean_defocus"] == pytest.approx(fit.mean_defocus_A, abs=1e-3)


def test_a_ctf_star_without_defocus_u_is_refused(tmp_path: Path) -> None:
    star = tmp_path / "micrographs_ctf.star"
    star.write_text("data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusV #2\nMovies/a.mrc 20000\n")
    with pytest.raises(InputError) as err:
        ctf_rows(star, tmp_path)
    assert err.value.field == "rlnDefocusU"
    assert err.value.file == str(star)


def test_without_figure_of_merit_the_ctffind_text_beside_the_image_is_used(relion_project: Path, tmp_path: Path) -> None:
    ctf_image = relion_project / "CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf:mrc"
    star = tmp_path / "micrographs_ctf.star"
    star.write_text(
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnCtfImage #2\n_rlnDefocusU #3\n_rlnDefocusV #4\n"
        f"Movies/20170629_00021_frameImage.mrc {ctf_image} 37034.929688 35846.542969\n"
        "Movies/other.mrc Movies/other_PS.ctf:mrc 30000 29000\n"
    )
    table, pixel_size = ctf_rows(star, tmp_path)
    first, other = table.iloc[0], table.iloc[1]
    assert first["ctf_fit"] == pytest.approx(0.017465)
    assert first["est_resolution"] == pytest.approx(9.554261)
    assert first["ctf_fit_source"] == "ctffind_cross_correlation"
    assert math.isnan(other["ctf_fit"]) and other["ctf_fit_source"] is None
    assert pixel_size is None


def test_duplicate_micrograph_names_are_refused(tmp_path: Path) -> None:
    star = tmp_path / "micrographs_ctf.star"
    star.write_text(
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n"
        "a/mic.mrc 1 1\nb/mic.mrc 2 2\n"
    )
    with pytest.raises(InputError) as err:
        ctf_rows(star, tmp_path)
    assert err.value.field == "rlnMicrographName"


# --- motion -------------------------------------------------------------------------------------


def _motion_of_00021_from_shifts(relion_project: Path) -> float:
    """The documented formula, computed here independently: mean Euclidean step × original pixel size."""
    raw = starfile.read(relion_project / "MotionCorr/job002/Movies/20170629_00021_frameImage.star")
    s = raw["global_shift"].sort_values("rlnMicrographFrameNumber")
    dx = np.diff(s["rlnMicrographShiftX"].to_numpy())
    dy = np.diff(s["rlnMicrographShiftY"].to_numpy())
    return float(np.mean(np.sqrt(dx**2 + dy**2)) * raw["general"]["rlnMicrographOriginalPixelSize"])


def test_motion_of_the_micrograph_with_a_motion_star(relion_project: Path, motion) -> None:
    table, _ = motion
    row = table.set_index("micrograph_name").loc["20170629_00021_frameImage"]
    assert row["avg_motion"] == pytest.approx(_motion_of_00021_from_shifts(relion_project), rel=1e-12)
    assert row["motion_source"] == "relion_motion_star"
    assert row["pixel_size_A"] == 0.885


def test_other_micrographs_list_their_missing_motion_star(relion_project: Path, motion) -> None:
    table, missing = motion
    raw = starfile.read(relion_project / MOTION_STAR_LIST)["micrographs"]
    expected = sorted(
        str(relion_project / m) for m in raw["rlnMicrographMetadata"] if not m.endswith("20170629_00021_frameImage.star")
    )
    assert len(table) == 24
    assert sorted(path for path, _, _ in missing) == expected
    assert {(ref, field) for _, ref, field in missing} == {(str(relion_project / MOTION_STAR_LIST), "rlnMicrographMetadata")}
    others = table[table["micrograph_name"] != "20170629_00021_frameImage"]
    assert others["avg_motion"].isna().all()  # frame count unknown → no average
    assert set(others["motion_source"]) == {"unavailable"}


def test_accumulated_motion_fallback_when_the_frame_count_is_known(relion_project: Path) -> None:
    table, missing = motion_rows(relion_project / MOTION_STAR_LIST, relion_project, n_frames=24)
    raw = starfile.read(relion_project / MOTION_STAR_LIST)["micrographs"]
    accum = {_stem(n): t for n, t in zip(raw["rlnMicrographName"], raw["rlnAccumMotionTotal"])}
    by_name = table.set_index("micrograph_name")
    assert len(missing) == 23
    row = by_name.loc["20170629_00022_frameImage"]
    assert row["motion_source"] == "relion_accum_motion_total"
    assert row["avg_motion"] == pytest.approx(accum["20170629_00022_frameImage"] * 0.885 / 23)
    # the two routes agree where both are possible
    assert accum["20170629_00021_frameImage"] * 0.885 / 23 == pytest.approx(
        by_name.loc["20170629_00021_frameImage", "avg_motion"], abs=1e-6
    )


def test_a_corrupt_motion_star_is_an_input_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "mic.star").write_text("garbage without blocks\n")
    listing = tmp_path / "corrected_micrographs.star"
    listing.write_text(
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnMicrographMetadata #2\nmic.mrc mic.star\n"
    )
    with pytest.raises(InputError) as err:
        motion_rows(listing, tmp_path)
    assert err.value.file == str(tmp_path / "mic.star")


# --- particles ----------------------------------------------------------------------------------


def test_particle_counts_equal_a_groupby(relion_project: Path, particles: pd.DataFrame) -> None:
    raw = starfile.read(relion_project / PARTICLES_STAR)["particles"]
    expected = raw.groupby(raw["rlnMicrographName"].map(_stem)).size()
    assert dict(zip(particles["micrograph_name"], particles["num_particles"])) == expected.to_dict()
    assert particles["num_particles"].sum() == 2374
    assert len(particles) == 10


def test_class2d_data_star_counts_the_same_particles(relion_project: Path, particles: pd.DataFrame) -> None:
    class2d = particle_counts(relion_project / "Class2D/job010/run_it025_data.star")
    pd.testing.assert_frame_equal(class2d, particles)


# --- merged table -------------------------------------------------------------------------------


def test_merged_table_of_the_relion_run(ctf, motion, particles: pd.DataFrame) -> None:
    table = merge_sources(ctf[0], motion[0], particles)
    assert list(table.columns) == COLUMNS
    assert len(table) == 24
    assert table["micrograph_name"].tolist() == sorted(table["micrograph_name"])
    assert table["rel_ice_thickness"].isna().all()
    counts = dict(zip(particles["micrograph_name"], particles["num_particles"]))
    for row in table.itertuples():
        assert row.num_particles == counts.get(row.micrograph_name, 0)
    assert table["num_particles"].sum() == 2374
    assert (table["num_particles"] == 0).sum() == 14
    by_name = table.set_index("micrograph_name")
    ctf_by_name = ctf[0].set_index("micrograph_name")
    assert by_name["mean_defocus"].equals(ctf_by_name["mean_defocus"])
    assert by_name.loc["20170629_00021_frameImage", "avg_motion"] == pytest.approx(0.6318456149161306)


def test_merge_is_by_name_not_row_position(ctf, motion, particles: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    shuffled = [f.iloc[rng.permutation(len(f))].reset_index(drop=True) for f in (ctf[0], motion[0], particles)]
    pd.testing.assert_frame_equal(merge_sources(*shuffled), merge_sources(ctf[0], motion[0], particles))


def test_micrographs_known_to_one_source_only_get_nan_elsewhere() -> None:
    ctf = pd.DataFrame({"micrograph_name": ["b", "a"], "mean_defocus": [2.0, 1.0], "pixel_size_A": [1.0, 1.0]})
    motion = pd.DataFrame({"micrograph_name": ["c"], "avg_motion": [0.5], "motion_source": ["relion_motion_star"], "pixel_size_A": [2.0]})
    parts = pd.DataFrame({"micrograph_name": ["a", "d"], "num_particles": [3, 4]})
    table = merge_sources(ctf, motion, parts)
    assert table["micrograph_name"].tolist() == ["a", "b", "c", "d"]
    assert table["num_particles"].tolist() == [3, 0, 0, 4]
    assert table["mean_defocus"].tolist()[:2] == [1.0, 2.0] and table["mean_defocus"][2:].isna().all()
    assert table["pixel_size_A"].tolist()[:3] == [1.0, 1.0, 2.0] and math.isnan(table["pixel_size_A"][3])
    assert table["motion_source"].tolist() == [None, None, "relion_motion_star", None]


def test_without_a_particle_source_counts_are_unknown(ctf) -> None:
    table = merge_sources(ctf[0], None, None)
    assert len(table) == 24
    assert table["num_particles"].isna().all()
    assert table["avg_motion"].isna().all()


def test_no_sources_give_an_empty_table_with_the_header() -> None:
    table = merge_sources(None, None, None)
    assert list(table.columns) == COLUMNS and table.empty
    assert table_csv_bytes(table) == (",".join(COLUMNS) + "\n").encode()


def test_duplicate_names_in_a_source_are_refused() -> None:
    parts = pd.DataFrame({"micrograph_name": ["a", "a"], "num_particles": [1, 2]})
    with pytest.raises(InputError) as err:
        merge_sources(None, None, parts)
    assert err.value.field == "micrograph_name"


# --- prismPYP files -----------------------------------------------------------------------------


def test_csv_starts_with_prismpyp_columns_and_reads_back(ctf, motion, particles: pd.DataFrame) -> None:
    table = merge_sources(ctf[0], motion[0], particles)
    data = table_csv_bytes(table)
    text = data.decode()
    assert text.startswith(PRISMPYP_HEADER + ",")
    assert "\r" not in text and text.endswith("\n")
    assert text.count("\n") == 25
    back = pd.read_csv(io.BytesIO(data))
    assert back["micrograph_name"].tolist() == table["micrograph_name"].tolist()
    assert back["mean_defocus"].tolist() == table["mean_defocus"].tolist()
    assert back["num_particles"].tolist() == table["num_particles"].astype(int).tolist()
    assert back["rel_ice_thickness"].isna().all()
    first = text.splitlines()[1].split(",")
    assert first[0] == "20170629_00021_frameImage" and first[1] == "" and first[5] == "242"


def test_parquet_round_trip(ctf, motion, particles: pd.DataFrame) -> None:
    table = merge_sources(ctf[0], motion[0], particles)
    back = pd.read_parquet(io.BytesIO(table_parquet_bytes(table)))
    assert list(back.columns) == COLUMNS
    assert back["num_particles"].tolist() == table["num_particles"].tolist()
    assert back["ctf_fit"].tolist() == table["ctf_fit"].tolist()


def test_pixel_size_text() -> None:
    assert pixel_size_txt(0.885) == b"0.885\n"
    assert pixel_size_txt(np.float64(1.08)) == b"1.08\n"
    assert float(pixel_size_txt(2.806).decode().splitlines()[0]) == 2.806
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError):
            pixel_size_txt(bad)


def test_micrographs_list() -> None:
    assert micrographs_list_bytes(["mic_2", "mic_10", "mic_1", "mic_2"]) == b"mic_1\nmic_10\nmic_2\n"
    assert micrographs_list_bytes([]) == b""
    with pytest.raises(InputError):
        micrographs_list_bytes(["dir/mic"])


def test_micrographs_list_of_the_relion_run(ctf) -> None:
    data = micrographs_list_bytes(ctf[0]["micrograph_name"])
    lines = data.decode().splitlines()
    assert len(lines) == 24 and lines == sorted(lines)
    assert lines[0] == "20170629_00021_frameImage"


def test_sources_survive_a_json_round_trip(ctf, motion, particles: pd.DataFrame) -> None:
    """The service stores partial tables as JSON between jobs; numeric-looking names stay names."""
    sources = (ctf[0], motion[0], particles)
    frames = [pd.read_json(io.StringIO(f.to_json(orient="split")), orient="split") for f in sources]
    pd.testing.assert_frame_equal(merge_sources(*frames), merge_sources(ctf[0], motion[0], particles))
    as_json = pd.DataFrame({"micrograph_name": ["1", "2"], "num_particles": [5, 6]}).to_json(orient="split")
    numeric = pd.read_json(io.StringIO(as_json), orient="split")
    table = merge_sources(pd.DataFrame({"micrograph_name": ["2"], "mean_defocus": [1.0]}), None, numeric)
    assert table["micrograph_name"].tolist() == ["1", "2"]
    assert table["num_particles"].tolist() == [5, 6]
