"""Render parameters, their defaults, and where a render with given parameters is stored.

The defaults give prismPYP's layout (``<dataset>/webp/<micrograph_name>.webp``). Any other
parameter set is a *variant*: its images go beside the defaults under
``<dataset>/renders/<tag>/...`` where ``tag`` is derived from the parameters that differ from
the defaults, so the same parameters always land on the same keys (a repeated reprocess
rewrites nothing) and different parameters never overwrite each other (DESIGN.md, "Artifacts").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cryobus.shared.errors import InputError


class RenderParams(BaseModel):
    """How previews are rendered. Every field has the default used for automatic renders."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_size: int = Field(default=1024, ge=16, le=16384, description="Long side of a micrograph preview, px (upper bound; binning is by an integer factor).")
    extra_sizes: tuple[int, ...] = Field(default=(), description="More preview sizes (long side, px), stored as `webp/<size>px/<name>.webp`.")
    clip_percentiles: tuple[float, float] = Field(default=(0.5, 99.5), description="Percentiles of the binned image mapped to black and white.")
    lossless: bool = Field(default=True, description="Lossless WebP; False gives lossy WebP at `quality`.")
    quality: int | None = Field(default=None, ge=0, le=100, description="Lossy: visual quality (default 90); lossless: compression effort (default 25).")
    stack_mode: Literal["first", "sum"] = Field(default="first", description="3-D MRC / multi-page TIFF: first section, or the sum of all.")
    spectrum_size: int = Field(default=512, ge=64, le=4096, description="Edge of the power-spectrum image, px.")
    spectrum_tile: int = Field(default=512, ge=64, le=4096, description="Tile edge of the averaged periodogram, px.")
    spectrum_overlap: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Overlap of periodogram tiles. 0 by default: 50 % (Welch's choice) costs 3.5x for a display "
        "that looks the same once 64 tiles of a 4k micrograph are averaged (docs/performance.md).",
    )
    ctf_overlay: Literal["rings", "split", "none"] = Field(
        default="rings", description="How a CTF fit from the metadata is drawn on a computed spectrum."
    )
    pick_radius_A: float | None = Field(
        default=None, gt=0, description="Circle radius for particle picks, Å; default: half the extraction box, else 1.5 % of the image."
    )
    tomogram_slab: int = Field(default=1, ge=1, le=101, description="Sections averaged around the central slice of a tomogram.")

    @field_validator("clip_percentiles")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {v}")
        return v

    @field_validator("extra_sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 16 <= s <= 16384 for s in v):
            raise ValueError(f"every extra size must be in 16..16384, got {v}")
        return tuple(sorted(set(v)))

    def changed(self) -> dict[str, Any]:
        """The parameters that differ from the defaults (JSON-ready), sorted by name."""
        default = RenderParams().model_dump(mode="json")
        mine = self.model_dump(mode="json")
        return {k: mine[k] for k in sorted(mine) if mine[k] != default[k]}

    @property
    def tag(self) -> str | None:
        """``None`` for the defaults; otherwise ``p<10 hex>`` from the changed parameters."""
        changed = self.changed()
        if not changed:
            return None
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()
        return f"p{digest[:10]}"

    def prefix(self, dataset: str) -> str:
        """Store prefix of this parameter set's images: ``<dataset>`` or ``<dataset>/renders/<tag>``."""
        return dataset if self.tag is None else f"{dataset}/renders/{self.tag}"

    @classmethod
    def parse(cls, values: dict[str, Any], *, file: str | None = None) -> RenderParams:
        """Validate user-given parameters (a reprocess command's ``params``).

        Raises:
            InputError: unknown parameter or bad value; ``field`` names the parameter.
        """
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            name = ".".join(str(p) for p in first["loc"]) or "params"
            raise InputError(f"bad render parameter {name}: {first['msg']}", file=file, field=name) from err


DEFAULT = RenderParams()
