"""The CPU stream: .pt files written while their tensor fills, chunk progress in order, worker pool results."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cryobus.services.convert.cpu_pool import ChunkProgress, CpuFourierPool
from cryobus.services.convert.normalise import center_and_scale
from cryobus.services.convert.pipeline import ConvertOptions, IndexedStar, convert, prepare
from cryobus.services.convert.polar import PolarTransform, normalize_fourier
from cryobus.services.convert.polar_grid import PolarGrid
from cryobus.services.convert.pt_stream import pt_chunks
from cryobus.shared.errors import TransientError
from cryobus.shared.store import open_store


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float16, torch.float32])
def test_a_pt_file_streamed_row_by_row_loads_as_the_tensor(tmp_path: Path, dtype: torch.dtype) -> None:
    """The writer starts before the tensor is filled; torch.load (plain and mmap) reads the finished file."""
    rows = 10
    expected = torch.randn(rows, 7, 6, dtype=torch.complex128 if dtype.is_complex else torch.float64).to(dtype)
    tensor = torch.zeros_like(expected)
    progress = ChunkProgress([(i, min(rows, i + 3)) for i in range(0, rows, 3)])

    def fill() -> None:  # chunks finish out of order, as on the worker pool
        for index in (2, 0, 3, 1):
            start, stop = progress.bounds[index]
            time.sleep(0.01)
            tensor[start:stop] = expected[start:stop]
            progress.complete(index)

    filler = threading.Thread(target=fill)
    filler.start()
    store = open_store(str(tmp_path))
    stored = store.put_stream("fft/particles_fourier_stack_000000.pt", pt_chunks(tensor, "particles_fourier_stack_000000", progress.ready()),
                              media_type="application/octet-stream")  # fmt: skip
    filler.join()

    path = tmp_path / "fft/particles_fourier_stack_000000.pt"
    assert torch.equal(torch.load(path, weights_only=True), expected)
    assert torch.equal(torch.load(path, weights_only=True, mmap=True), expected)
    # The same records as torch.save to that path writes (the archive named after the file).
    reference = tmp_path / "ref" / "particles_fourier_stack_000000.pt"
    reference.parent.mkdir()
    torch.save(expected, reference)
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(reference) as theirs:
        assert ours.namelist() == theirs.namelist()
        assert ours.namelist()[0].startswith("particles_fourier_stack_000000/")
    assert stored.size_bytes == path.stat().st_size


def test_pt_chunks_refuses_counts_that_go_back_or_stop_short() -> None:
    tensor = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="must increase"):
        list(pt_chunks(tensor, "x", [2, 1, 4]))
    with pytest.raises(ValueError, match="only 3 of 4 rows"):
        list(pt_chunks(tensor, "x", [3]))
    with pytest.raises(ValueError, match="contiguous"):
        list(pt_chunks(tensor.t(), "x", [3]))


def test_chunk_progress_reports_leading_images_and_raises_a_failure() -> None:
    progress = ChunkProgress([(0, 4), (4, 8), (8, 10)])
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.extend(progress.ready()))
    reader.start()
    progress.complete(1)  # out of order: nothing leading is done yet
    time.sleep(0.05)
    assert seen == []
    progress.complete(0)
    progress.complete(2)
    reader.join(5)
    assert seen[-1] == 10 and seen == sorted(seen) and set(seen) <= {8, 10}

    failing = ChunkProgress([(0, 2), (2, 4)])
    failing.complete(0)
    failing.fail(RuntimeError("chunk 1: NUFFT failed"))
    with pytest.raises(RuntimeError, match="chunk 1"):
        failing.wait()


@pytest.mark.parametrize(
    ("n_pixels", "n_images", "n_inplanes", "precision"),
    [(48, 37, 48, 0), (40, 9, 39, 1), (32, 1, 32, 0), (256, 7, 512, 0)],  # the last: pairs separated one at a time
)
def test_the_worker_pool_gives_the_one_call_result(n_pixels: int, n_images: int, n_inplanes: int, precision: int) -> None:
    """Chunked, packed, fused and on several threads: the same as one transform and normalisation."""
    prec = ("single", "double")[precision]
    grid = PolarGrid(radius_max=n_pixels / 4 if n_pixels < 256 else n_pixels / 2, dist_radii=0.5, n_inplanes=n_inplanes)
    rng = np.random.default_rng(n_pixels)
    images = center_and_scale(torch.from_numpy(rng.standard_normal((n_images, n_pixels, n_pixels)).astype(np.float32)))
    if n_images > 3:
        images[3] = 0  # a blank image next to a partner stays exactly zero
    expected = normalize_fourier(PolarTransform(grid, (n_pixels, n_pixels), precision=prec)(images), grid)

    with CpuFourierPool(grid, precision=prec, workers=3) as pool:
        bounds = pool.chunk_bounds(n_images, (n_pixels, n_pixels))
        fourier, progress = pool.start(images)
        progress.wait()

    assert all((stop - start) % 2 == 0 for start, stop in bounds[:-1])
    tol = 1e-5 if prec == "single" else 1e-10
    assert float((fourier - expected).abs().max() / expected.abs().max()) <= tol
    if n_images > 3:
        assert fourier[3].abs().max() == 0


def test_a_store_failure_mid_stream_leaves_no_partial_stack(tmp_path: Path, relion_project: Path, reference: Path) -> None:
    """The store breaks after the checks (the Fourier folder becomes a file): the conversion fails
    with the store's error naming the key, the workers and writer stop, and no staging file or
    partial Fourier stack is left behind."""
    store = open_store(str(tmp_path / "out"))
    spec = IndexedStar(star_file=relion_project / "Extract/job009/particles.star", project_dir=relion_project)
    params = reference / "c1_star_single" / "params_sppractice_single.npz"
    prepared = prepare(spec, params, ConvertOptions(batch_size=512, flag_plots=False), store=store)
    (tmp_path / "out" / "fft").write_bytes(b"a file where the fft folder should be")

    with pytest.raises(TransientError, match="fft/particles_fourier_stack_000000.pt"):
        convert(spec, params, store, prepared=prepared)

    out = tmp_path / "out"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["fft", "phys/particles_phys_stack_000000.pt"]  # stack 0's physical images only
    assert not list(out.rglob("*#*"))
    assert not [t for t in threading.enumerate() if t.name.startswith(("convert-nufft", "convert-write", "convert-read"))]


def test_without_skip_data_the_file_is_one_torch_save_after_the_last_row(tmp_path: Path, monkeypatch) -> None:
    """A torch without ``skip_data`` (older than 2.6): no streaming, the same loadable file."""
    monkeypatch.delattr(torch.serialization, "skip_data")
    tensor = torch.randn(5, 4, dtype=torch.complex64)
    parts = list(pt_chunks(tensor, "stack", [2, 5]))
    assert len(parts) == 1
    (tmp_path / "stack.pt").write_bytes(bytes(parts[0]))
    assert torch.equal(torch.load(tmp_path / "stack.pt", weights_only=True), tensor)
