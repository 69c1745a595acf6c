"""The user's YAML dataset config: everything about a tomography dataset that no file tells.

Field names are the portal's JSON names, grouped by the file they end up in (see
docs/cryoet-portal.md for the full list and an example). Fields that can also be derived
from the acquisition files (``tiltseries.tilt_axis`` …, see :data:`DERIVABLE`) are optional
here; a value given in the config overrides the derived one.

Units: voltages V, Cs mm, angles °, doses e⁻/Å², pixel/voxel sizes Å/px.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cryobus.shared.errors import InputError

if TYPE_CHECKING:
    from cryobus.services.metadata.cryoet.derive import DerivedFacts


class _Section(BaseModel):
    # a misspelt key is an error that names it, not a silently ignored line
    model_config = ConfigDict(extra="forbid")


class Author(_Section):
    name: str
    ORCID: str | None = None
    email: str | None = None
    affiliation_name: str | None = None
    affiliation_address: str | None = None
    affiliation_identifier: str | None = None
    kaggle_id: str | None = None
    primary_author_status: bool = False
    corresponding_author_status: bool = False


class Dates(_Section):
    deposition_date: date
    release_date: date
    last_modified_date: date


class Funding(_Section):
    funding_agency_name: str | None = None
    grant_id: str | None = None


class CrossReferences(_Section):
    publications: str | None = None
    related_database_entries: str | None = None
    related_database_links: str | None = None
    dataset_citations: str | None = None


class NamedId(_Section):
    name: str
    id: str | None = None


class Organism(_Section):
    name: str
    taxonomy_id: int | None = None


class KeyPhotos(_Section):
    snapshot: str | None = None
    thumbnail: str | None = None


class DatasetSection(_Section):
    """-> dataset_metadata.json"""

    dataset_identifier: int = Field(ge=1)  # portal-assigned; the dataset folder name
    title: str
    description: str
    dates: Dates
    authors: list[Author] = Field(min_length=1)
    sample_type: str
    assay: NamedId
    development_stage: NamedId
    disease: NamedId
    organism: Organism | None = None
    tissue: NamedId | None = None
    cell_type: NamedId | None = None
    cell_strain: NamedId | None = None
    cell_component: NamedId | None = None
    sample_preparation: str | None = None
    grid_preparation: str | None = None
    other_setup: str | None = None
    funding: list[Funding] = Field(default_factory=list)
    cross_references: CrossReferences | None = None
    key_photos: KeyPhotos = Field(default_factory=KeyPhotos)


class Camera(_Section):
    manufacturer: str
    model: str
    acquire_mode: str | None = None


class Microscope(_Section):
    manufacturer: str
    model: str
    additional_info: str | None = None


class OpticalSetup(_Section):
    energy_filter: str
    phase_plate: str | None = None
    image_corrector: str | None = None


class TiltRange(_Section):
    min: float
    max: float


class TiltSeriesSection(_Section):
    """-> tiltseries_metadata.json (the derivable fields override what the files say)."""

    camera: Camera
    microscope: Microscope
    microscope_optical_setup: OpticalSetup
    spherical_aberration_constant: float  # mm
    is_aligned: bool
    tilting_scheme: str
    tilt_series_quality: int
    # derivable from .mdoc / .tlt / MRC header
    acceleration_voltage: float | None = None  # V
    pixel_spacing: float | None = None  # Å/px
    tilt_axis: float | None = None  # °
    tilt_range: TiltRange | None = None  # °
    tilt_step: float | None = None  # °
    total_flux: float | None = None  # e⁻/Å²
    data_acquisition_software: str | None = None
    # optional
    related_empiar_entry: str | None = None
    tilt_alignment_software: str | None = None
    aligned_tiltseries_binning: float | None = None
    binning_from_frames: float | None = None


class Offset(_Section):
    x: int = 0
    y: int = 0
    z: int = 0


class TomogramSection(_Section):
    """-> tomogram_metadata.json (one section for all tomograms of the run)."""

    fiducial_alignment_status: str
    reconstruction_method: str
    reconstruction_software: str
    processing: str
    tomogram_version: float
    voxel_spacing: float | None = None  # Å/voxel; derivable from the MRC header
    processing_software: str | None = None
    align_software: str | None = None
    ctf_corrected: bool | None = None
    offset: Offset = Field(default_factory=Offset)
    is_visualization_default: bool = True
    affine_transformation_matrix: list[list[float]] | None = None
    cross_references: CrossReferences | None = None
    authors: list[Author] | None = None  # default: the dataset's
    dates: Dates | None = None  # default: the dataset's


class AnnotationObject(_Section):
    id: str
    name: str
    description: str | None = None
    state: str | None = None


class Confidence(_Section):
    precision: float | None = None
    recall: float | None = None
    ground_truth_used: str | None = None


class MethodLink(_Section):
    link: str
    link_type: str
    custom_name: str | None = None


class AnnotationSection(_Section):
    """-> Annotations/<id>/<object>-<version>.json; the points come from the caller."""

    annotation_object: AnnotationObject
    annotation_method: str
    method_type: str
    annotation_ingest_id: str | None = None
    version: float = 1.0
    ground_truth_status: bool = False
    is_curator_recommended: bool = False
    annotation_publications: str | None = None
    annotation_software: str | None = None
    confidence: Confidence | None = None
    method_links: list[MethodLink] | None = None
    is_visualization_default: bool = True
    authors: list[Author] | None = None  # default: the dataset's
    dates: Dates | None = None  # default: the dataset's


class DatasetConfig(_Section):
    """The whole YAML file. ``tomogram`` is needed only when the run has tomograms."""

    deposition_id: int
    dataset: DatasetSection
    tiltseries: TiltSeriesSection
    tomogram: TomogramSection | None = None
    annotations: list[AnnotationSection] = Field(default_factory=list)


# config path -> the DerivedFacts attribute that can stand in for it
DERIVABLE: dict[str, str] = {
    "tiltseries.acceleration_voltage": "acceleration_voltage_V",
    "tiltseries.pixel_spacing": "pixel_spacing_A",
    "tiltseries.tilt_axis": "tilt_axis_deg",
    "tiltseries.tilt_range": "tilt_min_deg",
    "tiltseries.tilt_step": "tilt_step_deg",
    "tiltseries.total_flux": "total_flux_e_per_A2",
    "tiltseries.data_acquisition_software": "data_acquisition_software",
    "tomogram.voxel_spacing": "tomograms",  # every tomogram header must carry a voxel size
}


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is_list) behind an annotation such as ``list[Author] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is list:
        return _submodel(get_args(annotation)[0])[0], True
    for arg in get_args(annotation):  # Optional[...] / unions
        found, is_list = _submodel(arg)
        if found:
            return found, is_list
    return None, False


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _derived_has(derived: DerivedFacts, attr: str) -> bool:
    if attr == "tomograms":  # a run without tomograms needs no voxel spacing
        return all(t.voxel_size_A for t in derived.tomograms)
    return getattr(derived, attr) is not None


def _walk(model: type[BaseModel], data: Any, prefix: str, derived: DerivedFacts | None, out: list[str]) -> None:
    data = data if isinstance(data, Mapping) else {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        value = data.get(name)
        sub, is_list = _submodel(info.annotation)
        if path == "tomogram":
            # needed (with all its required fields) only when there are tomograms to describe
            if _empty(value) and not (derived is not None and derived.tomograms):
                continue
            _walk(sub, value or {}, f"{path}.", derived, out)
            continue
        if _empty(value):
            if info.is_required():
                out.append(path)
            elif path in DERIVABLE and derived is not None and not _derived_has(derived, DERIVABLE[path]):
                out.append(path)
            continue
        if sub is None:
            continue
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                _walk(sub, item, f"{path}[{i}].", derived, out)
        elif not is_list:
            _walk(sub, value, f"{path}.", derived, out)


def missing_config_fields(config: DatasetConfig | Mapping[str, Any], derived: DerivedFacts | None = None) -> list[str]:
    """Names (dotted paths, e.g. ``tiltseries.camera.model``) of config fields still needed.

    A field is missing when the portal requires it and the config does not give it: always for
    the fields no file can tell; for the :data:`DERIVABLE` ones only when ``derived`` is given
    and lacks them too (e.g. ``tiltseries.total_flux`` when the mdoc's ExposureDose is 0).
    ``tomogram.*`` is required only when ``derived`` has tomograms.

    Args:
        config: a :class:`DatasetConfig` or the raw mapping read from the YAML file.
        derived: facts from :func:`~cryobus.services.metadata.cryoet.derive.derive`, or ``None``.

    Returns:
        the missing paths, in config order; empty when nothing is missing.
    """
    data = config.model_dump() if isinstance(config, BaseModel) else config
    out: list[str] = []
    _walk(DatasetConfig, data, "", derived, out)
    return out


def _dotted(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def load_config(yaml_path: str | os.PathLike) -> DatasetConfig:
    """Read and check the YAML dataset config.

    Returns:
        :class:`DatasetConfig`.

    Raises:
        InputError: unreadable file or not YAML (``field=None``); required fields missing
            (``field`` = the first one, the reason lists all of them, see
            :func:`missing_config_fields`); a value of the wrong type or an unknown key
            (``field`` = its dotted path).
    """
    path = Path(yaml_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("dataset config not found", file=path) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read dataset config: {exc}", file=path) from exc
    if not isinstance(raw, Mapping):
        raise InputError("dataset config must be a YAML mapping", file=path)
    missing = missing_config_fields(raw)
    if missing:
        raise InputError(f"dataset config lacks required field(s): {', '.join(missing)}", file=path, field=missing[0])
    try:
        return DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _dotted(first["loc"])
        raise InputError(f"dataset config field {field}: {first['msg']}", file=path, field=field) from exc
