"""A facility with CryoSPARC and NextPYP outputs → one prismPYP table, joined by micrograph name.

No real CryoSPARC exposure `.cs` or NextPYP `.pkl` exists in ../shared/data: the CryoSPARC files
are written with cryosparc-tools' Dataset API and the pkls with pandas, in the field layouts
documented in the reference (the same builders as tests/metadata)."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from tests.metadata.test_cryosparc_exposures import UID_1, UID_2, _ctffind4_cs, _mic_path, _patch_ctf_cs, _write_cs
from tests.metadata.test_nextpyp import nextpyp_dict, write_pkl

from .helpers import cryobus, events_from, events_in_state_dir, start_cryobus, wait_until

pytestmark = pytest.mark.slow


def _age(root: Path) -> None:
    old = time.time() - 120
    for p in root.rglob("*"):
        os.utime(p, (old, old))


def _facility(root: Path) -> Path:
    _patch_ctf_cs(root / "cs_project/J2/J2_exposures.cs")
    _ctffind4_cs(root / "cs_project/J3/J3_exposures_success.cs")
    particles = _write_cs(
        root / "cs_project/J9/J9_particles.cs",
        {"location/micrograph_path": [_mic_path(UID_1, "mic_1")] * 3 + [_mic_path(UID_2, "mic_2")] * 2,
         "location/center_x_frac": [0.5] * 5},
    )
    ds = Dataset.load(particles)
    ds.add_fields([("location/micrograph_uid", "u8")])
    ds["location/micrograph_uid"] = [UID_1] * 3 + [UID_2] * 2
    ds.save(particles)
    pkl = root / "nextpyp_proj/pkl"
    pkl.mkdir(parents=True)
    write_pkl(pkl / "mic_2.pkl", nextpyp_dict(df1=9000.0, df2=8000.0))
    write_pkl(pkl / "mic_20.pkl", nextpyp_dict(df1=21000.0, df2=19000.0, cc=0.3))
    (pkl / "broken.pkl").write_text("not a pickle\n")
    _age(root)
    return root


@pytest.fixture(scope="module")
def sources_run(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("sources")
    root = _facility(work / "facility")
    out = work / "out"
    proc = cryobus("up", "--watch", str(root), "--store", (out / "artifacts").as_uri(), "--state-dir", str(out / "state"),
                   "--exit-when-idle", "--idle-timeout", "240", timeout=400, env={"CRYOBUS_SETTLE_S": "0.2"})
    events = events_in_state_dir(out / "state")
    table = pd.read_csv(out / "artifacts/facility/micrograph_metadata.csv").set_index("micrograph_name")
    return {"proc": proc, "events": events, "table": table, "out": out}


def test_sources_join_by_normalised_name(sources_run):
    table = sources_run["table"]
    assert sorted(table.index) == ["mic_1", "mic_10", "mic_2", "mic_20"], sources_run["proc"].stdout[-2000:]
    mic2 = table.loc["mic_2"]
    # CTF from the CTFFIND4 job (its score is CTFFIND's), ice thickness from Patch CTF, counts from particles.
    assert mic2["mean_defocus"] == pytest.approx((12000.5 + 11000.5) / 2)
    assert mic2["ctf_fit"] == pytest.approx(0.125) and mic2["ctf_fit_source"] == "ctffind_cross_correlation"
    assert mic2["rel_ice_thickness"] == pytest.approx(1.0625 + 1 / 8)
    assert mic2["num_particles"] == 2 and table.loc["mic_1", "num_particles"] == 3
    assert table.loc["mic_10", "num_particles"] == 0
    # Only NextPYP knows mic_20.
    assert table.loc["mic_20", "mean_defocus"] == pytest.approx(20000.0)
    assert math.isnan(table.loc["mic_20", "rel_ice_thickness"])
    assert (sources_run["out"] / "artifacts/facility/pixel_size.txt").read_text() == "0.83\n"


def test_mismatch_is_reported_not_a_crash(sources_run):
    updates = [e.data for e in sources_run["events"] if e.type == "cryobus.metadata.updated.v1"]
    last = updates[-1]
    assert sorted(last.micrographs) == ["mic_1", "mic_10", "mic_2", "mic_20"]
    lacking = {k: v for k, v in last.unmatched.items() if k.startswith("cryosparc.exposures")}
    assert lacking and all("mic_20" in v for v in lacking.values())


def test_bad_pkl_is_a_failure_and_the_other_rows_stay(sources_run):
    failed = [e.data for e in sources_run["events"] if e.type == "cryobus.metadata.failed.v1"]
    assert [Path(f.file).name for f in failed] == ["broken.pkl"]
    assert sources_run["proc"].returncode == 1
    assert "mic_20" in sources_run["table"].index


def test_a_new_nextpyp_pkl_updates_the_table_incrementally(nats_server, tmp_path):
    root = tmp_path / "session"
    pkl = root / "pyp/pkl"
    pkl.mkdir(parents=True)
    for i in range(3):
        write_pkl(pkl / f"mic_{i}.pkl", nextpyp_dict(df1=10000.0 + i, df2=9000.0 + i))
    _age(root)
    proc = start_cryobus("up", "--nats", nats_server.url, "--watch", str(root), "--store", (tmp_path / "store").as_uri(),
                         "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log",
                         # the first three pkls go through the worker-process pool, the fourth is parsed in place
                         env={"CRYOBUS_SETTLE_S": "0.2", "CRYOBUS_METADATA_POOL_THRESHOLD": "3"})
    try:
        def tables() -> list:
            return [e.data for e in events_from(nats_server.url, "cryobus.events.metadata.updated")]

        assert wait_until(lambda: tables() and len(tables()[-1].micrographs) == 3, 60), (tmp_path / "up.log").read_text()[-3000:]
        write_pkl(pkl / "mic_3.pkl", nextpyp_dict(df1=13000.0, df2=12000.0))
        assert wait_until(lambda: len(tables()[-1].micrographs) == 4, 60), (tmp_path / "up.log").read_text()[-3000:]
        table = pd.read_csv(tmp_path / "store/session/micrograph_metadata.csv").set_index("micrograph_name")
        assert table.loc["mic_3", "mean_defocus"] == pytest.approx(12500.0)
        assert table.loc["mic_0", "mean_defocus"] == pytest.approx(9500.0)
        log = (tmp_path / "state/logs/metadata-0.log").read_text()
        assert log.count("processed cryobus.job.discovered") == 2
        assert "updated in place: 1 NextPYP row(s)" in log  # only the new pkl was parsed and merged
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
