"""The user's YAML config: complete ones load, incomplete ones are refused naming the fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cryobus.services.metadata.cryoet.config import load_config, missing_config_fields
from cryobus.services.metadata.cryoet.derive import derive
from cryobus.shared.errors import InputError
from tests.cryoet.conftest import TEAMTOMO, write_mrc


def test_complete_config_loads(config_dict, write_config):
    config = load_config(write_config(config_dict))
    assert config.deposition_id == 10000
    assert config.dataset.authors[0].ORCID == "0000-0002-1825-0097"
    assert str(config.dataset.dates.release_date) == "2023-06-01"
    assert missing_config_fields(config) == []


def test_missing_required_fields_are_named(config_dict, write_config):
    del config_dict["dataset"]["title"]
    del config_dict["dataset"]["authors"][0]["name"]
    del config_dict["tiltseries"]["camera"]["model"]
    del config_dict["tiltseries"]["spherical_aberration_constant"]
    del config_dict["tomogram"]["processing"]
    path = write_config(config_dict)

    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.field == "dataset.title"
    assert err.value.file == str(path)
    assert missing_config_fields(config_dict) == [
        "dataset.title",
        "dataset.authors[0].name",
        "tiltseries.camera.model",
        "tiltseries.spherical_aberration_constant",
        "tomogram.processing",
    ]


def test_wrong_type_and_unknown_key_are_named(config_dict, write_config):
    config_dict["tiltseries"]["tilt_series_quality"] = "good"
    with pytest.raises(InputError) as err:
        load_config(write_config(config_dict))
    assert err.value.field == "tiltseries.tilt_series_quality"

    config_dict["tiltseries"]["tilt_series_quality"] = 4
    config_dict["tiltseries"]["tilt_axes"] = 84.7  # typo
    with pytest.raises(InputError) as err:
        load_config(write_config(config_dict))
    assert err.value.field == "tiltseries.tilt_axes"


def test_derivable_fields_are_missing_only_when_the_files_lack_them(config_dict, shared_data: Path, tmp_path: Path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(shared_data / TEAMTOMO / "tilt_series.mdoc", folder / "TS_01.mdoc")
    write_mrc(folder / "TS_01_rec.mrc", (6, 8, 8), 0.0)  # header voxel size 0
    del config_dict["tomogram"]
    derived = derive(folder)

    # the old mdoc has no Voltage and ExposureDose 0; the tomogram header has no voxel size
    assert missing_config_fields(config_dict, derived) == [
        "tiltseries.acceleration_voltage",
        "tiltseries.total_flux",
        "tomogram.fiducial_alignment_status",
        "tomogram.reconstruction_method",
        "tomogram.reconstruction_software",
        "tomogram.processing",
        "tomogram.tomogram_version",
        "tomogram.voxel_spacing",
    ]
    config_dict["tiltseries"] |= {"acceleration_voltage": 300000, "total_flux": 120.0}
    config_dict["tomogram"] = {
        "fiducial_alignment_status": "FIDUCIAL", "reconstruction_method": "SIRT",
        "reconstruction_software": "IMOD", "processing": "raw", "tomogram_version": 1, "voxel_spacing": 21.6,
    }
    assert missing_config_fields(config_dict, derived) == []


def test_a_run_without_tomograms_needs_no_voxel_spacing(config_dict, shared_data: Path, tmp_path: Path):
    """One dataset config (with its tomogram section) serves runs with and without tomograms."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(shared_data / TEAMTOMO / "tilt_series.mdoc", folder / "TS_01.mdoc")
    config_dict["tiltseries"] |= {"acceleration_voltage": 300000, "total_flux": 120.0}
    derived = derive(folder)
    assert derived.tomograms == []
    assert missing_config_fields(config_dict, derived) == []
