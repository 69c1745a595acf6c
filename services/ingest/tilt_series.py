"""Which files of a folder make up a tilt series (SerialEM / IMOD), before anything is parsed.

Ingest only sorts files into roles here; the metadata service reads them. The rules:

* **Anchors.** A *tilt-series mdoc* is a SerialEM autodoc with at least two ``[ZValue = n]``
  sections that is not a montage (no ``Montage = 1``, no ``[MontSection``) and whose
  ``TiltAngle`` values, when every section has one, span at least 1 °. Not tilt series:
  SerialEM's per-movie mdocs (``[FrameSet]``, and every ``*.tif.mdoc`` / ``*.tiff.mdoc`` /
  ``*.eer.mdoc``, skipped unread) and the one-section mdoc SerialEM writes beside each saved
  single-particle image, or a stack of images at one tilt. IMOD ``*.rawtlt`` / ``*.tlt`` are anchors when the folder has no tilt-series mdoc.
* **Groups.** One tilt series per distinct anchor *stem* (the name without ``.mdoc``, ``.rawtlt``,
  ``.tlt``, ``.xf`` and MRC suffixes: ``TS_01.mrc.mdoc`` → ``TS_01``). With one group, every
  ``.rawtlt``/``.tlt``/``.xf`` and MRC of the folder is its own; with several, a file belongs to
  the group whose stem is the longest prefix of its name followed by a non-alphanumeric
  character or nothing (``TS_1`` does not take ``TS_10_rec.mrc``), and other files belong to none.
* **Volumes.** ``.st``/``.mrcs``/``.ali`` are tilt-series stacks, ``.rec`` tomograms; a ``.mrc``
  is a stack when its section count (header ``nz``) equals the number of tilt angles (mdoc
  sections, else ``.tlt`` lines) and a tomogram otherwise (decided by the caller, which reads the
  header). Movie frames named by the mdoc's ``SubFramePath`` are neither.

Formats: SerialEM autodoc (https://bio3d.colorado.edu/SerialEM/hlp/html/about_formats.htm),
IMOD ``.tlt``/``.xf`` (https://bio3d.colorado.edu/imod/doc/man/tiltalign.html).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# The user's dataset config for the CryoET Data Portal metadata (services/metadata/cryoet/config.py).
CONFIG_NAME = "cryoet_dataset.yaml"

STACK_SUFFIXES = (".st", ".mrcs", ".ali")
TOMOGRAM_SUFFIXES = (".rec",)
AMBIGUOUS_SUFFIXES = (".mrc",)
VOLUME_SUFFIXES = STACK_SUFFIXES + TOMOGRAM_SUFFIXES + AMBIGUOUS_SUFFIXES
# Raw stack first: an aligned .ali beside a .st is an alignment product, not the tilt series.
STACK_PRIORITY = {".st": 0, ".mrcs": 1, ".mrc": 2, ".ali": 3}
_STEM_SUFFIXES = (".mdoc", ".rawtlt", ".tlt", ".xf", ".st", ".mrcs", ".ali", ".rec", ".mrc")
_FRAME_MDOC_SUFFIXES = (".tif.mdoc", ".tiff.mdoc", ".eer.mdoc")
_SNIFF_BYTES = 16384  # the global header and the first section of any mdoc fit in this
_ZVALUE = re.compile(rb"^\s*\[\s*ZValue\s*=", re.MULTILINE | re.IGNORECASE)
_MONTAGE = re.compile(rb"^\s*(Montage\s*=\s*1\b|\[\s*MontSection\b)", re.MULTILINE | re.IGNORECASE)
_SUBFRAME = re.compile(r"^\s*SubFramePath\s*=\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
_TILT_ANGLE = re.compile(rb"^\s*TiltAngle\s*=\s*([-+0-9.eE]+)", re.MULTILINE)
MIN_TILT_SPAN_DEG = 1.0  # images within this span are one view, not a tilt series


@dataclass(frozen=True)
class MdocSniff:
    """What a quick look at a tilt-series mdoc tells.

    Attributes:
        sections: number of ``[ZValue]`` sections (= tilt images).
        sub_frames: base names of the movie files its ``SubFramePath`` lines name.
    """

    sections: int
    sub_frames: frozenset[str]


@dataclass
class TiltSeriesFiles:
    """The files of one tilt series in a folder (absolute paths; volumes still unclassified).

    Attributes:
        stem: the group's stem, e.g. ``TS_01``.
        mdoc, rawtlt, tlt, xf: the acquisition / IMOD files, or None.
        n_angles: tilt images according to the mdoc (else the tilt-angle file), or None.
        volumes: candidate MRC-format files (stacks, tomograms, ``.mrc`` to classify by ``nz``).
    """

    stem: str
    mdoc: Path | None = None
    rawtlt: Path | None = None
    tlt: Path | None = None
    xf: Path | None = None
    n_angles: int | None = None
    volumes: list[Path] = field(default_factory=list)


def series_stem(name: str) -> str:
    """``TS_01.mrc.mdoc`` → ``TS_01``; ``017.tlt`` → ``017`` (every known suffix stripped)."""
    lowered = name.lower()
    stripped = True
    while stripped:
        stripped = False
        for suffix in _STEM_SUFFIXES:
            if lowered.endswith(suffix) and len(lowered) > len(suffix):
                name, lowered = name[: -len(suffix)], lowered[: -len(suffix)]
                stripped = True
    return name


def sniff_mdoc(path: Path) -> MdocSniff | None:
    """A tilt-series mdoc's section count and movie names, or None when ``path`` is not one.

    Not one: unreadable, no ``[ZValue]`` section in its first 16 KiB (a ``[FrameSet]`` movie
    mdoc), a montage, a single section, or sections whose tilt angles all lie within
    :data:`MIN_TILT_SPAN_DEG` (a section without ``TiltAngle`` keeps it a tilt series, so the
    metadata service reports the defect). Never raises.
    """
    if path.name.lower().endswith(_FRAME_MDOC_SUFFIXES):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
            if not _ZVALUE.search(head) or _MONTAGE.search(head):
                return None
            data = head + fh.read()
    except OSError:
        return None
    sections = len(_ZVALUE.findall(data))
    if _MONTAGE.search(data) or sections < 2:
        return None
    try:
        angles = [float(a) for a in _TILT_ANGLE.findall(data)]
    except ValueError:
        angles = []
    if len(angles) == sections and max(angles) - min(angles) < MIN_TILT_SPAN_DEG:
        return None
    frames = {re.split(r"[\\/]", m)[-1] for m in _SUBFRAME.findall(data.decode("latin-1"))}
    return MdocSniff(sections=sections, sub_frames=frozenset(f for f in frames if f))


def count_angles(path: Path) -> int | None:
    """Non-empty lines of an IMOD ``.tlt``/``.rawtlt`` (one angle per line), or None if unreadable."""
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except OSError:
        return None


def _owner(name: str, stems: list[str]) -> str | None:
    """The longest stem that prefixes ``name`` at a word boundary (``TS_1`` ≠ ``TS_10_rec.mrc``)."""
    for stem in sorted(stems, key=len, reverse=True):
        if name.startswith(stem) and (len(name) == len(stem) or not name[len(stem)].isalnum()):
            return stem
    return None


def group_tilt_series(folder: Path, filenames: list[str]) -> list[TiltSeriesFiles]:
    """Sort a folder's files into tilt series; [] when the folder holds none.

    Args:
        folder: the folder (its real path).
        filenames: its file names (hidden and temporary names already removed), sorted.

    Returns:
        one :class:`TiltSeriesFiles` per anchor stem, sorted by stem; each has an mdoc or a
        tilt-angle file. When a role has several candidates, one named with the group's own stem
        wins, else the first by name.
    """
    lowered = {n: n.lower() for n in filenames}
    mdocs: dict[str, tuple[Path, MdocSniff]] = {}
    for name in filenames:
        if lowered[name].endswith(".mdoc"):
            sniff = sniff_mdoc(folder / name)
            if sniff is not None:
                mdocs.setdefault(series_stem(name), (folder / name, sniff))
    angle_files = [n for n in filenames if lowered[n].endswith((".rawtlt", ".tlt"))]
    stems = sorted(mdocs) if mdocs else sorted({series_stem(n) for n in angle_files})
    if not stems:
        return []
    groups = {s: TiltSeriesFiles(stem=s) for s in stems}
    frames: set[str] = set()
    for stem, (path, sniff) in mdocs.items():
        groups[stem].mdoc = path
        groups[stem].n_angles = sniff.sections
        frames |= sniff.sub_frames

    def owner(name: str) -> TiltSeriesFiles | None:
        if len(groups) == 1:
            return groups[stems[0]]
        stem = _owner(name, stems)
        return groups[stem] if stem else None

    # a name whose stem is a group's own comes first, so it wins its role (TS_01.tlt over TS_01_fid.tlt)
    for name in sorted(filenames, key=lambda n: (series_stem(n) not in groups, n)):
        low = lowered[name]
        group = owner(name)
        if group is None or name in frames:
            continue
        path = folder / name
        if low.endswith(".rawtlt") and group.rawtlt is None:
            group.rawtlt = path
        elif low.endswith(".tlt") and not low.endswith(".rawtlt") and group.tlt is None:
            group.tlt = path
        elif low.endswith(".xf") and group.xf is None:
            group.xf = path
        elif low.endswith(VOLUME_SUFFIXES):
            group.volumes.append(path)
    for group in groups.values():
        if group.n_angles is None:
            angle_file = group.rawtlt or group.tlt
            group.n_angles = count_angles(angle_file) if angle_file else None
    return [groups[s] for s in stems]
