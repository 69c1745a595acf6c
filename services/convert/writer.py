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

Tensors are saved compact (CryoLike's are views whose whole buffer ends up in the file) and
streamed: the Fourier file is written while its later images are still being transformed
(:mod:`~cryobus.services.convert.pt_stream`), in torch's format with the archive named after
the file, as when CryoLike saves to a path. Each object is written atomically by the store; the
npz is written last, so a stack whose npz exists is complete.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from cryobus.services.convert.pt_stream import pt_chunks
from cryobus.shared.store import ArtifactStore, StoredObject

if TYPE_CHECKING:
    from collections.abc import Buffer

PT_MEDIA_TYPE = "application/octet-stream"
NPZ_MEDIA_TYPE = "application/x-npz"
PNG_MEDIA_TYPE = "image/png"

# put(key, data, media_type, role) -> StoredObject: one write (and, in the service, its announcement);
# data is bytes or an iterable of byte buffers to write as they come (ArtifactStore.put_stream).
Put = Callable[[str, "bytes | Iterable[Buffer]", str, str], StoredObject]


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


def compact_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU, contiguous and owning exactly its elements (a copy only when needed)."""
    t = tensor.detach().to("cpu")
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


def npz_bytes(entries: dict[str, Any]) -> bytes:
    """``np.savez_compressed`` of ``entries`` in their order (``None`` → 0-d object array)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) if v is not None else np.asarray(None, dtype=object) for k, v in entries.items()})
    return buf.getvalue()


def _archive(key: str) -> str:
    return key.rpartition("/")[2].removesuffix(".pt")


def write_stack(
    store: ArtifactStore,
    keys: dict[str, str],
    *,
    phys: torch.Tensor,
    fourier: torch.Tensor,
    npz: dict[str, Any],
    fourier_ready: Iterable[int] | None = None,
    plots: dict[str, bytes] | Callable[[], dict[str, bytes]] | None = None,
    put: Put | None = None,
) -> dict[str, StoredObject]:
    """Write one stack's objects (phys, Fourier as it is computed, plots, then the npz).

    Args:
        store: the artifact store.
        keys: from :func:`stack_keys`.
        phys: (B, N0, N1) real tensor, any device.
        fourier: (B, n_shells, n_inplanes) complex tensor; with ``fourier_ready``, a contiguous
            CPU tensor being filled in image order by another thread.
        npz: the npz entries, in order.
        fourier_ready: increasing counts of leading images of ``fourier`` that are final, ending at
            B (:meth:`~.cpu_pool.ChunkProgress.ready`); its exceptions abandon the write. None:
            ``fourier`` is complete.
        plots: PNG bytes by role (``plot_phys``, ``plot_fourier``, ``plot_power``), or a callable
            returning them, called once the Fourier stack is complete.
        put: writes one object instead of ``store.put``/``store.put_stream``:
            ``put(key, data, media_type, role)`` (the service passes one that also announces it).

    Returns:
        The stored records by role.

    Raises:
        TransientError: the store failed.
    """
    def write(role: str, data: bytes | Iterable[Buffer], media_type: str) -> StoredObject:
        if put is not None:
            return put(keys[role], data, media_type, role)
        if isinstance(data, bytes):
            return store.put(keys[role], data, media_type=media_type)
        return store.put_stream(keys[role], data, media_type=media_type)

    phys = compact_cpu(phys)
    if fourier_ready is None:
        fourier = compact_cpu(fourier)
        fourier_ready = [fourier.shape[0]]
    out = {
        "phys": write("phys", pt_chunks(phys, _archive(keys["phys"]), [phys.shape[0]]), PT_MEDIA_TYPE),
        "fourier": write("fourier", pt_chunks(fourier, _archive(keys["fourier"]), fourier_ready), PT_MEDIA_TYPE),
    }
    for role, data in ((plots() if callable(plots) else plots) or {}).items():
        out[role] = write(role, data, PNG_MEDIA_TYPE)
    out["npz"] = write("npz", npz_bytes(npz), NPZ_MEDIA_TYPE)
    return out
