"""RELION STAR reading: real RELION 3.0 / 3.1 / 5.0 files parse into the tables the services use."""

from __future__ import annotations

from pathlib import Path

import pytest
import starfile

from cryobus.shared.errors import InputError
from cryobus.shared.formats.star import (
    micrograph_block,
    micrograph_name,
    particle_block,
    read_star,
    require_columns,
)


@pytest.fixture(scope="module")
def cryodrgn(shared_data: Path) -> Path:
    return shared_data / "ml-struct-bio__cryodrgn" / "tests" / "data"


def test_every_block_of_a_relion5_micrographs_star_is_a_frame(relion_project: Path) -> None:
    blocks = read_star(relion_project / "CtfFind/job005/micrographs_ctf.star")
    assert list(blocks) == ["optics", "micrographs"]
    assert len(blocks["micrographs"]) == 24
    assert blocks["micrographs"]["rlnCtfImage"].iloc[0] == "CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf:mrc"


def test_a_key_value_block_becomes_one_row(relion_project: Path) -> None:
    blocks = read_star(relion_project / "MotionCorr/job002/Movies/20170629_00021_frameImage.star")
    general = blocks["general"]
    assert len(general) == 1
    assert general["rlnImageSizeZ"].iloc[0] == 24
    assert general["rlnMicrographOriginalPixelSize"].iloc[0] == pytest.approx(0.885)
    assert len(blocks["global_shift"]) == 24


def test_name_columns_stay_text_even_when_numeric(cryodrgn: Path) -> None:
    blocks = read_star(cryodrgn / "empiar_10076_7.star")
    assert list(blocks) == [""]  # RELION 3.0 unnamed data_ block
    assert blocks[""]["rlnMicrographName"].tolist() == ["1", "2", "3", "4", "5", "6", "7"]


def test_missing_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.star"
    with pytest.raises(InputError) as err:
        read_star(missing)
    assert err.value.file == str(missing)


def test_a_text_file_without_data_blocks_is_an_input_error(tmp_path: Path) -> None:
    f = tmp_path / "notes.star"
    f.write_text("this is not a STAR file\njust notes\n")
    with pytest.raises(InputError) as err:
        read_star(f)
    assert err.value.file == str(f)


def test_require_columns_names_the_first_missing_column(relion_project: Path) -> None:
    path = relion_project / "CtfFind/job005/micrographs_ctf.star"
    df = read_star(path)["micrographs"]
    require_columns(df, ["rlnMicrographName", "rlnDefocusU"], file=path, block="micrographs")
    with pytest.raises(InputError) as err:
        require_columns(df, ["rlnDefocusU", "rlnFoo", "rlnBar"], file=path, block="micrographs")
    assert err.value.field == "rlnFoo"
    assert err.value.file == str(path)
    assert "data_micrographs" in str(err.value)


def test_relion5_micrographs_carry_their_optics(relion_project: Path) -> None:
    path = relion_project / "CtfFind/job005/micrographs_ctf.star"
    df = micrograph_block(read_star(path), file=path)
    raw = starfile.read(path)["micrographs"]
    assert df["rlnMicrographName"].tolist() == raw["rlnMicrographName"].tolist()  # row order kept
    assert (df["rlnMicrographPixelSize"] == 0.885).all()
    assert (df["rlnMicrographOriginalPixelSize"] == 0.885).all()
    assert (df["rlnVoltage"] == 200.0).all()
    assert (df["rlnSphericalAberration"] == 1.4).all()
    assert (df["rlnAmplitudeContrast"] == 0.1).all()


def test_corrected_micrographs_star_is_a_micrograph_table(relion_project: Path) -> None:
    path = relion_project / "MotionCorr/job002/corrected_micrographs.star"
    df = micrograph_block(read_star(path), file=path)
    assert len(df) == 24
    assert {"rlnAccumMotionTotal", "rlnMicrographMetadata", "rlnMicrographOriginalPixelSize"} <= set(df.columns)


