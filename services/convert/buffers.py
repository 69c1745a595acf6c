"""Stack-sized CPU tensors, reused from one stack to the next.

A conversion of N stacks of the same shape would otherwise allocate several fresh stack-sized
arrays per stack (read buffer, physical images, Fourier coefficients: ≈ 0.4 GB per 1024 images
of 128²). Fresh memory is paid for in page faults — each 4 KiB page mapped and zeroed by the
kernel on first touch — which on a small machine cost as much system time as the transform's
arithmetic. Tensors handed back after a stack is written serve the next one.
"""

from __future__ import annotations

import threading

import torch


class TensorRecycler:
    """A small free-list of CPU tensors by (shape, dtype).

    Args:
        keep: tensors kept per (shape, dtype); more handed back are dropped.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._free: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous CPU tensor of ``shape`` and ``dtype`` with undefined contents."""
        key = (tuple(int(s) for s in shape), dtype)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        # torch.empty, not numpy: numpy asks for transparent huge pages for large arrays, and in a
        # fresh process whose page cache is full of just-written stacks the kernel's compaction for
        # them cost more system time (2.2 s vs 0.75 s for 2048 images of 128²) than it saved.
        return torch.empty(key[0], dtype=dtype)

    def give(self, *tensors: torch.Tensor) -> None:
        """Hand tensors back; the caller must not use them afterwards."""
        with self._lock:
            for t in tensors:
                if t.device.type != "cpu" or not t.is_contiguous() or t.is_pinned():
                    continue
                free = self._free.setdefault((tuple(t.shape), t.dtype), [])
                if len(free) < self.keep and all(f.data_ptr() != t.data_ptr() for f in free):
                    free.append(t)
