"""Class-average montage: one labelled tile per class, in the source's numbering."""

from __future__ import annotations

import numpy as np
import pytest

from cryobus.services.render import class_averages, montage
from cryobus.services.render.service import _relion_class_labels
from cryobus.shared.events import JobDiscovered
from cryobus.shared.formats import mrc

JOB = "Class2D/job010"


def test_label_text():
    assert montage.ClassLabel(3, 120, 7.456).text() == "#3 · 120 ptcl · 7.5 Å"
    assert montage.ClassLabel(0, None, float("inf")).text() == "#0 · – Å"


def test_montage_of_the_real_class2d_job(relion_project):
    stack, _ = mrc.read_stack(relion_project / JOB / "run_it025_classes.mrcs")
    images = class_averages.class_images(stack)
    job = JobDiscovered(
        dataset="d", software="relion", job_type="Class2D", project_dir=str(relion_project),
        job_dir=str(relion_project / JOB), iteration=25, fingerprint="x",
        files={k: str(relion_project / JOB / f"run_it025_{v}") for k, v in
               {"data_star": "data.star", "model_star": "model.star", "classes_mrcs": "classes.mrcs"}.items()},
    )
    labels = _relion_class_labels(job)
    assert sorted(labels) == list(range(1, 51))
    # hard-assignment counts add up to the particles in the data STAR
    assert sum(label.particles for label in labels.values()) == 2374
    out = montage.montage(images, [labels[i + 1] for i in range(len(images))])
    cols = int(np.ceil(np.sqrt(50)))
    edge = min(montage.MAX_TILE, stack.shape[1])
    rows = int(np.ceil(50 / cols))
    assert out.dtype == np.uint8 and out.shape[0] == rows * (edge + montage.LABEL_HEIGHT) + (rows - 1) * montage.GAP
    assert out.shape[1] == cols * max(edge, 112) + (cols - 1) * montage.GAP
    # label strips carry white text
    strip = out[edge : edge + montage.LABEL_HEIGHT, : max(edge, 112)]
    assert (strip > 200).any()


def test_montage_refuses_mismatched_input():
    img = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        montage.montage([img, img], [montage.ClassLabel(1)])
    with pytest.raises(ValueError, match="no class averages"):
        montage.montage([], [])


def test_cryosparc_class_labels_from_a_cryosparc_tools_fixture(tmp_path):
    """No real CryoSPARC 2D job is in shared/data: the class-averages and particles .cs are written
    with cryosparc-tools from the documented fields (``blob/idx``, ``blob/res_A``, ``alignments2D/class``)."""
    from cryosparc.dataset import Dataset

    classes = Dataset.allocate(3, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/res_A", "<f4")])
    classes["blob/path"] = ["J9/J9_020_class_averages.mrc"] * 3
    classes["blob/idx"] = [0, 1, 2]
    classes["blob/res_A"] = [8.5, 12.0, 30.0]
    cs = tmp_path / "J9_020_class_averages.cs"
    classes.save(cs)
    particles = Dataset.allocate(6, [("alignments2D/class", "<u4")])
    particles["alignments2D/class"] = [0, 0, 0, 2, 2, 0]
    particles.save(tmp_path / "J9_020_particles.cs")
    job = JobDiscovered(dataset="d", software="cryosparc", job_type="class_averages", project_dir=str(tmp_path),
                        job_dir=str(tmp_path), iteration=20, fingerprint="x",
                        files={"cs": str(cs), "mrc": str(tmp_path / "J9_020_class_averages.mrc")})
    from cryobus.services.render.service import _cryosparc_class_labels

    labels = _cryosparc_class_labels(job)
    assert labels == {
        0: montage.ClassLabel(0, 4, pytest.approx(8.5)),
        1: montage.ClassLabel(1, 0, pytest.approx(12.0)),
        2: montage.ClassLabel(2, 2, pytest.approx(30.0)),
    }
