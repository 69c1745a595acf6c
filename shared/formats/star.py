"""RELION STAR files: every data block as a pandas DataFrame, plus the micrograph/particle tables
with their optics groups merged in.

Parsing is done by teamtomo's `starfile` library; this module only adds cryobus errors, the RELION
3.0 / 3.1+ block conventions and the optics merge.

RELION conventions relied on (RELION docs, "Conventions & File formats"; RELION 3.1 release notes):

* 3.1 and later: ``data_optics`` (one row per optics group, keyed by ``rlnOpticsGroup``) plus
  ``data_micrographs`` / ``data_particles`` whose rows carry ``rlnOpticsGroup``.
* 3.0 and earlier: one block (``data_`` or ``data_images``) whose rows carry ``rlnVoltage``,
  ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnMagnification`` and
  ``rlnDetectorPixelSize`` (µm) directly; the pixel size is 10 000 · DetectorPixelSize / Magnification Å/px.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import pandas as pd
import starfile

from cryobus.shared.errors import InputError
from cryobus.shared.micrograph_names import micrograph_name as _normalised_name

# Columns that hold names or paths: parsed as text so that a micrograph called "1" stays "1".
_STRING_COLUMNS = [
    "rlnMicrographName",
    "rlnMicrographNameNoDW",
    "rlnMicrographMovieName",
    "rlnMicrographMetadata",
    "rlnMicrographGainName",
    "rlnMicrographCoordinates",
    "rlnCtfImage",
    "rlnCtfPowerSpectrum",
    "rlnImageName",
    "rlnImageOriginalName",
    "rlnOpticsGroupName",
    "rlnMtfFileName",
    "rlnReferenceImage",
]



def read_star(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file.

    Args:
        path: the STAR file.

    Returns:
        ``{block name without "data_": DataFrame}`` in file order. A loop block gives one row per
        loop line; a key-value block (e.g. ``data_general``) gives a one-row frame. The unnamed
        block ``data_`` of RELION 3.0 files has the key ``""``. Name/path columns
        (``rlnMicrographName``, ``rlnImageName``, ``rlnCtfImage`` …) are always ``str``.

    Raises:
        InputError: the file is missing, cannot be parsed, holds no data block, or a loop names a
            column twice (``file=path``; ``field`` = that column).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("STAR file not found", file=str(p))
    try:
        blocks = starfile.read(p, always_dict=True, parse_as_string=_STRING_COLUMNS)
    except Exception as exc:  # starfile raises bare ValueError/IndexError on malformed text
        raise InputError(f"cannot parse STAR file: {exc}", file=str(p)) from exc
    if not blocks:
        raise InputError("no data_ block found: not a STAR file", file=str(p))
    out: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, Mapping):
            out[name] = pd.DataFrame([dict(block)])
        else:
            twice = block.columns[block.columns.duplicated()]
            if len(twice):  # df[col] would then be a frame, not a column
                raise InputError(f"column {twice[0]} appears twice in data_{name}", file=str(p), field=str(twice[0]))
            out[name] = block.reset_index(drop=True)
    return out


def require_columns(df: pd.DataFrame, columns: Iterable[str], *, file: str | Path, block: str) -> None:
    """Check that ``df`` has all ``columns``.

    Raises:
        InputError: naming ``file`` and, as ``field``, the first missing column (in the order given);
            the reason names the block (``data_<block>``).
    """
    for col in columns:
        if col not in df.columns:
            raise InputError(f"column {col} missing from block data_{block}", file=str(file), field=col)


def micrograph_name(path_or_relion_name: str) -> str:
    """The normalised ``micrograph_name`` of a RELION micrograph path (``rlnMicrographName``).

    ``MotionCorr/job002/Movies/20170629_00021_frameImage.mrc`` → ``20170629_00021_frameImage``.
    One rule for every source: :func:`cryobus.shared.micrograph_names.micrograph_name`.
    """
    return _normalised_name(path_or_relion_name)


def _select_block(blocks: Mapping[str, pd.DataFrame], wanted: str, *, file: str | Path) -> pd.DataFrame:
    """``data_<wanted>`` (RELION 3.1+) or the only non-optics block (RELION 3.0 ``data_`` / ``data_images``)."""
    if wanted in blocks:
        return blocks[wanted]
    others = [name for name in blocks if name != "optics"]
    if len(others) == 1:
        return blocks[others[0]]
    raise InputError(
        f"no data_{wanted} block (blocks present: {', '.join('data_' + b for b in blocks) or 'none'})",
        file=str(file),
        field=f"data_{wanted}",
    )


def _merge_optics(df: pd.DataFrame, blocks: Mapping[str, pd.DataFrame], *, file: str | Path) -> pd.DataFrame:
    """Left-join the optics table on rlnOpticsGroup, keeping row order; row values win over optics values."""
    optics = blocks.get("optics")
    if optics is None or optics.empty:
        return df.copy()
    require_columns(optics, ["rlnOpticsGroup"], file=file, block="optics")
    if optics["rlnOpticsGroup"].duplicated().any():
        raise InputError("duplicate rlnOpticsGroup in data_optics", file=str(file), field="rlnOpticsGroup")
    extra = [c for c in optics.columns if c not in df.columns or c == "rlnOpticsGroup"]
    optics = optics[extra]
    if "rlnOpticsGroup" not in df.columns:
        if len(optics) != 1:
            raise InputError(
                "rows have no rlnOpticsGroup but data_optics has several groups", file=str(file), field="rlnOpticsGroup"
            )
        out = df.copy()
        for col in optics.columns:
            out[col] = optics[col].iloc[0]
        return out
    unknown = set(df["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if unknown:
        raise InputError(
            f"rlnOpticsGroup {sorted(unknown)} not defined in data_optics", file=str(file), field="rlnOpticsGroup"
        )
    return df.merge(optics, on="rlnOpticsGroup", how="left", validate="many_to_one", sort=False)


def _derive_pixel_size(df: pd.DataFrame, column: str, *, file: str | Path) -> pd.DataFrame:
    """RELION 3.0 rows: ``column`` = 10 000 · rlnDetectorPixelSize (µm) / rlnMagnification, in Å/px.

    Raises:
        InputError: either source column holds a value that is not a number (field = that column).
    """
    if column in df.columns or not {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
        return df
    values = {}
    for source in ("rlnDetectorPixelSize", "rlnMagnification"):
        try:
            values[source] = df[source].astype(float)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source} is not a number: {exc}", file=str(file), field=source) from exc
    out = df.copy()
    out[column] = 1e4 * values["rlnDetectorPixelSize"] / values["rlnMagnification"]
    return out


def micrograph_block(blocks: Mapping[str, pd.DataFrame], *, file: str | Path) -> pd.DataFrame:
    """The per-micrograph table of a RELION micrographs STAR, optics merged in.

    Args:
        blocks: result of :func:`read_star`.
        file: the STAR path, for error messages.

    Returns:
        One row per micrograph, file order. RELION 3.1+: ``data_micrographs`` with every
        ``data_optics`` column of its ``rlnOpticsGroup`` added (``rlnMicrographPixelSize`` and
        ``rlnMicrographOriginalPixelSize`` Å/px, ``rlnVoltage`` kV, ``rlnSphericalAberration`` mm,
        ``rlnAmplitudeContrast``). RELION 3.0: the single block as is, with ``rlnMicrographPixelSize``
        derived from ``rlnDetectorPixelSize``/``rlnMagnification`` when both are present. Columns the
        file does not have stay absent.

    Raises:
        InputError: no micrographs block, an ``rlnOpticsGroup`` missing from ``data_optics``, or a
            non-numeric ``rlnDetectorPixelSize``/``rlnMagnification`` (RELION 3.0).
    """
    df = _merge_optics(_select_block(blocks, "micrographs", file=file), blocks, file=file)
    return _derive_pixel_size(df, "rlnMicrographPixelSize", file=file)


def particle_block(blocks: Mapping[str, pd.DataFrame], *, file: str | Path) -> pd.DataFrame:
    """The per-particle table of a RELION particles STAR, optics merged in.

    Same rules as :func:`micrograph_block` with ``data_particles`` (3.1+) or the single 3.0 block
    (``data_`` / ``data_images``); the particle pixel size is ``rlnImagePixelSize`` (Å/px), derived
    for 3.0 files from ``rlnDetectorPixelSize``/``rlnMagnification``.

    Raises:
        InputError: no particles block, an ``rlnOpticsGroup`` missing from ``data_optics``, or a
            non-numeric ``rlnDetectorPixelSize``/``rlnMagnification`` (RELION 3.0).
    """
    df = _merge_optics(_select_block(blocks, "particles", file=file), blocks, file=file)
    return _derive_pixel_size(df, "rlnImagePixelSize", file=file)
