"""A SerialEM/IMOD tilt series lands → its acquisition files are read into numbers with units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryobus.services.metadata.cryoet.imod import read_tilt_angles, read_xf, xf_rotation_deg
from cryobus.services.metadata.cryoet.mdoc import read_mdoc
from cryobus.shared.errors import InputError
from tests.cryoet.conftest import TEAMTOMO, TS_017


def test_real_serialem_4_mdoc_gives_tilts_dose_voltage_and_axis(shared_data: Path):
    summary = read_mdoc(shared_data / TS_017 / "017.mdoc")

    assert len(summary.sections) == 60
    assert [s.z_value for s in summary.sections] == list(range(60))
    assert min(summary.tilt_angles) == pytest.approx(-52.0064, abs=1e-4)
    assert max(summary.tilt_angles) == pytest.approx(65.97, abs=0.01)
    assert summary.sections[0].exposure_dose == pytest.approx(2.23843)
    assert sum(summary.exposure_doses) == pytest.approx(134.3, abs=0.1)
    assert summary.voltage_kV == 300
    assert summary.tilt_axis_deg == pytest.approx(82.9)
    assert summary.pixel_spacing_A == pytest.approx(1.971)
    assert summary.magnification == 64000
    assert summary.software == "SerialEM"
    assert summary.image_size == (4096, 4096)


def test_real_imod_tlt_matches_the_mdoc_angles(shared_data: Path):
    angles = read_tilt_angles(shared_data / TS_017 / "017.tlt")
    mdoc = read_mdoc(shared_data / TS_017 / "017.mdoc")

    assert len(angles) == 60
    assert angles[0] == -52.01 and angles[-1] == 65.97
    assert np.allclose(angles, mdoc.tilt_angles, atol=0.011)


def test_old_serialem_mdoc_without_voltage_or_dose(shared_data: Path):
    summary = read_mdoc(shared_data / TEAMTOMO / "tilt_series.mdoc")

    assert len(summary.sections) == 41
    assert min(summary.tilt_angles) == pytest.approx(-60, abs=0.01)
    assert max(summary.tilt_angles) == pytest.approx(60, abs=0.01)
    assert summary.tilt_axis_deg == pytest.approx(85.3)
    assert summary.voltage_kV is None
    assert set(summary.exposure_doses) == {0.0}  # SerialEM writes 0 when dose is not calibrated
    assert summary.sections[0].sub_frame_path.endswith("TS_01_000_0.0.mrc")


def test_movie_frameset_mdoc_is_not_a_tilt_series(shared_data: Path):
    path = shared_data / "sstagg__Magellon/CoreService/tests/20220605_75157_20220605-aav2spr_1-1_counted_frames.mrc.mdoc"
    with pytest.raises(InputError) as err:
        read_mdoc(path)
    assert err.value.field == "ZValue"
    assert err.value.file == str(path)


def test_mdoc_section_without_tilt_angle_names_file_and_field(tmp_path: Path):
    path = tmp_path / "TS_bad.mdoc"
    path.write_text(
        "PixelSpacing = 2.0\nImageFile = TS_bad.mrc\nImageSize = 16 16\n\n"
        "[T = SerialEM: test]\n\n"
        "[ZValue = 0]\nTiltAngle = -3.0\nExposureDose = 2.5\n\n"
        "[ZValue = 1]\nExposureDose = 2.5\n\n"
        "[ZValue = 2]\nTiltAngle = 3.0\nExposureDose = 2.5\n"
    )
    with pytest.raises(InputError) as err:
        read_mdoc(path)
    assert err.value.field == "TiltAngle"
    assert err.value.file == str(path)
    assert "ZValue = 1" in err.value.reason


def test_tlt_with_a_bad_line_names_the_line(tmp_path: Path):
    path = tmp_path / "x.rawtlt"
    path.write_text("-3.0\n0.0\n3.0 4.0\n")
    with pytest.raises(InputError) as err:
        read_tilt_angles(path)
    assert err.value.field == "line 3"


def test_xf_rows_and_rotation(tmp_path: Path):
    theta = np.radians([10.0, -5.0])
    rows = [[np.cos(t), -np.sin(t), np.sin(t), np.cos(t), 1.5, -2.0] for t in theta]
    path = tmp_path / "TS.xf"
    path.write_text("".join(" ".join(f"{v:12.7f}" for v in r) + "\n" for r in rows))

    xf = read_xf(path)
    assert xf.shape == (2, 6)
    assert np.allclose(xf_rotation_deg(xf), [10.0, -5.0], atol=1e-4)

    path.write_text("1 0 0 1 0\n")
    with pytest.raises(InputError) as err:
        read_xf(path)
    assert err.value.field == "line 1"
