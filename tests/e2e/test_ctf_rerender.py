"""Event-triggered reprocessing: a metadata.updated that brings or changes a micrograph's CTF fit
redraws its computed power spectrum with the fit, without a human and without re-reading the image;
an update that leaves the fit as it is redraws nothing."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from .helpers import consumer_idle, events_from, start_cryobus, wait_until, write_micrographs

pytestmark = pytest.mark.slow

CTFFIND_TXT = """# Output from CTFFind version 4.1.14, run on 2024-08-30 16:05:30
# Input file: {name}.mrc ; Number of micrographs: 1
# Pixel size: 1.000 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.07
# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 3.0 Angstroms ; min. def.: 5000.0 um; max. def. 50000.0 um
# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully
1.000000 {du:.6f} {dv:.6f} 30.000000 0.000000 0.050000 4.000000
"""


def _write_fit(folder, name: str, du: float, dv: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_PS.txt"
    tmp = folder / f".{name}.tmp"
    tmp.write_text(CTFFIND_TXT.format(name=name, du=du, dv=dv))
    old = time.time() - 60
    os.utime(tmp, (old, old))
    os.replace(tmp, path)


def test_new_and_changed_ctf_fits_redraw_the_spectrum(nats_server, tmp_path):
    session = tmp_path / "grid5"
    fitted, unfitted = (p.stem for p in write_micrographs(session, 2, size=512))
    store = tmp_path / "store"
    proc = start_cryobus(
        "up", "--nats", nats_server.url, "--watch", str(session), "--services", "ingest,metadata,render",
        "--store", store.as_uri(), "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log",
        env={"CRYOBUS_SETTLE_S": "0.2"},
    )
    spectrum = store / "grid5/webp" / f"{fitted}_ctffit.webp"

    def spectra(name: str):
        return [e.data for e in events_from(nats_server.url, "cryobus.events.render.completed")
                if e.data.image_kind == "power_spectrum" and e.data.name == name]

    def idle() -> bool:
        return consumer_idle(nats_server.url, ["metadata", "render"])

    try:
        # 1. Exposures first: spectra computed without any fit.
        assert wait_until(lambda: len(spectra(fitted)) == 1 and len(spectra(unfitted)) == 1, 90), \
            (tmp_path / "up.log").read_text()[-3000:]
        assert spectra(fitted)[0].method == "computed_periodogram"
        plain = np.asarray(Image.open(spectrum).convert("RGB"))
        assert (plain[..., 0] == plain[..., 2]).all()

        # 2. CTFFIND results arrive for one micrograph: metadata.updated carries its fit → rings drawn.
        _write_fit(session / "ctffind", fitted, 15000.0, 14000.0)
        assert wait_until(lambda: any(s.method.endswith("ctf_rings") for s in spectra(fitted)), 90), \
            (tmp_path / "up.log").read_text()[-3000:]
        rings = np.asarray(Image.open(spectrum).convert("RGB"))
        assert np.all(rings == (255, 176, 0), axis=2).sum() > 100
        assert wait_until(idle, 60)
        n_fitted = len(spectra(fitted))
        assert len(spectra(unfitted)) == 1  # no fit for it: nothing redrawn

        # 3. A metadata update that does not change the fit (a second micrograph's fit) redraws only that one.
        _write_fit(session / "ctffind", unfitted, 20000.0, 20000.0)
        assert wait_until(lambda: any(s.method.endswith("ctf_rings") for s in spectra(unfitted)), 90)
        assert wait_until(idle, 60)
        assert len(spectra(fitted)) == n_fitted

        # 4. The fit changes (CTFFIND re-run): the spectrum is redrawn with the new rings.
        _write_fit(session / "ctffind", fitted, 25000.0, 22000.0)
        assert wait_until(lambda: len(spectra(fitted)) == n_fitted + 1, 90), (tmp_path / "up.log").read_text()[-3000:]
        changed = np.asarray(Image.open(spectrum).convert("RGB"))
        assert not np.array_equal(np.all(changed == (255, 176, 0), axis=2), np.all(rings == (255, 176, 0), axis=2))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
