"""Preview + power spectrum of a 4096×4096 float32 micrograph: prismPYP's method against ours, on one core,
then render throughput with 1 and 2 render replicas sharing one durable consumer.

Part 1, in one process pinned to one CPU, on the same files (read from disk in every timed run):

* prismPYP (``prismpyp/utils/imageio.py`` ``mrc2png`` as documented in
  shared/reference/prismpyp-metadata.md §2.5): ``mrcfile.read``; min–max scale of the full image to
  uint8; vertical flip; percentile stretch (1, 98) at full resolution; Pillow LANCZOS to exactly
  512×512; WebP with Pillow's defaults (lossy, quality 80). prismPYP does not compute spectra: it
  renders CTFFIND's diagnostic image with the same function, so its "power spectrum" here is that
  function applied to a 512×512 spectrum image (what CTFFIND writes).
* cryobus: ``mrc.read_image``; ``micrograph.preview`` (4× area-average binning to 1024 px, percentile
  clip on the binned image); lossless WebP; then either CTFFIND's diagnostic rendered (like for like
  with prismPYP) or a *computed* averaged periodogram (512-px tiles, the service's default overlap)
  → ``spectrum_preview``; lossless WebP. Also ours at 512 px, the size prismPYP writes.

Memory: peak of Python/numpy allocations (``tracemalloc``) during one render, against the image's
size (64 MiB).

Part 2: N micrographs published as ``exposure.discovered`` to an embedded nats-server with 1, then 2
``cryobus run render`` processes on the same durable consumer; throughput = N / (time until the
last power spectrum is announced).

Usage: ``python bench/render_preview.py [--files 4] [--repeats 5] [--throughput-n 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
from PIL import Image

SIZE = 4096
PIXEL_A = 1.0


def micrograph(seed: int) -> np.ndarray:
    """A realistic-looking micrograph: 1/f background plus CTF-filtered noise (Thon rings), float32."""
    from cryobus.shared.ctf import ctf_2d

    rng = np.random.default_rng(seed)
    gy, gx = np.fft.fftfreq(SIZE)[:, None], np.fft.rfftfreq(SIZE)[None, :]
    f = np.hypot(gx, gy)
    f[0, 0] = 1.0
    noise = np.fft.rfft2(rng.standard_normal((SIZE, SIZE)).astype(np.float32))
    ctf = ctf_2d((SIZE, SIZE), PIXEL_A, 15000 + 1000 * seed, 14000 + 1000 * seed, 30.0, 300.0, 2.7, 0.07)[:, : SIZE // 2 + 1]
    image = np.fft.irfft2(noise * (ctf + 0.02 / f), s=(SIZE, SIZE)).astype(np.float32)
    return image + 0.5 * rng.standard_normal((SIZE, SIZE)).astype(np.float32)


# ---------------------------------------------------------------------------- prismPYP's method

def prismpyp_mrc2png(x: np.ndarray, contrast_stretch: bool) -> bytes:
    """prismPYP's pipeline (reference §2.5): min-max → uint8, flip, (stretch), LANCZOS 512², WebP q80."""
    lo, hi = x.min(), x.max()
    if hi - lo > np.finfo(np.float64).eps:
        rescaled = (255 * (x - lo) / (hi - lo)).astype(np.uint8)
    elif abs(hi) > np.finfo(np.float64).eps:
        rescaled = (255 * x / hi).astype(np.uint8)
    else:
        rescaled = np.abs(x).astype(np.uint8)
    rescaled = rescaled[::-1, :]
    if contrast_stretch:
        p1, p99 = np.percentile(rescaled, (1, 98))
        rescaled = np.clip((rescaled - p1) / (p99 - p1) * 255, 0, 255).astype(np.uint8)
    im = Image.fromarray(rescaled).resize((512, 512), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="WEBP")  # Pillow's defaults: lossy, quality 80
    return buf.getvalue()


def prismpyp_render(path: Path, ctffind_diagnostic: np.ndarray) -> int:
    data = mrcfile.read(path)
    image = data[0] if data.ndim == 3 else data
    a = prismpyp_mrc2png(image, contrast_stretch=True)
    b = prismpyp_mrc2png(ctffind_diagnostic, contrast_stretch=False)
    return len(a) + len(b)


# ---------------------------------------------------------------------------- ours

def ours_render_with_diagnostic(path: Path, ctffind_diagnostic: np.ndarray) -> int:
    """Like for like with prismPYP: preview + CTFFIND's diagnostic image rendered (not computed)."""
    from cryobus.services.render import encode, power_spectrum
    from cryobus.services.render import micrograph as mg
    from cryobus.shared.formats import mrc

    image, _ = mrc.read_image(path)
    a = encode.webp_bytes(mg.preview(image))
    b = encode.webp_bytes(power_spectrum.ctffind_diagnostic_preview(ctffind_diagnostic))
    return len(a) + len(b)


