"""Physical-space preparation of particle images, as CryoLike does it before the transform.

Source: CryoLike ``stacks/image.py`` (reference §4.1 steps 2–3):

* optional pooling by an integer factor f: ``avg_pool2d`` ('mean') or ``max_pool2d`` ('max'),
  window = stride = f, trailing rows/columns dropped (floor division, no centring);
* per image: subtract the mean, then divide by the maximum absolute value. This is what
  CryoLike stores in ``phys/`` (every image has mean ≈ 0 and max |·| = 1).

Arithmetic stays in the stored dtype, as in CryoLike, so results are bit-identical to its CPU
output: float32 stacks in float32; float16 (MRC mode 12) stacks in float16, where torch
evaluates each operation in float32 and rounds to float16 (mean pooling sums in float32 and
divides by f², then rounds). Integer stacks (MRC modes 0, 1, 6), which CryoLike cannot read,
are converted to float32 first. All functions work on any torch device.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DownsampleType = Literal["mean", "max"]


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype physical images are processed and stored in: float16 and float64 stay, others → float32."""
    return dtype if dtype in (torch.float16, torch.float32, torch.float64) else torch.float32


def downsample(images: torch.Tensor, factor: int, kind: DownsampleType = "mean") -> torch.Tensor:
    """Pool each image by ``factor`` (window = stride = factor).

    Args:
        images: real tensor (B, N0, N1).
        factor: integer ≥ 1; 1 returns ``images`` unchanged.
        kind: 'mean' (average of each f×f block) or 'max' (its maximum).

    Returns:
        (B, N0 // factor, N1 // factor) in the dtype of ``images`` (float16 blocks are averaged
        in float32 and rounded once, as torch does on the CPU).

    Raises:
        ValueError: factor < 1, an unknown kind, or an image smaller than the factor.
    """
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    if kind not in ("mean", "max"):
        raise ValueError(f"downsample type must be 'mean' or 'max', got {kind!r}")
    if factor == 1:
        return images
    if min(images.shape[1:]) < factor:
        raise ValueError(f"images of {tuple(images.shape[1:])} px cannot be pooled by {factor}")
    dtype = images.dtype
    # float16 pooling is not implemented on every device: pool in float32, round once.
    work = images.unsqueeze(1).to(torch.float32 if dtype == torch.float16 else dtype)
    pooled = F.avg_pool2d(work, factor, factor) if kind == "mean" else F.max_pool2d(work, factor, factor)
    return pooled.squeeze(1).to(dtype)


def center_and_scale(images: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per image: subtract its mean, then divide by its maximum absolute value.

    Args:
        images: real tensor (B, N0, N1); integer dtypes are converted to float32.
        out: optional tensor of the result's shape, dtype and device to write into (saves
            allocating, and page-faulting, a stack-sized array per call).

    Returns:
        ``out`` or a new tensor, same shape and device as ``images``, dtype :func:`storage_dtype`.
        A constant image (max |I − mean| = 0) becomes all zeros instead of NaN.
    """
    x = images.to(storage_dtype(images.dtype))
    centred = torch.sub(x, x.mean(dim=(1, 2), keepdim=True), out=out) if out is not None else x - x.mean(dim=(1, 2), keepdim=True)
    # max |c| = max(max c, −min c), exactly: the same scale as CryoLike's abs().amax() without an
    # image-sized temporary.
    scale = torch.maximum(centred.amax(dim=(1, 2), keepdim=True), centred.amin(dim=(1, 2), keepdim=True).neg())
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return centred.div_(scale)
