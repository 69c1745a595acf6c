"""CryoLike's image descriptor (the ``params_input`` ``.npz``): read, create, write.

Format (CryoLike ``metadata/image_descriptor.py``, ``SerializedImageDescriptor``; see
``shared/reference/cryolike-conversion.md`` §2): one ``np.savez_compressed`` archive with the
11 keys of :data:`DESCRIPTOR_KEYS`. ``n_pixels`` int64 (2,), ``pixel_size`` float64 (2,) Å,
``radius_max``/``dist_radii`` float64 0-d (polar-grid units, §4.3), ``n_inplanes`` int64 0-d,
``precision`` ``'single'|'double'``, ``viewing_distance`` float64, and four template-only keys
(``atom_radii`` may be None, stored as a 0-d object array).

Reading never unpickles arbitrary objects: object arrays (CryoLike stores ``None`` that way)
are read with an unpickler that only rebuilds plain numpy arrays of Python scalars.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cryobus.shared.errors import InputError

Precision = Literal["single", "double"]

DESCRIPTOR_KEYS: tuple[str, ...] = (
    "n_pixels",
    "pixel_size",
    "radius_max",
    "dist_radii",
    "n_inplanes",
    "precision",
    "viewing_distance",
    "atom_radii",
    "atom_selection",
    "use_protein_residue_model",
    "atom_shape",
)


@dataclass(frozen=True)
class ImageDescriptor:
    """CryoLike's image descriptor: the Cartesian image grid and the polar Fourier grid.

    Attributes:
        n_pixels: image size (axis 1, axis 2) in pixels, as CryoLike writes ``[nx, ny]``.
        pixel_size: pixel size (axis 1, axis 2) in Å.
        radius_max: largest polar radius, in CryoLike's polar units (frequency in Å⁻¹ is
            ``r · 2 / box_size``); ``resolution_factor · n_pixels / 4`` reaches Nyquist.
        dist_radii: shell spacing used to count shells (CryoLike: 0.25).
        n_inplanes: angles per shell.
        precision: ``'single'`` (complex64 Fourier output) or ``'double'`` (complex128).
        viewing_distance, atom_radii, atom_selection, use_protein_residue_model, atom_shape:
            template-only fields, carried through unchanged.
    """

    n_pixels: tuple[int, int]
    pixel_size: tuple[float, float]
    radius_max: float
    dist_radii: float
    n_inplanes: int
    precision: Precision = "single"
    viewing_distance: float = 1.0 / (4.0 * math.pi)
    atom_radii: float | None = None
    atom_selection: str | None = "name CA"
    use_protein_residue_model: bool = True
    atom_shape: str = "gaussian"

    @classmethod
    def from_values(
        cls,
        n_pixels: int | tuple[int, int],
        pixel_size: float | tuple[float, float],
        precision: Precision = "single",
        resolution_factor: float = 1.0,
        viewing_distance: float | None = None,
        n_inplanes: int | None = None,
        atom_radii: float | None = None,
        atom_selection: str | None = "name CA",
        use_protein_residue_model: bool = True,
        atom_shape: str = "gaussian",
    ) -> ImageDescriptor:
        """The descriptor CryoLike's ``ImageDescriptor.from_individual_values`` builds.

        Defaults as in CryoLike (reference §2.1): ``radius_max = resolution_factor · n_pixels / 4``
        (of the first axis), ``dist_radii = 0.25``, ``n_inplanes = 2 · n_pixels``,
        ``viewing_distance = 1 / (4π) / resolution_factor``.

        Raises:
            InputError: a non-positive size, pixel size or resolution factor (``field`` names it).
        """
        n = _pair(n_pixels, int, "n_pixels")
        p = _pair(pixel_size, float, "pixel_size")
        if resolution_factor <= 0:
            raise InputError(f"resolution_factor must be > 0, got {resolution_factor}", field="resolution_factor")
        desc = cls(
            n_pixels=n,
            pixel_size=p,
            radius_max=float(resolution_factor * n[0] * 0.25),
            dist_radii=0.25,
            n_inplanes=int(n_inplanes if n_inplanes is not None else 2 * n[0]),
            precision=precision,
            viewing_distance=float(
                viewing_distance if viewing_distance is not None else 1.0 / (4.0 * math.pi) / resolution_factor
            ),
            atom_radii=atom_radii,
            atom_selection=atom_selection,
            use_protein_residue_model=use_protein_residue_model,
            atom_shape=atom_shape,
        )
        desc.check()
        return desc

    @property
    def box_size_A(self) -> tuple[float, float]:
        """Box edge (axis 1, axis 2) in Å: ``n_pixels · pixel_size``."""
        return (self.n_pixels[0] * self.pixel_size[0], self.n_pixels[1] * self.pixel_size[1])

    def with_changes(self, **changes: Any) -> ImageDescriptor:
        """A copy with some fields replaced (e.g. ``precision``, ``pixel_size``)."""
        out = replace(self, **changes)
        out.check()
        return out

    def check(self, *, file: str | None = None) -> None:
        """Refuse values no grid can be built from.

        Raises:
            InputError: naming the offending key as ``field`` (and ``file`` when given).
        """
        if min(self.n_pixels) <= 0:
            raise InputError(f"n_pixels must be positive, got {list(self.n_pixels)}", file=file, field="n_pixels")
        if not all(math.isfinite(v) and v > 0 for v in self.pixel_size):
            raise InputError(f"pixel_size must be positive, got {list(self.pixel_size)}", file=file, field="pixel_size")
        if not (math.isfinite(self.radius_max) and self.radius_max > 0):
            raise InputError(f"radius_max must be positive, got {self.radius_max}", file=file, field="radius_max")
        if not (math.isfinite(self.dist_radii) and self.dist_radii > 0):
            raise InputError(f"dist_radii must be positive, got {self.dist_radii}", file=file, field="dist_radii")
        if self.n_inplanes < 1:
            raise InputError(f"n_inplanes must be >= 1, got {self.n_inplanes}", file=file, field="n_inplanes")
        if self.precision not in ("single", "double"):
            raise InputError(
                f"precision must be 'single' or 'double', got {self.precision!r}", file=file, field="precision"
            )

    def to_npz_dict(self) -> dict[str, Any]:
        """The 11 keys with CryoLike's dtypes (``np.savez`` of this dict gives CryoLike's layout).

        ``n_pixels`` int64 (2,), ``pixel_size`` float64 (2,), floats as float64 0-d, ints as
        int64 0-d, strings as 0-d unicode, ``None`` as a 0-d object array.
        """
        return {
            "n_pixels": np.asarray(self.n_pixels, dtype=np.int64),
            "pixel_size": np.asarray(self.pixel_size, dtype=np.float64),
            "radius_max": np.asarray(float(self.radius_max)),
            "dist_radii": np.asarray(float(self.dist_radii)),
            "n_inplanes": np.asarray(int(self.n_inplanes), dtype=np.int64),
            "precision": np.asarray(self.precision),
            "viewing_distance": np.asarray(float(self.viewing_distance)),
            "atom_radii": np.asarray(self.atom_radii if self.atom_radii is None else float(self.atom_radii)),
            "atom_selection": np.asarray(self.atom_selection),
            "use_protein_residue_model": np.asarray(bool(self.use_protein_residue_model)),
            "atom_shape": np.asarray(self.atom_shape),
        }


@dataclass(frozen=True)
class DefaultDescriptor:
    """An image descriptor to be built from the particles themselves, with CryoLike's defaults.

    What the service uses when no params file is given: ``n_pixels`` defaults to the stored image
    size (after any downsampling), ``pixel_size`` to the box of the images divided by ``n_pixels``
    (so the box is always the images' box), then :meth:`ImageDescriptor.from_values` applies
    CryoLike's ``from_individual_values`` defaults (``radius_max = resolution_factor · n_pixels / 4``,
    ``n_inplanes = 2 · n_pixels``, ``dist_radii = 0.25``).
    """

    n_pixels: int | tuple[int, int] | None = None
    pixel_size: float | tuple[float, float] | None = None
    precision: Precision = "single"
    resolution_factor: float = 1.0
    n_inplanes: int | None = None
    viewing_distance: float | None = None

    def resolve(self, stored_shape: tuple[int, int], stored_pixel_size: float) -> ImageDescriptor:
        """The descriptor for images of ``stored_shape`` px of ``stored_pixel_size`` Å.

        Raises:
            InputError: a non-positive value (``field`` names it).
        """
        n = _pair(self.n_pixels, int, "n_pixels") if self.n_pixels is not None else tuple(int(v) for v in stored_shape)
        if self.pixel_size is not None:
            p = _pair(self.pixel_size, float, "pixel_size")
        else:
            p = tuple(stored_shape[i] * stored_pixel_size / n[i] for i in range(2))
        return ImageDescriptor.from_values(
            n_pixels=n, pixel_size=p, precision=self.precision, resolution_factor=self.resolution_factor,
            n_inplanes=self.n_inplanes, viewing_distance=self.viewing_distance,
        )


def _pair(value: Any, kind: type, field: str) -> tuple[Any, Any]:
    arr = np.atleast_1d(np.asarray(value)).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size < 2:
        raise InputError(f"{field} must hold 1 or 2 values, got {value!r}", field=field)
    # CryoLike keeps the first two entries of longer arrays (``project_descriptor``).
    a, b = kind(arr[0]), kind(arr[1])
    if not (a > 0 and b > 0):
        raise InputError(f"{field} must be positive, got {value!r}", field=field)
    return (a, b)


# --- reading ---------------------------------------------------------------------------------

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy object arrays of plain Python values (None, numbers, strings) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_npz_safely(source: str | os.PathLike | bytes) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, object arrays included, without running pickled code.

    Args:
        source: path of the ``.npz`` file, or its bytes.

    Returns:
        ``{key: ndarray}`` in archive order.

    Raises:
        InputError: not a readable npz archive, or an object array holding anything but plain
            values (``field`` = the key); ``file`` is the path when one was given.
        FileNotFoundError: the path does not exist.
    """
    file = None if isinstance(source, bytes) else str(source)
    opened = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    out: dict[str, np.ndarray] = {}
    try:
        with opened, zipfile.ZipFile(opened) as archive:
            for member in archive.namelist():
                key = member[:-4] if member.endswith(".npy") else member
                with archive.open(member) as fp:
                    try:
                        out[key] = _read_member(fp)
                    except (pickle.UnpicklingError, ValueError, EOFError) as exc:
                        raise InputError(f"unreadable array {key!r} in npz: {exc}", file=file, field=key) from exc
    except zipfile.BadZipFile as exc:
        raise InputError(f"not an .npz archive: {exc}", file=file) from exc
    return out


