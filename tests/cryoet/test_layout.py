"""A tilt series + config → the portal folder layout, every JSON valid, zarr pyramid, NDJSON points."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from cryobus.services.metadata.cryoet import (
    PointAnnotation,
    derive,
    load_config,
    validate_file,
    write_portal_layout,
)
from cryobus.services.metadata.cryoet.layout import annotation_prefix, voxel_spacing_name
from cryobus.shared.errors import InputError
from tests.cryoet.conftest import TS_017, write_mrc

TOMO_SHAPE_ZYX = (21, 30, 41)  # odd sizes: the pyramid must round up
TOMO_VOXEL_A = 7.884  # 4 x 1.971 Å (017.mdoc pixel size, bin 4)
POINTS = np.array([[0.0, 0.0, 0.0], [40.0, 29.0, 20.0], [12.5, 7.25, 3.0]])


@pytest.fixture
def run_017(shared_data: Path, tmp_path: Path) -> Path:
    """Folder: the real 017.mdoc + 017.tlt, a synthetic 60-section stack and a tomogram."""
    folder = tmp_path / "TS_017"
    folder.mkdir()
    for name in ("017.mdoc", "017.tlt"):
        shutil.copy(shared_data / TS_017 / name, folder / name)
    write_mrc(folder / "017.st", (60, 16, 16), 1.971)
    write_mrc(folder / "017_rec.mrc", TOMO_SHAPE_ZYX, TOMO_VOXEL_A, seed=1)
    return folder


@pytest.fixture
def written(run_017: Path, config_dict, write_config, tmp_path: Path):
    config = load_config(write_config(config_dict))
    derived = derive(run_017)
    out = tmp_path / "bucket"
    points = [PointAnnotation(config.annotations[0], POINTS)]
    manifest = write_portal_layout(out, config, derived, dataset_id=10001, point_annotations=points, last_updated_at=1728676818)
    return out, manifest, config, derived


def test_layout_paths_ids_and_voxel_spacing_folder(written):
    out, manifest, _, _ = written
    vs = "VoxelSpacing7.884"
    expected = {
        "10001/dataset_metadata.json",
        "10001/017/run_metadata.json",
        "10001/017/TiltSeries/100/tiltseries_metadata.json",
        "10001/017/TiltSeries/100/017.rawtlt",
        f"10001/017/Reconstructions/{vs}/Tomograms/100/tomogram_metadata.json",
        f"10001/017/Reconstructions/{vs}/Annotations/100/cytosolic_ribosome-1.0.json",
        f"10001/017/Reconstructions/{vs}/Annotations/100/cytosolic_ribosome-1.0_point.ndjson",
    }
    keys = {e.key for e in manifest}
    assert expected <= keys
    zarr_keys = keys - expected
    assert zarr_keys and all(k.startswith(f"10001/017/Reconstructions/{vs}/Tomograms/100/017.zarr/") for k in zarr_keys)
    for entry in manifest:
        data = (out / entry.key).read_bytes()
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert not list(out.rglob("*.tmp"))


def test_every_json_revalidates(written):
    out, _, _, _ = written
    files = sorted(out.rglob("*.json"))  # zarr metadata is .zarray/.zattrs/.zgroup, not *.json
    kinds = [type(validate_file(p)).__name__ for p in files]
    assert sorted(kinds) == ["AnnotationMetadata", "DatasetMetadata", "RunMetadata", "TiltSeriesMetadata", "TomogramMetadata"]


def test_tiltseries_metadata_carries_the_derived_facts(written):
    out, _, _, _ = written
    ts = json.loads((out / "10001/017/TiltSeries/100/tiltseries_metadata.json").read_text())
    assert ts["acceleration_voltage"] == 300000
    assert ts["tilt_axis"] == pytest.approx(82.9)
    assert ts["tilt_range"] == {"min": -52.01, "max": 65.97}
    assert ts["tilt_step"] == 2.0
    assert ts["total_flux"] == pytest.approx(134.3, abs=0.1)
    assert ts["pixel_spacing"] == pytest.approx(1.971)
    assert ts["size"] == {"x": 16, "y": 16, "z": 60}
    assert ts["data_acquisition_software"] == "SerialEM"
    assert ts["camera"] == {"manufacturer": "Gatan", "model": "K3"}
    assert len(ts["per_section_parameter"]) == 60
    assert ts["per_section_parameter"][0] | {"raw_angle": 0} == {"z_index": 0, "frame_acquisition_order": 59, "raw_angle": 0}
    assert ts["raw_tlt_path"] == "10001/017/TiltSeries/100/017.rawtlt"
    assert ts["deposition_id"] == 10000 and ts["last_updated_at"] == 1728676818
    rawtlt = (out / ts["raw_tlt_path"]).read_text().split()
    assert rawtlt[0] == "-52.01" and len(rawtlt) == 60


def test_omezarr_has_three_scales_with_ceil_shapes(written, run_017: Path):
    out, _, _, _ = written
    meta = json.loads((out / "10001/017/Reconstructions/VoxelSpacing7.884/Tomograms/100/tomogram_metadata.json").read_text())
    assert meta["voxel_spacing"] == 7.884
    assert meta["size"] == {"x": 41, "y": 30, "z": 21}
    assert meta["scales"] == [{"x": 41, "y": 30, "z": 21}, {"x": 21, "y": 15, "z": 11}, {"x": 11, "y": 8, "z": 6}]

    group = zarr.open_group(str(out / meta["omezarr_dir"]), mode="r")
    assert [group[str(i)].shape for i in range(3)] == [(21, 30, 41), (11, 15, 21), (6, 8, 11)]
    ms = group.attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in ms["axes"]} == {"angstrom"}
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [7.884] * 3, [15.768] * 3, [31.536] * 3,
    ]
    import mrcfile

    with mrcfile.open(run_017 / "017_rec.mrc") as mrc:
        original = mrc.data.copy()
    assert np.array_equal(group["0"][:], original)
    # level 1 voxel (0, 0, 0) is the mean of the first 2x2x2 block
    assert group["1"][0, 0, 0] == pytest.approx(original[:2, :2, :2].mean(), rel=1e-5)


def test_point_ndjson_lines_parse_and_match_object_count(written):
    out, _, _, _ = written
    folder = out / "10001/017/Reconstructions/VoxelSpacing7.884/Annotations/100"
    meta = json.loads((folder / "cytosolic_ribosome-1.0.json").read_text())
    lines = (folder / "cytosolic_ribosome-1.0_point.ndjson").read_text().splitlines()
    records = [json.loads(line) for line in lines]

    assert meta["object_count"] == len(records) == 3
    assert all(r["type"] == "point" for r in records)
    assert [[r["location"][k] for k in "xyz"] for r in records] == POINTS.tolist()
    assert meta["files"] == [{
        "format": "ndjson", "shape": "Point", "is_visualization_default": True,
        "path": "10001/017/Reconstructions/VoxelSpacing7.884/Annotations/100/cytosolic_ribosome-1.0_point.ndjson",
    }]
    assert meta["annotation_ingest_id"] == "cytosolic-ribosome-1"


def test_rewriting_the_same_run_gives_identical_bytes(written, run_017: Path):
    out, manifest, config, derived = written
    points = [PointAnnotation(config.annotations[0], POINTS)]
    again = write_portal_layout(out, config, derived, dataset_id=10001, point_annotations=points, last_updated_at=1728676818)
    assert again == manifest


def test_point_outside_the_tomogram_is_refused(run_017: Path, config_dict, write_config, tmp_path: Path):
    config = load_config(write_config(config_dict))
    bad = [PointAnnotation(config.annotations[0], np.array([[1.0, 2.0, 3.0], [41.0, 0.0, 0.0]]))]
    with pytest.raises(InputError) as err:
        write_portal_layout(tmp_path / "out", config, derive(run_017), dataset_id=10001, point_annotations=bad, write_zarr=False)
    assert err.value.field == "location"
    assert "point 1" in err.value.reason


def test_missing_config_for_tomograms_is_refused_before_writing(run_017: Path, config_dict, write_config, tmp_path: Path):
    del config_dict["tomogram"]
    config = load_config(write_config(config_dict))  # fine without tomograms ...
    with pytest.raises(InputError) as err:  # ... but this run has one
        write_portal_layout(tmp_path / "out", config, derive(run_017), dataset_id=10001)
    assert err.value.field == "tomogram.fiducial_alignment_status"
    assert not (tmp_path / "out").exists()


def test_naming_rules():
    assert voxel_spacing_name(13.48) == "13.480"
    assert voxel_spacing_name(7.8844) == "7.884"
    from cryobus.services.metadata.cryoet.config import AnnotationSection

    ann = AnnotationSection.model_validate({
        "annotation_object": {"id": "GO:0005840", "name": "Ribosome (80S)", "description": "80S ribosome, open"},
        "annotation_method": "manual", "method_type": "manual", "version": 2,
    })
    assert annotation_prefix(ann) == "80s_ribosome__open-2.0"