def ours_render(path: Path, max_size: int = 1024) -> int:
    from cryobus.services.render import encode, power_spectrum
    from cryobus.services.render import micrograph as mg
    from cryobus.services.render.params import DEFAULT
    from cryobus.shared.formats import mrc

    image, _ = mrc.read_image(path)
    a = encode.webp_bytes(mg.preview(image, max_size=max_size))
    b = encode.webp_bytes(power_spectrum.spectrum_preview(power_spectrum.periodogram(image, overlap=DEFAULT.spectrum_overlap)))
    return len(a) + len(b)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, peak traced MiB) over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def part1(files: list[Path], repeats: int) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from cryobus.services.render import power_spectrum

    diagnostic = power_spectrum.periodogram(mrcfile.read(files[0]))  # a 512² spectrum image, as CTFFIND writes
    rows = []
    for label, fn in [
        ("prismPYP method (512² lossy) + its diagnostic", lambda p: prismpyp_render(p, diagnostic)),
        ("cryobus (1024 px lossless) + diagnostic", lambda p: ours_render_with_diagnostic(p, diagnostic)),
        ("cryobus (1024 px lossless + computed spectrum)", lambda p: ours_render(p)),
        ("cryobus at 512 px (lossless + computed spectrum)", lambda p: ours_render(p, 512)),
    ]:
        per_file = [timed(lambda p=p: fn(p), repeats) for p in files]
        rows.append((label, statistics.median(t for t, _ in per_file), max(m for _, m in per_file)))
    image_mib = SIZE * SIZE * 4 / 2**20
    base = rows[0][1]
    print(f"one core, {len(files)} files of {SIZE}² float32 ({image_mib:.0f} MiB), median of {repeats} per file:")
    for label, t, mem in rows:
        print(f"  {label:<50} {t * 1000:7.0f} ms  speed-up {base / t:4.1f}x  peak {mem:6.0f} MiB ({mem / image_mib:.1f}x image)")


# ---------------------------------------------------------------------------- throughput

async def _throughput(url: str, files: list[Path], dataset: str) -> float:
    import nats

    from cryobus.shared.bus.topology import ensure_streams
    from cryobus.shared.events import Envelope, ExposureDiscovered

    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    done: set[str] = set()
    finished = asyncio.Event()

    async def on_completed(msg) -> None:
        data = json.loads(msg.data)["data"]
        if data["dataset"] == dataset and data["image_kind"] == "power_spectrum":
            done.add(data["name"])
            if len(done) == len(files):
                finished.set()

    await nc.subscribe("cryobus.events.render.completed", cb=on_completed)
    t0 = time.perf_counter()
    for p in files:
        st = p.stat()
        ev = ExposureDiscovered(dataset=dataset, path=str(p), micrograph_name=p.stem, file_format="mrc",
                                size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
        env = Envelope.wrap(ev, source="/bench")
        await js.publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})
    await asyncio.wait_for(finished.wait(), timeout=600)
    elapsed = time.perf_counter() - t0
    await nc.close()
    return len(files) / elapsed


def part2(files: list[Path], work: Path) -> None:
    from cryobus.shared.bus.server import EmbeddedNatsServer

    server = EmbeddedNatsServer(work / "nats")
    server.start()
    env = {**os.environ, "CRYOBUS_NATS_URL": server.url, "CRYOBUS_STORE_URL": (work / "store").as_uri(),
           "CRYOBUS_STATE_DIR": str(work / "state"), "CRYOBUS_HTTP_PORT": "0", "CRYOBUS_LOG_LEVEL": "WARNING"}
    results = {}
    try:
        for replicas in (1, 2):
            procs = [subprocess.Popen([sys.executable, "-m", "cryobus", "run", "render"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(replicas)]
            try:
                time.sleep(3.0)  # connect, bind the durable consumer, import numpy/scipy/Pillow
                asyncio.run(_throughput(server.url, files[:1], f"warm{replicas}"))
                results[replicas] = asyncio.run(_throughput(server.url, files, f"tp{replicas}"))
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(timeout=60)
    finally:
        server.stop()
    print(f"throughput, {len(files)} micrographs of {SIZE}² (preview + computed spectrum each), 2-core machine:")
    for replicas, rate in results.items():
        print(f"  {replicas} render replica(s): {rate:5.2f} micrographs/s  ({rate / results[1]:.2f}x one replica)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--throughput-n", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cryobus-render-bench-") as tmp:
        work = Path(tmp)
        files = []
        for i in range(max(args.files, args.throughput_n)):
            path = work / f"mic_{i:03d}.mrc"
            if i < 4:
                mrcfile.write(path, micrograph(i), voxel_size=PIXEL_A)
            else:  # the same pixels under another name: generation is not what is measured
                path.write_bytes((work / f"mic_{i % 4:03d}.mrc").read_bytes())
            files.append(path)
        part2(files[: args.throughput_n], work)  # first: part 1 pins this process to one CPU
        part1(files[: args.files], args.repeats)


if __name__ == "__main__":
    main()