def _read_member(fp: Any) -> np.ndarray:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        arr = _ArrayOnlyUnpickler(fp).load()
        if not isinstance(arr, np.ndarray):
            raise ValueError("object member is not an array")
        for item in arr.ravel():
            if item is not None and not isinstance(item, (bool, int, float, str, bytes)):
                raise ValueError(f"object array holds a {type(item).__name__}")
        return arr
    count = int(np.prod(shape)) if shape else 1
    data = np.frombuffer(fp.read(count * dtype.itemsize), dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran else "C").copy()


def _scalar(arr: np.ndarray) -> Any:
    """0-d (or 1-element) array → Python value; None stays None."""
    if arr.dtype.hasobject:
        return arr.item() if arr.size == 1 else None
    if arr.size == 0:
        return None
    return arr.reshape(-1)[0].item()


def read_params(source: str | os.PathLike | bytes) -> ImageDescriptor:
    """Read a CryoLike params ``.npz`` (``ImageDescriptor.save`` output).

    Args:
        source: path or bytes of the archive.

    Returns:
        The :class:`ImageDescriptor`; a scalar ``n_pixels``/``pixel_size`` is projected to
        two equal values, as CryoLike does.

    Raises:
        InputError: missing key (``field`` = the key), unreadable archive, or invalid values.
        FileNotFoundError: the path does not exist.
    """
    file = None if isinstance(source, bytes) else str(source)
    raw = load_npz_safely(source)
    for key in DESCRIPTOR_KEYS:
        if key not in raw:
            raise InputError(f"params file lacks the key {key!r}", file=file, field=key)
    try:
        n_pixels = _pair(raw["n_pixels"], int, "n_pixels")
        pixel_size = _pair(raw["pixel_size"], float, "pixel_size")
    except InputError as exc:
        raise InputError(exc.reason, file=file, field=exc.field) from None
    viewing = _scalar(raw["viewing_distance"])
    if viewing is None:
        raise InputError("viewing_distance is None (CryoLike cannot load such a file)", file=file, field="viewing_distance")
    atom_radii = _scalar(raw["atom_radii"])
    desc = ImageDescriptor(
        n_pixels=n_pixels,
        pixel_size=pixel_size,
        radius_max=float(_scalar(raw["radius_max"])),
        dist_radii=float(_scalar(raw["dist_radii"])),
        n_inplanes=int(_scalar(raw["n_inplanes"])),
        precision=str(_scalar(raw["precision"])),  # type: ignore[arg-type]
        viewing_distance=float(viewing),
        atom_radii=None if atom_radii is None else float(atom_radii),
        atom_selection=_scalar(raw["atom_selection"]),
        use_protein_residue_model=bool(_scalar(raw["use_protein_residue_model"])),
        atom_shape=str(_scalar(raw["atom_shape"])),
    )
    desc.check(file=file)
    return desc


def params_bytes(desc: ImageDescriptor) -> bytes:
    """The params ``.npz`` as CryoLike writes it (``np.savez_compressed``), as bytes."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **desc.to_npz_dict())
    return buf.getvalue()


def write_params(desc: ImageDescriptor, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``desc`` as a CryoLike params ``.npz``.

    Raises:
        InputError: ``path`` does not end in ``.npz`` (CryoLike's rule), or it exists and
            ``overwrite`` is False (``field="overwrite"``).
    """
    p = Path(path)
    if p.suffix != ".npz":
        raise InputError("a params file name must end in .npz", file=str(p), field="params")
    if p.exists() and not overwrite:
        raise InputError("params file exists; pass overwrite=True to replace it", file=str(p), field="overwrite")
    p.write_bytes(params_bytes(desc))
    return p
