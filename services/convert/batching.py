"""Which images go into which output stack (CryoLike's ``convert_stacks``, reference §3).

Within a source (an indexed STAR/.cs, a job folder, or one STAR+MRC pair) images are cut into
consecutive stacks of ``batch_size``; only a source's last stack can be short, and stacks
never span two sources. For indexed and job-folder inputs there is one source, so images of
different MRC files are restacked together, as in CryoLike; STAR+MRC pairs each give
``ceil(n / batch_size)`` stacks. Stack numbers run on across sources from 0. With
``n_stacks_max > 0`` only the first ``n_stacks_max`` stacks are made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StackPlan:
    """One output stack.

    Attributes:
        index: the stack number (``NNNNNN`` in file names).
        source: index of the source its images come from.
        start, stop: its images are the source's output images ``[start, stop)``.
    """

    index: int
    source: int
    start: int
    stop: int

    @property
    def n_images(self) -> int:
        return self.stop - self.start


def plan_stacks(source_sizes: Sequence[int], batch_size: int, n_stacks_max: int = -1) -> list[StackPlan]:
    """Cut sources of the given sizes into stacks.

    Args:
        source_sizes: number of images of each source, in order.
        batch_size: images per stack (> 0).
        n_stacks_max: stop after this many stacks; -1 (or 0) for no limit.

    Returns:
        The stacks, numbered from 0.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plans: list[StackPlan] = []
    for source, size in enumerate(source_sizes):
        for start in range(0, size, batch_size):
            if 0 < n_stacks_max <= len(plans):
                return plans
            plans.append(StackPlan(len(plans), source, start, min(size, start + batch_size)))
    return plans
