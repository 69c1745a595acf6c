"""The synthetic acquisition behind ``make demo``: the physics is right and the project reads like RELION 5's.

A facility story: the demo generates six micrographs; their STAR files say exactly which CTF
was applied, the power spectra show Thon rings where that CTF puts them, and every file
has the same blocks and columns as a real RELION 5 project.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryobus.demo.synthetic import (
    SyntheticAcquisition,
    ctf_2d,
    electron_wavelength_A,
    generate_acquisition,
    main,
)
from cryobus.shared.errors import InputError

# Physical constants (CODATA 2018), kept here so the test's CTF zeros do not reuse the module's code.
H, M_E, Q_E, C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def wavelength_A(kv: float) -> float:
    v = kv * 1e3
    return H / math.sqrt(2 * M_E * Q_E * v * (1 + Q_E * v / (2 * M_E * C * C))) * 1e10


def first_zero_per_A(defocus_A: float, kv: float = 300.0, cs_mm: float = 2.7, w: float = 0.1) -> float:
    """g (1/Å) where χ = π: solve (π/2)Cs λ³ u² - π λ Δf u + (π - arctan(w/√(1-w²))) = 0 for u = g²."""
    lam = wavelength_A(kv)
    a = 0.5 * math.pi * cs_mm * 1e7 * lam**3
    b = math.pi * lam * defocus_A
    c = math.pi - math.atan(w / math.sqrt(1 - w * w))
    return math.sqrt((b - math.sqrt(b * b - 4 * a * c)) / (2 * a))


@pytest.fixture(scope="module")
def acq(tmp_path_factory: pytest.TempPathFactory) -> SyntheticAcquisition:
    return generate_acquisition(tmp_path_factory.mktemp("synthetic"), seed=0)


def star_blocks(path: Path) -> dict:
    return starfile.read(path, always_dict=True)


def columns(block) -> list[str]:
    return list(block.columns) if hasattr(block, "columns") else list(block)


# ---------------------------------------------------------------------------------- the physics


@pytest.mark.parametrize(("kv", "expected"), [(300.0, 0.01969), (200.0, 0.02508), (100.0, 0.03701)])
def test_electron_wavelength_matches_tabulated_values(kv: float, expected: float) -> None:
    assert electron_wavelength_A(kv) == pytest.approx(expected, abs=1e-5)


def test_non_positive_voltage_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        electron_wavelength_A(0.0)
    assert err.value.field == "voltage_kV"


def test_ctf_crosses_zero_where_the_formula_puts_the_first_zero_along_u_and_v() -> None:
    n, px, angle = 1024, 1.0, 30.0
    df_u, df_v = 16000.0, 14000.0
    ctf = ctf_2d((n, n), px, df_u, df_v, angle, 300.0, 2.7, 0.1, centered=True).astype(np.float64)
    assert ctf.shape == (n, n)
    assert ctf[n // 2, n // 2] == pytest.approx(-0.1, abs=1e-6)  # CTF(0) = -w
    for direction_deg, defocus in [(angle, df_u), (angle + 90.0, df_v)]:
        g = np.linspace(0.0, 0.08, 4001)  # 1/Å, along one azimuth
        t = math.radians(direction_deg)
        x = n // 2 + g * math.cos(t) * n * px
        y = n // 2 + g * math.sin(t) * n * px
        # bilinear sampling of the 2D array along the line
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        line = (
            ctf[y0, x0] * (1 - fx) * (1 - fy)
            + ctf[y0, x0 + 1] * fx * (1 - fy)
            + ctf[y0 + 1, x0] * (1 - fx) * fy
            + ctf[y0 + 1, x0 + 1] * fx * fy
        )
        first_sign_change = g[np.nonzero(np.diff(np.sign(line)))[0][0]]
        assert first_sign_change == pytest.approx(first_zero_per_A(defocus), rel=0.01)


def test_ctf_unshifted_layout_is_the_fftshift_inverse_of_the_centred_one() -> None:
    args = ((64, 96), 1.3, 12000.0, 11000.0, -20.0, 300.0, 2.7, 0.07)
    assert np.array_equal(np.fft.fftshift(ctf_2d(*args)), ctf_2d(*args, centered=True))
    assert ctf_2d(*args).dtype == np.float32


def test_power_spectrum_of_each_micrograph_has_its_first_thon_ring_minimum_at_the_ctf_zero(acq) -> None:
    for mic in acq.micrographs:
        with mrcfile.open(acq.root / mic.micrograph_path) as m:
            image = m.data.astype(np.float64)
        n = image.shape[0]
        power = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
        yy, xx = np.indices(power.shape) - n // 2
        radius = np.rint(np.hypot(yy, xx)).astype(int).ravel()
        profile = np.log(np.bincount(radius, power.ravel()) / np.maximum(np.bincount(radius), 1))
        profile = np.convolve(profile, np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2), mode="same")
        mean_defocus = 0.5 * (mic.defocus_u_A + mic.defocus_v_A)
        expected_px = first_zero_per_A(mean_defocus) * n * acq.pixel_size_A
        lo, hi = int(0.8 * expected_px), int(1.2 * expected_px) + 1
        i = lo + int(np.argmin(profile[lo:hi]))
        y0, y1, y2 = profile[i - 1 : i + 2]
        found_px = i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
        assert found_px == pytest.approx(expected_px, rel=0.03), mic.name
        # and it is a real ring: the minimum is clearly below the next maximum
        assert profile[i] < profile[i : int(1.6 * expected_px)].max() - 0.3


# ---------------------------------------------------------------------------------- the files


def test_ctf_star_holds_exactly_the_ctf_that_was_applied(acq) -> None:
    path = acq.root / "CtfFind/job005/micrographs_ctf.star"
    assert path.read_text().count("# version 50001") == 2
    blocks = star_blocks(path)
    optics, mics = blocks["optics"], blocks["micrographs"]
    assert optics["rlnVoltage"].tolist() == [300.0] and optics["rlnSphericalAberration"].tolist() == [2.7]
    assert optics["rlnAmplitudeContrast"].tolist() == [0.1] and optics["rlnMicrographPixelSize"].tolist() == [1.0]
    assert mics["rlnMicrographName"].tolist() == [m.micrograph_path for m in acq.micrographs]
    for row, mic in zip(mics.itertuples(), acq.micrographs, strict=True):
        assert row.rlnDefocusU == pytest.approx(mic.defocus_u_A, abs=1e-6)
        assert row.rlnDefocusV == pytest.approx(mic.defocus_v_A, abs=1e-6)
        assert row.rlnDefocusAngle == pytest.approx(mic.defocus_angle_deg, abs=1e-6)
        assert row.rlnCtfFigureOfMerit == pytest.approx(mic.ctf_figure_of_merit, abs=1e-6)
        assert row.rlnCtfMaxResolution == pytest.approx(mic.ctf_max_resolution_A, abs=1e-6)
        assert row.rlnCtfAstigmatism == pytest.approx(mic.defocus_u_A - mic.defocus_v_A, abs=1e-6)
        assert row.rlnCtfImage == f"CtfFind/job005/Movies/{mic.name}_PS.ctf:mrc"
    us = [m.defocus_u_A for m in acq.micrographs]
    vs = [m.defocus_v_A for m in acq.micrographs]
    assert all(10000 <= v < u <= 25600 for u, v in zip(us, vs, strict=True))
    assert len(set(us)) == len(us)  # a different defocus per micrograph


def test_ctffind_text_has_the_real_format_and_the_true_values(acq, relion_project: Path) -> None:
    real = (relion_project / "CtfFind/job005/Movies/20170629_00021_frameImage_PS.txt").read_text().splitlines()
    number = re.compile(r"-?\d+(\.\d+)?")
    for mic in acq.micrographs:
        ours = (acq.root / f"CtfFind/job005/Movies/{mic.name}_PS.txt").read_text().splitlines()
        assert len(ours) == len(real)
        for a, b in zip(ours[:-1], real[:-1], strict=True):  # header lines: same words, other numbers/paths
            def words(line: str) -> str:
                return number.sub("N", line.split(" ; ")[0].split(":")[0])

            assert words(a) == words(b)
            assert a.count(";") == b.count(";")
        values = [float(v) for v in ours[-1].split()]
        assert values == pytest.approx(
            [1.0, mic.defocus_u_A, mic.defocus_v_A, mic.defocus_angle_deg, 0.0]
            + [mic.ctf_figure_of_merit, mic.ctf_max_resolution_A],
            abs=1e-6,
        )


def test_ctffind_diagnostic_shows_the_fitted_ctf_in_its_lower_half(acq) -> None:
    mic = acq.micrographs[0]
    with mrcfile.open(acq.root / f"CtfFind/job005/Movies/{mic.name}_PS.ctf") as m:
        diag = m.data
        assert m.header.mode == 2
    box = diag.shape[0]
    assert diag.shape == (box, box) and box == 512
    defocus = (mic.defocus_u_A, mic.defocus_v_A, mic.defocus_angle_deg)
    model = ctf_2d((box, box), acq.pixel_size_A, *defocus, 300.0, 2.7, 0.1, centered=True).astype(np.float64)
    quadrant = (slice(20, box // 2), slice(box // 2 + 20, box))  # y below centre, +x: the fit to Nyquist
    assert np.corrcoef(diag[quadrant].ravel(), model[quadrant].ravel() ** 2)[0, 1] > 0.99
    upper = diag[box // 2 + 40 :, :]  # the experimental spectrum: correlates with CTF² only weakly (noise)
    assert np.corrcoef(upper.ravel(), model[box // 2 + 40 :, :].ravel() ** 2)[0, 1] < 0.9


def test_motion_star_files_carry_a_smooth_track_and_relion_accumulated_motion(acq) -> None:
    corrected = star_blocks(acq.root / "MotionCorr/job002/corrected_micrographs.star")["micrographs"]
    for row, mic in zip(corrected.itertuples(), acq.micrographs, strict=True):
        assert row.rlnMicrographName == mic.micrograph_path
        assert (acq.root / row.rlnCtfPowerSpectrum).is_file()
        per_movie = star_blocks(acq.root / row.rlnMicrographMetadata)
        general, shifts = per_movie["general"], per_movie["global_shift"]
        assert general["rlnImageSizeX"] == acq.size and general["rlnImageSizeZ"] == len(shifts)
        x, y = shifts["rlnMicrographShiftX"].to_numpy(), shifts["rlnMicrographShiftY"].to_numpy()
        assert (x[0], y[0]) == (0.0, 0.0)
        assert np.allclose(np.column_stack([x, y]), np.asarray(mic.shifts_px), atol=1e-6)
        steps = np.hypot(np.diff(x), np.diff(y))
        assert steps.max() < 3.0  # smooth: no jumps
        # RELION MotioncorrRunner: a step into frame f counts as early while f <= 4 e/Å² / dose per frame
        cutoff = 4.0 / general["rlnMicrographDoseRate"]
        frames = np.arange(2, len(x) + 1)
        assert row.rlnAccumMotionTotal == pytest.approx(steps.sum(), abs=1e-5)
        assert row.rlnAccumMotionEarly == pytest.approx(steps[frames <= cutoff].sum(), abs=1e-5)
        assert row.rlnAccumMotionLate == pytest.approx(steps[frames > cutoff].sum(), abs=1e-5)
        assert row.rlnAccumMotionTotal == pytest.approx(mic.accum_motion_total, abs=1e-6)
        assert mic.avg_motion_A == pytest.approx(steps.sum() * acq.pixel_size_A / (len(x) - 1), abs=1e-5)


def test_micrographs_are_float32_mrcs_of_the_stated_size_and_pixel_size(acq) -> None:
    assert len(acq.micrographs) == 6
    for mic in acq.micrographs:
        with mrcfile.open(acq.root / mic.micrograph_path) as m:
            assert m.data.shape == (1024, 1024)
            assert m.header.mode == 2
            assert float(m.voxel_size.x) == pytest.approx(1.0) and float(m.voxel_size.y) == pytest.approx(1.0)
            assert np.isfinite(m.data).all() and m.data.std() > 0


def test_particles_star_lists_every_pick_and_its_image_resolves(acq) -> None:
    blocks = star_blocks(acq.root / "Extract/job009/particles.star")
    optics, particles = blocks["optics"], blocks["particles"]
    assert optics["rlnImagePixelSize"].tolist() == [acq.particle_pixel_size_A]
    assert optics["rlnImageSize"].tolist() == [acq.particle_box]
    truth = [(mic, p) for mic in acq.micrographs for p in mic.particles]
    assert len(particles) == len(truth) == sum(m.n_particles for m in acq.micrographs) > 6 * 10
    for row, (mic, p) in zip(particles.itertuples(), truth, strict=True):
        assert row.rlnMicrographName == mic.micrograph_path
        assert (row.rlnCoordinateX, row.rlnCoordinateY) == pytest.approx((p.x_px, p.y_px), abs=1e-6)
        assert row.rlnDefocusU == pytest.approx(mic.defocus_u_A, abs=1e-6)
    stacks = {}
    for name in particles["rlnImageName"]:
        index, stack = name.split("@")
        if stack not in stacks:
            with mrcfile.open(acq.root / stack) as m:
                assert m.is_image_stack()
                assert float(m.voxel_size.x) == pytest.approx(acq.particle_pixel_size_A)
                stacks[stack] = m.data.shape
        assert 1 <= int(index) <= stacks[stack][0]
        assert stacks[stack][1:] == (acq.particle_box, acq.particle_box)


def test_class2d_job_describes_the_same_particles(acq) -> None:
    model = star_blocks(acq.root / "Class2D/job010/run_it025_model.star")
    classes = model["model_classes"]
    assert len(classes) == acq.n_classes == model["model_general"]["rlnNrClasses"]
    assert classes["rlnClassDistribution"].sum() == pytest.approx(1.0, abs=1e-5)
    assert classes["rlnClassDistribution"].tolist() == pytest.approx(list(acq.class_distribution), abs=1e-6)
    assert classes["rlnEstimatedResolution"].tolist() == pytest.approx(list(acq.class_resolution_A), abs=1e-6)
    with mrcfile.open(acq.root / "Class2D/job010/run_it025_classes.mrcs") as m:
        assert m.data.shape == (acq.n_classes, acq.particle_box, acq.particle_box)
    data = star_blocks(acq.root / "Class2D/job010/run_it025_data.star")["particles"]
    truth = [p for mic in acq.micrographs for p in mic.particles]
    assert data["rlnClassNumber"].tolist() == [p.class_number for p in truth]
    counts = np.bincount(data["rlnClassNumber"], minlength=acq.n_classes + 1)[1:]
    assert counts / counts.sum() == pytest.approx(list(acq.class_distribution), abs=1e-5)


@pytest.mark.parametrize(
    ("ours", "real", "shared_blocks"),
    [
        ("MotionCorr/job002/corrected_micrographs.star", "MotionCorr/job002/corrected_micrographs.star", None),
        ("CtfFind/job005/micrographs_ctf.star", "CtfFind/job005/micrographs_ctf.star", None),
        ("Extract/job009/particles.star", "Extract/job009/particles.star", None),
        (
            "MotionCorr/job002/Movies/synthetic_00001.star",
            "MotionCorr/job002/Movies/20170629_00021_frameImage.star",
            ["general", "global_shift"],  # no local motion model, hot pixels or local shifts
        ),
        (
            "Class2D/job010/run_it025_model.star",
            "Class2D/job010/run_it025_model.star",
            ["model_general", "model_classes", "model_groups"],  # no per-class spectral blocks
        ),
        ("Class2D/job010/run_it025_data.star", "Class2D/job010/run_it025_data.star", None),
    ],
)
def test_star_files_have_the_blocks_and_columns_of_the_real_relion5_project(
    acq, relion_project: Path, ours, real, shared_blocks
) -> None:
    ours_blocks, real_blocks = star_blocks(acq.root / ours), star_blocks(relion_project / real)
    names = shared_blocks or list(real_blocks)
    assert list(ours_blocks) == names
    for name in names:
        assert columns(ours_blocks[name]) == columns(real_blocks[name]), name
    text = (acq.root / ours).read_text()
    assert text.count("# version 50001") == text.count("\ndata_") == len(names)
    assert all(line == "# version 50001" for line in re.findall(r"(.*)\n\ndata_", text))


def test_same_seed_gives_the_same_acquisition_and_another_seed_does_not(acq, tmp_path: Path) -> None:
    again = generate_acquisition(tmp_path / "again", n_micrographs=2, seed=0, with_classes=False)
    assert again.micrographs == acq.micrographs[:2]
    for mic in again.micrographs:
        a = mrcfile.read(acq.root / mic.micrograph_path)
        b = mrcfile.read(again.root / mic.micrograph_path)
        assert np.array_equal(a, b)
        assert (acq.root / f"CtfFind/job005/Movies/{mic.name}_PS.txt").read_bytes() == (
            again.root / f"CtfFind/job005/Movies/{mic.name}_PS.txt"
        ).read_bytes()
    other = generate_acquisition(tmp_path / "other", n_micrographs=1, seed=1, with_classes=False)
    assert other.micrographs[0].defocus_u_A != acq.micrographs[0].defocus_u_A
    assert not (tmp_path / "again" / "Class2D").exists() and again.n_classes == 0


def test_bad_parameters_are_input_errors_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        generate_acquisition(tmp_path, size=100)
    assert err.value.field == "size"
    with pytest.raises(InputError) as err:
        generate_acquisition(tmp_path, n_micrographs=0)
    assert err.value.field == "n_micrographs"


def test_command_line_writes_a_project_and_prints_one_summary_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "p"), "--n", "1", "--size", "512", "--seed", "3", "--no-classes"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("wrote 1 micrographs (512x512 px")
    assert mrcfile.read(tmp_path / "p/MotionCorr/job002/Movies/synthetic_00001.mrc").shape == (512, 512)
    assert main([str(tmp_path / "q"), "--size", "7"]) == 2
