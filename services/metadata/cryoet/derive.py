"""Facts about a tilt series that its files already tell: no user config needed for these.

Sources and units (the portal field each fact fills is in brackets):

* ``.mdoc`` (SerialEM): tilt angles ° [tilt_range, tilt_step, per_section_parameter.raw_angle],
  ``ExposureDose`` e⁻/Å² per image, summed [total_flux], ``Voltage`` kV × 1000 → V
  [acceleration_voltage], ``Tilt axis angle`` title ° [tilt_axis], ``PixelSpacing`` Å/px,
  ``[T = SerialEM: …]`` [data_acquisition_software], ``SubFramePath`` count [frames_count],
  ``DateTime`` order [per_section_parameter.frame_acquisition_order].
* IMOD ``.rawtlt`` / ``.tlt``: tilt angles when there is no ``.mdoc``; ``.xf``: per-section
  in-plane rotation (reported, not written: alignments are out of scope here).
* MRC headers (``cryobus.shared.formats.mrc.read_header``): nx, ny, nz px [size], voxel size
  Å/px [tomogram voxel_spacing, VoxelSpacing folder; tilt-series pixel_spacing].

Derivation rules (documented in docs/cryoet-portal.md): tilt step = most common difference of
the sorted distinct angles rounded to 0.01 °; tilt range = min/max angle rounded to 0.01 °;
the tilt-series pixel spacing prefers the MRC header (it describes the file we publish) over the
mdoc's ``PixelSpacing``.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cryobus.services.metadata.cryoet.imod import read_tilt_angles, read_xf, xf_rotation_deg
from cryobus.services.metadata.cryoet.mdoc import MdocSummary, read_mdoc
from cryobus.shared.errors import InputError
from cryobus.shared.formats.mrc import read_header

TILT_SERIES_SUFFIXES = (".st", ".mrcs", ".ali")
TOMOGRAM_SUFFIXES = (".rec",)
AMBIGUOUS_SUFFIXES = (".mrc",)
_DATETIME_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S")


class VolumeFacts(BaseModel):
    """An MRC file's header facts.

    Attributes:
        path: the MRC file.
        x, y, z: columns, rows, sections (px; for a tilt series z = number of images).
        voxel_size_A: header voxel size along x (Å/px), ``None`` when the header says 0.
    """

    model_config = ConfigDict(frozen=True)

    path: Path
    x: int
    y: int
    z: int
    voxel_size_A: float | None


class DerivedFacts(BaseModel):
    """Everything derived from one tilt-series folder. ``None`` = the files do not say.

    Units: angles °, doses e⁻/Å², voltage V, pixel/voxel sizes Å/px, sizes px.
    ``sources`` maps each derived fact to the file it came from; ``warnings`` lists
    inconsistencies that did not stop the derivation (e.g. MRC sections ≠ mdoc sections).
    """

    folder: Path
    run_name: str
    tilt_angles_deg: list[float] = Field(default_factory=list)
    tilt_min_deg: float | None = None
    tilt_max_deg: float | None = None
    tilt_step_deg: float | None = None
    doses_e_per_A2: list[float | None] = Field(default_factory=list)
    total_flux_e_per_A2: float | None = None
    acceleration_voltage_V: float | None = None
    tilt_axis_deg: float | None = None
    pixel_spacing_A: float | None = None
    magnification: float | None = None
    binning: float | None = None
    camera_index: int | None = None
    data_acquisition_software: str | None = None
    frames_count: int | None = None
    acquisition_order: list[int] = Field(default_factory=list)
    xf_rotation_deg: list[float] = Field(default_factory=list)
    tiltseries: VolumeFacts | None = None
    tiltseries_size: tuple[int, int, int] | None = None
    tomograms: list[VolumeFacts] = Field(default_factory=list)
    mdoc_file: Path | None = None
    tilt_angle_file: Path | None = None
    xf_file: Path | None = None
    newest_input_mtime: float = 0.0
    sources: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


def tilt_step(angles: list[float]) -> float | None:
    """Tilt increment, °: the most common gap between sorted distinct angles (0.01 ° bins).

    Dose-symmetric and bidirectional schemes still have one dominant gap; ties go to the
    smaller gap. ``None`` for fewer than two distinct angles.
    """
    distinct = sorted({round(a, 2) for a in angles})
    gaps = [round(b - a, 2) for a, b in zip(distinct, distinct[1:]) if round(b - a, 2) > 0]
    if not gaps:
        return None
    counts = Counter(gaps)
    best = max(counts.values())
    return min(g for g, c in counts.items() if c == best)


def acquisition_order(summary: MdocSummary) -> tuple[list[int], str]:
    """0-based acquisition rank of each section (stack order), and what it was based on.

    ``DateTime`` when every section has a parseable one, else ``PriorRecordDose`` (dose
    before the image only grows), else the stack order itself. Ties keep stack order.
    """
    sections = summary.sections
    stamps = [_parse_datetime(s.date_time) for s in sections]
    if all(t is not None for t in stamps):
        keys, basis = stamps, "DateTime"
    elif all(s.prior_record_dose is not None for s in sections):
        keys, basis = [s.prior_record_dose for s in sections], "PriorRecordDose"
    else:
        return list(range(len(sections))), "ZValue"
    ranked = sorted(range(len(sections)), key=lambda i: (keys[i], i))
    order = [0] * len(sections)
    for rank, i in enumerate(ranked):
        order[i] = rank
    return order, basis


def _parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    text = " ".join(text.split())
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def volume_facts(path: str | os.PathLike) -> VolumeFacts:
    """Header facts of an MRC file (dimensions px, voxel size Å/px).

    Raises:
        InputError: from :func:`cryobus.shared.formats.mrc.read_header` (corrupt/truncated MRC).
    """
    header = read_header(path)
    return VolumeFacts(path=Path(path), x=header.nx, y=header.ny, z=header.nz, voxel_size_A=header.voxel_size_A)


def _pick_one(paths: list[Path], what: str, folder: Path, prefer_stem: str | None) -> Path | None:
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0]
    if prefer_stem:
        matching = [p for p in paths if _stem(p) == prefer_stem]
        if len(matching) == 1:
            return matching[0]
    names = ", ".join(p.name for p in paths)
    raise InputError(f"several {what} files ({names}); pass the one to use", file=folder, field=what)


def _stem(path: Path) -> str:
    """``TS_01.mrc.mdoc`` → ``TS_01``; ``TS_01.rawtlt`` → ``TS_01``."""
    name = path.name
    for suffix in (".mdoc", ".rawtlt", ".tlt", ".xf", ".st", ".mrcs", ".ali", ".rec", ".mrc"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def derive(
    tilt_series_folder: str | os.PathLike,
    *,
    run_name: str | None = None,
    mdoc: str | os.PathLike | None = None,
    tilt_angles: str | os.PathLike | None = None,
    xf: str | os.PathLike | None = None,
    tilt_series: str | os.PathLike | None = None,
    tomograms: list[str | os.PathLike] | None = None,
    search: bool = True,
) -> DerivedFacts:
    """Derive what can be derived from a tilt-series folder.

    Files are found by name in ``tilt_series_folder`` unless given explicitly: one tilt-series
    ``*.mdoc`` (movie ``[FrameSet]`` mdocs are skipped), ``*.rawtlt`` (else ``*.tlt``),
    ``*.xf``; MRCs: ``.st/.mrcs/.ali`` are tilt series, ``.rec`` tomograms, and a ``.mrc`` is
    the tilt series when its section count equals the number of tilt angles, else a tomogram.

    Args:
        tilt_series_folder: the folder.
        run_name: the portal run name; default the tilt-series (or mdoc) file stem, else the
            folder name.
        mdoc, tilt_angles, xf, tilt_series, tomograms: explicit files, overriding the search.
        search: when false, use only the explicit files (a folder may hold several tilt series;
            ingest names each one's files).

    Returns:
        :class:`DerivedFacts`.

    Raises:
        InputError: a file is unreadable or malformed (the error names file and field, e.g.
            ``TiltAngle`` for an mdoc section without it), the folder is missing, or several
            candidates exist for one role (``field`` names the role).
    """
    folder = Path(tilt_series_folder)
    if not folder.is_dir():
        raise InputError("tilt-series folder not found", file=folder)
    warnings: list[str] = []
    sources: dict[str, str] = {}
    listing = sorted(p for p in folder.iterdir() if p.is_file())

    def by_suffix(*suffixes: str) -> list[Path]:
        return [p for p in listing if p.name.lower().endswith(suffixes)]

    # --- angles: mdoc first, then .rawtlt / .tlt -------------------------------------------
    summary: MdocSummary | None = None
    if mdoc is not None:
        summary = read_mdoc(mdoc)
    elif search:
        candidates = []
        for path in by_suffix(".mdoc"):
            try:
                candidates.append(read_mdoc(path))
            except InputError as exc:
                if exc.field != "ZValue":  # a [FrameSet] movie mdoc is not an error, skip it
                    raise
        stem_hint = Path(tilt_series).name if tilt_series else None
        chosen = _pick_one([c.path for c in candidates], "mdoc", folder, stem_hint and _stem(Path(stem_hint)))
        summary = next((c for c in candidates if c.path == chosen), None)

    angle_file = Path(tilt_angles) if tilt_angles is not None else None
    if angle_file is None and search:
        angle_file = _pick_one(by_suffix(".rawtlt"), "rawtlt", folder, None) or _pick_one(by_suffix(".tlt"), "tlt", folder, None)
    file_angles = read_tilt_angles(angle_file) if angle_file else None
    xf_file = Path(xf) if xf is not None else (_pick_one(by_suffix(".xf"), "xf", folder, None) if search else None)
    xf_rot = [float(a) for a in xf_rotation_deg(read_xf(xf_file))] if xf_file else []

    angles: list[float] = []
    if summary is not None:
        angles = summary.tilt_angles
        sources["tilt_angles_deg"] = str(summary.path)
        if file_angles is not None and len(file_angles) != len(angles):
            warnings.append(
                f"{angle_file.name} has {len(file_angles)} angles, {summary.path.name} {len(angles)} sections"
            )
    elif file_angles is not None:
        angles = file_angles
        sources["tilt_angles_deg"] = str(angle_file)

    # --- MRC volumes --------------------------------------------------------------------------
    ts_facts = volume_facts(tilt_series) if tilt_series is not None else None
    tomo_facts = [volume_facts(p) for p in tomograms] if tomograms is not None else None
    if search and (ts_facts is None or tomo_facts is None):
        found_ts = [volume_facts(p) for p in by_suffix(*TILT_SERIES_SUFFIXES)]
        found_tomo = [volume_facts(p) for p in by_suffix(*TOMOGRAM_SUFFIXES)]
        for path in by_suffix(*AMBIGUOUS_SUFFIXES):
            facts = volume_facts(path)
            (found_ts if angles and facts.z == len(angles) else found_tomo).append(facts)
        explicit = {f.path for f in ([ts_facts] if ts_facts else []) + (tomo_facts or [])}
        found_ts = [f for f in found_ts if f.path not in explicit]
        found_tomo = [f for f in found_tomo if f.path not in explicit]
        if ts_facts is None:
            chosen = _pick_one([f.path for f in found_ts], "tilt_series", folder, summary and _stem(summary.path))
            ts_facts = next((f for f in found_ts if f.path == chosen), None)
        if tomo_facts is None:
            tomo_facts = found_tomo
    tomo_facts = tomo_facts or []

    if ts_facts is not None and angles and ts_facts.z != len(angles):
        warnings.append(f"{ts_facts.path.name} has {ts_facts.z} sections, the tilt angles {len(angles)}")

    facts = DerivedFacts(
        folder=folder,
        run_name=run_name or (_stem(ts_facts.path) if ts_facts else (_stem(summary.path) if summary else folder.name)),
        tilt_angles_deg=angles,
        tiltseries=ts_facts,
        tomograms=tomo_facts,
        mdoc_file=summary.path if summary else None,
        tilt_angle_file=angle_file,
        xf_file=xf_file,
        xf_rotation_deg=xf_rot,
    )
    if angles:
        facts.tilt_min_deg = round(min(angles), 2)
        facts.tilt_max_deg = round(max(angles), 2)
        facts.tilt_step_deg = tilt_step(angles)
        for key in ("tilt_min_deg", "tilt_max_deg", "tilt_step_deg"):
            sources[key] = sources["tilt_angles_deg"]

    if summary is not None:
        _from_mdoc(facts, summary, sources, warnings)

    if ts_facts is not None:
        facts.tiltseries_size = (ts_facts.x, ts_facts.y, ts_facts.z)
        sources["tiltseries_size"] = str(ts_facts.path)
    elif summary is not None and summary.image_size is not None:
        # no stack in the folder: the mdoc's ImageSize and section count describe it
        facts.tiltseries_size = (*summary.image_size, len(summary.sections))
        sources["tiltseries_size"] = f"{summary.path} (ImageSize, sections)"
    if ts_facts is not None and ts_facts.voxel_size_A:
        if facts.pixel_spacing_A and abs(facts.pixel_spacing_A - ts_facts.voxel_size_A) > 0.01 * ts_facts.voxel_size_A:
            warnings.append(
                f"{ts_facts.path.name} pixel size {ts_facts.voxel_size_A:.3f} Å differs from the mdoc's "
                f"{facts.pixel_spacing_A:.3f} Å (binned stack?); using the MRC header"
            )
        facts.pixel_spacing_A = ts_facts.voxel_size_A
        sources["pixel_spacing_A"] = str(ts_facts.path)
    for tomo in tomo_facts:
        if tomo.voxel_size_A is None:
            warnings.append(f"{tomo.path.name} header voxel size is 0: give tomogram.voxel_spacing in the config")

    used = [p for p in (facts.mdoc_file, angle_file, xf_file) if p] + [v.path for v in ([ts_facts] if ts_facts else []) + tomo_facts]
    facts.newest_input_mtime = max((p.stat().st_mtime for p in used), default=0.0)
    facts.sources = sources
    facts.warnings = warnings
    return facts


def _from_mdoc(facts: DerivedFacts, summary: MdocSummary, sources: dict[str, str], warnings: list[str]) -> None:
    src = str(summary.path)
    doses = summary.exposure_doses
    facts.doses_e_per_A2 = doses
    if doses and all(d is not None for d in doses) and sum(doses) > 0:
        facts.total_flux_e_per_A2 = round(float(sum(doses)), 3)
        sources["total_flux_e_per_A2"] = src
    elif doses:
        warnings.append(f"{summary.path.name}: ExposureDose missing or 0 (dose not calibrated); total_flux not derivable")
    if summary.voltage_kV:
        facts.acceleration_voltage_V = summary.voltage_kV * 1000.0  # mdoc kV -> portal V
        sources["acceleration_voltage_V"] = src
    for name, value in (
        ("tilt_axis_deg", summary.tilt_axis_deg),
        ("pixel_spacing_A", summary.pixel_spacing_A),
        ("magnification", summary.magnification),
        ("binning", summary.binning),
        ("camera_index", summary.camera_index),
        ("data_acquisition_software", summary.software),
    ):
        if value is not None:
            setattr(facts, name, value)
            sources[name] = src
    frames = sum(1 for s in summary.sections if s.sub_frame_path)
    if frames:
        facts.frames_count = frames
        sources["frames_count"] = src
    facts.acquisition_order, basis = acquisition_order(summary)
    sources["acquisition_order"] = f"{src} ({basis})"
