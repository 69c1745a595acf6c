"""Bad input is refused with an InputError naming file, field and (where there is one) the row — before
anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryobus.services.convert.params import ImageDescriptor
from cryobus.services.convert.pipeline import (
    ConvertOptions,
    CsJobDir,
    IndexedCs,
    IndexedStar,
    StarMrcPairs,
    convert,
)
from cryobus.shared.errors import InputError


@pytest.fixture(scope="module")
def params(reference: Path) -> Path:
    return reference / "a_cs_single" / "params_empiar_single.npz"


@pytest.fixture
def particles(tmp_path: Path, cryodrgn: Path) -> Path:
    """A writable copy of the empiar_10076_7 particles (.cs, .star, .mrc)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("empiar_10076_7.cs", "empiar_10076_7.star", "empiar_10076_7.mrc"):
        shutil.copyfile(cryodrgn / name, folder / name)
    return folder


def refused(spec, params, tmp_path: Path, **options) -> InputError:
    """Run a conversion that must fail; check that nothing was written; return the error."""
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        convert(spec, params, out, ConvertOptions(**options))
    assert not [p for p in out.rglob("*") if p.is_file()], "a refused conversion wrote something"
    return err.value


def _edit_star(path: Path, **changes) -> Path:
    df = starfile.read(path)
    for column, values in changes.items():
        if values is None:
            df = df.drop(columns=[column])
        else:
            df[column] = values
    starfile.write(df, path, overwrite=True)
    return path


def _edit_cs(path: Path, edit) -> Path:
    arr = np.load(path)
    arr = edit(arr)
    with open(path, "wb") as fh:
        np.save(fh, arr)
    return path


def test_star_rows_and_mrc_images_must_match(tmp_path, cryodrgn, params):
    err = refused(
        StarMrcPairs(star_files=[cryodrgn / "empiar_10076_7.star"], mrc_files=[cryodrgn / "relion31.mrcs"]), params, tmp_path
    )
    assert err.field == "rows" and err.file.endswith("empiar_10076_7.star")
    assert "7 particle rows" in err.reason and "5 images" in err.reason
    err = refused(
        StarMrcPairs(star_files=[cryodrgn / "empiar_10076_7.star"] * 2, mrc_files=[cryodrgn / "empiar_10076_7.mrc"]),
        params, tmp_path,
    )
    assert err.field == "mrc_files"


def test_job_folder_rows_and_images_must_match(tmp_path, job_folders, params):
    job = tmp_path / "jobs" / "J1"
    shutil.copytree(job_folders / "J1", job)
    _edit_cs(job / "J1_passthrough_particles.cs", lambda a: a[:6])
    err = refused(CsJobDir(folder=tmp_path / "jobs", job=1), params, tmp_path, pixel_size=1.3099979)
    assert err.field == "rows" and "6 rows" in err.reason and "7 images" in err.reason


@pytest.mark.parametrize("column", ["rlnDefocusV", "rlnVoltage", "rlnSphericalAberration", "rlnImageName"])
def test_missing_star_ctf_column(tmp_path, particles, params, column):
    star = _edit_star(particles / "empiar_10076_7.star", **{column: None})
    err = refused(IndexedStar(star_file=star), params, tmp_path)
    assert (err.field, err.file) == (column, str(star))


@pytest.mark.parametrize("field", ["ctf/df2_A", "ctf/cs_mm", "blob/path", "blob/idx"])
def test_missing_cs_field(tmp_path, particles, params, field):
    def drop(arr):
        names = [n for n in arr.dtype.names if n != field]
        return np.array(arr[names].tolist(), dtype=[(n, arr.dtype[n]) for n in names])

    cs = _edit_cs(particles / "empiar_10076_7.cs", drop)
    err = refused(IndexedCs(cs_file=cs), params, tmp_path)
    assert (err.field, err.file) == (field, str(cs))


def test_non_finite_defocus_names_the_row(tmp_path, particles, params):
    def nan_row_3(arr):
        arr = arr.copy()
        arr["ctf/df1_A"][3] = np.nan
        return arr

    cs = _edit_cs(particles / "empiar_10076_7.cs", nan_row_3)
    err = refused(IndexedCs(cs_file=cs), params, tmp_path)
    assert err.field == "ctf/df1_A" and err.row == 3 and err.reason.startswith("row 3:")


def test_blob_path_that_does_not_exist(tmp_path, particles, params):
    def point_row_4_elsewhere(arr):
        arr = arr.copy()
        arr["blob/path"][4] = b"J9/imported/missing_particles.mrc"
        return arr

    cs = _edit_cs(particles / "empiar_10076_7.cs", point_row_4_elsewhere)
    err = refused(IndexedCs(cs_file=cs), params, tmp_path)
    assert (err.field, err.row, err.file) == ("blob/path", 4, str(cs))
    assert "missing_particles.mrc" in err.reason


