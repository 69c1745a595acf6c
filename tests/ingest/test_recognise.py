"""What ingest recognises under a root, and that it announces each input exactly once."""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryobus.services.ingest.ledger import Ledger
from cryobus.services.ingest.recognise import ScanResult, discovery_id, scan_tree
from cryobus.services.ingest.roots import AllowedRoots, dataset_name
from cryobus.services.ingest.stability import StabilityTracker
from cryobus.shared.events.models import ExposureDiscovered, JobDiscovered

MICROGRAPH = (
    "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/"
    "24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"
)


def _scan(root: Path, tracker: StabilityTracker | None = None) -> ScanResult:
    tracker = tracker or StabilityTracker(settle_s=30)
    return scan_tree(root, dataset=dataset_name(root, None), allowed=AllowedRoots([root]), is_stable=tracker.is_stable)


def _jobs(result: ScanResult) -> dict[str, JobDiscovered]:
    jobs = [d for d in result.found if isinstance(d, JobDiscovered)]
    return {f"{Path(d.job_dir).parent.name}/{Path(d.job_dir).name}": d for d in jobs}


def _age(path: Path, seconds: float = 7200) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.fixture
def project(relion_project: Path, tmp_path: Path) -> Path:
    """A writable copy of the real RELION 5 project (copy2 keeps its old mtimes)."""
    dest = tmp_path / "sppractice"
    shutil.copytree(relion_project, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


# -- RELION ------------------------------------------------------------------------------


def test_relion_project_announces_each_finished_job(project):
    result = _scan(project)
    jobs = _jobs(result)
    assert set(jobs) == {"MotionCorr/job002", "CtfFind/job005", "AutoPick/job008", "Extract/job009", "Class2D/job010"}
    assert all(d.software == "relion" and d.project_dir == str(project) for d in jobs.values())
    assert jobs["MotionCorr/job002"].files == {"star": str(project / "MotionCorr/job002/corrected_micrographs.star")}
    assert jobs["CtfFind/job005"].files == {"star": str(project / "CtfFind/job005/micrographs_ctf.star")}
    assert jobs["AutoPick/job008"].files == {"star": str(project / "AutoPick/job008/autopick.star")}
    assert jobs["Extract/job009"].files == {"star": str(project / "Extract/job009/particles.star")}
    class2d = jobs["Class2D/job010"]
    assert class2d.job_type == "Class2D" and class2d.iteration == 25
    assert class2d.files == {
        "data_star": str(project / "Class2D/job010/run_it025_data.star"),
        "model_star": str(project / "Class2D/job010/run_it025_model.star"),
        "classes_mrcs": str(project / "Class2D/job010/run_it025_classes.mrcs"),
    }
    # the micrographs, power spectra and particle stacks inside the project are not exposures
    assert not [d for d in result.found if isinstance(d, ExposureDiscovered)]
    assert result.refused == [] and result.pending == []


def test_rescanning_gives_the_same_ids_and_a_touched_file_changes_only_its_job(project):
    first = {k: discovery_id(d) for k, d in _jobs(_scan(project)).items()}
    assert len(set(first.values())) == 5
    assert {k: discovery_id(d) for k, d in _jobs(_scan(project)).items()} == first

    particles = project / "Extract/job009/particles.star"
    st = particles.stat()
    os.utime(particles, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = {k: discovery_id(d) for k, d in _jobs(_scan(project)).items()}
    assert third["Extract/job009"] != first["Extract/job009"]
    del third["Extract/job009"], first["Extract/job009"]
    assert third == first


def test_class2d_waits_while_the_newest_iteration_is_written(project, shared_data):
    job = project / "Class2D/job010"
    for kind in ("data", "model"):
        shutil.copy2(job / f"run_it025_{kind}.star", job / f"run_it026_{kind}.star")
    # iteration 26 without its classes yet: iteration 25 is the newest complete one
    assert _jobs(_scan(project))["Class2D/job010"].iteration == 25

    data = (job / "run_it025_classes.mrcs").read_bytes()
    (job / "run_it026_classes.mrcs").write_bytes(data[: len(data) // 2])
    _age(job / "run_it026_classes.mrcs")
    result = _scan(project)
    assert "Class2D/job010" not in _jobs(result)
    assert job / "run_it026_classes.mrcs" in result.pending

    (job / "run_it026_classes.mrcs").write_bytes(data)
    _age(job / "run_it026_classes.mrcs")
    class2d = _jobs(_scan(project))["Class2D/job010"]
    assert class2d.iteration == 26
    assert class2d.files["classes_mrcs"].endswith("run_it026_classes.mrcs")


def test_a_job_whose_output_is_still_being_written_is_pending(project):
    star = project / "CtfFind/job005/micrographs_ctf.star"
    star.write_text(star.read_text())  # fresh mtime
    result = _scan(project, StabilityTracker(settle_s=3600))
    assert "CtfFind/job005" not in _jobs(result)
    assert star in result.pending


def test_a_running_job_without_output_is_silent(project):
    (project / "Extract/job011").mkdir()
    (project / "Extract/job011/note.txt").write_text("running")
    assert "Extract/job011" not in _jobs(_scan(project))


def test_relion_alias_symlinks_are_not_announced_twice(project):
    (project / "Class2D/best_classes").symlink_to("job010", target_is_directory=True)
    result = _scan(project)
    assert [k for k in _jobs(result) if k.startswith("Class2D/")] == ["Class2D/job010"]
    assert result.refused == []


def test_a_relion_project_below_the_root_and_a_single_job_folder(project, tmp_path):
    facility = project.parent
    deep = _jobs(_scan(facility))
    assert len(deep) == 5
    assert all(d.project_dir == str(project) and d.dataset == facility.name for d in deep.values())
    # `cryobus ingest <project>/Class2D/job010` and `cryobus ingest <project>/Extract`
    allowed = AllowedRoots([project])
    one = scan_tree(project / "Class2D/job010", dataset="x", allowed=allowed, is_stable=lambda p: True)
    assert [(d.job_type, d.iteration, d.project_dir) for d in one.found] == [("Class2D", 25, str(project))]
    ext = scan_tree(project / "Extract", dataset="x", allowed=allowed, is_stable=lambda p: True)
    assert [d.job_type for d in ext.found] == ["Extract"]


# -- plain micrograph folders ------------------------------------------------------------


def test_plain_folder_complete_truncated_and_temporary_files(shared_data, tmp_path):
    root = tmp_path / "grid3"
    root.mkdir()
    real = shared_data / MICROGRAPH
    shutil.copy2(real, root / "mic_0001.mrc")
    data = real.read_bytes()
    (root / "mic_0002.mrc").write_bytes(data[: len(data) // 2])  # a copy that stalled half way
    (root / "movie_0003.tiff").write_bytes(b"II*\x00" + b"\x00" * 64)  # synthetic bytes, not parsed
    (root / "movie_0004.eer").write_bytes(b"\x00" * 64)  # synthetic bytes, not parsed
    (root / "mic_0005.mrc.tmp").write_bytes(data)
    (root / ".mic_0006.mrc").write_bytes(data)
    (root / "mic_0007.mrc~").write_bytes(data)
    (root / "notes.txt").write_text("grid 3, good ice")
    (root / ".snapshot").mkdir()
    shutil.copy2(real, root / ".snapshot" / "mic_0001.mrc")
    for p in root.rglob("*"):
        _age(p)

    result = _scan(root)
    found = {d.micrograph_name: d for d in result.found}
    assert set(found) == {"mic_0001", "movie_0003", "movie_0004"}
    mic = found["mic_0001"]
    assert isinstance(mic, ExposureDiscovered)
    assert (mic.dataset, mic.path, mic.file_format) == ("grid3", str(root / "mic_0001.mrc"), "mrc")
    assert mic.size_bytes == real.stat().st_size
    assert mic.mtime_ns == (root / "mic_0001.mrc").stat().st_mtime_ns
    assert mic.pixel_size_A == pytest.approx(0.79, abs=1e-3)
    assert found["movie_0003"].file_format == "tiff" and found["movie_0003"].pixel_size_A is None
    assert found["movie_0004"].file_format == "eer"
    assert result.pending == [root / "mic_0002.mrc"]


def test_a_fresh_exposure_waits_for_the_settle_time(shared_data, tmp_path):
    root = tmp_path / "live"
    root.mkdir()
    shutil.copyfile(shared_data / MICROGRAPH, root / "new.mrc")  # mtime: now
    result = _scan(root, StabilityTracker(settle_s=3600))
    assert result.found == [] and result.pending == [root / "new.mrc"]


def test_a_file_that_is_not_an_mrc_is_refused(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "junk.mrc").write_bytes(b"\xff" * 2048)
    _age(root / "junk.mrc")
    result = _scan(root)
    assert result.found == []
    assert [p for p, _ in result.refused] == [root / "junk.mrc"]


def test_exposure_ids_are_stable_and_follow_the_file(shared_data, tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    shutil.copy2(shared_data / MICROGRAPH, root / "a.mrc")
    first = discovery_id(_scan(root).found[0])
    assert discovery_id(_scan(root).found[0]) == first
    st = (root / "a.mrc").stat()
    os.utime(root / "a.mrc", ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    assert discovery_id(_scan(root).found[0]) != first


def test_a_single_file_can_be_ingested(shared_data, tmp_path):
    shutil.copy2(shared_data / MICROGRAPH, tmp_path / "one.mrc")
    result = scan_tree(tmp_path / "one.mrc", dataset="d", allowed=AllowedRoots([tmp_path]), is_stable=lambda p: True)
    assert [d.micrograph_name for d in result.found] == ["one"]


# -- CryoSPARC (synthetic: no real class_averages.cs exists in the shared data) ----------


def _cs(path: Path, n: int) -> None:
    """A synthetic CryoSPARC .cs: a numpy structured array saved with np.save."""
    arr = np.zeros(n, dtype=[("uid", "<u8"), ("blob/idx", "<u4")])
    arr["uid"] = np.arange(n)
    with path.open("wb") as f:
        np.save(f, arr)


def _class_mrc(path: Path) -> None:
    """A synthetic 4-class stack of 8x8 float32 class averages."""
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 8, 8), dtype=np.float32))
        m.voxel_size = 2.5


def test_cryosparc_2d_job_uses_the_highest_iteration(tmp_path):
    root = tmp_path / "P3"
    job = root / "J12"
    job.mkdir(parents=True)
    (job / "job.json").write_text('{"uid": "J12"}')
    _cs(job / "J12_passthrough_particles.cs", 10)
    for it in ("010", "020"):
        _cs(job / f"J12_{it}_class_averages.cs", 4)
        _class_mrc(job / f"J12_{it}_class_averages.mrc")
    _class_mrc(job / "J12_030_class_averages.mrc")  # iteration 30 has no .cs yet
    for p in job.iterdir():
        _age(p)

    result = _scan(root)
    by_type = {d.job_type: d for d in result.found}
    assert set(by_type) == {"class_averages", "particles"}
    assert all(isinstance(d, JobDiscovered) and d.software == "cryosparc" for d in result.found)
    cls = by_type["class_averages"]
    assert cls.iteration == 20
    assert cls.files == {"cs": str(job / "J12_020_class_averages.cs"), "mrc": str(job / "J12_020_class_averages.mrc")}
    assert (cls.job_dir, cls.project_dir) == (str(job), str(root))
    assert by_type["particles"].files == {"cs": str(job / "J12_passthrough_particles.cs")}
    # the class-average MRCs are not plain exposures
    assert not [d for d in result.found if isinstance(d, ExposureDiscovered)]


def test_cryosparc_iterated_particles_come_with_their_passthrough(tmp_path):
    job = tmp_path / "J7"
    job.mkdir()
    _cs(job / "J7_passthrough_particles.cs", 5)
    _cs(job / "J7_005_particles.cs", 5)
    _cs(job / "J7_025_particles.cs", 5)
    _cs(job / "J7_exposures_accepted.cs", 2)
    _cs(job / "J8_particles.cs", 5)  # another job's file: not this job's output
    for p in job.iterdir():
        _age(p)
    result = _scan(tmp_path)
    by_type = {d.job_type: d for d in result.found}
    assert set(by_type) == {"particles", "exposures"}
    assert by_type["particles"].iteration == 25
    assert by_type["particles"].files == {
        "cs": str(job / "J7_025_particles.cs"),
        "passthrough_cs": str(job / "J7_passthrough_particles.cs"),
    }
    assert by_type["exposures"].files == {"cs": str(job / "J7_exposures_accepted.cs")}


CTFFIND_MOVIES = "Conecsion__sppractice/CtfFind/job005/Movies"


def _ctffind_outputs(folder: Path, shared_data: Path, prefix: str = "") -> list[Path]:
    """The real CTFFIND 4.1.14 result, profile and diagnostic files of two micrographs, copied into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for mic in ("20170629_00021_frameImage_PS", "20170629_00022_frameImage_PS"):
        for suffix in (".txt", "_avrot.txt"):
            out.append(folder / f"{prefix}{mic}{suffix}")
            shutil.copy2(shared_data / CTFFIND_MOVIES / f"{mic}{suffix}", out[-1])
    return out


def test_cryosparc_ctffind_job_announces_its_ctffind_output_folder(shared_data, tmp_path):
    job = tmp_path / "P3" / "J3"
    job.mkdir(parents=True)
    (job / "job.json").write_text('{"uid": "J3"}')
    _cs(job / "J3_exposures_success.cs", 2)
    _ctffind_outputs(job / "ctffind_output", shared_data, prefix="123456789012345_")
    for p in job.rglob("*"):
        _age(p)
    result = _scan(tmp_path)
    by_type = {d.job_type: d for d in result.found}
    assert set(by_type) == {"exposures", "ctffind_outputs"}
    ctf = by_type["ctffind_outputs"]
    assert (ctf.software, ctf.job_dir, ctf.project_dir) == ("ctffind", str(job), str(job.parent))
    assert ctf.files == {"dir": str(job / "ctffind_output")}
    assert discovery_id(ctf) != discovery_id(by_type["exposures"])


def test_plain_ctffind_folder_and_its_diagnostic_images(shared_data, tmp_path):
    run = tmp_path / "ctffind_run"
    _ctffind_outputs(run, shared_data)
    # CTFFIND run by hand: diagnostic x_PS.mrc beside x_PS.txt is not an exposure; a micrograph is
    shutil.copy2(shared_data / MICROGRAPH, run / "20170629_00021_frameImage_PS.mrc")
    shutil.copy2(shared_data / MICROGRAPH, run / "20170629_00021_frameImage.mrc")
    (run / "notes.txt").write_text("not a CTFFIND result")
    for p in run.iterdir():
        _age(p)
    result = _scan(tmp_path)
    jobs = [d for d in result.found if isinstance(d, JobDiscovered)]
    exposures = [d for d in result.found if isinstance(d, ExposureDiscovered)]
    assert len(jobs) == 1
    assert (jobs[0].software, jobs[0].job_type, jobs[0].files) == ("ctffind", "ctffind_outputs", {"dir": str(run)})
    assert [Path(e.path).name for e in exposures] == ["20170629_00021_frameImage.mrc"]


def test_ctffind_folder_waits_for_every_result_file(shared_data, tmp_path):
    run = tmp_path / "ctffind_run"
    files = _ctffind_outputs(run, shared_data)
    for p in files:
        _age(p)
    tracker = StabilityTracker(settle_s=30)
    assert [d.job_type for d in _scan(tmp_path, tracker).found] == ["ctffind_outputs"]
    os.utime(files[2])  # the second micrograph's result is being rewritten: fresh mtime
    assert _scan(tmp_path, StabilityTracker(settle_s=30)).found == []


def test_a_folder_of_only_ctffind_profiles_is_not_a_ctffind_job(shared_data, tmp_path):
    run = tmp_path / "profiles"
    for p in _ctffind_outputs(run, shared_data):
        if not p.name.endswith("_avrot.txt"):
            p.unlink()
        else:
            _age(p)
    assert _scan(tmp_path).found == []


def test_cryosparc_exported_groups(tmp_path):
    project = tmp_path / "P3"
    exposures = project / "exports" / "groups" / "J4_exposures_accepted"
    particles = project / "exports" / "groups" / "J9_particles_selected"
    exposures.mkdir(parents=True)
    particles.mkdir(parents=True)
    _cs(exposures / "J4_exposures_accepted_exported.cs", 3)
    _cs(particles / "J9_particles_selected_exported.cs", 5)
    # the exported micrographs are CryoSPARC's own files, not plain exposures
    (exposures / "J2" / "motioncorrected").mkdir(parents=True)
    _class_mrc(exposures / "J2" / "motioncorrected" / "123456789012345_mic_1_patch_aligned_doseweighted.mrc")
    for p in project.rglob("*"):
        _age(p)
    result = _scan(tmp_path)
    by_type = {d.job_type: d for d in result.found}
    assert set(by_type) == {"exposures", "particles"}
    assert all(isinstance(d, JobDiscovered) and d.software == "cryosparc" for d in result.found)
    assert by_type["exposures"].files == {"cs": str(exposures / "J4_exposures_accepted_exported.cs")}
    assert by_type["exposures"].project_dir == str(project)
    assert by_type["particles"].job_dir == str(particles)


# -- NextPYP (synthetic: no real pyp .pkl exists in the shared data) ---------------------


def test_nextpyp_pkl_folder(shared_data, tmp_path):
    block = tmp_path / "sp-session"
    (block / "pkl").mkdir(parents=True)
    (block / "mrc").mkdir()
    for name in ("mic_0001", "mic_0002"):
        (block / "pkl" / f"{name}.pkl").write_bytes(pickle.dumps({"name": name}))  # synthetic
    shutil.copy2(shared_data / MICROGRAPH, block / "mrc" / "mic_0001.mrc")
    for p in block.rglob("*"):
        _age(p)
    result = _scan(tmp_path)
    assert len(result.found) == 1
    d = result.found[0]
    assert isinstance(d, JobDiscovered)
    assert (d.software, d.job_type, d.job_dir) == ("nextpyp", "pkl", str(block))
    assert d.files == {"pkl_dir": str(block / "pkl")}
    first = discovery_id(d)
    (block / "pkl" / "mic_0003.pkl").write_bytes(pickle.dumps({}))
    _age(block / "pkl" / "mic_0003.pkl")
    assert discovery_id(_scan(tmp_path).found[0]) != first


# -- restart -------------------------------------------------------------------------------


def test_after_a_restart_nothing_is_announced_again(project, tmp_path):
    state = tmp_path / "state" / "ingest.sqlite"
    with Ledger(state) as ledger:
        ids = [discovery_id(d) for d in _scan(project).found]
        assert [ledger.add(i) for i in ids] == [True] * 5
        assert ledger.add(ids[0]) is False
    with Ledger(state) as reopened:  # a new process
        assert len(reopened) == 5
        assert all(reopened.seen(discovery_id(d)) for d in _scan(project).found)
        assert not reopened.seen("some-other-id")
