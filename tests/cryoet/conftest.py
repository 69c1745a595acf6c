"""Shared helpers for the CryoET-portal tests: real tilt-series files and small synthetic MRCs."""

from __future__ import annotations

import copy
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

TS_017 = Path("turonova__cryoCAT/tests/test_data/TS_017")
TEAMTOMO = Path("teamtomo__mdocfile/tests/test_data")


def write_mrc(path: Path, shape_zyx: tuple[int, int, int], voxel_size_A: float, *, seed: int = 0) -> np.ndarray:
    """A float32 MRC volume of the given (z, y, x) shape; returns its data."""
    data = np.random.default_rng(seed).normal(size=shape_zyx).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size_A
    return data


CONFIG = {
    "deposition_id": 10000,
    "dataset": {
        "dataset_identifier": 10001,
        "title": "S. pombe lamellae, Volta phase plate",
        "description": "Cryo-ET of cryo-FIB lamellae of S. pombe cells.",
        "dates": {"deposition_date": "2023-04-01", "release_date": "2023-06-01", "last_modified_date": "2023-06-01"},
        "authors": [
            {"name": "Jane Doe", "ORCID": "0000-0002-1825-0097", "primary_author_status": True,
             "corresponding_author_status": True, "affiliation_identifier": "05a0ya142"},
            {"name": "John Roe"},
        ],
        "sample_type": "primary_cell_culture",
        "cell_type": {"name": "fission yeast cell", "id": "CL:0000521"},
        "organism": {"name": "Schizosaccharomyces pombe", "taxonomy_id": 4896},
        "assay": {"name": "microscopy assay", "id": "EFO:0002909"},
        "development_stage": {"name": "unknown", "id": "unknown"},
        "disease": {"name": "normal", "id": "PATO:0000461"},
        "funding": [{"funding_agency_name": "EMBO", "grant_id": "ALTF-123"}],
    },
    "tiltseries": {
        "camera": {"manufacturer": "Gatan", "model": "K3"},
        "microscope": {"manufacturer": "TFS", "model": "Krios G4"},
        "microscope_optical_setup": {"energy_filter": "BioQuantum"},
        "spherical_aberration_constant": 2.7,
        "is_aligned": False,
        "tilting_scheme": "Dose symmetric from 8.0 degrees",
        "tilt_series_quality": 4,
    },
    "tomogram": {
        "fiducial_alignment_status": "NON_FIDUCIAL",
        "reconstruction_method": "WBP",
        "reconstruction_software": "IMOD",
        "processing": "raw",
        "tomogram_version": 1.0,
    },
    "annotations": [
        {
            "annotation_object": {"id": "GO:0022626", "name": "cytosolic ribosome"},
            "annotation_method": "template matching + manual curation",
            "method_type": "hybrid",
            "annotation_ingest_id": "cytosolic-ribosome-1",
        }
    ],
}


@pytest.fixture
def config_dict() -> dict:
    """A complete dataset config as a mapping (a fresh deep copy per test)."""
    return copy.deepcopy(CONFIG)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config mapping as YAML in tmp_path; returns its path."""

    def _write(data: dict, name: str = "dataset.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return _write
