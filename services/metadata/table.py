"""One metadata table from the partial tables of any number of sources (RELION, CryoSPARC, CTFFIND,
NextPYP), joined by ``micrograph_name`` — never by row position, unlike prismPYP's cryoSPARC builder.

A *partial* is what one source contributes: a frame with ``micrograph_name`` (already normalised with
:func:`cryobus.shared.micrograph_names.micrograph_name`) plus any subset of :data:`COLUMNS`; other
columns (e.g. CryoSPARC's ``micrograph_uid``) are ignored here. Which source wins a column, and
why: docs/metadata-columns.md, "Merging sources".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryobus.shared.errors import InputError

# prismPYP's nextPYP column order first (consumers that read by position keep working), then cryobus extras.
PRISMPYP_COLUMNS = [
    "micrograph_name",
    "rel_ice_thickness",
    "ctf_fit",
    "est_resolution",
    "avg_motion",
    "num_particles",
    "mean_defocus",
]
EXTRA_COLUMNS = [
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_deg",
    "ctf_fit_source",
    "motion_source",
    "pixel_size_A",
    "voltage_kV",
    "cs_mm",
    "amplitude_contrast",
]
COLUMNS = PRISMPYP_COLUMNS + EXTRA_COLUMNS

FLOAT_COLUMNS = [
    "rel_ice_thickness",
    "ctf_fit",
    "est_resolution",
    "avg_motion",
    "mean_defocus",
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_deg",
    "pixel_size_A",
    "voltage_kV",
    "cs_mm",
    "amplitude_contrast",
]
TEXT_COLUMNS = ["ctf_fit_source", "motion_source"]

# Values of ctf_fit_source: which score ctf_fit holds.
CTF_FIT_CTFFIND_CC = "ctffind_cross_correlation"  # CTFFIND's cross-correlation (column #6 of its .txt)
CTF_FIT_RELION_FOM = "relion_figure_of_merit"  # rlnCtfFigureOfMerit (RELION copies CTFFIND's CC into it)
CTF_FIT_GCTF_FOM = "gctf_figure_of_merit"  # CryoSPARC ctf/fig_of_merit_gctf (GCTF's score, another scale)

# Source names (Partial.source).
RELION_CTF = "relion.ctf"
RELION_MOTION = "relion.motion"
RELION_PARTICLES = "relion.particles"
CRYOSPARC_EXPOSURES = "cryosparc.exposures"
CRYOSPARC_PARTICLES = "cryosparc.particles"
CTFFIND_OUTPUTS = "ctffind.outputs"
NEXTPYP_PKL = "nextpyp.pkl"

# Source priority per group of columns: the first source (in this order) whose *lead* column is
# non-null for a micrograph gives every column of the group, so a score never travels without the
# name of its kind, and U, V, angle and mean defocus always come from one fit. Sources not listed
# come after the listed ones, in the order given to merge_partials. Reasons: docs/metadata-columns.md.
_CTF_ORDER = (CTFFIND_OUTPUTS, CRYOSPARC_EXPOSURES, RELION_CTF, NEXTPYP_PKL)
_MOTION_ORDER = (CRYOSPARC_EXPOSURES, RELION_MOTION, NEXTPYP_PKL)
_PARTICLE_ORDER = (CRYOSPARC_PARTICLES, RELION_PARTICLES, NEXTPYP_PKL)
_PIXEL_ORDER = (CRYOSPARC_EXPOSURES, RELION_CTF, RELION_MOTION, NEXTPYP_PKL, CTFFIND_OUTPUTS)
GROUPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (lead column, the other columns of the group, source priority)
    # The microscope travels with the fit it was used for (the CTF model needs all of them).
    ("mean_defocus", ("defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm", "amplitude_contrast"),
     _CTF_ORDER),
    ("ctf_fit", ("ctf_fit_source",), _CTF_ORDER),
    ("est_resolution", (), _CTF_ORDER),
    ("rel_ice_thickness", (), (CRYOSPARC_EXPOSURES, NEXTPYP_PKL)),
    ("avg_motion", ("motion_source",), _MOTION_ORDER),
    ("num_particles", (), _PARTICLE_ORDER),
    ("pixel_size_A", (), _PIXEL_ORDER),
)


@dataclass(frozen=True)
class Partial:
    """What one source contributes to a dataset's table.

    Attributes:
        source: the source kind, e.g. ``relion.ctf``, ``relion.motion``, ``relion.particles``,
            ``cryosparc.exposures``, ``cryosparc.particles``, ``ctffind.outputs``, ``nextpyp.pkl``.
        frame: ``micrograph_name`` (str) plus any subset of :data:`COLUMNS` (units as in
            docs/metadata-columns.md); other columns are ignored.
        file: the input file or folder it was read from (named in errors).
        pixel_size_A: the source's micrograph pixel size (Å/px), when it has one.
    """

    source: str
    frame: pd.DataFrame
    file: str
    pixel_size_A: float | None = None


@dataclass(frozen=True)
class MergeResult:
    """The merged table and what did not match.

    Attributes:
        table: columns exactly :data:`COLUMNS`, one row per micrograph known to any source, sorted
            by ``micrograph_name`` (code-point order); floats float64, ``num_particles`` nullable
            Int64, text columns object with None.
        unmatched: per source, the names (sorted) that other sources have and it lacks. Keyed by
            ``source``, or ``"source:file"`` for every partial of a source given more than once.
        pixel_size_A: the first ``Partial.pixel_size_A`` in pixel-size priority order, else the most
            common ``pixel_size_A`` of the table (smallest on a tie), else None.
    """

    table: pd.DataFrame
    unmatched: dict[str, list[str]]
    pixel_size_A: float | None


def _keyed(partial: Partial) -> pd.DataFrame:
    frame = partial.frame
    if "micrograph_name" not in frame.columns:
        raise ValueError(f"{partial.source} partial from {partial.file} has no micrograph_name column")
    # Names are text even if a round trip (JSON, CSV) turned "1" into 1.
    names = frame["micrograph_name"].astype(str)
    dup = names[names.duplicated()]
    if not dup.empty:
        raise InputError(
            f"micrograph_name {dup.iloc[0]!r} occurs more than once in the {partial.source} source",
            file=partial.file or None,
            field="micrograph_name",
        )
    keep = [c for c in frame.columns if c in COLUMNS and c != "micrograph_name"]
    out = frame[keep].copy()
    out.index = pd.Index(names.to_numpy(dtype=object), name="micrograph_name")
    return out


def _ordered(partials: Sequence[Partial], priority: Sequence[str]) -> list[int]:
    """Indices of ``partials``: listed sources in ``priority`` order, then the rest in input order."""
    rank = {s: i for i, s in enumerate(priority)}
    return sorted(range(len(partials)), key=lambda i: (rank.get(partials[i].source, len(rank)), i))


def _most_common(values: pd.Series) -> float | None:
    values = values.dropna()
    if values.empty:
        return None
    return float(values.mode().iloc[0])  # mode() is sorted: ties go to the smallest


def merge_partials(partials: Sequence[Partial]) -> MergeResult:
    """Join partial tables by ``micrograph_name`` into the metadata table.

    Rules (docs/metadata-columns.md, "Merging sources"):

    * outer join on ``micrograph_name``: a micrograph known to any source gets a row;
    * each column group (see :data:`GROUPS`) is taken, per micrograph, from the first source in its
      priority order whose lead column is non-null there; a micrograph no source has a lead value
      for gets each non-lead column's first non-null value (e.g. ``motion_source = unavailable``);
    * ``num_particles``: when some partial has a ``num_particles`` column, micrographs none of them
      lists get 0; without such a partial it is NA (unknown);
    * ``rel_ice_thickness`` stays NaN where no source has it (no constant is invented).

    Args:
        partials: any number, any order; the row order inside a frame does not matter.

    Returns:
        :class:`MergeResult`.

    Raises:
        InputError: a partial lists a ``micrograph_name`` twice (file = its ``file``, field
            ``micrograph_name``). ValueError: a frame without a ``micrograph_name`` column.
    """
    keyed = [_keyed(p) for p in partials]
    names = sorted(set().union(*(k.index for k in keyed))) if keyed else []
    index = pd.Index(names, name="micrograph_name", dtype=object)
    aligned = [k.reindex(index) for k in keyed]

    table = pd.DataFrame(index=index)
    for lead, members, priority in GROUPS:
        order = [i for i in _ordered(partials, priority) if lead in aligned[i].columns]
        columns = (lead, *members)
        values = {c: pd.Series(np.nan, index=index, dtype=object) for c in columns}
        for i in order:
            take = values[lead].isna() & aligned[i][lead].notna()
            if not take.any():
                continue
            for c in columns:
                if c in aligned[i].columns:
                    values[c] = values[c].mask(take, aligned[i][c])
        # Micrographs without a lead value anywhere: non-lead columns from the first source that has them.
        without = values[lead].isna()
        for c in members:
            for i in _ordered(partials, priority):
                if c in aligned[i].columns:
                    fill = without & values[c].isna() & aligned[i][c].notna()
                    values[c] = values[c].mask(fill, aligned[i][c])
        for c in columns:
            table[c] = values[c]

    for c in FLOAT_COLUMNS:
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    for c in TEXT_COLUMNS:
        table[c] = table[c].astype(object).where(table[c].notna(), None)
    if any("num_particles" in k.columns for k in keyed):
        counts = pd.to_numeric(table["num_particles"], errors="coerce").fillna(0)
        table["num_particles"] = counts.round().astype("Int64")
    else:
        table["num_particles"] = pd.array([pd.NA] * len(table), dtype="Int64")
    out = table.reset_index()
    out["micrograph_name"] = out["micrograph_name"].astype(object)
    out = out[COLUMNS]

    counts_by_source: dict[str, int] = {}
    for p in partials:
        counts_by_source[p.source] = counts_by_source.get(p.source, 0) + 1
    all_names = set(names)
    unmatched: dict[str, list[str]] = {}
    for p, k in zip(partials, keyed):
        key = p.source if counts_by_source[p.source] == 1 else f"{p.source}:{p.file}"
        unmatched[key] = sorted(all_names.difference(k.index))

    pixel = next(
        (
            float(partials[i].pixel_size_A)  # type: ignore[arg-type]
            for i in _ordered(partials, _PIXEL_ORDER)
            if partials[i].pixel_size_A is not None and np.isfinite(partials[i].pixel_size_A)
        ),
        None,
    )
    if pixel is None:
        pixel = _most_common(out["pixel_size_A"])
    return MergeResult(table=out, unmatched=unmatched, pixel_size_A=pixel)
