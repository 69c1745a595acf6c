"""Generated portal models + our documented fixes: what the portal writes passes, wrong files do not."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cryobus.services.metadata.cryoet.schema import metadata_files as generated
from cryobus.services.metadata.cryoet.schema.regenerate import GENERATOR_PINS
from cryobus.services.metadata.cryoet.validation import validate_metadata
from cryobus.shared.errors import InputError

AUTHORS = [{"name": "Jane Doe", "primary_author_status": True, "corresponding_author_status": True}]
DATES = {"deposition_date": "2023-04-01", "release_date": "2023-06-01", "last_modified_date": "2023-06-01"}
TILTSERIES = {  # reference §6.1, checked there against the portal's own models
    "acceleration_voltage": 300000, "spherical_aberration_constant": 2.7,
    "camera": {"manufacturer": "Gatan", "model": "K3"}, "microscope": {"manufacturer": "TFS", "model": "Krios"},
    "microscope_optical_setup": {"energy_filter": "GIF Quantum LS"}, "data_acquisition_software": "SerialEM",
    "is_aligned": False, "pixel_spacing": 3.37, "tilt_axis": 84.7, "tilt_range": {"min": -60.0, "max": 60.0},
    "tilt_step": 3.0, "tilting_scheme": "Dose symmetric from 0.0 degrees", "tilt_series_quality": 4,
    "total_flux": 120.0, "size": {"x": 3708, "y": 3838, "z": 41}, "deposition_id": 10000, "last_updated_at": 1728676818,
}
ANNOTATION = {
    "annotation_object": {"id": "GO:0022626", "name": "cytosolic ribosome"},
    "annotation_method": "template matching", "method_type": "hybrid", "authors": AUTHORS, "dates": DATES,
    "files": [{"format": "ndjson", "shape": "Point", "is_visualization_default": True, "path": "10001/x_point.ndjson"}],
    "deposition_id": 10000, "last_updated_at": 1728676818,
}


def test_generated_module_names_its_pinned_generator():
    source = Path(generated.__file__).read_text(encoding="utf-8")
    header = source.splitlines()[0]
    assert GENERATOR_PINS == {"linkml": "1.9.6", "linkml-runtime": "1.9.5"}
    assert all(f"{p}=={v}" in header for p, v in GENERATOR_PINS.items())
    for cls in ("DatasetMetadata", "RunMetadata", "TiltSeriesMetadata", "TomogramMetadata", "AnnotationMetadata"):
        assert re.search(rf"^class {cls}\(", source, re.M)


def test_reference_tiltseries_example_passes():
    validate_metadata("tiltseries", copy.deepcopy(TILTSERIES), file="t.json")


def test_run_metadata_as_the_portal_writes_it():
    doc = {"run_name": "TS_001", "deposition_id": 10000, "last_updated_at": 1728676818}
    with pytest.raises(ValidationError):
        generated.RunMetadata.model_validate(doc)  # the official model refuses real files
    validate_metadata("run", doc, file="run_metadata.json")  # fix 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tilt_axis": "float {tilt_axis}"}, "tilt_axis"),  # template string in a final file
        ({"tilt_axis": 400.0}, "tilt_axis"),  # bound the generated union lost
        ({"total_flux": float("nan")}, "total_flux"),
        ({"tilt_range": {"min": 60.0, "max": -60.0}}, "tilt_range"),
        ({"size": {"x": 1, "y": 2}}, "size.z"),
    ],
)
def test_tiltseries_problems_name_the_field(change, field):
    with pytest.raises(InputError) as err:
        validate_metadata("tiltseries", TILTSERIES | change, file="TiltSeries/100/tiltseries_metadata.json")
    assert err.value.field == field
    assert err.value.file == "TiltSeries/100/tiltseries_metadata.json"


def test_annotation_files_with_ndjson_format_and_mask_shapes():
    with pytest.raises(ValidationError):
        generated.AnnotationMetadata.model_validate(ANNOTATION | {"files": [ANNOTATION["files"][0] | {"format": "json"}]})
    validate_metadata("annotation", copy.deepcopy(ANNOTATION), file="a-1.0.json")
    mask = {"format": "zarr", "shape": "InstanceSegmentationMask", "is_visualization_default": False, "path": "m.zarr"}
    validate_metadata("annotation", ANNOTATION | {"files": [mask]}, file="a-1.0.json")
    with pytest.raises(InputError) as err:
        validate_metadata("annotation", ANNOTATION | {"files": [mask | {"shape": "Blob"}]}, file="a-1.0.json")
    assert err.value.field == "files[0].shape"


def test_re_added_patterns_and_rules():
    with pytest.raises(InputError) as err:
        validate_metadata("annotation", ANNOTATION | {"annotation_ingest_id": "Ribosome_1"}, file="a.json")
    assert err.value.field == "annotation_ingest_id"
    bad_ror = [AUTHORS[0] | {"affiliation_identifier": "https://ror.org/05a0ya142"}]
    with pytest.raises(InputError) as err:
        validate_metadata("annotation", ANNOTATION | {"authors": bad_ror}, file="a.json")
    assert err.value.field == "authors[0].affiliation_identifier"
    with pytest.raises(InputError) as err:
        validate_metadata("annotation", ANNOTATION | {"method_type": "automated", "ground_truth_status": True}, file="a.json")
    assert err.value.field == "ground_truth_status"
    no_primary = [{"name": "A", "corresponding_author_status": True}]
    with pytest.raises(InputError) as err:
        validate_metadata("annotation", ANNOTATION | {"authors": no_primary}, file="a.json")
    assert err.value.field == "authors"
