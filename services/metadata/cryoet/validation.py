"""Validate portal metadata JSON: the generated LinkML models plus our documented fixes.

The models in ``schema/metadata_files.py`` are generated from the portal's LinkML schema
(``schema/regenerate.py``). What the portal writes and what those models accept differ in known
ways (shared/reference/cryoet-portal-schema.md §3, §6.2); this module closes the gaps:

1. ``run_metadata.json`` may carry ``deposition_id`` and ``last_updated_at`` (the ingestion
   writes them; ``RunMetadata`` forbids them).
2. Annotation ``files[].format`` also accepts ``ndjson`` and ``json``; ``files[].shape`` also
   ``InstanceSegmentationMask`` and ``TriangularMesh`` (written by the portal, accepted by its API).
3. Formatted strings (``"float {tilt_min}"``, the YAML-template branch of ``any_of`` fields) are
   rejected: a final file holds numbers. The numeric bounds the generated union types lose
   (``tilt_axis`` in [-360, 360] …) are checked from the schema's own ``any_of`` metadata.
4. Patterns lost in materialization are re-added: ROR ``affiliation_identifier`` and
   ``annotation_ingest_id`` (a HEAD field, optional here).
5. Cross-field rules of the portal's config validator: ≥1 primary and ≥1 corresponding author,
   deposition date ≤ release date, tilt min ≤ max, sample type → its ontology object,
   automated annotations are not ground truth, precision/recall need ``ground_truth_used``.
6. Numbers must be finite (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from cryobus.services.metadata.cryoet.schema import metadata_files as mf
from cryobus.shared.errors import InputError

ROR_PATTERN = re.compile(r"^0[a-hj-km-np-tv-z|0-9]{6}[0-9]{2}$")
INGEST_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*-[0-9]+$"
EXTRA_FORMATS = ("ndjson", "json")
EXTRA_SHAPES = ("InstanceSegmentationMask", "TriangularMesh")
FILE_FORMATS = tuple(dict.fromkeys([e.value for e in mf.AnnotationFileFormatEnum] + list(EXTRA_FORMATS)))
FILE_SHAPES = tuple(dict.fromkeys([e.value for e in mf.AnnotationFileShapeTypeEnum] + list(EXTRA_SHAPES)))

# sample_type -> the ontology object the portal's config validator then requires
SAMPLE_TYPE_REQUIRES = {
    "organism": "tissue",
    "organoid": "tissue",
    "tissue": "tissue",
    "cell_line": "cell_strain",
    "primary_cell_culture": "cell_type",
    "organelle": "cell_component",
    "virus": "cell_component",
}


class RunMetadata(mf.RunMetadata):
    """Fix 1: the two keys every real run_metadata.json carries."""

    deposition_id: int | None = None
    last_updated_at: float | None = None


class AnnotationFileMetadata(mf.AnnotationFileMetadata):
    """Fix 2: the formats and shapes the portal writes."""

    format: str
    shape: str

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in FILE_FORMATS:
            raise ValueError(f"format {value!r} not in {FILE_FORMATS}")
        return value

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: str) -> str:
        if value not in FILE_SHAPES:
            raise ValueError(f"shape {value!r} not in {FILE_SHAPES}")
        return value


class AnnotationMetadata(mf.AnnotationMetadata):
    """Fixes 2 and 4 for annotation metadata."""

    files: list[AnnotationFileMetadata] | None = None
    annotation_ingest_id: str | None = Field(default=None, pattern=INGEST_ID_PATTERN)


MODELS: dict[str, type[BaseModel]] = {
    "dataset": mf.DatasetMetadata,
    "run": RunMetadata,
    "tiltseries": mf.TiltSeriesMetadata,
    "tomogram": mf.TomogramMetadata,
    "annotation": AnnotationMetadata,
}


def kind_of(path: str | os.PathLike) -> str:
    """Which metadata file a path is, from its portal name (``tomogram_metadata.json`` …).

    Raises:
        InputError: not a portal metadata file name (``field="name"``).
    """
    p = Path(path)
    fixed = {
        "dataset_metadata.json": "dataset",
        "run_metadata.json": "run",
        "tiltseries_metadata.json": "tiltseries",
        "tomogram_metadata.json": "tomogram",
    }
    if p.name in fixed:
        return fixed[p.name]
    if p.suffix == ".json" and p.parent.parent.name == "Annotations" and p.stem[-1:].isdigit():
        return "annotation"
    raise InputError("not a portal metadata file name", file=p, field="name")


def _dotted(loc: tuple) -> str:
    return ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in loc).replace(".[", "[")


def _numeric_branch(info) -> dict | None:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    for alt in (extra.get("linkml_meta") or {}).get("any_of") or []:
        if alt.get("range") in ("float", "integer", "double", "decimal"):
            return alt
    return None


def _check_model(obj: BaseModel, path: str, errors: list[tuple[str, str]]) -> None:
    """Fixes 3, 4 (ROR) and 6 over one model instance and everything nested in it."""
    for name, info in type(obj).model_fields.items():
        value = getattr(obj, name)
        here = f"{path}{name}"
        numeric = _numeric_branch(info)
        if numeric is not None and isinstance(value, str):
            errors.append((here, f"must be a number, not the formatted string {value!r}"))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append((here, "must be a finite number"))
        elif numeric is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = numeric.get("minimum_value"), numeric.get("maximum_value")
            if (low is not None and value < low) or (high is not None and value > high):
                errors.append((here, f"{value} outside [{low}, {high}]"))
        if isinstance(value, BaseModel):
            _check_model(value, f"{here}.", errors)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _check_model(item, f"{here}[{i}].", errors)
                elif isinstance(item, float) and not math.isfinite(item):
                    errors.append((f"{here}[{i}]", "must be a finite number"))
                elif isinstance(item, list) and any(isinstance(v, float) and not math.isfinite(v) for v in item):
                    errors.append((f"{here}[{i}]", "must be finite numbers"))
    if isinstance(obj, mf.AuthorMixin) and obj.affiliation_identifier:
        if not ROR_PATTERN.match(obj.affiliation_identifier):
            errors.append((f"{path}affiliation_identifier", f"{obj.affiliation_identifier!r} is not a ROR id"))


def _check_authors(authors: list | None, path: str, errors: list[tuple[str, str]]) -> None:
    if not authors:
        return
    if not any(a.primary_author_status for a in authors):
        errors.append((path, "needs at least one author with primary_author_status: true"))
    if not any(a.corresponding_author_status for a in authors):
        errors.append((path, "needs at least one author with corresponding_author_status: true"))


def _check_rules(kind: str, obj: BaseModel, errors: list[tuple[str, str]]) -> None:
    """Fix 5: cross-field rules."""
    if hasattr(obj, "authors"):
        _check_authors(obj.authors, "authors", errors)
    dates = getattr(obj, "dates", None)
    if dates is not None and dates.deposition_date > dates.release_date:
        errors.append(("dates.release_date", "release_date is before deposition_date"))
    if kind == "tiltseries":
        rng = obj.tilt_range
        if isinstance(rng.min, (int, float)) and isinstance(rng.max, (int, float)) and rng.min > rng.max:
            errors.append(("tilt_range", f"min {rng.min} > max {rng.max}"))
    if kind == "dataset":
        needed = SAMPLE_TYPE_REQUIRES.get(str(obj.sample_type))
        if needed and getattr(obj, needed) is None:
            errors.append((needed, f"sample_type {obj.sample_type} requires {needed}"))
    if kind == "annotation":
        if obj.method_type == "automated" and obj.ground_truth_status:
            errors.append(("ground_truth_status", "an automated annotation cannot be ground truth"))
        conf = obj.confidence
        if conf is not None and (conf.precision is not None or conf.recall is not None) and not conf.ground_truth_used:
            errors.append(("confidence.ground_truth_used", "precision/recall need ground_truth_used"))


def validate_metadata(kind: str, data: dict[str, Any], *, file: str | os.PathLike) -> BaseModel:
    """Validate one metadata document.

    Args:
        kind: ``dataset``, ``run``, ``tiltseries``, ``tomogram`` or ``annotation``.
        data: the JSON object.
        file: the file (or store key) it is or will be, for error messages.

    Returns:
        the validated model instance.

    Raises:
        InputError: the first problem, ``field`` = its dotted path (e.g. ``tilt_range.min``).
    """
    model = MODELS[kind]
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _dotted(first["loc"]) or None
        raise InputError(f"{kind} metadata: {first['msg']}", file=file, field=field) from exc
    errors: list[tuple[str, str]] = []
    _check_model(obj, "", errors)
    _check_rules(kind, obj, errors)
    if errors:
        field, reason = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{kind} metadata: {field} {reason}{more}", file=file, field=field)
    return obj


def validate_file(path: str | os.PathLike) -> BaseModel:
    """Read a portal metadata JSON file and validate it (kind from its name, see :func:`kind_of`).

    Raises:
        InputError: unreadable/not JSON, unknown name, or invalid content.
    """
    path = Path(path)
    kind = kind_of(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read JSON: {exc}", file=path) from exc
    if not isinstance(data, dict):
        raise InputError("metadata JSON must be an object", file=path)
    return validate_metadata(kind, data, file=path)