def test_index_beyond_the_stack(tmp_path, particles, params):
    names = [f"{i}@empiar_10076_7.mrc" for i in (1, 2, 3, 4, 5, 6, 8)]
    star = _edit_star(particles / "empiar_10076_7.star", rlnImageName=names)
    err = refused(IndexedStar(star_file=star), params, tmp_path)
    assert (err.field, err.row) == ("rlnImageName", 6) and "holds 7 images" in err.reason
    star = _edit_star(star, rlnImageName=["1@empiar_10076_7.mrc", "x@empiar_10076_7.mrc"] + names[2:])
    err = refused(IndexedStar(star_file=star), params, tmp_path)
    assert (err.field, err.row) == ("rlnImageName", 1)


def test_truncated_mrc(tmp_path, particles, params):
    mrc = particles / "empiar_10076_7.mrc"
    with open(mrc, "r+b") as fh:
        fh.truncate(mrc.stat().st_size - 320 * 320 * 4 + 100)  # the last image is cut short
    err = refused(IndexedCs(cs_file=particles / "empiar_10076_7.cs"), params, tmp_path)
    assert (err.field, err.file) == ("nx*ny*nz", str(mrc)) and "truncated" in err.reason


def test_pixel_size_conflicts(tmp_path, particles, params, cryodrgn):
    cs = IndexedCs(cs_file=particles / "empiar_10076_7.cs")
    err = refused(cs, params, tmp_path, pixel_size=1.0)  # the .cs says 1.31 Å
    assert (err.field, err.file) == ("pixel_size", str(particles / "empiar_10076_7.cs"))
    assert "blob/psize_A" in err.reason and "override_pixel_size" in err.reason

    # 256-px particles of 2.806 Å against params for 320 px of 1.31 Å: the boxes differ.
    err = refused(IndexedStar(star_file=cryodrgn / "relion31.star"), params, tmp_path)
    assert (err.field, err.file) == ("pixel_size", str(params))

    # No pixel size anywhere: J1's batch header says 0 and the passthrough .cs is not trusted.
    job = tmp_path / "jobs"
    (job / "J1" / "restack").mkdir(parents=True)
    shutil.copyfile(particles / "empiar_10076_7.cs", job / "J1" / "J1_passthrough_particles.cs")
    shutil.copyfile(particles / "empiar_10076_7.mrc", job / "J1" / "restack" / "batch_000000_restacked.mrc")
    err = refused(CsJobDir(folder=job, job=1), params, tmp_path)
    assert err.field == "pixel_size"

    # Overridden explicitly, it converts and the npz says what the stack really is.
    written = convert(cs, params, tmp_path / "ok", ConvertOptions(pixel_size=1.0, override_pixel_size=True, flag_plots=False))
    npz = np.load(tmp_path / "ok" / written[0].artifacts["npz"].key, allow_pickle=True)
    assert npz["pixel_size"].tolist() == [1.0, 1.0] and npz["n_pixels"].tolist() == [320, 320]


def test_several_voltages_cannot_share_a_stack(tmp_path, particles, params):
    star = _edit_star(particles / "empiar_10076_7.star", rlnVoltage=[300, 300, 300, 200, 300, 300, 300])
    err = refused(IndexedStar(star_file=star), params, tmp_path)
    assert (err.field, err.row) == ("rlnVoltage", 3)


def test_job_folder_layout_errors(tmp_path, job_folders, params):
    err = refused(CsJobDir(folder=job_folders, job=5), params, tmp_path)
    assert err.field == "job"
    jobs = tmp_path / "jobs"
    shutil.copytree(job_folders / "J1", jobs / "J1")
    shutil.rmtree(jobs / "J1" / "restack")
    err = refused(CsJobDir(folder=jobs, job=1), params, tmp_path)
    assert err.field == "restack"
    (jobs / "J1" / "downsample").mkdir()
    err = refused(CsJobDir(folder=jobs, job=1), params, tmp_path)
    assert err.field == "batch" and err.file.endswith("downsample/batch_000000_downsample.mrc")


def test_options_that_cannot_work(tmp_path, particles, params):
    err = refused(
        IndexedCs(cs_file=particles / "empiar_10076_7.cs"), ImageDescriptor.from_values(2, 209.6), tmp_path, downsample_factor=200
    )
    assert err.field == "downsample_factor"
    with pytest.raises(ValueError):
        ConvertOptions(downsample_type="median")
    with pytest.raises(ValueError):
        ConvertOptions(batch_size=0)
