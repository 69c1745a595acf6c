"""Class averages in: a RELION Class2D job and a CryoSPARC 2D job arrive as ingest announces them,
and every class comes out with its image (unchanged), resolution, particle count, distribution
and pixel size, under its stable id."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryobus.shared.class_averages.model import class_uid
from cryobus.shared.class_averages.cryosparc import read_class_averages
from cryobus.shared.class_averages.relion import read_class2d
from cryobus.services.labelling.service import read_job
from cryobus.shared.errors import InputError
from cryobus.shared.formats import star

from .conftest import discover, make_cryosparc_2d_job


def _relion_truth(job010: Path):
    with mrcfile.open(job010 / "run_it025_classes.mrcs", permissive=True) as m:
        images = np.array(m.data)
    model = star.read_star(job010 / "run_it025_model.star")
    classes = model["model_classes"]
    particles = star.read_star(job010 / "run_it025_data.star")["particles"]
    return images, classes, particles, float(model["model_general"]["rlnPixelSize"].iloc[0])


def test_relion_class2d_job_gives_every_class_with_its_statistics(relion_event, job010):
    assert relion_event.iteration == 25  # ingest picked the highest iteration
    cs = read_job(relion_event)
    images, model, particles, apix = _relion_truth(job010)

    assert cs.software == "relion" and cs.iteration == 25
    assert cs.job == "Conecsion__sppractice/Class2D/job010"
    assert [c.number for c in cs.classes] == list(range(1, len(model) + 1)) and len(cs.classes) == 50
    counts = particles["rlnClassNumber"].value_counts()
    assert sum(c.particle_count for c in cs.classes) == len(particles)
    assert cs.distribution_source == "hard_assignments"
    for c, (_, row) in zip(cs.classes, model.iterrows(), strict=True):
        assert row["rlnReferenceImage"].startswith(f"{c.number:06d}@")
        np.testing.assert_array_equal(c.image, images[c.number - 1])  # float32, bit for bit
        assert c.image.dtype == np.float32
        assert c.particle_count == counts.get(c.number, 0)
        assert c.class_distribution == pytest.approx(c.particle_count / len(particles))
        assert c.soft_distribution == pytest.approx(row["rlnClassDistribution"])
        assert c.pixel_size_A == pytest.approx(apix)
        if np.isfinite(row["rlnEstimatedResolution"]):
            assert c.resolution_A == pytest.approx(row["rlnEstimatedResolution"])
        else:
            assert c.resolution_A is None  # RELION's "inf" for an empty class is not a resolution
    assert any(c.resolution_A is None for c in cs.classes)
    assert cs.uid(7) == class_uid(relion_event.dataset, cs.job, 25, 7)
    assert cs.uid(7).endswith("/Class2D/job010/it025/class_007")


def test_relion_without_data_star_uses_rlnClassDistribution_and_says_so(job010):
    cs = read_class2d(
        dataset="d", project_dir=job010.parent.parent, job_dir=job010, model_star=job010 / "run_it025_model.star",
        classes_mrcs=job010 / "run_it025_classes.mrcs", iteration=25,
    )
    _, model, _, _ = _relion_truth(job010)
    assert cs.distribution_source == "rlnClassDistribution"
    assert [c.class_distribution for c in cs.classes] == pytest.approx(model["rlnClassDistribution"].tolist())
    assert all(c.particle_count is None for c in cs.classes)


def test_cryosparc_2d_job_highest_iteration_with_counts(cryosparc_project, job010):
    # CryoSPARC fixture written with cryosparc-tools from the documented field layout (no real
    # CryoSPARC 2D job is available): see make_cryosparc_2d_job.
    jobs = [j for j in discover(cryosparc_project, "cs-data") if j.job_type == "class_averages"]
    assert len(jobs) == 1 and jobs[0].iteration == 20
    cs = read_job(jobs[0])
    images, model, particles, _ = _relion_truth(job010)

    assert cs.software == "cryosparc" and cs.job == "P1/J7" and cs.iteration == 20
    assert [c.number for c in cs.classes] == list(range(50))  # CryoSPARC numbers from 0
    assert cs.distribution_source == "hard_assignments"
    counts = (particles["rlnClassNumber"] - 1).value_counts()
    for c in cs.classes:
        np.testing.assert_array_equal(c.image, images[c.number])  # iteration 20's stack, not 19's
        assert c.particle_count == counts.get(c.number, 0)
        assert c.class_distribution == pytest.approx(c.particle_count / len(particles))
        assert c.pixel_size_A == pytest.approx(3.54)
        truth = model["rlnEstimatedResolution"].iloc[c.number]
        assert (c.resolution_A is None) if not np.isfinite(truth) else c.resolution_A == pytest.approx(truth, rel=1e-6)
    assert cs.uid(0) == "cs-data/P1/J7/it020/class_000"


def test_cryosparc_without_particles_imports_with_unknown_counts(tmp_path, job010):
    make_cryosparc_2d_job(tmp_path / "P2", job010, iterations=(3,), with_particles=False)
    job = discover(tmp_path / "P2")[0]
    cs = read_job(job)
    assert cs.distribution_source == "unavailable"
    assert all(c.particle_count is None and c.class_distribution is None for c in cs.classes)


def test_missing_star_column_names_file_and_field(tmp_path, job010):
    job = tmp_path / "Class2D" / "job010"
    shutil.copytree(job010, job)
    model = job / "run_it025_model.star"
    model.write_text(model.read_text().replace("_rlnEstimatedResolution", "_rlnSomethingElse"))
    with pytest.raises(InputError) as err:
        read_class2d(dataset="d", project_dir=tmp_path, job_dir=job, model_star=model,
                     classes_mrcs=job / "run_it025_classes.mrcs", iteration=25)
    assert err.value.file == str(model) and err.value.field == "rlnEstimatedResolution"


def test_corrupt_cs_and_missing_field_are_input_errors(tmp_path, job010):
    job_dir = make_cryosparc_2d_job(tmp_path / "P3", job010, iterations=(5,))
    cs_path = job_dir / "J7_005_class_averages.cs"
    from cryosparc.dataset import Dataset

    ds = Dataset.load(cs_path)
    ds.drop_fields(["blob/res_A"])
    ds.save(cs_path)
    with pytest.raises(InputError) as err:
        read_class_averages(dataset="d", project_dir=tmp_path / "P3", job_dir=job_dir, cs=cs_path,
                            mrc_path=job_dir / "J7_005_class_averages.mrc", iteration=5)
    assert err.value.field == "blob/res_A" and err.value.file == str(cs_path)

    cs_path.write_text("not a dataset")
    with pytest.raises(InputError) as err:
        read_class_averages(dataset="d", project_dir=tmp_path / "P3", job_dir=job_dir, cs=cs_path,
                            mrc_path=job_dir / "J7_005_class_averages.mrc", iteration=5)
    assert err.value.file == str(cs_path)


def test_particle_class_outside_the_job_is_refused(tmp_path, job010):
    job_dir = make_cryosparc_2d_job(tmp_path / "P4", job010, iterations=(5,))
    from cryosparc.dataset import Dataset

    parts_path = job_dir / "J7_005_particles.cs"
    parts = Dataset.load(parts_path)
    parts["alignments2D/class"][0] = 50  # classes are 0..49
    parts.save(parts_path)
    with pytest.raises(InputError) as err:
        read_class_averages(dataset="d", project_dir=tmp_path / "P4", job_dir=job_dir,
                            cs=job_dir / "J7_005_class_averages.cs", mrc_path=job_dir / "J7_005_class_averages.mrc",
                            particles_cs=parts_path, iteration=5)
    assert err.value.field == "alignments2D/class"


def test_fresh_unreadable_particles_file_is_retried_an_old_one_is_bad(tmp_path, job010):
    import os
    import time

    from cryobus.shared.errors import TransientError

    job_dir = make_cryosparc_2d_job(tmp_path / "P5", job010, iterations=(6,))
    parts = job_dir / "J7_006_particles.cs"
    parts.write_bytes(parts.read_bytes()[:200])  # CryoSPARC still writing it
    (job,) = [j for j in discover(tmp_path / "P5") if j.job_type == "class_averages"]
    with pytest.raises(TransientError):
        read_job(job, settle_s=30)
    old = time.time() - 120
    os.utime(parts, (old, old))
    with pytest.raises(InputError) as err:
        read_job(job, settle_s=30)
    assert err.value.file == str(parts)
