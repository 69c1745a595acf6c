"""Particle conversion throughput: CryoLike's per-image pattern against cryobus, end to end.

Workloads (the same files for both):

* ``sppractice``: the real 2374-particle RELION 5 Extract job of ../shared/data/Conecsion__sppractice
  (64 px, float16 stacks), with the reference README's params (n_pixels 64, 3.54 Å, resolution
  factor 0.5, 32 in-plane angles; 33 shells), batch 1024 → 3 stacks;
* ``synth128`` / ``synth256``: synthetic float32 particle stacks (256 images per MRC file, an indexed
  RELION 3.1 STAR with CTF columns), with CryoLike's default descriptor for them
  (``from_individual_values(n_pixels, 1.0)``: resolution factor 1, ``n_inplanes = 2·n_pixels``,
  single precision: 129×256 and 257×512 polar points).

Implementations, each timed from the start of the conversion call to its end (metadata read, MRC
read, centring, transform, normalisation, ``torch.save`` of phys and Fourier, ``np.savez_compressed``
of the npz; no plots; interpreter start and imports excluded, as in the reference README's "call"
column), each in a fresh subprocess per run:

* ``cryolike``: a faithful reproduction of CryoLike's CPU conversion (reference §4): the STAR read
  with ``starfile``, rows grouped by sorted stack path, every MRC read whole with ``mrcfile``,
  per-image mean/max centring in the stack's dtype, then **one ``finufft.nufft2d2`` call per image**
  (a fresh plan each time) on complex128 images and float64 points, times the prefactor, cast to
  complex64, quadrature normalisation, batches of 1024 saved. Run with ``OMP_NUM_THREADS=1`` (its
  best setting on 2 cores, ≈ 8× its default; README) and with default threads.
  With ``--device cuda`` its GPU pattern instead (reference §4.2): one ``cufinufft`` plan,
  one host→device copy, ``execute`` and ``.cpu()`` per image, float32/complex64.
* ``cryobus``: :func:`cryobus.services.convert.pipeline.convert` (the service's code path) at
  default threads (``OMP_WAIT_POLICY=PASSIVE``, as the service runs), and with one thread.

Prints images/s (median of ``--repeats`` runs), the ratios against CryoLike's best and default,
and, for cryobus, the seconds each stage took summed over stacks: reading (and, on the CPU,
centring), transforming (incl. host↔device copies) and writing. They overlap — on the CPU a
stack's Fourier file is written while later chunks are transformed — so they do not add up to
the total. ``--device cuda`` runs cryobus on
the GPU (needs the ``convert-gpu`` extra) and reports its peak GPU memory.

Usage: ``python bench/convert_throughput.py [--repeats 3] [--n128 2048] [--n256 512]
[--cases sppractice,synth128,synth256] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CRYOBUS_SHARED_DATA", REPO.parent / "shared" / "data"))
SPPRACTICE = DATA / "Conecsion__sppractice"
SPPRACTICE_PARAMS = DATA / "reference-outputs/cryolike/c1_star_single/params_sppractice_single.npz"
BATCH = 1024
PER_FILE = 256
# Whether OMP_WAIT_POLICY came from the environment (before anything here could set it).
_WAIT_POLICY_GIVEN = "OMP_WAIT_POLICY" in os.environ


# ---------------------------------------------------------------------------------- inputs


def write_synthetic(folder: Path, n_pixels: int, n_images: int, seed: int = 0) -> Path:
    """float32 particle stacks (Gaussian blobs + noise, 256 per file) and their indexed STAR; returns the STAR."""
    import mrcfile
    import pandas as pd
    import starfile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:n_pixels, 0:n_pixels].astype(np.float32) - n_pixels / 2
    names = []
    for f in range(0, n_images, PER_FILE):
        n = min(PER_FILE, n_images - f)
        cx, cy = rng.normal(0, n_pixels / 10, (2, n, 1, 1)).astype(np.float32)
        stack = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (n_pixels / 8) ** 2)) + rng.normal(
            0, 0.5, (n, n_pixels, n_pixels)
        ).astype(np.float32)
        path = folder / f"stack_{f // PER_FILE:04d}.mrcs"
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(stack.astype(np.float32))
            m.voxel_size = 1.0
        names += [f"{i + 1:06d}@{path.name}" for i in range(n)]
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [1.0], "rlnImageSize": [n_pixels]})  # fmt: skip
    particles = pd.DataFrame({
        "rlnImageName": names,
        "rlnDefocusU": rng.uniform(10000, 25000, n_images),
        "rlnDefocusV": rng.uniform(10000, 25000, n_images),
        "rlnDefocusAngle": rng.uniform(0, 180, n_images),
        "rlnPhaseShift": np.zeros(n_images),
        "rlnOpticsGroup": np.ones(n_images, dtype=int),
    })  # fmt: skip
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, star, overwrite=True)
    return star


def descriptor_file(folder: Path, n_pixels: int) -> Path:
    """CryoLike's default descriptor for n_pixels px of 1 Å (``from_individual_values(n, 1.0)``)."""
    from cryobus.services.convert.params import ImageDescriptor, write_params

    return write_params(ImageDescriptor.from_values(n_pixels, 1.0), folder / f"params_{n_pixels}.npz", overwrite=True)


