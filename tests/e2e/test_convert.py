"""A facility's story for particles: `cryobus up` runs the convert service; `cryobus convert star ...`
asks it for CryoLike's tensors and prints the stacks as they are announced, equal to CryoLike's own
outputs; a bad request is refused by name before anything is announced; a RELION Extract job that
lands in a watched folder is converted without anyone asking."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.convert.conftest import assert_npz_equal, cryodrgn, load, reference, relative_error  # noqa: F401 (fixtures)

from .helpers import cryobus, events_from, events_in_state_dir, start_cryobus

pytestmark = pytest.mark.slow


def _file(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def test_convert_command_through_the_bus(nats_server, tmp_path, reference, relion_project, cryodrgn):
    store = tmp_path / "store"
    proc = start_cryobus("up", "--nats", nats_server.url, "--services", "convert", "--store", store.as_uri(),
                         "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log")  # fmt: skip
    try:
        case = reference / "c1_star_single"
        ok = cryobus("convert", "star", str(reference / "inputs/particles_noAnglePsi.star"),
                     "--folder", str(relion_project / "Extract/job009/Movies"), "--params", str(case / "params_sppractice_single.npz"),
                     "--nats", nats_server.url, "--dataset", "sppractice", "--out", "sppractice/cryolike/c1", "--timeout", "240")  # fmt: skip
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:] + (tmp_path / "up.log").read_text()[-3000:]
        assert "converted 3 stacks" in ok.stdout
        bad = cryobus("convert", "star-pairs", "--star", str(cryodrgn / "empiar_10076_7.star"),
                      "--mrc", str(cryodrgn / "relion31.mrcs"), "--nats", nats_server.url, "--timeout", "120")  # fmt: skip
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "refused" in bad.stderr and "field=rows" in bad.stderr and "empiar_10076_7.star" in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    events = events_from(nats_server.url)
    converted = [e for e in events if e.type == "cryobus.particles.converted.v1"]
    assert [c.data.n_images for c in converted] == [1024, 1024, 326]
    printed = ok.stdout
    for c in converted:
        assert c.data.phys_uri in printed and c.data.npz_uri in printed
        assert c.data.prefix == "sppractice/cryolike/c1"
    assert torch.equal(load(_file(converted[0].data.phys_uri)), load(case / "phys/particles_phys_stack_000000.pt"))
    assert relative_error(load(_file(converted[0].data.fourier_uri)), load(case / "fft/particles_fourier_stack_000000.pt")) <= 1e-5
    for i, c in enumerate(converted):
        assert_npz_equal(_file(c.data.npz_uri), case / f"fft/particles_fourier_stack_{i:06d}.npz")
    # The refused request: a failure naming the file, and nothing announced for it.
    [failed] = [e for e in events if e.type == "cryobus.convert.failed.v1"]
    assert failed.data.field == "rows" and failed.data.file.endswith("empiar_10076_7.star")
    assert not [e for e in events if e.correlation_id == failed.correlation_id and e.type != "cryobus.convert.failed.v1"
                and e.type != "cryobus.convert.requested.v1"]  # fmt: skip


def test_extract_job_in_a_watched_folder_is_converted(tmp_path, relion_project):
    project = tmp_path / "sppractice"
    shutil.copytree(relion_project / "Extract", project / "Extract")
    out = tmp_path / "out"
    proc = cryobus("up", "--services", "ingest,convert", "--watch", str(project), "--store", (out / "artifacts").as_uri(),
                   "--state-dir", str(out / "state"), "--exit-when-idle", "--idle-timeout", "240", timeout=400,
                   env={"CRYOBUS_SETTLE_S": "0.2"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = events_in_state_dir(out / "state")
    converted = [e.data for e in events if e.type == "cryobus.particles.converted.v1"]
    assert [c.n_images for c in converted] == [1024, 1024, 326]
    assert {c.prefix for c in converted} == {"sppractice/cryolike/Extract/job009"}
    layout = out / "artifacts/sppractice/cryolike/Extract/job009"
    assert sorted(p.name for p in (layout / "fft").iterdir()) == [
        f"particles_fourier_stack_{i:06d}.{ext}" for i in range(3) for ext in ("npz", "pt")]
    assert load(layout / "fft/particles_fourier_stack_000002.pt").shape == (326, 65, 128)  # CryoLike's defaults, 64 px
    assert "particles_phys" in proc.stdout  # the run summary lists the converted files
