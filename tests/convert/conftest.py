"""Fixtures for the convert tests: CryoLike's golden outputs, the real particles they were made from,
and helpers comparing a conversion with them."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

REFERENCE = "reference-outputs/cryolike"


@pytest.fixture(scope="session")
def reference(shared_data: Path) -> Path:
    """CryoLike's own outputs on real particles (see its README.md for the exact calls)."""
    return shared_data / REFERENCE


@pytest.fixture(scope="session")
def cryodrgn(shared_data: Path) -> Path:
    """empiar_10076_7 (.cs, .star, .mrc: 7 particles, 320 px) and relion31 (.star, .mrcs: 5 particles, 256 px)."""
    return shared_data / "ml-struct-bio__cryodrgn" / "tests" / "data"


@pytest.fixture(scope="session")
def job_folders(tmp_path_factory: pytest.TempPathFactory, cryodrgn: Path) -> Path:
    """The CryoSPARC job folders J1 (one batch) and J2 (two batches, 4 + 3 images) of the reference README, case d."""
    root = tmp_path_factory.mktemp("cryosparc")
    for job in (1, 2):
        (root / f"J{job}" / "restack").mkdir(parents=True)
        shutil.copyfile(cryodrgn / "empiar_10076_7.cs", root / f"J{job}" / f"J{job}_passthrough_particles.cs")
    shutil.copyfile(cryodrgn / "empiar_10076_7.mrc", root / "J1" / "restack" / "batch_000000_restacked.mrc")
    data = mrcfile.read(cryodrgn / "empiar_10076_7.mrc")
    for i, part in enumerate((data[:4], data[4:])):
        with mrcfile.new(root / "J2" / "restack" / f"batch_{i:06d}_restacked.mrc") as m:
            m.set_data(np.ascontiguousarray(part))
            m.voxel_size = 1.3099979
    return root


def load(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-image max|ours − ref| / max|ref|."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ours.dtype, ref.shape, ref.dtype)
    diff = (ours.to(torch.complex128) - ref.to(torch.complex128)).abs().flatten(1).amax(dim=1)
    return float((diff / ref.to(torch.complex128).abs().flatten(1).amax(dim=1)).max())


def tolerance(fourier: torch.Tensor) -> float:
    return 1e-10 if fourier.dtype == torch.complex128 else 1e-5


def assert_npz_equal(ours: Path, ref: Path, *, ignore: tuple[str, ...] = ()) -> None:
    """Same keys in the same order, same dtypes, shapes and values (None for None)."""
    a, b = np.load(ours, allow_pickle=True), np.load(ref, allow_pickle=True)
    assert a.files == b.files
    for key in b.files:
        if key in ignore:
            continue
        x, y = a[key], b[key]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), key
        if y.dtype == object:
            assert x.item() == y.item(), key
        else:
            assert np.array_equal(x, y), key
