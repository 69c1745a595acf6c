"""The bad-input corpus through the whole system: generated bad files land in a watched folder
beside good ones; each bad file gets exactly the ``*.failed`` event(s) that name it, with a
reason; the good files still give their outputs; the run ends by itself."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ..e2e.helpers import cryobus, events_in_state_dir
from .corrupt import PROMISED_100_GB, hostile_pickles, mrc_header, mrc_promising, npy_promising, saved
from .test_mrc_corpus import GOOD_TIFFS, _tiff_header
from .test_pickle_corpus import GOOD

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]  # the run itself gives up after 240 s idle-wait

MICROGRAPH = "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"

# RELION 3.0 CtfFind output whose pixel size cannot be derived: rlnDetectorPixelSize is text.
STAR_WITH_TEXT_PIXEL_SIZE = """
data_

loop_
_rlnMicrographName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDetectorPixelSize #4
_rlnMagnification #5
MotionCorr/job002/Movies/a.mrc 15000.0 14000.0 five 50000
"""


def _bad_files(root: Path, outside: Path, marker: Path) -> dict[str, set[str]]:
    """Write the bad inputs under ``root``; returns {path relative to root: services that must fail it}."""
    expected: dict[str, set[str]] = {}

    def put(rel: str, data: bytes, services: set[str]) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = services

    # Exposures: ingest refuses what no waiting can fix, and MRCs that never become complete.
    put("session1/promises_100_gb.mrc", mrc_promising(PROMISED_100_GB), {"ingest"})
    put("session1/mode_77.mrc", mrc_header(nx=64, ny=64, nz=1, mode=77) + b"\0" * 64 * 64 * 4, {"ingest"})
    put("session1/not_an_mrc.mrc", b"this is a text file with an .mrc name\n" * 64, {"ingest"})
    put("session1/cut_short.tif", GOOD_TIFFS["uint16"][:300], {"render"})
    put("session1/claims_gigapixels.tif", _tiff_header(160_000, 160_000), {"render"})
    (root / "session1/escape.mrc").symlink_to(outside / "secret.mrc")
    expected["session1/escape.mrc"] = {"ingest"}
    # A RELION job whose table cannot be read, by the metadata table nor by the CTF previews.
    put("relionproj/CtfFind/job003/micrographs_ctf.star", STAR_WITH_TEXT_PIXEL_SIZE.encode(), {"metadata", "render"})
    # CryoSPARC particles: a header promising 100 GB, and fields of the wrong dtype.
    put("J8/J8_particles.cs", npy_promising(PROMISED_100_GB), {"metadata", "render", "convert"})
    wrong = np.zeros(3, dtype=[("uid", "<u8"), ("location/micrograph_uid", "U8"), ("location/micrograph_path", "<f4"),
                               ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
                               ("location/micrograph_shape", "<u4", (2,))])  # fmt: skip
    put("J9/J9_particles.cs", saved(wrong), {"metadata", "render"})  # no blob/*: convert skips it
    # NextPYP: hostile pickles and a truncated one beside a good one.
    hostile = hostile_pickles(marker)
    for i, case in enumerate(["os.system", "DataFrame from arguments over an allowed index", "_reconstruct of 100 GB",
                              "bytearray of 100 GB"]):  # fmt: skip
        put(f"nextpyp/pkl/hostile_{i}.pkl", hostile[case], {"metadata"})
    put("nextpyp/pkl/cut_short.pkl", GOOD[4][: len(GOOD[4]) // 2], {"metadata"})
    return expected


@pytest.fixture(scope="module")
def corpus_run(shared_data: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("corpus_e2e")
    root, outside, marker = work / "facility", work / "outside", work / "pwned"
    outside.mkdir()
    shutil.copy(shared_data / MICROGRAPH, outside / "secret.mrc")
    expected = _bad_files(root, outside, marker)
    shutil.copy(shared_data / MICROGRAPH, root / "session1" / "good_micrograph.mrc")
    (root / "nextpyp/pkl/good_0001.pkl").write_bytes(GOOD[4])
    old = time.time() - 120  # settled, and old enough for a short MRC to count as truncated
    for path in [*root.rglob("*"), root]:
        os.utime(path, (old, old), follow_symlinks=False)
    out = work / "out"
    started = time.monotonic()
    proc = cryobus("up", "--watch", str(root), "--store", (out / "artifacts").as_uri(), "--state-dir", str(out / "state"),
                   "--exit-when-idle", "--idle-timeout", "240", timeout=330, env={"CRYOBUS_SETTLE_S": "0.2"})  # fmt: skip
    events = events_in_state_dir(out / "state")
    failed = [e.data for e in events if e.type.endswith(".failed.v1")]
    return {"proc": proc, "root": root, "out": out, "failed": failed, "expected": expected, "marker": marker,
            "seconds": time.monotonic() - started}  # fmt: skip


def test_the_run_ends_by_itself_and_reports_the_failures(corpus_run):
    proc = corpus_run["proc"]
    total = sum(len(services) for services in corpus_run["expected"].values())
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"failures: {total}" in proc.stdout, proc.stdout[-3000:]


def test_each_bad_file_gets_exactly_its_failed_events(corpus_run):
    root = corpus_run["root"].resolve()
    by_file = Counter()
    for f in corpus_run["failed"]:
        assert f.file, f
        assert f.reason.strip() and f.error_class == "permanent", f
        rel = os.path.relpath(f.file, root) if Path(f.file).is_absolute() else f.file
        by_file[(rel.replace(os.sep, "/"), f.service)] += 1
    want = Counter({(rel, service): 1 for rel, services in corpus_run["expected"].items() for service in services})
    assert by_file == want, {"unexpected": by_file - want, "missing": want - by_file}


def test_failures_say_which_field_is_wrong(corpus_run):
    fields = {(Path(f.file).name, f.service): f.field for f in corpus_run["failed"]}
    reasons = {(Path(f.file).name, f.service): f.reason for f in corpus_run["failed"]}
    assert "limit" in reasons[("promises_100_gb.mrc", "ingest")]  # ingest's events carry the reason only
    assert "mode 77" in reasons[("mode_77.mrc", "ingest")]
    assert "outside the allowed roots" in reasons[("escape.mrc", "ingest")]
    assert fields[("micrographs_ctf.star", "metadata")] == "rlnDetectorPixelSize"
    assert fields[("J9_particles.cs", "metadata")] == "location/micrograph_uid"
    assert fields[("J9_particles.cs", "render")] == "location/micrograph_path"
    assert fields[("claims_gigapixels.tif", "render")] in {"tiff", "width*height"}
    assert all(fields[(f"hostile_{i}.pkl", "metadata")] == "pickle" for i in range(4))


def test_nothing_hostile_ran_and_the_good_files_gave_their_outputs(corpus_run):
    assert not corpus_run["marker"].exists()
    artifacts = corpus_run["out"] / "artifacts" / "facility"
    assert (artifacts / "webp" / "good_micrograph.webp").is_file()
    table = (artifacts / "micrograph_metadata.csv").read_text()
    assert "good_0001" in table and "hostile" not in table
