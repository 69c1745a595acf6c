"""RELION 3.0, 3.1 and 5.0 STAR files (real ones, PROVENANCE.md) through the table's readers: the
right block, the right names, and the micrograph pixel size from the right place (per row in 3.0,
per optics group in 3.1+), never the particle-image pixel size."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryobus.services.metadata.relion_table import ctf_rows, particle_counts
from cryobus.shared.errors import InputError
from cryobus.shared.formats.star import micrograph_block, micrograph_name, particle_block, read_star

CRYODRGN = "ml-struct-bio__cryodrgn/tests/data"
RELION31_MIC = "18aug10a_MC2_FoilHole_10984848_Data_10985376_10985377_20180810_2123-144102"


@pytest.fixture(scope="module")
def data(shared_data: Path) -> Path:
    return shared_data / CRYODRGN


# --- RELION 3.0: one block, no optics, pixel size per row from detector pixel size / magnification ----


def test_relion30_data_block_gives_ctf_rows_with_the_derived_pixel_size(data: Path) -> None:
    """empiar_10076_7.star: ``data_`` block, one particle per micrograph (named 1..7)."""
    frame, pixel_size = ctf_rows(data / "empiar_10076_7.star", data)
    assert frame["micrograph_name"].tolist() == [str(i) for i in range(1, 8)]  # "1" stays text
    row = frame.iloc[0]  # 1@empiar_10076_7.mrc 1 15301.1 14916.4 5.28 300 2.7 0.07 38168 5
    assert (row["defocus_u_A"], row["defocus_v_A"], row["defocus_angle_deg"]) == (15301.1, 14916.4, 5.28)
    assert row["mean_defocus"] == pytest.approx((15301.1 + 14916.4) / 2)
    assert pixel_size == pytest.approx(1e4 * 5 / 38168)  # 10 000 · rlnDetectorPixelSize (µm) / rlnMagnification
    assert frame["pixel_size_A"].eq(pixel_size).all()
    assert frame["ctf_fit"].isna().all() and frame["ctf_fit_source"].isna().all()  # no FOM, no rlnCtfImage
    assert particle_counts(data / "empiar_10076_7.star")["num_particles"].tolist() == [1] * 7


def test_relion30_data_images_block_counts_particles_per_micrograph(data: Path) -> None:
    """FinalRefinement-OriginalParticles-PfCRT.star: RELION 3.0.6 ``data_images``."""
    star = data / "FinalRefinement-OriginalParticles-PfCRT.star"
    counts = particle_counts(star)
    assert counts["num_particles"].tolist() == [2, 2, 1]
    assert counts["micrograph_name"].iloc[2] == "18jun08i_b1g1_00001gr_00021sq_v02_00004hln_00002enn-b-DW"
    block = micrograph_block(read_star(star), file=star)
    assert block["rlnMicrographPixelSize"].tolist() == pytest.approx([1e4 * 1.035 / 10000] * 5)
    # a particles STAR is not a micrographs list: two rows of one micrograph are refused, not averaged
    with pytest.raises(InputError) as err:
        ctf_rows(star, data)
    assert err.value.field == "rlnMicrographName"


# --- RELION 3.1: data_optics + data_particles --------------------------------------------------------


@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])
def test_relion31_one_optics_group_either_block_order(data: Path, name: str) -> None:
    star = data / name  # v2 puts data_particles before data_optics
    counts = particle_counts(star)
    assert counts.to_dict("list") == {"micrograph_name": [RELION31_MIC], "num_particles": [5]}  # _DW dropped
    blocks = read_star(star)
    particles = particle_block(blocks, file=star)
    assert particles["rlnImagePixelSize"].eq(2.806).all()  # particle images, binned 2×
    assert particles["rlnMicrographOriginalPixelSize"].eq(1.403).all()
    # the optics table has no rlnMicrographPixelSize: the image pixel size is not passed off as it
    assert "rlnMicrographPixelSize" not in micrograph_block(blocks, file=star).columns


def test_relion31_six_optics_groups_give_each_micrograph_its_groups_pixel_size(data: Path) -> None:
    star = data / "relion31.6opticsgroups.star"
    frame, pixel_size = ctf_rows(star, data)  # one particle per micrograph, so usable as a CTF list
    assert len(frame) == 139
    groups = particle_block(read_star(star), file=star)
    expected = dict(zip(groups["rlnMicrographName"].map(micrograph_name), groups["rlnMicrographPixelSize"]))
    assert dict(zip(frame["micrograph_name"], frame["pixel_size_A"])) == expected
    six = groups[groups["rlnOpticsGroup"] == 6]
    # group 6: micrographs at 1.035 Å/px, particles re-scaled to 1.25 Å/px
    assert six["rlnMicrographPixelSize"].eq(1.035).all() and six["rlnImagePixelSize"].eq(1.25).all()
    assert frame["pixel_size_A"].value_counts().to_dict() == {1.25: 60, 1.24: 55, 1.035: 24}
    assert pixel_size == 1.25  # the most common micrograph pixel size
    assert set(frame["ctf_fit_source"]) == {"relion_figure_of_merit"}
    assert frame["est_resolution"].isna().all()  # no rlnCtfMaxResolution and no rlnCtfImage in this file


# --- RELION 5.0 ------------------------------------------------------------------------------------------


def test_relion50_particles_with_eer_micrograph_names(data: Path) -> None:
    counts = particle_counts(data / "relion5.star")
    assert counts.to_dict("list") == {
        "micrograph_name": [
            "FoilHole_353510_Data_342200_1_20250401_174947_EER",
            "FoilHole_353511_Data_342200_6_20250401_175002_EER",
        ],
        "num_particles": [11, 6],
    }
    particles = particle_block(read_star(data / "relion5.star"), file=data / "relion5.star")
    assert particles["rlnImagePixelSize"].eq(0.89).all() and particles["rlnMicrographOriginalPixelSize"].eq(0.89).all()


def test_relion50_micrographs_ctf_star(relion_project: Path) -> None:
    frame, pixel_size = ctf_rows(relion_project / "CtfFind/job005/micrographs_ctf.star", relion_project)
    assert len(frame) == 24 and pixel_size == 0.885
    assert frame["pixel_size_A"].eq(0.885).all()


def test_a_star_file_without_micrographs_is_refused(shared_data: Path) -> None:
    star = shared_data / "teamtomo__starfile/tests/data/postprocess.star"
    with pytest.raises(InputError) as err:
        micrograph_block(read_star(star), file=star)
    assert err.value.field == "data_micrographs"