# ---------------------------------------------------------------------------------- workers (subprocess)


def run_cryolike(star: Path, project: Path, params: Path, out: Path, device: str) -> dict:
    """CryoLike's conversion, reproduced: one NUFFT call (and plan) per image. Returns timings."""
    import mrcfile
    import starfile
    import torch

    from cryobus.services.convert.params import read_params
    from cryobus.services.convert.polar_grid import PolarGrid

    # Importing cryobus.services.convert sets OMP_WAIT_POLICY=PASSIVE; CryoLike runs without it.
    if not _WAIT_POLICY_GIVEN:
        os.environ.pop("OMP_WAIT_POLICY", None)
    desc = read_params(params)
    grid = PolarGrid.from_descriptor(desc)  # CryoLike's grid (Gauss–Jacobi shells, equispaced angles)
    eps = 1e-6 if desc.precision == "single" else 1e-12
    out_dtype = torch.complex64 if desc.precision == "single" else torch.complex128
    weights = torch.as_tensor(np.repeat(grid.shell_weights, grid.n_inplanes), dtype=torch.float64)
    x, y = grid.points
    for sub in ("phys", "fft"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    blocks = starfile.read(star)
    df = blocks["particles"] if isinstance(blocks, dict) else blocks
    optics = blocks.get("optics") if isinstance(blocks, dict) else None
    split = df["rlnImageName"].str.split("@", n=1)
    index = split.str[0].astype(int).to_numpy() - 1
    paths = split.str[1].to_numpy()
    phys_buf, four_buf, defocus_buf = [], [], []
    stacks = 0
    nufft_s = 0.0

    def flush(n: int) -> None:
        nonlocal phys_buf, four_buf, defocus_buf, stacks
        phys, four = torch.cat(phys_buf), torch.cat(four_buf)
        du = np.concatenate(defocus_buf)
        torch.save(phys[:n], out / f"phys/particles_phys_stack_{stacks:06d}.pt")
        torch.save(four[:n], out / f"fft/particles_fourier_stack_{stacks:06d}.pt")
        meta = desc.to_npz_dict() | {"defocusU": du[:n], "defocusV": du[:n], "n_images": np.int64(n)}
        if optics is not None:
            meta["voltage"] = float(optics["rlnVoltage"].iloc[0])
        np.savez_compressed(out / f"fft/particles_fourier_stack_{stacks:06d}.npz", **meta)
        phys_buf, four_buf, defocus_buf = [phys[n:]], [four[n:]], [du[n:]]
        stacks += 1

    if device == "cuda":
        import cufinufft

    for path in sorted(set(paths)):  # CryoLike: files in sorted path order, rows in metadata order
        rows = np.flatnonzero(paths == path)
        with mrcfile.open(project / path, permissive=True) as m:
            data = torch.from_numpy(np.array(m.data))  # the whole file, as CryoLike reads it
        images = data[index[rows]]
        images = images - images.mean(dim=(1, 2), keepdim=True, dtype=torch.float64).to(images.dtype)
        images = images / images.abs().amax(dim=(1, 2), keepdim=True)
        n0, n1 = images.shape[1:]
        t1 = time.perf_counter()
        if device == "cuda":
            kx = torch.as_tensor(x * 4 * np.pi / n0, dtype=torch.float32, device="cuda")
            ky = torch.as_tensor(y * 4 * np.pi / n1, dtype=torch.float32, device="cuda")
            plan = cufinufft.Plan(2, (n0, n1), n_trans=1, eps=eps, isign=-1, dtype="complex64")
            plan.setpts(kx, ky)
            four = torch.stack([plan.execute(img.to("cuda", torch.complex64)).cpu() for img in images])
        else:
            import finufft

            kx = x * (4 * np.pi / n0)
            ky = y * (4 * np.pi / n1)
            four = torch.stack([
                torch.from_numpy(finufft.nufft2d2(kx, ky, img.numpy().astype(np.complex128), eps=eps, isign=-1))
                for img in images
            ])  # fmt: skip
        four = (four * (4 * np.pi / np.sqrt(n0 * n1))).to(out_dtype).view(len(rows), grid.n_shells, grid.n_inplanes)
        nufft_s += time.perf_counter() - t1
        norm = torch.sqrt((four.abs().double() ** 2).flatten(1) @ weights)
        four = four / norm.to(four.real.dtype)[:, None, None]
        phys_buf.append(images)
        four_buf.append(four)
        defocus_buf.append(df["rlnDefocusU"].to_numpy()[rows])
        while sum(len(p) for p in phys_buf) >= BATCH:
            flush(BATCH)
    rest = sum(len(p) for p in phys_buf)
    if rest:
        flush(rest)
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "images": int(len(df)), "stacks": stacks, "nufft_s": nufft_s}


