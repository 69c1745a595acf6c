"""A tilt-series folder → the facts its files tell (sizes, voxel size, tilts, dose, voltage, axis)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cryobus.services.metadata.cryoet.derive import derive, tilt_step
from cryobus.shared.errors import InputError
from tests.cryoet.conftest import TEAMTOMO, TS_017, write_mrc

SYNTHETIC_MDOC = """PixelSpacing = 2.5
Voltage = 200
ImageFile = TS_07.mrc
ImageSize = 20 12
DataMode = 1

[T = SerialEM: Synthetic scope]

[T =     Tilt axis angle = -94.6, binning = 1  spot = 5  camera = 0]
"""


def _synthetic_mdoc(angles_in_acquisition_order: list[float]) -> str:
    """Sections in stack (angle) order; DateTime gives the acquisition order."""
    stack = sorted(angles_in_acquisition_order)
    text = SYNTHETIC_MDOC
    for z, angle in enumerate(stack):
        minute = angles_in_acquisition_order.index(angle)
        text += (
            f"\n[ZValue = {z}]\nTiltAngle = {angle}\nExposureDose = 3.0\nPixelSpacing = 2.5\n"
            f"SubFramePath = X:\\frames\\TS_07_{z:03d}.tif\nDateTime = 06-Jun-23  10:{minute:02d}:00\n"
        )
    return text


def test_synthetic_folder_with_stack_and_tomogram(tmp_path: Path):
    acquisition = [0.0, 3.0, -3.0, -6.0, 6.0]  # dose-symmetric
    (tmp_path / "TS_07.mrc.mdoc").write_text(_synthetic_mdoc(acquisition))
    write_mrc(tmp_path / "TS_07.mrc", (5, 12, 20), 2.5)  # 5 sections = 5 tilts -> the tilt series
    write_mrc(tmp_path / "TS_07_rec.mrc", (9, 24, 40), 10.0)  # 9 sections -> a tomogram

    facts = derive(tmp_path)

    assert facts.run_name == "TS_07"
    assert facts.tiltseries.path.name == "TS_07.mrc"
    assert facts.tiltseries_size == (20, 12, 5)
    assert facts.pixel_spacing_A == pytest.approx(2.5)
    assert [t.path.name for t in facts.tomograms] == ["TS_07_rec.mrc"]
    tomo = facts.tomograms[0]
    assert (tomo.x, tomo.y, tomo.z) == (40, 24, 9)
    assert tomo.voxel_size_A == pytest.approx(10.0)
    assert facts.tilt_angles_deg == [-6.0, -3.0, 0.0, 3.0, 6.0]
    assert (facts.tilt_min_deg, facts.tilt_max_deg, facts.tilt_step_deg) == (-6.0, 6.0, 3.0)
    assert facts.total_flux_e_per_A2 == pytest.approx(15.0)
    assert facts.acceleration_voltage_V == 200_000  # mdoc kV -> portal V
    assert facts.tilt_axis_deg == pytest.approx(-94.6)
    assert facts.frames_count == 5
    assert facts.data_acquisition_software == "SerialEM"
    # stack order -6, -3, 0, 3, 6 was acquired as 3rd, 2nd, 0th, 1st, 4th
    assert facts.acquisition_order == [3, 2, 0, 1, 4]
    assert facts.warnings == []


def test_real_017_folder_with_mdoc_and_tlt(shared_data: Path, tmp_path: Path):
    for name in ("017.mdoc", "017.tlt"):
        shutil.copy(shared_data / TS_017 / name, tmp_path / name)

    facts = derive(tmp_path)

    assert facts.run_name == "017"
    assert (facts.tilt_min_deg, facts.tilt_max_deg) == (-52.01, 65.97)
    assert facts.tilt_step_deg == 2.0
    assert facts.total_flux_e_per_A2 == pytest.approx(134.3, abs=0.1)
    assert facts.acceleration_voltage_V == 300_000
    assert facts.tilt_axis_deg == pytest.approx(82.9)
    assert facts.tiltseries_size == (4096, 4096, 60)  # no stack: mdoc ImageSize x sections
    assert facts.tilt_angle_file.name == "017.tlt"
    assert sorted(facts.acquisition_order) == list(range(60))


def test_uncalibrated_dose_is_not_invented(shared_data: Path, tmp_path: Path):
    shutil.copy(shared_data / TEAMTOMO / "tilt_series.mdoc", tmp_path / "TS_01.mdoc")
    facts = derive(tmp_path)
    assert facts.total_flux_e_per_A2 is None
    assert facts.acceleration_voltage_V is None
    assert facts.tilt_step_deg == 3.0
    assert any("ExposureDose" in w for w in facts.warnings)


def test_tilt_step_is_the_dominant_gap():
    assert tilt_step([0.0, 3.0, -3.0, 6.0, -6.0, 9.0, -9.0]) == 3.0
    assert tilt_step([-60.0, -57.0, -54.0, -50.0, -47.0, -44.0]) == 3.0
    assert tilt_step([12.0]) is None


def test_two_tilt_series_mdocs_are_ambiguous(tmp_path: Path):
    (tmp_path / "a.mdoc").write_text(_synthetic_mdoc([0.0, 3.0]))
    (tmp_path / "b.mdoc").write_text(_synthetic_mdoc([0.0, 3.0]))
    with pytest.raises(InputError) as err:
        derive(tmp_path)
    assert err.value.field == "mdoc"


def test_folder_with_a_broken_mdoc_fails_naming_tilt_angle(tmp_path: Path):
    text = _synthetic_mdoc([0.0, 3.0, -3.0]).replace("TiltAngle = 3.0\n", "")
    (tmp_path / "TS_07.mdoc").write_text(text)
    with pytest.raises(InputError) as err:
        derive(tmp_path)
    assert (err.value.field, Path(err.value.file).name) == ("TiltAngle", "TS_07.mdoc")
