"""SerialEM ``.mdoc`` tilt-series metadata, read with teamtomo's ``mdocfile``.

Format: SerialEM autodoc (https://bio3d.colorado.edu/SerialEM/hlp/html/about_formats.htm):
global ``key = value`` lines, ``[T = ...]`` title lines, then one ``[ZValue = n]`` section per
image of the stack. Units as SerialEM writes them: ``TiltAngle`` °, ``PixelSpacing`` Å/px,
``ExposureDose`` e⁻/Å² per image, ``Voltage`` kV, ``ExposureTime`` s, ``Defocus`` µm.
The tilt axis is only in a title line: ``[T = Tilt axis angle = 84.7, binning = 1 ...]``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mdocfile
import pandas as pd

from cryobus.shared.errors import InputError

_TILT_AXIS = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)
_SOFTWARE = re.compile(r"\[T\s*=\s*(SerialEM)\b", re.IGNORECASE)


@dataclass(frozen=True)
class MdocSection:
    """One ``[ZValue = n]`` section: one image of the tilt series.

    Attributes:
        z_value: ``ZValue``, the section's index in the stack (0-based).
        tilt_angle: nominal stage tilt, °.
        exposure_dose: dose of this image, e⁻/Å² (``None`` when absent; SerialEM writes 0
            when it was not calibrated).
        date_time: ``DateTime`` as written (e.g. ``06-Jun-23  23:19:46``), or ``None``.
        prior_record_dose: ``PriorRecordDose``, e⁻/Å² received before this image, or ``None``.
        sub_frame_path: ``SubFramePath`` (movie file), or ``None``.
    """

    z_value: int
    tilt_angle: float
    exposure_dose: float | None
    date_time: str | None
    prior_record_dose: float | None
    sub_frame_path: str | None


@dataclass(frozen=True)
class MdocSummary:
    """What a tilt-series ``.mdoc`` says, sections sorted by ``ZValue``.

    Attributes:
        path: the file read.
        sections: one entry per ``[ZValue]`` section, in stack order.
        pixel_spacing_A: ``PixelSpacing`` (Å/px) of the images, or ``None``.
        voltage_kV: ``Voltage`` (kV), or ``None`` (older SerialEM versions do not write it).
        tilt_axis_deg: from the ``Tilt axis angle`` title, °, or ``None``.
        magnification: nominal ``Magnification``, or ``None``.
        binning: camera ``Binning``, or ``None``.
        camera_index: SerialEM ``CameraIndex`` (a number, not a model name), or ``None``.
        image_size: ``ImageSize`` (x, y) in pixels, or ``None``.
        software: ``"SerialEM"`` when a title names it, else ``None``.
        software_version: the ``Version`` line, or ``None``.
        titles: the raw ``[T = ...]`` lines.
    """

    path: Path
    sections: list[MdocSection]
    pixel_spacing_A: float | None
    voltage_kV: float | None
    tilt_axis_deg: float | None
    magnification: float | None
    binning: float | None
    camera_index: int | None
    image_size: tuple[int, int] | None
    software: str | None
    software_version: str | None
    titles: list[str] = field(default_factory=list)

    @property
    def tilt_angles(self) -> list[float]:
        """Nominal tilt angles in stack (``ZValue``) order, °."""
        return [s.tilt_angle for s in self.sections]

    @property
    def exposure_doses(self) -> list[float | None]:
        """Per-image dose in stack order, e⁻/Å² (``None`` where not written)."""
        return [s.exposure_dose for s in self.sections]


@contextmanager
def _quiet_mdocfile():
    # mdocfile logs a WARNING for every renamed or unknown key (one per section); those are
    # harmless for us and would flood the service log.
    logger = logging.getLogger("mdocfile")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _first(df: pd.DataFrame, column: str):
    """First non-null value of a column (global header keys are repeated on every row)."""
    if column not in df:
        return None
    values = df[column].dropna()
    return None if values.empty else values.iloc[0]


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() or None


def read_mdoc(path: str | os.PathLike) -> MdocSummary:
    """Read a SerialEM tilt-series ``.mdoc`` (one ``[ZValue]`` section per tilt image).

    Args:
        path: the ``.mdoc`` file.

    Returns:
        :class:`MdocSummary` with sections sorted by ``ZValue``.

    Raises:
        InputError: the file cannot be read or parsed (``field=None``), has no ``[ZValue]``
            section (``field="ZValue"``; e.g. a movie ``[FrameSet]`` mdoc), repeats a
            ``ZValue`` (``field="ZValue"``), or a section lacks ``TiltAngle``
            (``field="TiltAngle"``, the reason names the ``ZValue``).
    """
    path = Path(path)
    try:
        with _quiet_mdocfile():
            df = mdocfile.read(path)
    except FileNotFoundError as exc:
        raise InputError("mdoc file not found", file=path) from exc
    except Exception as exc:  # mdocfile raises plain ValueError/KeyError/pydantic errors
        raise InputError(f"cannot parse mdoc: {exc}", file=path) from exc

    if "ZValue" not in df or df["ZValue"].isna().all():
        raise InputError("mdoc has no [ZValue] sections (not a tilt-series mdoc)", file=path, field="ZValue")
    # montage mdocs add [MontSection] rows without a ZValue: they are not tilt images
    df = df[df["ZValue"].notna()].sort_values("ZValue", kind="stable").reset_index(drop=True)
    z_values = [int(z) for z in df["ZValue"]]
    if len(set(z_values)) != len(z_values):
        raise InputError("mdoc repeats a ZValue", file=path, field="ZValue")

    sections: list[MdocSection] = []
    for i, z in enumerate(z_values):
        row = df.iloc[i]
        angle = _num(row.get("TiltAngle"))
        if angle is None:
            raise InputError(f"section [ZValue = {z}] has no TiltAngle", file=path, field="TiltAngle")
        sections.append(
            MdocSection(
                z_value=z,
                tilt_angle=angle,
                exposure_dose=_num(row.get("ExposureDose")),
                date_time=_text(row.get("DateTime")),
                prior_record_dose=_num(row.get("PriorRecordDose")),
                sub_frame_path=_text(row.get("SubFramePath")),
            )
        )

    titles: list[str] = []
    if "titles" in df and len(df):
        titles = [str(t) for t in (df["titles"].iloc[0] or [])]
    tilt_axis = software = None
    for title in titles:
        if tilt_axis is None and (m := _TILT_AXIS.search(title)):
            tilt_axis = float(m.group(1))
        if software is None and _SOFTWARE.search(title):
            software = "SerialEM"

    size = _first(df, "ImageSize")
    image_size = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) and len(size) == 2 else None
    camera = _num(_first(df, "CameraIndex"))
    return MdocSummary(
        path=path,
        sections=sections,
        pixel_spacing_A=_num(_first(df, "PixelSpacing")),
        voltage_kV=_num(_first(df, "Voltage")),
        tilt_axis_deg=tilt_axis,
        magnification=_num(_first(df, "Magnification")),
        binning=_num(_first(df, "Binning")),
        camera_index=None if camera is None else int(camera),
        image_size=image_size,
        software=software,
        software_version=_text(_first(df, "Version")),
        titles=titles,
    )