@pytest.mark.parametrize(
    ("name", "pixel_size"),
    [("relion31.star", 2.806), ("relion31.v2.star", 2.806), ("relion5.star", 0.89)],
)
def test_relion31_and_5_particles_get_their_optics_group_pixel_size(cryodrgn: Path, name: str, pixel_size: float) -> None:
    path = cryodrgn / name
    df = particle_block(read_star(path), file=path)
    assert len(df) == len(starfile.read(path)["particles"])
    assert df["rlnImagePixelSize"].tolist() == pytest.approx([pixel_size] * len(df))
    assert df["rlnVoltage"].notna().all()


def test_six_optics_groups_are_merged_by_group_number_not_position(cryodrgn: Path) -> None:
    path = cryodrgn / "relion31.6opticsgroups.star"
    raw = starfile.read(path)
    by_group = dict(zip(raw["optics"]["rlnOpticsGroup"], raw["optics"]["rlnMicrographPixelSize"]))
    cs_by_group = dict(zip(raw["optics"]["rlnOpticsGroup"], raw["optics"]["rlnSphericalAberration"]))
    df = particle_block(read_star(path), file=path)
    assert len(df) == 139
    assert df["rlnOpticsGroup"].tolist() == raw["particles"]["rlnOpticsGroup"].tolist()
    assert df["rlnMicrographPixelSize"].tolist() == [by_group[g] for g in df["rlnOpticsGroup"]]
    assert df["rlnSphericalAberration"].tolist() == [cs_by_group[g] for g in df["rlnOpticsGroup"]]
    assert len(set(df["rlnMicrographPixelSize"])) > 1


@pytest.mark.parametrize(
    ("name", "pixel_size"),
    [("empiar_10076_7.star", 1e4 * 5 / 38168), ("FinalRefinement-OriginalParticles-PfCRT.star", 1.035)],
)
def test_relion30_particles_pixel_size_comes_from_detector_and_magnification(
    cryodrgn: Path, name: str, pixel_size: float
) -> None:
    path = cryodrgn / name
    df = particle_block(read_star(path), file=path)
    assert df["rlnImagePixelSize"].tolist() == pytest.approx([pixel_size] * len(df))
    assert (df["rlnVoltage"] == 300).all()


def test_relion30_single_block_micrographs_star(tmp_path: Path) -> None:
    path = tmp_path / "micrographs_ctf.star"
    path.write_text(
        "data_\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n_rlnVoltage #4\n"
        "_rlnMagnification #5\n_rlnDetectorPixelSize #6\n"
        "Micrographs/a.mrc 20000 19000 300 50000 5.0\nMicrographs/b.mrc 21000 20500 300 50000 5.0\n"
    )
    df = micrograph_block(read_star(path), file=path)
    assert df["rlnMicrographPixelSize"].tolist() == pytest.approx([1.0, 1.0])
    assert df["rlnMicrographName"].tolist() == ["Micrographs/a.mrc", "Micrographs/b.mrc"]


def test_a_row_whose_optics_group_is_undefined_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "particles.star"
    path.write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 1.1\n\n"
        "data_particles\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\nm1.mrc 1\nm2.mrc 2\n"
    )
    with pytest.raises(InputError) as err:
        particle_block(read_star(path), file=path)
    assert err.value.field == "rlnOpticsGroup"


def test_a_star_without_a_micrographs_table_is_refused(relion_project: Path) -> None:
    path = relion_project / "Class2D/job010/run_it025_model.star"
    with pytest.raises(InputError) as err:
        micrograph_block(read_star(path), file=path)
    assert err.value.field == "data_micrographs"
    assert err.value.file == str(path)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("MotionCorr/job002/Movies/20170629_00021_frameImage.mrc", "20170629_00021_frameImage"),
        ("20170629_00021_frameImage.mrc", "20170629_00021_frameImage"),
        ("/abs/dir/mic.frames.mrc", "mic.frames"),
        ("no_extension", "no_extension"),
    ],
)
def test_micrograph_name_drops_directory_and_last_extension(given: str, expected: str) -> None:
    assert micrograph_name(given) == expected
