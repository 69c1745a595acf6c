"""CryoLike's output layout, written to an artifact store (``file://`` folder or ``s3://``).

Keys under ``prefix`` (CryoLike ``file_mgmt``, reference §6), NNNNNN = stack number:

* ``phys/particles_phys_stack_NNNNNN.pt``: ``torch.save`` of the physical images (B, N0, N1),
  in the stack's dtype (float32, or float16 for MRC mode 12);
* ``fft/particles_fourier_stack_NNNNNN.pt``: ``torch.save`` of the polar Fourier images
  (B, n_shells, n_inplanes), complex64 ('single') or complex128 ('double');
* ``fft/particles_fourier_stack_NNNNNN.npz``: ``np.savez_compressed`` of the image descriptor's
  11 keys, the lens keys and ``n_images`` (+ ``stack_start``/``stack_end`` for STAR+MRC pairs);
  ``None`` is a 0-d object array, so readers need ``allow_pickle=True`` (as for CryoLike's);
* ``plots/particles_phys_stack_NNNNNN.png``, ``plots/particles_fourier_stack_NNNNNN.png``,
  ``plots/power_spectrum_stack_NNNNNN.png``.

Tensors are saved compact (CryoLike's are views whose whole buffer ends up in the file). Each
object is written atomically by the store; the npz is written last, so a stack whose npz exists
is complete.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np
import torch

from cryobus.shared.store import ArtifactStore, StoredObject

PT_MEDIA_TYPE = "application/octet-stream"
NPZ_MEDIA_TYPE = "application/x-npz"
PNG_MEDIA_TYPE = "image/png"

# put(key, data, media_type, role) -> StoredObject: one write (and, in the service, its announcement).
Put = Callable[[str, bytes, str, str], StoredObject]


def stack_keys(index: int, *, prefix: str = "", plots: bool = True) -> dict[str, str]:
    """The keys of stack ``index``: roles ``phys``, ``fourier``, ``npz`` and, with ``plots``,
    ``plot_phys``, ``plot_fourier``, ``plot_power``; each prefixed with ``prefix/`` when given."""
    n = f"{index:06d}"
    keys = {
        "phys": f"phys/particles_phys_stack_{n}.pt",
        "fourier": f"fft/particles_fourier_stack_{n}.pt",
        "npz": f"fft/particles_fourier_stack_{n}.npz",
    }
    if plots:
        keys |= {
            "plot_phys": f"plots/particles_phys_stack_{n}.png",
            "plot_fourier": f"plots/particles_fourier_stack_{n}.png",
            "plot_power": f"plots/power_spectrum_stack_{n}.png",
        }
    p = prefix.strip("/")
    return {role: f"{p}/{key}" if p else key for role, key in keys.items()}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """``torch.save`` of a CPU copy of ``tensor`` holding only its own elements."""
    t = tensor.detach().to("cpu")
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def npz_bytes(entries: dict[str, Any]) -> bytes:
    """``np.savez_compressed`` of ``entries`` in their order (``None`` → 0-d object array)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) if v is not None else np.asarray(None, dtype=object) for k, v in entries.items()})
    return buf.getvalue()


def write_stack(
    store: ArtifactStore,
    keys: dict[str, str],
    *,
    phys: torch.Tensor,
    fourier: torch.Tensor,
    npz: dict[str, Any],
    plots: dict[str, bytes] | None = None,
    put: Put | None = None,
) -> dict[str, StoredObject]:
    """Write one stack's objects (tensors, plots, then the npz).

    Args:
        store: the artifact store.
        keys: from :func:`stack_keys`.
        phys: (B, N0, N1) real tensor, any device.
        fourier: (B, n_shells, n_inplanes) complex tensor, any device.
        npz: the npz entries, in order.
        plots: PNG bytes by role (``plot_phys``, ``plot_fourier``, ``plot_power``).
        put: writes one object instead of ``store.put``: ``put(key, data, media_type, role)``
            (the service passes one that also announces the object).

    Returns:
        The stored records by role.

    Raises:
        TransientError: the store failed.
    """
    def write(role: str, data: bytes, media_type: str) -> StoredObject:
        if put is not None:
            return put(keys[role], data, media_type, role)
        return store.put(keys[role], data, media_type=media_type)

    out = {
        "phys": write("phys", tensor_bytes(phys), PT_MEDIA_TYPE),
        "fourier": write("fourier", tensor_bytes(fourier), PT_MEDIA_TYPE),
    }
    for role, data in (plots or {}).items():
        out[role] = write(role, data, PNG_MEDIA_TYPE)
    out["npz"] = write("npz", npz_bytes(npz), NPZ_MEDIA_TYPE)
    return out
