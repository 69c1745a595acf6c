"""CTFFIND4/5 result text files (``<diagnostic>.txt``) and their diagnostic images.

Format, as documented by the comment header CTFFIND writes into every result file::

    # Output from CTFFind version 4.1.14, run on 2024-08-30 16:05:30
    # Input file: x_PS.mrc ; Number of micrographs: 1
    # Pixel size: 1.400 Angstroms ; acceleration voltage: 200.0 keV ; spherical aberration: 1.40 mm ; amplitude contrast: 0.10
    # Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; ...
    # Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of
    #   astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in
    #   Angstroms) up to which CTF rings were fit successfully
    1.000000 37034.929688 35846.542969 -14.849661 0.000000 0.017465 9.554261

CTFFIND 5 appends ``#8 - Estimated tilt axis angle; #9 - Estimated tilt angle ; #10 Estimated sample
thickness (in Angstroms)``. One data line per micrograph, or per tilt image of a tilt-series stack.
The header's pixel size is that of the image CTFFIND fitted (for RELION, the power spectrum
rescaled to ~1.4 Å/px), not necessarily the micrograph's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from cryobus.shared.errors import InputError

_HEADER_PATTERNS = {
    "pixel_size_A": re.compile(r"Pixel size:\s*([-+0-9.eE]+)\s*Angstroms", re.I),
    "voltage_kV": re.compile(r"acceleration voltage:\s*([-+0-9.eE]+)\s*keV", re.I),
    "cs_mm": re.compile(r"spherical aberration:\s*([-+0-9.eE]+)\s*mm", re.I),
    "amplitude_contrast": re.compile(r"amplitude contrast:\s*([-+0-9.eE]+)", re.I),
    "box_size": re.compile(r"Box size:\s*([0-9]+)\s*pixels", re.I),
}


@dataclass(frozen=True)
class CtffindResult:
    """One fitted CTF (one data line of a CTFFIND result file).

    Attributes:
        micrograph_number: column #1 (1-based index in the input stack; tilt index for tilt series).
        defocus_1_A, defocus_2_A: columns #2, #3, defocus along the two astigmatism axes, Å
            (RELION stores them as rlnDefocusU / rlnDefocusV).
        astigmatism_azimuth_deg: column #4, angle of the defocus-1 axis, degrees.
        phase_shift_rad: column #5, additional phase shift, radians.
        cross_correlation: column #6, CTFFIND's fit score (RELION's rlnCtfFigureOfMerit).
        fit_resolution_A: column #7, resolution up to which Thon rings were fit, Å (RELION's rlnCtfMaxResolution).
        pixel_size_A, voltage_kV, cs_mm, amplitude_contrast, box_size: from the header, None when absent.
        tilt_axis_angle_deg, tilt_angle_deg, sample_thickness_A: CTFFIND 5 columns #8–#10, None otherwise.
    """

    micrograph_number: int
    defocus_1_A: float
    defocus_2_A: float
    astigmatism_azimuth_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_A: float
    pixel_size_A: float | None = None
    voltage_kV: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    box_size: int | None = None
    tilt_axis_angle_deg: float | None = None
    tilt_angle_deg: float | None = None
    sample_thickness_A: float | None = None

    @property
    def mean_defocus_A(self) -> float:
        """(defocus 1 + defocus 2) / 2, Å."""
        return (self.defocus_1_A + self.defocus_2_A) / 2.0


def _header_facts(comment_lines: list[str]) -> dict[str, float | int]:
    text = " ".join(comment_lines)
    facts: dict[str, float | int] = {}
    for key, pattern in _HEADER_PATTERNS.items():
        m = pattern.search(text)
        if m:
            facts[key] = int(m.group(1)) if key == "box_size" else float(m.group(1))
    return facts


def read_ctffind_txt(path: str | Path) -> list[CtffindResult]:
    """Parse a CTFFIND 4/5 result text file.

    Args:
        path: the ``.txt`` summary CTFFIND writes beside its diagnostic image.

    Returns:
        One :class:`CtffindResult` per data line, in file order (every data line is returned even when
        the header's "Number of micrographs" disagrees). Header facts are copied into every result.

    Raises:
        InputError: file missing or unreadable; an ``_avrot.txt`` profile file; a data line with
            fewer than 7 numbers or a non-number (``field="line N"``); no data line at all.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read CTFFIND result: {exc}", file=str(p)) from exc
    comments = [ln for ln in lines if ln.lstrip().startswith("#")]
    if any("lines per micrograph" in ln for ln in comments):
        # The _avrot.txt profile file shares the header but holds 1-D curves, not fits.
        raise InputError("this is a CTFFIND rotational-average (_avrot.txt) file, not a result summary", file=str(p))
    facts = _header_facts(comments)
    results: list[CtffindResult] = []
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            values = [float(tok) for tok in stripped.split()]
        except ValueError as exc:
            raise InputError(
                f"non-numeric CTFFIND data line: {stripped[:80]!r}", file=str(p), field=f"line {lineno}"
            ) from exc
        if len(values) < 7 or not all(math.isfinite(v) for v in values[:7]):
            raise InputError(
                f"CTFFIND data line needs 7 finite numbers, got {stripped[:80]!r}", file=str(p), field=f"line {lineno}"
            )
        extra = values[7:10] + [None] * (3 - len(values[7:10]))
        results.append(
            CtffindResult(
                micrograph_number=int(round(values[0])),
                defocus_1_A=values[1],
                defocus_2_A=values[2],
                astigmatism_azimuth_deg=values[3],
                phase_shift_rad=values[4],
                cross_correlation=values[5],
                fit_resolution_A=values[6],
                tilt_axis_angle_deg=extra[0],
                tilt_angle_deg=extra[1],
                sample_thickness_A=extra[2],
                **facts,
            )
        )
    if not results:
        raise InputError("no CTFFIND data line found", file=str(p))
    return results


def diagnostic_image_path(txt_or_star_ctfimage_path: str | Path) -> Path:
    """CTFFIND's diagnostic MRC image (fitted CTF beside the power spectrum) for a result or RELION reference.

    * RELION's ``rlnCtfImage`` value ``CtfFind/job005/Movies/x_PS.ctf:mrc`` → ``CtfFind/job005/Movies/x_PS.ctf``
      (the ``:mrc`` suffix is RELION's "read as MRC" hint, not part of the file name).
    * A result ``x_PS.txt`` (or its profile ``x_PS_avrot.txt``) → ``x_PS.ctf`` (CTFFIND writes the
      summary with the diagnostic image's name and a ``.txt`` suffix; RELION names the image ``.ctf``). If ``x_PS.ctf`` does not exist but
      ``x_PS.mrc`` does (CTFFIND run by hand), that one is returned.
    * Anything else is returned as given.

    Relative paths stay relative (RELION paths are relative to the project directory).
    """
    text = str(txt_or_star_ctfimage_path)
    if text.endswith(":mrc"):
        return Path(text[: -len(":mrc")])
    p = Path(text)
    if p.suffix.lower() == ".txt":
        if p.stem.endswith("_avrot"):
            p = p.with_name(p.stem[: -len("_avrot")] + ".txt")
        ctf = p.with_suffix(".ctf")
        mrc = p.with_suffix(".mrc")
        if not ctf.exists() and mrc.exists():
            return mrc
        return ctf
    return p
