"""Every CryoLike golden case, converted again by cryobus: same stacks, images, order, numbers and npz.

The calls mirror shared/data/reference-outputs/cryolike/README.md. Where the README left a file
out because it equals another case's, the comparison is made with that case's file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cryobus.services.convert.pipeline import (
    ConvertOptions,
    CsJobDir,
    IndexedCs,
    IndexedStar,
    convert,
)
from tests.convert.conftest import assert_npz_equal, load, relative_error, tolerance

EMPIAR_PX = 1.3099979


def _pt(root: Path, kind: str, index: int) -> Path:
    name = "phys/particles_phys_stack" if kind == "phys" else "fft/particles_fourier_stack"
    return root / f"{name}_{index:06d}.pt"


def _npz(root: Path, index: int) -> Path:
    return root / f"fft/particles_fourier_stack_{index:06d}.npz"


def assert_tensors_match(out: Path, index: int, phys_ref: torch.Tensor, fourier_ref: torch.Tensor) -> None:
    phys, fourier = load(_pt(out, "phys", index)), load(_pt(out, "fourier", index))
    assert phys.dtype == phys_ref.dtype and phys.shape == phys_ref.shape
    # |phys| ≤ 1 per image, so 1e-5 absolute is 1e-5 relative to each image's max.
    assert float((phys.double() - phys_ref.double()).abs().max()) <= 1e-5
    assert relative_error(fourier, fourier_ref) <= tolerance(fourier_ref)


@pytest.fixture(scope="module")
def a_single(reference: Path) -> dict[str, torch.Tensor]:
    return {
        "phys": load(_pt(reference / "a_cs_single", "phys", 0)),
        "fourier": load(_pt(reference / "a_cs_single", "fourier", 0)),
    }


@pytest.mark.parametrize("case,precision", [("a_cs_single", "single"), ("a_cs_double", "double")])
def test_a_indexed_cryosparc(tmp_path, reference, cryodrgn, a_single, case, precision):
    written = convert(
        IndexedCs(cs_file=cryodrgn / "empiar_10076_7.cs", folder=cryodrgn),
        reference / case / f"params_empiar_{precision}.npz",
        tmp_path,
        ConvertOptions(batch_size=1024, flag_plots=True),
    )
    assert [w.n_images for w in written] == [7]
    fourier_ref = load(_pt(reference / case, "fourier", 0))
    assert fourier_ref.dtype == (torch.complex64 if precision == "single" else torch.complex128)
    assert_tensors_match(tmp_path, 0, a_single["phys"], fourier_ref)
    assert_npz_equal(_npz(tmp_path, 0), _npz(reference / case, 0))
    # CryoLike's three plots, under its names; what they draw is ours (Pillow).
    for name in ("particles_phys_stack_000000", "particles_fourier_stack_000000", "power_spectrum_stack_000000"):
        with Image.open(tmp_path / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) >= 400
    assert set(written[0].artifacts) == {"phys", "fourier", "npz", "plot_phys", "plot_fourier", "plot_power"}
    assert written[0].fourier_dtype == str(fourier_ref.dtype).removeprefix("torch.")


@pytest.mark.parametrize("pixel_size", [EMPIAR_PX, None])
def test_b_indexed_star_relion30(tmp_path, reference, cryodrgn, a_single, pixel_size):
    # CryoLike needs pixel_size here (it never derives one from DetectorPixelSize/Magnification);
    # cryobus derives 5 µm / 38168 = 1.3099979 Å and gives the same stack either way.
    written = convert(
        IndexedStar(star_file=cryodrgn / "empiar_10076_7.star", folder=cryodrgn),
        reference / "b_star_single" / "params_empiar_single.npz",
        tmp_path,
        ConvertOptions(pixel_size=pixel_size, flag_plots=False),
    )
    assert [w.n_images for w in written] == [7]
    assert_tensors_match(tmp_path, 0, a_single["phys"], a_single["fourier"])
    assert_npz_equal(_npz(tmp_path, 0), _npz(reference / "b_star_single", 0))
    assert not (tmp_path / "plots").exists()


@pytest.fixture(scope="module")
def sppractice_reference(reference: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        case: {"phys": load(_pt(reference / case, "phys", 0)), "fourier": load(_pt(reference / case, "fourier", 0))}
        for case in ("c1_star_single", "c2_star_single_ds2")
    }


@pytest.mark.parametrize("case,factor", [("c1_star_single", 1), ("c2_star_single_ds2", 2)])
def test_c_relion5_float16_restacked(tmp_path, reference, relion_project, sppractice_reference, case, factor):
    """The README's exact call: the noAnglePsi copy of the star, stacks found by name in folder_mrc."""
    written = convert(
        IndexedStar(star_file=reference / "inputs" / "particles_noAnglePsi.star", folder=relion_project / "Extract/job009/Movies"),
        reference / case / "params_sppractice_single.npz",
        tmp_path,
        ConvertOptions(batch_size=1024, downsample_factor=factor, downsample_type="mean", flag_plots=factor == 1),
    )
    assert [w.n_images for w in written] == [1024, 1024, 326]
    # Stack 0 spans files 21-24 and the first 104 images of file 25; stack 2 is files 29 (rest) and 30.
    assert [Path(f).name[:14] for f in written[0].mrc_files] == [f"20170629_000{n}" for n in (21, 22, 23, 24, 25)]
    assert [Path(f).name[:14] for f in written[2].mrc_files] == ["20170629_00029", "20170629_00030"]
    ref = sppractice_reference[case]
    assert ref["phys"].dtype == torch.float16
    assert torch.equal(load(_pt(tmp_path, "phys", 0)), ref["phys"])  # float16 arithmetic reproduced bit for bit
    assert_tensors_match(tmp_path, 0, ref["phys"], ref["fourier"])
    for index in range(3):
        assert_npz_equal(_npz(tmp_path, index), _npz(reference / case, index))
        phys = load(_pt(tmp_path, "phys", index))
        assert phys.shape[1:] == (64 // factor, 64 // factor) and phys.dtype == torch.float16
    if factor == 1:
        assert len(list((tmp_path / "plots").glob("*.png"))) == 9


def test_c_original_relion5_star_converts_where_cryolike_crashed(tmp_path, reference, relion_project, sppractice_reference):
    """The Extract job's own particles.star (only rlnAnglePsi), its relative paths resolved from the project."""
    written = convert(
        IndexedStar(star_file=relion_project / "Extract/job009/particles.star"),
        reference / "c1_star_single" / "params_sppractice_single.npz",
        tmp_path,
        ConvertOptions(flag_plots=False, n_stacks_max=1),
    )
    assert [w.n_images for w in written] == [1024]
    ref = sppractice_reference["c1_star_single"]
    assert_tensors_match(tmp_path, 0, ref["phys"], ref["fourier"])
    assert_npz_equal(_npz(tmp_path, 0), _npz(reference / "c1_star_single", 0))  # partial angles → None, as in the copy


@pytest.mark.parametrize(
    "case,job,batch_size,sizes",
    [("d1_jobdir_single", 1, 1024, [7]), ("d2_jobdir_split_single", 2, 5, [5, 2])],
)
def test_d_cryosparc_job_folder(tmp_path, reference, job_folders, a_single, case, job, batch_size, sizes):
    written = convert(
        CsJobDir(folder=job_folders, job=job),
        reference / case / "params_empiar_single.npz",
        tmp_path,
        ConvertOptions(batch_size=batch_size, pixel_size=EMPIAR_PX, flag_plots=False),
    )
    assert [w.n_images for w in written] == sizes
    start = 0
    for index, n in enumerate(sizes):
        rows = slice(start, start + n)
        assert_tensors_match(tmp_path, index, a_single["phys"][rows], a_single["fourier"][rows])
        assert_npz_equal(_npz(tmp_path, index), _npz(reference / case, index))
        start += n
    if job == 2:
        # Stack 0 = batch file 0's four images + batch file 1's first.
        assert [Path(f).name for f in written[0].mrc_files] == ["batch_000000_restacked.mrc", "batch_000001_restacked.mrc"]


def test_stacks_are_saved_compact(tmp_path, reference, job_folders):
    """CryoLike's d2 .pt files each hold all 7 images' storage; ours hold their own images only."""
    convert(
        CsJobDir(folder=job_folders, job=2),
        reference / "d2_jobdir_split_single" / "params_empiar_single.npz",
        tmp_path,
        ConvertOptions(batch_size=5, flag_plots=False),  # J2's batch headers carry the pixel size
    )
    phys = load(_pt(tmp_path, "phys", 1))
    assert phys.untyped_storage().nbytes() == 2 * 320 * 320 * 4
    assert _pt(tmp_path, "phys", 1).stat().st_size < 2 * 320 * 320 * 4 + 4096


def test_double_and_single_agree_as_in_cryolike(tmp_path, reference, cryodrgn):
    """A 'precision' option overrides the params file; the npz says which precision was used."""
    convert(
        IndexedCs(cs_file=cryodrgn / "empiar_10076_7.cs"),
        reference / "a_cs_single" / "params_empiar_single.npz",
        tmp_path,
        ConvertOptions(precision="double", flag_plots=False),
    )
    fourier = load(_pt(tmp_path, "fourier", 0))
    ref = load(_pt(reference / "a_cs_double", "fourier", 0))
    assert relative_error(fourier, ref) <= 1e-10
    assert str(np.load(_npz(tmp_path, 0), allow_pickle=True)["precision"]) == "double"


def _gpu_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cufinufft  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _gpu_usable(), reason="no CUDA device with cufinufft")
def test_gpu_pipeline_matches_cryolike(tmp_path, reference, relion_project, sppractice_reference):
    """Case c1 on the GPU: same stacks; float16 reductions may round differently by one unit."""
    written = convert(
        IndexedStar(star_file=relion_project / "Extract/job009/particles.star"),
        reference / "c1_star_single" / "params_sppractice_single.npz",
        tmp_path,
        ConvertOptions(device="cuda", flag_plots=True),
    )
    assert [w.n_images for w in written] == [1024, 1024, 326]
    assert written[0].device.startswith("cuda") and written[0].gpu_memory_bytes > 0
    ref = sppractice_reference["c1_star_single"]
    phys = load(_pt(tmp_path, "phys", 0))
    assert phys.dtype == torch.float16 and float((phys.float() - ref["phys"].float()).abs().max()) <= 1e-3
    assert relative_error(load(_pt(tmp_path, "fourier", 0)), ref["fourier"]) <= 1e-5
    for index in range(3):
        assert_npz_equal(_npz(tmp_path, index), _npz(reference / "c1_star_single", index))
