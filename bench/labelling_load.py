"""The labelling service under load: importing a 200-class job, and 50 labelers grading at once.

1. Import: a synthetic RELION Class2D job of 200 classes (128×128 float32, a 50 000-particle
   data STAR) is read and imported into a fresh label store (mass features and display PNGs
   included). Baseline in the same run: reading the same ``.mrcs`` stack alone with mrcfile.
2. Load: the web app runs in its own process (``python -m cryobus.services.labelling.web``, as
   under ``cryobus up``: uvicorn + the label store); 50 simulated labelers, each with its own
   session, ask for their next class (``GET /api/next``), look at it for a while (uniform
   ``--think-ms``, default 250–1000 ms: a fast keyboard pass) and grade it (``POST /api/grade``),
   a bounded number of rounds each (and at most ``--max-s``); then the same again with no
   pause at all (a stress run far beyond what people do). Every request goes to 127.0.0.1 only.
   Baseline: one labeler alone, same server, same run.
   Afterwards the label store is read back: a grade the server acknowledged but did not keep
   counts as lost.

Usage: ``python bench/labelling_load.py [--labelers 50] [--rounds 20] [--db URL]`` (default: a
SQLite file in a temporary folder; give a ``postgresql://`` URL to measure PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the test extra installs httpx2
    import httpx  # type: ignore[no-redef]

from cryobus.shared.class_averages.relion import read_class2d
from cryobus.services.labelling.store import LabelStore

TOKEN = "bench-token"


def write_job(project: Path, n_classes: int = 200, box: int = 128, n_particles: int = 50_000, seed: int = 0) -> Path:
    """A RELION Class2D job folder with ``run_it025_{classes.mrcs,model.star,data.star}``."""
    rng = np.random.default_rng(seed)
    job = project / "Class2D" / "job001"
    job.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:box, :box] - box / 2
    stack = np.empty((n_classes, box, box), np.float32)
    for k in range(n_classes):
        r = rng.uniform(box * 0.1, box * 0.35)
        stack[k] = (xx**2 + yy**2 < r**2) * rng.uniform(0.5, 2) + rng.normal(0, 0.3, (box, box))
    with mrcfile.new(job / "run_it025_classes.mrcs", overwrite=True) as m:
        m.set_data(stack)
        m.voxel_size = 1.5
    classes = rng.integers(1, n_classes + 1, n_particles)
    counts = np.bincount(classes, minlength=n_classes + 1)[1:]
    starfile.write(
        {
            "model_general": {"rlnPixelSize": 1.5, "rlnNrClasses": n_classes},
            "model_classes": pd.DataFrame(
                {
                    "rlnReferenceImage": [f"{k:06d}@Class2D/job001/run_it025_classes.mrcs" for k in range(1, n_classes + 1)],
                    "rlnClassDistribution": counts / n_particles,
                    "rlnEstimatedResolution": rng.uniform(6, 40, n_classes),
                }
            ),
        },
        job / "run_it025_model.star",
        overwrite=True,
    )
    starfile.write(
        {"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5]}),
         "particles": pd.DataFrame({"rlnClassNumber": classes, "rlnOpticsGroup": 1})},
        job / "run_it025_data.star",
        overwrite=True,
    )  # fmt: skip
    return job


def bench_import(workdir: Path, db_url: str) -> None:
    job = write_job(workdir / "bench-project")
    t0 = time.perf_counter()
    with mrcfile.open(job / "run_it025_classes.mrcs") as m:
        np.array(m.data)
    read_only = time.perf_counter() - t0
    store = LabelStore(db_url)
    t0 = time.perf_counter()
    cs = read_class2d(
        dataset="bench", project_dir=workdir / "bench-project", job_dir=job, model_star=job / "run_it025_model.star",
        classes_mrcs=job / "run_it025_classes.mrcs", data_star=job / "run_it025_data.star", iteration=25,
    )
    t_read = time.perf_counter() - t0
    result = store.import_class_set(cs)
    total = time.perf_counter() - t0
    store.close()
    print("import of a 200-class job (128x128 float32, 50 000-particle data STAR)")
    print(f"  read stack alone (mrcfile, baseline):  {read_only * 1e3:8.1f} ms")
    print(f"  read model+data STAR + stack:          {t_read * 1e3:8.1f} ms")
    print(f"  read + features + PNGs + store commit: {total * 1e3:8.1f} ms  ({result.added} classes; "
          f"{total / read_only:.0f}x the bare stack read)  target < 2000 ms")


class Labeler:
    def __init__(self, url: str, email: str):
        self.http = httpx.AsyncClient(base_url=url, follow_redirects=False, timeout=30)
        self.email = email
        self.csrf = ""
        self.next_ms: list[float] = []
        self.grade_ms: list[float] = []
        self.acked: set[int] = set()
        self.errors = 0

    async def sign_in(self) -> None:
        form = (await self.http.get("/signin")).text
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
        r = await self.http.post("/signin", data={"email": self.email, "token": TOKEN, "csrf_token": nonce})
        r.raise_for_status() if r.status_code != 303 else None
        page = await self.http.get("/label", follow_redirects=True)
        self.csrf = re.search(r'data-csrf="([^"]+)"', page.text)[1]

    async def run(self, rounds: int, deadline: float, grade: str, think_s: tuple[float, float], seed: int) -> None:
        rng = np.random.default_rng(seed)
        if think_s[1] > 0:  # people do not all press a key in the same millisecond
            await asyncio.sleep(rng.uniform(0, think_s[1]))
        after = None
        for _ in range(rounds):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = await self.http.get("/api/next", params={} if after is None else {"after": after})
            self.next_ms.append((time.perf_counter() - t0) * 1e3)
            class_id = r.json()["class_id"] if r.status_code == 200 else None
            if class_id is None:
                self.errors += r.status_code != 200
                return
            if think_s[1] > 0:
                await asyncio.sleep(rng.uniform(*think_s))
            t0 = time.perf_counter()
            r = await self.http.post("/api/grade", json={"class_id": class_id, "grade": grade},
                                     headers={"X-CSRF-Token": self.csrf})
            self.grade_ms.append((time.perf_counter() - t0) * 1e3)
            if r.status_code == 200:
                self.acked.add(class_id)
            else:
                self.errors += 1
            after = class_id


async def load(url: str, n: int, rounds: int, max_s: float, think_s: tuple[float, float], tag: str) -> list[Labeler]:
    labelers = [Labeler(url, f"{tag}{i:02d}@bench.org") for i in range(n)]
    await asyncio.gather(*(lab.sign_in() for lab in labelers))
    deadline = time.monotonic() + max_s
    await asyncio.gather(
        *(lab.run(rounds, deadline, "ABCDF"[i % 5], think_s, i) for i, lab in enumerate(labelers))
    )
    for lab in labelers:
        await lab.http.aclose()
    return labelers


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(title: str, labelers: list[Labeler], wall: float, kept: dict[str, set[int]], base: float) -> None:
    lost = sum(len(lab.acked - kept.get(lab.email, set())) for lab in labelers)
    acked = sum(len(lab.acked) for lab in labelers)
    next_ms = [v for lab in labelers for v in lab.next_ms]
    grade_ms = [v for lab in labelers for v in lab.grade_ms]
    print(title)
    print(f"  next class:                 p50 {pct(next_ms, 50):6.1f} ms  p95 {pct(next_ms, 95):6.1f} ms"
          f"  ({pct(next_ms, 95) / base:.1f}x the baseline p50)  target p95 < 100 ms")
    print(f"  grade (saved, committed):   p50 {pct(grade_ms, 50):6.1f} ms  p95 {pct(grade_ms, 95):6.1f} ms")
    print(f"  grades acknowledged {acked}, kept {acked - lost}, lost {lost}; errors {sum(lab.errors for lab in labelers)};"
          f" {acked / wall:.0f} grades/s over {wall:.1f} s")


def bench_load(db_url: str, n: int, rounds: int, max_s: float, think_s: tuple[float, float]) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "cryobus.services.labelling.web", "--db", db_url, "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs = []
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        alone = asyncio.run(load(url, 1, rounds, max_s, (0.0, 0.0), "alone"))[0]
        for tag, think in (("people", think_s), ("stress", (0.0, 0.0))):
            t0 = time.perf_counter()
            labelers = asyncio.run(load(url, n, rounds, max_s, think, tag))
            runs.append((tag, think, labelers, time.perf_counter() - t0))
    finally:
        server.terminate()
        server.wait(10)
    store = LabelStore(db_url)
    kept: dict[str, set[int]] = {}
    for class_id, _uid, email, _grade in store.grade_rows():
        kept.setdefault(email, set()).add(class_id)
    store.close()
    base = pct(alone.next_ms, 50)
    print(f"\n{n} labelers grading at once on loopback, {rounds} grades each, label store {db_url.split(':')[0]}")
    print(f"  baseline, one labeler alone: next class p50 {base:6.1f} ms  p95 {pct(alone.next_ms, 95):6.1f} ms")
    for tag, think, labelers, wall in runs:
        pause = f"{think[0] * 1e3:.0f}-{think[1] * 1e3:.0f} ms per class" if think[1] else "no pause at all"
        report(f"{n} labelers, looking {pause}:" if tag == "people" else f"stress, {n} labelers with {pause}:",
               labelers, wall, kept, base)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20, help="grades per labeler (bounded loop)")
    p.add_argument("--max-s", type=float, default=120.0, help="stop the load after this many seconds")
    p.add_argument("--think-ms", type=float, nargs=2, default=(250.0, 1000.0), metavar=("MIN", "MAX"),
                   help="how long a labeler looks at a class before grading it (uniform)")
    p.add_argument("--db", help="label store URL (default: a fresh SQLite file)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cryobus-labelling-bench-") as tmp:
        workdir = Path(tmp)
        db_url = args.db or f"sqlite:///{workdir / 'labels.sqlite'}"
        bench_import(workdir, db_url)
        bench_load(db_url, args.labelers, args.rounds, args.max_s, (args.think_ms[0] / 1e3, args.think_ms[1] / 1e3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
