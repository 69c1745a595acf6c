"""The render service on a synthetic RELION project: previews, CTFFIND diagnostics and computed
spectra with the fitted CTF drawn on them, picks, class montage, tomography slices; then a
reprocess command re-renders with new parameters beside the old images, and once only."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import mrcfile
import nats
import numpy as np
import pytest
from PIL import Image

from cryobus.demo.synthetic import generate_acquisition
from cryobus.shared.events import Envelope, JobDiscovered

from .helpers import consumer_idle, cryobus, events_from, start_cryobus, wait_until

pytestmark = pytest.mark.slow


def _publish(url: str, data) -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        env = Envelope.wrap(data, source="/tests")
        await nc.jetstream().publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})
        await nc.close()

    asyncio.run(main())


def _completed(url: str):
    return [e for e in events_from(url, "cryobus.events.render.completed")]


def test_render_everything_then_reprocess_with_new_parameters(nats_server, tmp_path):
    project = tmp_path / "grid3"
    acq = generate_acquisition(project, n_micrographs=2, size=512, with_classes=True)
    first, second = acq.micrographs
    # The first micrograph has no CTFFIND diagnostic image: its spectrum is computed and the fit drawn on it.
    (project / "CtfFind/job005/Movies" / f"{first.name}_PS.ctf").unlink()
    store = tmp_path / "store"
    proc = start_cryobus(
        "up", "--nats", nats_server.url, "--watch", str(project), "--services", "ingest,render",
        "--store", store.as_uri(), "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log",
    )
    try:
        def kinds() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for e in _completed(nats_server.url):
                out.setdefault(e.data.image_kind, set()).add(e.data.method)
            return out

        wanted = {"micrograph", "power_spectrum", "particle_picks", "class_average", "class_average_montage"}
        assert wait_until(lambda: wanted <= set(kinds()), 120), (tmp_path / "up.log").read_text()[-3000:]
        assert wait_until(lambda: {"ctffind_diagnostic", "computed_periodogram+ctf_rings"} <= kinds()["power_spectrum"], 60)
        done = {(e.data.image_kind, e.data.name): e.data for e in _completed(nats_server.url)}

        # Spectrum with rings: RGB with amber pixels; CTFFIND's diagnostic: greyscale.
        rings = np.asarray(Image.open(store / "grid3/webp" / f"{first.name}_ctffit.webp").convert("RGB"))
        assert np.all(rings == (255, 176, 0), axis=2).sum() > 100
        diag = np.asarray(Image.open(store / "grid3/webp" / f"{second.name}_ctffit.webp").convert("RGB"))
        assert (diag[..., 0] == diag[..., 1]).all()
        # Picks: one image per micrograph, in the Extract job's folder, with cyan circles.
        for mic in acq.micrographs:
            boxed = store / "grid3/picks/job009" / f"{mic.name}_boxed.webp"
            assert np.all(np.asarray(Image.open(boxed).convert("RGB")) == (0, 200, 255), axis=2).sum() > 50
            assert done[("particle_picks", mic.name)].method.startswith(f"{len(mic.particles)} picks")
        assert (store / "grid3/class_averages/job010/it025/montage.webp").is_file()
        missing = [e.data for e in events_from(nats_server.url, "cryobus.events.input.missing")]
        assert any(m.path.endswith(f"{first.name}_PS.ctf") and m.field == "rlnCtfImage" for m in missing)

        # Tomography: a tilt series announced on the bus (as ingest does for a SerialEM folder).
        ts_dir = tmp_path / "tomo" / "TS_01"
        ts_dir.mkdir(parents=True)
        angles = [-30.0, -15.0, 0.0, 15.0, 30.0]
        mrcfile.write(ts_dir / "TS_01.st", np.stack([np.full((64, 96), k, np.float32) for k in range(5)]) + np.random.default_rng(0).standard_normal((5, 64, 96)).astype(np.float32))
        (ts_dir / "TS_01.tlt").write_text("\n".join(f"{a:.2f}" for a in angles) + "\n")
        mrcfile.write(ts_dir / "TS_01_rec.mrc", np.random.default_rng(1).standard_normal((20, 64, 96)).astype(np.float32))
        _publish(nats_server.url, JobDiscovered(
            dataset="grid3", software="serialem", job_type="tilt_series", project_dir=str(ts_dir.parent),
            job_dir=str(ts_dir), fingerprint="t", files={
                "tilt_series": str(ts_dir / "TS_01.st"), "tlt": str(ts_dir / "TS_01.tlt"), "tomogram": str(ts_dir / "TS_01_rec.mrc")},
        ))
        assert wait_until(lambda: {"tilt_series_slice", "tomogram_slice"} <= set(kinds()), 60)
        tilt = [e.data for e in _completed(nats_server.url) if e.data.image_kind == "tilt_series_slice"][0]
        assert tilt.method.startswith("section 2") and (store / "grid3/tomography/TS_01/tilt_series.webp").is_file()
        assert (store / "grid3/tomography/TS_01/TS_01_rec.webp").is_file()

        # Reprocess with new parameters: images land beside the old ones, under the command's correlation id.
        assert wait_until(lambda: consumer_idle(nats_server.url, ["render"]), 60)
        before = {p: p.stat().st_mtime_ns for p in store.rglob("*.webp")}
        out = cryobus("reprocess", "--nats", nats_server.url, "--dataset", "grid3", "--stage", "render",
                      "--param", "max_size=128", "--param", "ctf_overlay=split", timeout=60)
        assert out.returncode == 0, out.stderr
        command_id = re.search(r"event (\S+)", out.stdout).group(1)

        def tagged():
            return [e for e in _completed(nats_server.url) if e.data.params_tag]

        assert wait_until(lambda: {"micrograph", "power_spectrum", "particle_picks", "tomogram_slice"}
                          <= {e.data.image_kind for e in tagged()}, 120), (tmp_path / "up.log").read_text()[-3000:]
        assert wait_until(lambda: consumer_idle(nats_server.url, ["render-commands"], stream="CRYOBUS_COMMANDS"), 60)
        redone = tagged()
        tag = redone[0].data.params_tag
        assert {e.correlation_id for e in redone} == {command_id}
        preview = store / "grid3/renders" / tag / "webp" / f"{second.name}.webp"
        assert max(Image.open(preview).size) <= 128
        split = np.asarray(Image.open(store / "grid3/renders" / tag / "webp" / f"{first.name}_ctffit.webp").convert("RGB"))
        assert (split[..., 0] == split[..., 1]).all()  # split view is greyscale, unlike the rings
        assert before == {p: p.stat().st_mtime_ns for p in before}  # the default images were not touched

        # The same request again does no duplicate work.
        again = cryobus("reprocess", "--nats", nats_server.url, "--dataset", "grid3", "--stage", "render",
                        "--param", "ctf_overlay=split", "--param", "max_size=128", timeout=60)
        assert again.returncode == 0, again.stderr
        assert wait_until(lambda: consumer_idle(nats_server.url, ["render-commands"], stream="CRYOBUS_COMMANDS"), 60)
        assert len(tagged()) == len(redone)

        bad = cryobus("reprocess", "--nats", nats_server.url, "--dataset", "grid3", "--stage", "render",
                      "--param", "max_size=huge", timeout=60)
        assert bad.returncode != 0 and "max_size" in bad.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
