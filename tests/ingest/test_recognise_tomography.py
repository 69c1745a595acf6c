"""A tilt-series folder lands → ingest announces one `job.discovered` per tilt series, files by role.

Real acquisition files: cryoCAT's TS_017 (017.mdoc, 60 tilts; 017.tlt; a CTFFIND fit of the tilts)
and teamtomo/mdocfile's test mdocs (a 41-tilt series, a movie [FrameSet] mdoc, a montage). The
tilt-series stacks and tomograms are small synthetic MRCs written with mrcfile.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryobus.services.ingest.recognise import ScanResult, discovery_id, scan_tree
from cryobus.services.ingest.roots import AllowedRoots
from cryobus.services.ingest.stability import StabilityTracker
from cryobus.services.ingest.tilt_series import count_angles, series_stem, sniff_mdoc
from cryobus.shared.events.models import ExposureDiscovered, JobDiscovered

TS_017 = Path("turonova__cryoCAT/tests/test_data/TS_017")
TEAMTOMO = Path("teamtomo__mdocfile/tests/test_data")
CONFIG = "cryoet_dataset.yaml"


def _mrc(path: Path, shape_zyx: tuple[int, int, int], voxel_size_A: float = 1.971) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros(shape_zyx, dtype=np.float32))
        m.voxel_size = voxel_size_A
    return path


def _age_all(root: Path) -> None:
    old = time.time() - 7200
    for p in [root, *root.rglob("*")]:
        os.utime(p, (old, old))


def _scan(root: Path, target: Path | None = None, tracker: StabilityTracker | None = None) -> ScanResult:
    tracker = tracker or StabilityTracker(settle_s=30)
    return scan_tree(target or root, dataset=root.name, allowed=AllowedRoots([root]), is_stable=tracker.is_stable)


def _tilt_series(result: ScanResult) -> list[JobDiscovered]:
    return [d for d in result.found if isinstance(d, JobDiscovered) and d.job_type == "tilt_series"]


def _copy(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)  # copyfile: a writable copy of the read-only originals
    return dest


@pytest.fixture
def session(shared_data: Path, tmp_path: Path) -> Path:
    """root/cryoet_dataset.yaml + root/TS_017/{017.mdoc, 017.tlt, 017_ctffind4.txt, 017.st, 017_rec.mrc}."""
    root = tmp_path / "session"
    folder = root / "TS_017"
    folder.mkdir(parents=True)
    for name in ("017.mdoc", "017.tlt", "017_ctffind4.txt"):
        _copy(shared_data / TS_017 / name, folder / name)
    _mrc(folder / "017.st", (60, 8, 8))  # one section per tilt of 017.mdoc
    _mrc(folder / "017_rec.mrc", (12, 8, 8), 7.884)
    (root / CONFIG).write_text("deposition_id: 10000\n")
    _age_all(root)
    return root


def test_the_readers_quick_look_at_real_files(shared_data: Path):
    sniff = sniff_mdoc(shared_data / TS_017 / "017.mdoc")
    assert sniff is not None and sniff.sections == 60 and "017_01.mrc" in sniff.sub_frames
    assert sniff_mdoc(shared_data / TEAMTOMO / "tilt_series.mdoc").sections == 41
    assert sniff_mdoc(shared_data / TEAMTOMO / "frame_set_single.mdoc") is None  # a movie's mdoc
    assert sniff_mdoc(shared_data / TEAMTOMO / "montage_section.mdoc") is None  # an atlas montage
    assert count_angles(shared_data / TS_017 / "017.tlt") == 60
    assert [series_stem(n) for n in ("TS_01.mrc.mdoc", "017.tlt", "TS_01.rawtlt", "TS_10_rec.mrc")] == [
        "TS_01", "017", "TS_01", "TS_10_rec"
    ]


def test_a_tilt_series_folder_is_one_job_with_its_files_by_role(session: Path):
    result = _scan(session)
    (job,) = _tilt_series(result)
    folder = session / "TS_017"
    assert (job.software, job.job_type, job.dataset) == ("serialem", "tilt_series", "session")
    assert job.job_dir == str(folder) and job.project_dir == str(session)  # the config's folder
    assert job.files == {
        "mdoc": str(folder / "017.mdoc"),
        "tlt": str(folder / "017.tlt"),
        "config": str(session / CONFIG),
        "tilt_series": str(folder / "017.st"),
        "tomogram_0": str(folder / "017_rec.mrc"),
    }
    # the stack, the tomogram and the per-tilt CTF fit are the tilt series', not SPA inputs
    assert [d for d in result.found if d is not job] == []
    assert result.refused == [] and result.pending == []


def test_a_rescan_gives_the_same_id_and_a_changed_config_a_new_one(session: Path):
    first = discovery_id(_tilt_series(_scan(session))[0])
    assert discovery_id(_tilt_series(_scan(session))[0]) == first
    (session / CONFIG).write_text("deposition_id: 10001\n")
    _age_all(session)
    assert discovery_id(_tilt_series(_scan(session))[0]) != first


def test_the_nearest_config_wins_and_one_outside_the_root_is_not_used(session: Path, tmp_path: Path):
    folder = session / "TS_017"
    (folder / CONFIG).write_text("deposition_id: 2\n")
    _age_all(session)
    assert _tilt_series(_scan(session))[0].files["config"] == str(folder / CONFIG)

    (folder / CONFIG).unlink()
    (session / CONFIG).unlink()
    (tmp_path / CONFIG).write_text("deposition_id: 3\n")  # beside the root, not under it
    job = _tilt_series(_scan(session))[0]
    assert "config" not in job.files and job.project_dir == str(folder)


def test_an_mrc_is_the_stack_when_its_sections_match_the_tilts(shared_data: Path, tmp_path: Path):
    root = tmp_path / "old_session"
    root.mkdir()
    _copy(shared_data / TEAMTOMO / "tilt_series.mdoc", root / "TS_01.mrc.mdoc")  # 41 tilts
    _copy(shared_data / TEAMTOMO / "frame_set_single.mdoc", root / "TS_01_000_0.0.mrc.mdoc")  # a movie's mdoc
    _mrc(root / "TS_01.mrc", (41, 8, 8), 5.4)
    _mrc(root / "TS_01_bin4.mrc", (10, 8, 8), 21.6)
    _mrc(root / "TS_01.ali", (41, 8, 8), 5.4)  # an aligned stack: not the tilt series
    _age_all(root)
    (job,) = _tilt_series(_scan(root))
    assert job.files == {
        "mdoc": str(root / "TS_01.mrc.mdoc"),
        "tilt_series": str(root / "TS_01.mrc"),
        "tomogram_0": str(root / "TS_01_bin4.mrc"),
    }


def test_several_tilt_series_in_one_folder_are_told_apart_by_name(shared_data: Path, tmp_path: Path):
    root = tmp_path / "pace"
    root.mkdir()
    for stem in ("TS_1", "TS_10"):
        _copy(shared_data / TS_017 / "017.mdoc", root / f"{stem}.mrc.mdoc")
        _mrc(root / f"{stem}.mrc", (60, 8, 8))
    _copy(shared_data / TS_017 / "017.tlt", root / "TS_10.tlt")
    _mrc(root / "TS_10_rec.mrc", (12, 8, 8), 7.884)
    _mrc(root / "other.mrc", (12, 8, 8))  # belongs to neither
    _age_all(root)
    jobs = {Path(j.files["mdoc"]).name: j for j in _tilt_series(_scan(root))}
    assert jobs["TS_1.mrc.mdoc"].files == {"mdoc": str(root / "TS_1.mrc.mdoc"), "tilt_series": str(root / "TS_1.mrc")}
    assert jobs["TS_10.mrc.mdoc"].files == {
        "mdoc": str(root / "TS_10.mrc.mdoc"),
        "tlt": str(root / "TS_10.tlt"),
        "tilt_series": str(root / "TS_10.mrc"),
        "tomogram_0": str(root / "TS_10_rec.mrc"),
    }
    assert len({discovery_id(j) for j in jobs.values()}) == 2


def test_imod_angles_without_an_mdoc_make_a_tilt_series(shared_data: Path, tmp_path: Path):
    root = tmp_path / "imod"
    root.mkdir()
    _copy(shared_data / TS_017 / "017.tlt", root / "017.rawtlt")
    _mrc(root / "017.st", (60, 8, 8))
    _age_all(root)
    (job,) = _tilt_series(_scan(root))
    assert job.files == {"rawtlt": str(root / "017.rawtlt"), "tilt_series": str(root / "017.st")}


def test_movie_mdocs_beside_micrographs_are_not_a_tilt_series(shared_data: Path, tmp_path: Path):
    root = tmp_path / "spa"
    root.mkdir()
    _mrc(root / "mic_0001.mrc", (1, 16, 16), 1.0)
    _copy(shared_data / TEAMTOMO / "frame_set_single.mdoc", root / "mic_0001.mrc.mdoc")
    _copy(shared_data / TEAMTOMO / "montage_section.mdoc", root / "atlas.mdoc")
    _age_all(root)
    result = _scan(root)
    assert _tilt_series(result) == []
    assert [type(d) for d in result.found] == [ExposureDiscovered]


def test_serialem_single_image_mdocs_beside_micrographs_are_not_a_tilt_series(shared_data: Path, tmp_path: Path):
    """SerialEM writes a one-section autodoc beside each saved image; a stack at one tilt is no tilt series either."""
    root = tmp_path / "spa_serialem"
    root.mkdir()
    text = (shared_data / TS_017 / "017.mdoc").read_text()
    one_section = text.split("[ZValue = 1]", 1)[0]
    for i in range(2):
        _mrc(root / f"mic_{i:04d}.mrc", (1, 16, 16), 1.971)
        (root / f"mic_{i:04d}.mrc.mdoc").write_text(one_section)
    # two sections at the same stage tilt
    second = one_section.split("[ZValue = 0]", 1)[1]
    (root / "record_stack.mrc.mdoc").write_text(one_section + "[ZValue = 1]" + second)
    _age_all(root)
    result = _scan(root)
    assert _tilt_series(result) == []
    assert sorted(Path(d.path).name for d in result.found) == ["mic_0000.mrc", "mic_0001.mrc"]


def test_a_tomogram_still_being_written_holds_the_tilt_series_back(session: Path):
    folder = session / "TS_017"
    rec = folder / "017_rec.mrc"
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) // 2])  # the header promises more than is there
    _age_all(session)
    result = _scan(session)
    assert _tilt_series(result) == [] and rec in result.pending

    rec.write_bytes(data)
    _age_all(session)
    assert _tilt_series(_scan(session))[0].files["tomogram_0"] == str(rec)


def test_a_volume_that_is_no_mrc_is_refused_and_left_out(session: Path):
    folder = session / "TS_017"
    (folder / "notes.rec").write_bytes(b"not an MRC file at all " * 64)
    _age_all(session)
    result = _scan(session)
    (job,) = _tilt_series(result)
    assert "notes.rec" not in " ".join(job.files.values())
    assert [p for p, _ in result.refused] == [folder / "notes.rec"]


def test_ingest_of_the_tilt_series_folder_itself(session: Path):
    """`cryobus ingest <root>/TS_017`: the folder alone, the config still found above it."""
    (job,) = _tilt_series(_scan(session, session / "TS_017"))
    assert job.files["config"] == str(session / CONFIG)
