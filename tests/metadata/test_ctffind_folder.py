"""A folder of CTFFIND result files → CTF rows; one corrupt file is reported, the others still count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cryobus.services.metadata.ctffind_folder import ctffind_folder_rows
from cryobus.services.metadata.relion_table import ctf_rows
from cryobus.services.metadata.table import Partial, merge_partials
from cryobus.shared.errors import InputError

MOVIES = "Conecsion__sppractice/CtfFind/job005/Movies"
TILT_SERIES = "turonova__cryoCAT/tests/test_data/TS_017/017_ctffind4.txt"


@pytest.fixture
def folder(shared_data: Path, tmp_path: Path) -> Path:
    """The real CTFFIND 4.1.14 outputs of two micrographs (RELION's CtfFind/job005), renamed as
    CryoSPARC's CTFFIND4 job names them (<uid>_<micrograph>_ctffind4), plus their _avrot profiles."""
    out = tmp_path / "J3" / "ctffind_output"
    out.mkdir(parents=True)
    for i, mic in enumerate(("20170629_00021_frameImage", "20170629_00022_frameImage")):
        uid = f"12345678901234567{i}"
        shutil.copy(shared_data / MOVIES / f"{mic}_PS.txt", out / f"{uid}_{mic}_ctffind4.txt")
        shutil.copy(shared_data / MOVIES / f"{mic}_PS_avrot.txt", out / f"{uid}_{mic}_ctffind4_avrot.txt")
    return out


def test_rows_hold_ctffinds_numbers(folder: Path) -> None:
    frame, pixel_size, failures = ctffind_folder_rows(folder)
    assert failures == []
    assert frame["micrograph_name"].tolist() == ["20170629_00021_frameImage", "20170629_00022_frameImage"]
    row = frame.iloc[0]  # 1.000000 37034.929688 35846.542969 -14.849661 0.000000 0.017465 9.554261
    assert (row["defocus_u_A"], row["defocus_v_A"]) == (37034.929688, 35846.542969)
    assert row["defocus_angle_deg"] == -14.849661
    assert row["mean_defocus"] == (37034.929688 + 35846.542969) / 2
    assert (row["ctf_fit"], row["est_resolution"]) == (0.017465, 9.554261)
    assert row["ctf_fit_source"] == "ctffind_cross_correlation"
    assert pixel_size == 1.4  # the header's: the power spectrum RELION rescaled, not the micrograph's


def test_one_corrupt_file_is_a_failure_and_the_others_still_give_rows(folder: Path, shared_data: Path) -> None:
    bad = folder / "99_broken_ctffind4.txt"
    bad.write_text("# Output from CTFFind version 4.1.14\n1.0 2.0 oops\n")
    tilt = folder / "017_ctffind4.txt"
    shutil.copy(shared_data / TILT_SERIES, tilt)  # a tilt series: 60 data lines in one file
    (folder / "notes.TXT").write_text("")
    frame, _, failures = ctffind_folder_rows(folder)
    assert len(frame) == 2
    by_file = {f: (reason, field) for f, reason, field in failures}
    assert set(by_file) == {str(bad), str(tilt), str(folder / "notes.TXT")}
    assert by_file[str(bad)][1] == "line 2"
    assert "60 data lines" in by_file[str(tilt)][0]


def test_two_files_with_one_name_are_both_refused(folder: Path) -> None:
    src = next(folder.glob("*00021_frameImage_ctffind4.txt"))
    shutil.copy(src, folder / "20170629_00021_frameImage_PS.txt")
    frame, _, failures = ctffind_folder_rows(folder)
    assert frame["micrograph_name"].tolist() == ["20170629_00022_frameImage"]
    assert sorted(f for f, _, _ in failures) == sorted([str(src), str(folder / "20170629_00021_frameImage_PS.txt")])
    assert {field for _, _, field in failures} == {"micrograph_name"}


def test_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        ctffind_folder_rows(tmp_path / "nope")


def test_ctffind_rows_join_relions_ctf_star_by_name(folder: Path, relion_project: Path) -> None:
    """The same CTFFIND fits reached through RELION's micrographs_ctf.star: same names, same numbers."""
    frame, _, _ = ctffind_folder_rows(folder)
    relion, relion_pixel = ctf_rows(relion_project / "CtfFind/job005/micrographs_ctf.star", relion_project)
    result = merge_partials(
        [
            Partial("relion.ctf", relion, "micrographs_ctf.star", pixel_size_A=relion_pixel),
            Partial("ctffind.outputs", frame, str(folder), pixel_size_A=1.4),
        ]
    )
    assert len(result.table) == 24  # the two CTFFIND rows joined two of RELION's, added none
    assert len(result.unmatched["ctffind.outputs"]) == 22 and result.unmatched["relion.ctf"] == []
    assert result.pixel_size_A == 0.885  # the micrograph's, not the spectrum's 1.4
    t = result.table.set_index("micrograph_name")
    r = relion.set_index("micrograph_name")
    for name in frame["micrograph_name"]:
        assert t.loc[name, "defocus_u_A"] == pytest.approx(r.loc[name, "defocus_u_A"], abs=1e-6)
        assert t.loc[name, "ctf_fit"] == pytest.approx(r.loc[name, "ctf_fit"], abs=1e-6)
        assert t.loc[name, "ctf_fit_source"] == "ctffind_cross_correlation"
        assert t.loc[name, "pixel_size_A"] == 0.885
