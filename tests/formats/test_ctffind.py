"""CTFFIND result files written by real CTFFIND 4.1 runs (single micrograph and a tilt series)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryobus.shared.errors import InputError
from cryobus.shared.formats.ctffind import diagnostic_image_path, read_ctffind_txt


@pytest.fixture(scope="module")
def ctf_movies(relion_project: Path) -> Path:
    return relion_project / "CtfFind/job005/Movies"


@pytest.fixture(scope="module")
def tilt_series_txt(shared_data: Path) -> Path:
    return shared_data / "turonova__cryoCAT/tests/test_data/TS_017/017_ctffind4.txt"


def test_single_micrograph_result(ctf_movies: Path) -> None:
    [fit] = read_ctffind_txt(ctf_movies / "20170629_00021_frameImage_PS.txt")
    assert fit.micrograph_number == 1
    assert fit.defocus_1_A == pytest.approx(37034.929688)
    assert fit.defocus_2_A == pytest.approx(35846.542969)
    assert fit.astigmatism_azimuth_deg == pytest.approx(-14.849661)
    assert fit.phase_shift_rad == 0.0
    assert fit.cross_correlation == pytest.approx(0.017465)
    assert fit.fit_resolution_A == pytest.approx(9.554261)
    assert fit.mean_defocus_A == pytest.approx((37034.929688 + 35846.542969) / 2)
    # header facts
    assert fit.pixel_size_A == pytest.approx(1.4)
    assert fit.voltage_kV == pytest.approx(200.0)
    assert fit.cs_mm == pytest.approx(1.4)
    assert fit.amplitude_contrast == pytest.approx(0.1)
    assert fit.box_size == 512
    assert fit.tilt_angle_deg is None and fit.sample_thickness_A is None


def test_tilt_series_result_gives_one_fit_per_data_line(tilt_series_txt: Path) -> None:
    lines = [ln for ln in tilt_series_txt.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    fits = read_ctffind_txt(tilt_series_txt)
    # The header claims 41 micrographs but the (edited) fixture holds 60 lines: every line is kept.
    assert len(fits) == len(lines) == 60
    assert [f.micrograph_number for f in fits] == list(range(1, 61))
    last = [float(v) for v in lines[-1].split()]
    assert (fits[-1].defocus_1_A, fits[-1].cross_correlation, fits[-1].fit_resolution_A) == pytest.approx(
        (last[1], last[5], last[6])
    )
    assert all(f.voltage_kV == 300.0 and f.cs_mm == 2.7 and f.amplitude_contrast == 0.07 for f in fits)
    assert fits[0].pixel_size_A == pytest.approx(1.327)


def test_ctffind5_extra_columns(tmp_path: Path) -> None:
    f = tmp_path / "diag.txt"
    f.write_text(
        "# Output from CTFFind version 5.0.2\n"
        "# Pixel size: 0.830 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.07\n"
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; "
        "#5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings "
        "were fit successfully; #8 - Estimated tilt axis angle; #9 - Estimated tilt angle ; #10 Estimated sample thickness (in Angstroms)\n"
        "1.000000 8984.742188 8709.236328 45.948771 0.000000 0.446317 3.720000 221.912292 12.251187 1619.773438\n"
    )
    [fit] = read_ctffind_txt(f)
    assert (fit.tilt_axis_angle_deg, fit.tilt_angle_deg, fit.sample_thickness_A) == pytest.approx(
        (221.912292, 12.251187, 1619.773438)
    )
    assert fit.box_size is None


def test_the_rotational_average_file_is_not_a_result(ctf_movies: Path) -> None:
    avrot = ctf_movies / "20170629_00021_frameImage_PS_avrot.txt"
    with pytest.raises(InputError) as err:
        read_ctffind_txt(avrot)
    assert err.value.file == str(avrot)


def test_a_short_data_line_names_its_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_text("# Columns: #1 - micrograph number\n1.0 20000 19000 10.0\n")
    with pytest.raises(InputError) as err:
        read_ctffind_txt(f)
    assert err.value.field == "line 2"


def test_header_only_or_missing_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "empty.txt"
    f.write_text("# Output from CTFFind version 4.1.14\n")
    with pytest.raises(InputError):
        read_ctffind_txt(f)
    with pytest.raises(InputError) as err:
        read_ctffind_txt(tmp_path / "missing.txt")
    assert err.value.file == str(tmp_path / "missing.txt")


def test_relion_ctf_image_reference_loses_its_mrc_hint(relion_project: Path) -> None:
    ref = "CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf:mrc"
    path = diagnostic_image_path(ref)
    assert path == Path("CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf")
    assert (relion_project / path).is_file()


def test_result_text_points_at_the_diagnostic_beside_it(ctf_movies: Path) -> None:
    expected = ctf_movies / "20170629_00021_frameImage_PS.ctf"
    assert diagnostic_image_path(ctf_movies / "20170629_00021_frameImage_PS.txt") == expected
    assert diagnostic_image_path(ctf_movies / "20170629_00021_frameImage_PS_avrot.txt") == expected
    assert expected.is_file()


def test_hand_run_ctffind_with_mrc_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "diagnostic_output.mrc").write_bytes(b"\0" * 16)
    assert diagnostic_image_path(tmp_path / "diagnostic_output.txt") == tmp_path / "diagnostic_output.mrc"
