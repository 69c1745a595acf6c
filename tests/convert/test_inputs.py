"""The four input modes beyond the golden cases: pairs, RELION 3.1 optics, image order, job-folder gaps, reruns."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryobus.services.convert.params import ImageDescriptor
from cryobus.services.convert.pipeline import (
    ConvertOptions,
    CsJobDir,
    IndexedStar,
    StarMrcPairs,
    convert,
    prepare,
)
from cryobus.services.convert.polar_grid import PolarGrid
from cryobus.shared.errors import InputError
from cryobus.shared.store import open_store
from tests.convert.conftest import load, relative_error

EMPIAR_PX = 1.3099979


@pytest.fixture(scope="module")
def empiar_params(reference: Path) -> Path:
    return reference / "a_cs_single" / "params_empiar_single.npz"


@pytest.fixture(scope="module")
def a_single(reference: Path) -> tuple[torch.Tensor, torch.Tensor]:
    root = reference / "a_cs_single"
    return load(root / "phys/particles_phys_stack_000000.pt"), load(root / "fft/particles_fourier_stack_000000.pt")


def test_star_mrc_pairs_are_never_merged(tmp_path, cryodrgn, empiar_params, a_single):
    star, mrc = cryodrgn / "empiar_10076_7.star", cryodrgn / "empiar_10076_7.mrc"
    written = convert(
        StarMrcPairs(star_files=[star, star], mrc_files=[mrc, mrc]),
        empiar_params,
        tmp_path,
        ConvertOptions(batch_size=5, flag_plots=False),
    )
    # 7 + 7 images, batch 5: each pair gives 5 + 2 (CryoLike's paired mode), numbered on.
    assert [w.n_images for w in written] == [5, 2, 5, 2]
    phys_ref, fourier_ref = a_single
    for index, rows in enumerate([slice(0, 5), slice(5, 7)] * 2):
        assert torch.equal(load(tmp_path / f"phys/particles_phys_stack_{index:06d}.pt"), phys_ref[rows])
        assert relative_error(load(tmp_path / f"fft/particles_fourier_stack_{index:06d}.pt"), fourier_ref[rows]) <= 1e-5
        npz = np.load(tmp_path / f"fft/particles_fourier_stack_{index:06d}.npz", allow_pickle=True)
        assert (int(npz["stack_start"]), int(npz["stack_end"])) == (rows.start, rows.stop)
        assert npz["defocusAngle"] == pytest.approx(np.radians(5.28))
        assert list(npz.files)[-3:] == ["n_images", "stack_start", "stack_end"]


@pytest.fixture(scope="module")
def relion31_params(tmp_path_factory) -> ImageDescriptor:
    return ImageDescriptor.from_values(256, 2.806, "single", resolution_factor=0.5, n_inplanes=64)


def test_relion31_optics_groups_indexed_and_paired(tmp_path, cryodrgn, relion31_params):
    indexed = convert(IndexedStar(star_file=cryodrgn / "relion31.star"), relion31_params, tmp_path / "i", ConvertOptions(flag_plots=False))
    paired = convert(
        StarMrcPairs(star_files=[cryodrgn / "relion31.star"], mrc_files=[cryodrgn / "relion31.mrcs"]),
        relion31_params, tmp_path / "p", ConvertOptions(flag_plots=False),
    )
    assert [w.n_images for w in indexed] == [w.n_images for w in paired] == [5]
    for kind in ("phys/particles_phys_stack_000000.pt", "fft/particles_fourier_stack_000000.pt"):
        assert torch.equal(load(tmp_path / "i" / kind), load(tmp_path / "p" / kind))
    phys = load(tmp_path / "i/phys/particles_phys_stack_000000.pt")
    assert phys.dtype == torch.float32 and phys.shape == (5, 256, 256)
    assert torch.allclose(phys.abs().flatten(1).amax(1), torch.ones(5)) and float(phys.mean(dim=(1, 2)).abs().max()) < 1e-6
    fourier = load(tmp_path / "i/fft/particles_fourier_stack_000000.pt")
    grid = PolarGrid.from_descriptor(relion31_params)
    norms = (fourier.abs().double() ** 2 * torch.from_numpy(grid.shell_weights)[None, :, None]).sum(dim=(1, 2))
    assert torch.allclose(norms, torch.ones(5, dtype=torch.float64), atol=1e-5)

    npz = np.load(tmp_path / "i/fft/particles_fourier_stack_000000.npz", allow_pickle=True)
    star = starfile.read(cryodrgn / "relion31.star")
    particles = star["particles"]
    assert npz["defocusU"] == pytest.approx(particles["rlnDefocusU"].to_numpy())
    assert npz["defocusAngle"] == pytest.approx(np.radians(particles["rlnDefocusAngle"].to_numpy()))
    assert npz["anglePsi"] == pytest.approx(np.radians(particles["rlnAnglePsi"].to_numpy()))
    assert (float(npz["voltage"]), float(npz["sphericalAberration"]), float(npz["amplitudeContrast"])) == (300.0, 0.01, 0.1)
    assert npz["ref_pixel_size"].tolist() == [2.806]  # from data_optics
    assert npz["idxs"].tolist() == [0, 1, 2, 3, 4] and npz["files"][0] == "relion31.mrcs"
    assert npz["ctfBfactor"].shape == (5,)


def _interleaved_star(folder: Path, cryodrgn: Path) -> Path:
    """Two stacks b.mrcs (images 0-3) and a.mrcs (images 4-6), rows alternating between them."""
    data = mrcfile.read(cryodrgn / "empiar_10076_7.mrc")
    for name, part in (("b.mrcs", data[:4]), ("a.mrcs", data[4:])):
        with mrcfile.new(folder / name) as m:
            m.set_data(np.ascontiguousarray(part))
    df = starfile.read(cryodrgn / "empiar_10076_7.star")
    order = [("b.mrcs", 1), ("a.mrcs", 1), ("b.mrcs", 2), ("a.mrcs", 2), ("b.mrcs", 3), ("a.mrcs", 3), ("b.mrcs", 4)]
    df["rlnImageName"] = [f"{i:06d}@{name}" for name, i in order]
    # Defocus U tells which image a row is: image k of the original stack has rlnDefocusU[k].
    original = [0, 4, 1, 5, 2, 6, 3]
    df["rlnDefocusU"] = starfile.read(cryodrgn / "empiar_10076_7.star")["rlnDefocusU"].to_numpy()[original]
    path = folder / "interleaved.star"
    starfile.write(df, path)
    return path


def test_image_order_is_row_order_or_cryolike_order(tmp_path, cryodrgn, empiar_params, a_single):
    star = _interleaved_star(tmp_path, cryodrgn)
    phys_ref, _ = a_single
    original = [0, 4, 1, 5, 2, 6, 3]
    convert(IndexedStar(star_file=star), empiar_params, tmp_path / "rows", ConvertOptions(flag_plots=False))
    phys = load(tmp_path / "rows/phys/particles_phys_stack_000000.pt")
    assert torch.equal(phys, phys_ref[original])

    convert(IndexedStar(star_file=star), empiar_params, tmp_path / "cl", ConvertOptions(flag_plots=False, cryolike_compatible=True))
    phys = load(tmp_path / "cl/phys/particles_phys_stack_000000.pt")
    # CryoLike: a.mrcs first (sorted path), then b.mrcs, rows in file order within each.
    assert torch.equal(phys, phys_ref[[4, 5, 6, 0, 1, 2, 3]])
    npz = np.load(tmp_path / "cl/fft/particles_fourier_stack_000000.npz", allow_pickle=True)
    star_defocus = starfile.read(star)["rlnDefocusU"].to_numpy()
    assert npz["defocusU"] == pytest.approx(star_defocus[[1, 3, 5, 0, 2, 4, 6]])  # CTF rows follow the images
    assert npz["files"].tolist()[:2] == ["b.mrcs", "a.mrcs"]  # whole column, file order (as CryoLike)


def test_job_folder_scan_stops_at_the_first_gap(tmp_path, job_folders, empiar_params, cryodrgn, a_single):
    job = tmp_path / "J7"
    shutil.copytree(job_folders / "J2", job)
    data = mrcfile.read(cryodrgn / "empiar_10076_7.mrc")
    with mrcfile.new(job / "restack" / "batch_000003_restacked.mrc") as m:
        m.set_data(np.ascontiguousarray(data[:2]))
    (job / "restack" / "batch_000001_restacked.mrc").rename(job / "restack" / "batch_000002_restacked.mrc")
    (job / "J2_passthrough_particles.cs").rename(job / "J7_passthrough_particles.cs")
    with pytest.raises(InputError) as err:
        prepare(CsJobDir(folder=tmp_path, job=7), empiar_params)
    assert err.value.field == "rows"
    assert "batch_000001_restacked.mrc does not exist" in err.value.reason
    assert "batch_000002_restacked.mrc" in err.value.reason and "not used" in err.value.reason

    # With as many rows as the images before the gap, it converts and says where it stopped.
    cs = np.load(job / "J7_passthrough_particles.cs")
    with open(job / "J7_passthrough_particles.cs", "wb") as fh:
        np.save(fh, cs[:4])
    prepared = prepare(CsJobDir(folder=tmp_path, job=7), empiar_params)
    assert prepared.n_images == 4
    assert any("scan stopped" in note for note in prepared.notes)
    convert(CsJobDir(folder=tmp_path, job=7), empiar_params, tmp_path / "out", ConvertOptions(flag_plots=False))
    assert torch.equal(load(tmp_path / "out/phys/particles_phys_stack_000000.pt"), a_single[0][:4])


def test_rerun_is_refused_before_writing_unless_overwrite(tmp_path, cryodrgn, empiar_params):
    spec = IndexedStar(star_file=cryodrgn / "empiar_10076_7.star")
    options = ConvertOptions(flag_plots=False, prefix="ds1/convert")
    first = convert(spec, empiar_params, tmp_path, options)
    assert first[0].artifacts["npz"].uri == (tmp_path / "ds1/convert/fft/particles_fourier_stack_000000.npz").as_uri()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(InputError) as err:
        convert(spec, empiar_params, tmp_path, options)
    assert err.value.field == "overwrite" and err.value.file.endswith("ds1/convert/phys/particles_phys_stack_000000.pt")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    again = convert(spec, empiar_params, open_store(str(tmp_path)), options.model_copy(update={"overwrite": True}))
    assert again[0].artifacts["phys"].sha256 == first[0].artifacts["phys"].sha256  # same bytes, deterministic


def test_streaming_announces_each_stack_in_order(tmp_path, relion_project, reference):
    seen: list[tuple[int, bool]] = []

    def announce(w):  # called as soon as a stack is complete: its npz (written last) is there
        seen.append((w.index, (tmp_path / w.artifacts["npz"].key).is_file()))

    written = convert(
        IndexedStar(star_file=relion_project / "Extract/job009/particles.star"),
        reference / "c1_star_single" / "params_sppractice_single.npz",
        tmp_path,
        ConvertOptions(batch_size=500, flag_plots=False),
        on_stack=announce,
    )
    assert seen == [(i, True) for i in range(5)]
    assert [w.n_images for w in written] == [500, 500, 500, 500, 374]
    assert all(set(w.timings) == {"read_s", "transform_s", "write_s"} for w in written)
    assert written[0].device == "cpu" and written[0].gpu_memory_bytes is None


def test_downsampling_keeps_the_true_box(tmp_path, relion_project, reference):
    """Params made for the downsampled images (32 px of 7.08 Å) with the raw pixel size passed:
    CryoLike saves 3.54 Å (a box half the true size); cryobus keeps the params' 7.08 Å."""
    params = ImageDescriptor.from_values(32, 7.08, "single", resolution_factor=1.0, n_inplanes=32)
    convert(
        IndexedStar(star_file=relion_project / "Extract/job009/particles.star"),
        params, tmp_path, ConvertOptions(downsample_factor=2, pixel_size=3.54, flag_plots=False, n_stacks_max=1),
    )
    npz = np.load(tmp_path / "fft/particles_fourier_stack_000000.npz", allow_pickle=True)
    assert npz["n_pixels"].tolist() == [32, 32] and npz["pixel_size"].tolist() == [7.08, 7.08]
    # Same images, same box, same polar grid as case c2: the same Fourier values.
    ours = load(tmp_path / "fft/particles_fourier_stack_000000.pt")
    ref = load(reference / "c2_star_single_ds2/fft/particles_fourier_stack_000000.pt")
    assert relative_error(ours, ref) <= 1e-5