def run_cryobus(star: Path, project: Path, params: Path, out: Path, device: str) -> dict:
    """cryobus's pipeline, as the service runs it (without plots)."""
    from cryobus.services.convert.pipeline import ConvertOptions, IndexedStar, convert

    t0 = time.perf_counter()
    written = convert(IndexedStar(star_file=star, project_dir=project), params, out,
                      ConvertOptions(batch_size=BATCH, flag_plots=False, device=device))  # fmt: skip
    elapsed = time.perf_counter() - t0
    stages = {k: sum(w.timings[k] for w in written) for k in ("read_s", "transform_s", "write_s")}
    gpu = max((w.gpu_memory_bytes or 0) for w in written)
    return {"seconds": elapsed, "images": sum(w.n_images for w in written), "stacks": len(written),
            "stages": stages, "gpu_memory_bytes": gpu or None, "device": written[0].device}  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    fn = run_cryolike if args.worker == "cryolike" else run_cryobus
    with tempfile.TemporaryDirectory(prefix="convert-bench-out-") as out:
        result = fn(Path(args.star), Path(args.project), Path(args.params), Path(out), args.device)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------- driver


def run_once(impl: str, case: dict, *, threads: int | None, device: str) -> dict:
    """One conversion in a fresh subprocess (``OMP_NUM_THREADS=threads`` when given)."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if impl == "cryolike":
        env.pop("OMP_WAIT_POLICY", None)  # CryoLike as installed: no wait policy set
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", impl, "--star", str(case["star"]), "--project", str(case["project"]),
         "--params", str(case["params"]), "--device", device],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=3600,
    )  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{impl} on {case['name']} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def measure_case(case: dict, configs: dict[str, tuple[str, int | None]], *, device: str, repeats: int) -> dict:
    """Every config ``repeats`` times, interleaved (so a noisy neighbour hits all alike); the median run of each."""
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (impl, threads) in configs.items():
            runs[name].append(run_once(impl, case, threads=threads, device=device))
    out = {}
    for name, rs in runs.items():
        rs.sort(key=lambda r: r["seconds"])
        median = rs[len(rs) // 2]
        median["all_seconds"] = [round(r["seconds"], 3) for r in rs]
        median["rate"] = median["images"] / median["seconds"]
        out[name] = median
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n128", type=int, default=2048, help="synthetic 128² images")
    p.add_argument("--n256", type=int, default=512, help="synthetic 256² images")
    p.add_argument("--cases", default="sppractice,synth128,synth256")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--skip-cryolike-default", action="store_true", help="skip CryoLike at default threads (slow)")
    # worker mode (internal)
    p.add_argument("--worker", choices=["cryolike", "cryobus"], help=argparse.SUPPRESS)
    p.add_argument("--star", help=argparse.SUPPRESS)
    p.add_argument("--project", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    wanted = args.cases.split(",")
    print(f"cpu cores: {os.cpu_count()}, device: {args.device}, repeats: {args.repeats} (median shown)")
    with tempfile.TemporaryDirectory(prefix="convert-bench-in-") as tmp:
        tmp = Path(tmp)
        cases = []
        if "sppractice" in wanted:
            cases.append({"name": "sppractice 64² (2374 real, float16; 33×32 grid)", "project": SPPRACTICE,
                          "star": SPPRACTICE / "Extract/job009/particles.star", "params": SPPRACTICE_PARAMS})  # fmt: skip
        for n, count in ((128, args.n128), (256, args.n256)):
            if f"synth{n}" in wanted:
                folder = tmp / f"synth{n}"
                star = write_synthetic(folder, n, count)
                cases.append({"name": f"synthetic {n}² ({count}, float32; {n + 1}×{2 * n} grid)", "project": folder,
                              "star": star, "params": descriptor_file(folder, n)})  # fmt: skip
        rows = []
        for case in cases:
            configs = {"cryolike_1t": ("cryolike", 1), "cryolike_default": ("cryolike", None),
                       "ours": ("cryobus", None), "ours_1t": ("cryobus", 1)}  # fmt: skip
            if args.skip_cryolike_default:
                del configs["cryolike_default"]
            if args.device != "cpu":
                del configs["ours_1t"]
            res = measure_case(case, configs, device=args.device, repeats=args.repeats)
            rows.append((case, res))
            report(case, res)
    print("\nsummary (images/s, end to end, median)")
    print(f"{'workload':52s} {'CryoLike 1T':>12s} {'CryoLike def':>12s} {'cryobus':>9s} {'cryobus 1T':>10s} "
          f"{'vs best':>8s} {'vs default':>10s}")  # fmt: skip
    for case, res in rows:
        best = res["cryolike_1t"]["rate"]
        default = res["cryolike_default"]["rate"] if res.get("cryolike_default") else float("nan")
        ours = res["ours"]["rate"]
        ours1 = res["ours_1t"]["rate"] if res.get("ours_1t") else float("nan")
        print(f"{case['name']:52s} {best:12.0f} {default:12.0f} {ours:9.0f} {ours1:10.0f} "
              f"{ours / best:7.1f}x {ours / default:9.1f}x")  # fmt: skip


def report(case: dict, res: dict) -> None:
    print(f"\n{case['name']}")
    for key, label in (("cryolike_1t", "CryoLike pattern, OMP_NUM_THREADS=1"), ("cryolike_default", "CryoLike pattern, default threads"),
                       ("ours", "cryobus, default threads"), ("ours_1t", "cryobus, OMP_NUM_THREADS=1")):  # fmt: skip
        r = res.get(key)
        if r is None:
            continue
        extra = ""
        if "nufft_s" in r:
            extra = f"; NUFFT calls {r['nufft_s']:.2f} s ({100 * r['nufft_s'] / r['seconds']:.0f} %)"
        if "stages" in r:
            # Stage times overlap (a stack is written while it is transformed): seconds, summed over stacks.
            extra = "; stage seconds (overlapping) " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in r["stages"].items())
            if r.get("gpu_memory_bytes"):
                extra += f"; GPU memory {r['gpu_memory_bytes'] / 2**20:.0f} MiB"
        print(f"  {label:40s} {r['images']} images, {r['stacks']} stacks in {r['seconds']:.2f} s "
              f"= {r['rate']:.0f} images/s (runs {r['all_seconds']}){extra}", flush=True)
    best = res["cryolike_1t"]["rate"]
    print(f"  ratio cryobus / CryoLike best (1 thread): {res['ours']['rate'] / best:.1f}x", end="")
    if res.get("cryolike_default"):
        print(f"; / CryoLike default threads: {res['ours']['rate'] / res['cryolike_default']['rate']:.1f}x", end="")
    print(flush=True)


if __name__ == "__main__":
    main()
