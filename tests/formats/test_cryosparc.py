"""CryoSPARC .cs datasets: real exported files load, impostors are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryobus.shared.errors import InputError
from cryobus.shared.formats.cryosparc import read_cs, require_fields


@pytest.fixture(scope="module")
def cryodrgn(shared_data: Path) -> Path:
    return shared_data / "ml-struct-bio__cryodrgn" / "tests" / "data"


def test_real_particle_dataset(cryodrgn: Path) -> None:
    arr = read_cs(cryodrgn / "cryosparc_J2_particles_exported.cs")
    assert arr.shape == (22,)
    assert len(arr.dtype.names) == 42
    assert arr["blob/path"][0].endswith(b"_ali_DW.mrcs")
    require_fields(arr, ["uid", "ctf/df1_A", "alignments2D/class"], file="x.cs")


def test_imported_particles_match_their_star_twin(cryodrgn: Path) -> None:
    import starfile

    arr = read_cs(cryodrgn / "empiar_10076_7.cs")
    star = starfile.read(cryodrgn / "empiar_10076_7.star")
    assert arr.shape == (7,)
    assert arr["ctf/df1_A"] == pytest.approx(star["rlnDefocusU"].to_numpy(), abs=0.1)


def test_a_text_file_renamed_cs_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "particles.cs"
    f.write_text("uid,blob/path\n1,a.mrcs\n")
    with pytest.raises(InputError) as err:
        read_cs(f)
    assert err.value.reason.startswith("not a CryoSPARC .cs (numpy) file: ")
    assert err.value.file == str(f)


@pytest.mark.parametrize("kind", ["empty", "plain", "object", "npz"])
def test_other_non_datasets_are_refused(tmp_path: Path, kind: str) -> None:
    f = tmp_path / "x.cs"
    if kind == "empty":
        f.write_bytes(b"")
    elif kind == "plain":
        with f.open("wb") as fh:
            np.save(fh, np.arange(5.0))
    elif kind == "object":
        with f.open("wb") as fh:
            np.save(fh, np.array([("a", 1)], dtype=[("blob/path", object), ("uid", "<u8")]), allow_pickle=True)
    else:
        with f.open("wb") as fh:
            np.savez(fh, data=np.zeros(2, dtype=[("uid", "<u8")]))
    with pytest.raises(InputError) as err:
        read_cs(f)
    assert err.value.reason.startswith("not a CryoSPARC .cs (numpy) file: ")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_cs(tmp_path / "gone.cs")
    assert err.value.file == str(tmp_path / "gone.cs")


def test_require_fields_names_the_first_missing_field(cryodrgn: Path) -> None:
    path = cryodrgn / "empiar_10076_7.cs"
    arr = read_cs(path)
    with pytest.raises(InputError) as err:
        require_fields(arr, ["uid", "ctf_stats/ice_thickness_rel", "micrograph_blob/path"], file=path)
    assert err.value.field == "ctf_stats/ice_thickness_rel"
    assert err.value.file == str(path)
