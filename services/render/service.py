"""The render service: previews of micrographs, power spectra, picks, class averages and tomography.

Layout in the store (``<prefix>`` is ``<dataset>`` for the default parameters, prismPYP's
layout, so a dataset folder can be handed to prismPYP unchanged; a re-render with other
parameters uses ``<dataset>/renders/<tag>``, see params.py):

* ``<prefix>/webp/<micrograph_name>.webp`` — micrograph preview; extra sizes under
  ``<prefix>/webp/<size>px/<micrograph_name>.webp``;
* ``<prefix>/webp/<micrograph_name>_ctffit.webp`` — CTFFIND's diagnostic image when it exists,
  otherwise a computed power spectrum (averaged periodogram) with the CTF fit drawn on it when
  the metadata has one (rings or split view);
* ``<prefix>/picks/<job>/<micrograph_name>_boxed.webp`` — picks circled on the preview
  (NextPYP's ``_boxed`` name, one folder per picking job so a later job never overwrites);
* ``<prefix>/class_averages/<job>/it<NNN>/class_<KKK>.png`` — one lossless PNG per class,
  numbered as the source numbers them (RELION: 1-based; CryoSPARC: 0-based), and
  ``.../montage.webp`` with class number, particle count and resolution under each;
* ``<prefix>/tomography/<run>/tilt_series.webp`` and ``.../<tomogram stem>.webp`` — central slices.

Every image is announced by ``artifact.stored`` and ``render.completed``. Within a job a bad
image is reported with its own ``render.failed`` and the rest of the job goes on; a referenced
file that does not exist is reported once with ``input.missing``. A ``render.requested``
command re-renders a dataset from its discovery events with new parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cryobus.services.render import class_averages, ctf_overlay, encode, micrograph, montage, picks, power_spectrum
from cryobus.services.render import tomography
from cryobus.services.render.params import DEFAULT, RenderParams
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.class_averages import ClassSet, particles_cs_for, read_class2d, read_class_averages
from cryobus.shared.errors import InputError
from cryobus.shared.events import (
    Envelope,
    ExposureDiscovered,
    JobDiscovered,
    MetadataUpdated,
    RenderCompleted,
    RenderRequested,
)
from cryobus.shared.formats import cryosparc, ctffind, mrc, star
from cryobus.shared.micrograph_names import micrograph_name

# Per micrograph whose spectrum render computed: where its periodogram is kept and which CTF fit is
# drawn on it, so a metadata.updated with a new fit redraws the spectrum without re-reading the image.
BUCKET = "cryobus_render"
service = Service(name="render", kv_buckets=[BUCKET])

WEBP = "image/webp"
PNG = "image/png"
_ROLES = {
    "micrograph": "micrograph_preview",
    "power_spectrum": "power_spectrum_preview",
    "particle_picks": "particle_picks_preview",
}


class Renderer:
    """Renders with one parameter set into the store; one per handled message.

    ``skip_existing``: an image whose key already exists is not redone (reprocessing with
    parameters already rendered does no duplicate work); automatic renders rewrite, so a
    redelivered message repairs a half-written job.
    """

    def __init__(self, ctx: HandlerContext, params: RenderParams = DEFAULT, *, skip_existing: bool = False):
        self.ctx = ctx
        self.params = params
        self.skip_existing = skip_existing
        self.max_bytes = ctx.settings.max_image_bytes
        self._current: JobDiscovered | None = None

    def key(self, dataset: str, rel: str) -> str:
        return f"{self.params.prefix(dataset)}/{rel}"

    def wanted(self, *keys: str) -> bool:
        """False when every key already exists and ``skip_existing`` is set."""
        return not (self.skip_existing and all(self.ctx.store.exists(k) for k in keys))

    def store(self, *, dataset: str, key: str, img: np.ndarray, kind: str, name: str, source: Path, method: str) -> None:
        if key.endswith(".png"):
            data, media_type = encode.png_bytes(img), PNG
        else:
            data, media_type = encode.webp_bytes(img, lossless=self.params.lossless, quality=self.params.quality), WEBP
        stored = self.ctx.put_artifact(
            key, data, media_type=media_type, role=_ROLES.get(kind, kind), dataset=dataset, inputs=[str(source)]
        )
        self.ctx.emit(
            RenderCompleted(
                dataset=dataset, image_kind=kind, name=name, source=str(source), artifact_uri=stored.uri,
                width=int(img.shape[1]), height=int(img.shape[0]), method=method, params_tag=self.params.tag,
            ),
            dedup_key=stored.key + stored.sha256,
        )

    # ------------------------------------------------------------------ micrographs and spectra

    def read_micrograph(self, path: Path, file_format: str = "mrc") -> tuple[np.ndarray, float | None]:
        """float32 (ny, nx) image and its pixel size (Å/px, None when the file does not say)."""
        section = "sum" if self.params.stack_mode == "sum" else 0
        if file_format == "tiff" or path.suffix.lower() in (".tif", ".tiff"):
            return mrc.read_tiff_image(path, page=section, max_bytes=self.max_bytes), None
        image, header = mrc.read_image(path, section=section, max_bytes=self.max_bytes)
        return image, header.voxel_size_A

    def micrograph(self, *, dataset: str, name: str, path: Path, file_format: str = "mrc", with_spectrum: bool = True) -> None:
        """Preview (every size asked for) and, if asked, the computed power spectrum of one micrograph."""
        keys = {None: self.key(dataset, f"webp/{name}.webp")}
        keys.update({s: self.key(dataset, f"webp/{s}px/{name}.webp") for s in self.params.extra_sizes})
        spectrum_key = self.key(dataset, f"webp/{name}_ctffit.webp")
        if not self.wanted(*keys.values(), *([spectrum_key] if with_spectrum else [])):
            return
        image, _ = self.read_micrograph(path, file_format)
        for size, key in keys.items():
            img = micrograph.preview(image, max_size=size or self.params.max_size, clip_percentiles=self.params.clip_percentiles)
            self.store(dataset=dataset, key=key, img=img, kind="micrograph", name=name, source=path,
                       method="binned_percentile_clip")
        if with_spectrum:
            self.computed_spectrum(dataset=dataset, name=name, image=image, source=path, ctf=None)

    def computed_spectrum(self, *, dataset: str, name: str, image: np.ndarray, source: Path,
                          ctf: ctf_overlay.CtfParams | None) -> None:
        p = self.params
        ps = power_spectrum.periodogram(image, tile=p.spectrum_tile, overlap=p.spectrum_overlap)
        if p.tag is None:
            state_key = f"_state/render/{dataset}/{name}.periodogram.npy"
            buffer = io.BytesIO()
            np.save(buffer, ps, allow_pickle=False)
            self.ctx.put_artifact(state_key, buffer.getvalue(), media_type="application/x-npy", role="render_state",
                                  dataset=dataset, inputs=[str(source)])
            SpectrumState(periodogram_key=state_key, source=str(source), ctf=ctf_key(ctf)).save(self.ctx, dataset, name)
        self.spectrum_from_periodogram(dataset=dataset, name=name, ps=ps, source=source, ctf=ctf)

    def spectrum_from_periodogram(self, *, dataset: str, name: str, ps: np.ndarray, source: Path,
                                  ctf: ctf_overlay.CtfParams | None) -> None:
        """Display image of a periodogram (with the CTF fit drawn as the parameters say), stored and announced."""
        p = self.params
        img = power_spectrum.spectrum_preview(ps, size=p.spectrum_size)
        method = "computed_periodogram"
        if ctf is not None and p.ctf_overlay == "rings":
            img, method = ctf_overlay.draw_rings(img, ctf), "computed_periodogram+ctf_rings"
        elif ctf is not None and p.ctf_overlay == "split":
            img, method = ctf_overlay.split_view(img, ctf), "computed_periodogram+ctf_split"
        self.store(dataset=dataset, key=self.key(dataset, f"webp/{name}_ctffit.webp"), img=img,
                   kind="power_spectrum", name=name, source=source, method=method)

    # ------------------------------------------------------------------ jobs

    def job(self, job: JobDiscovered) -> None:
        """Everything the job's outputs give: previews, spectra, picks, classes, slices."""
        self._current = job
        kind = (job.software, job.job_type)
        if kind == ("relion", "MotionCorr"):
            self._each_micrograph_row(job, self._motioncorr_row)
        elif kind == ("relion", "CtfFind"):
            self._each_micrograph_row(job, self._ctffind_row)
        elif kind == ("relion", "AutoPick"):
            self._relion_autopick(job)
        elif kind == ("relion", "Extract"):
            self._picks(job, picks.relion_particles(job.files["star"]), Path(job.files["star"]), relion=True)
        elif kind == ("relion", "Class2D"):
            self._classes(job, read_class2d(
                dataset=job.dataset, project_dir=job.project_dir, job_dir=job.job_dir,
                model_star=job.files["model_star"], classes_mrcs=job.files["classes_mrcs"],
                data_star=job.files.get("data_star"), iteration=job.iteration, max_bytes=self.max_bytes,
            ))
        elif kind == ("cryosparc", "class_averages") and "mrc" in job.files:
            particles = particles_cs_for(job.files["cs"])
            self._classes(job, read_class_averages(
                dataset=job.dataset, project_dir=job.project_dir, job_dir=job.job_dir, cs=job.files["cs"],
                mrc_path=job.files["mrc"], particles_cs=particles if particles.is_file() else None,
                iteration=job.iteration, max_bytes=self.max_bytes,
            ))
        elif kind == ("cryosparc", "particles"):
            self._cryosparc_picks(job)
        elif job.software == "serialem" and job.job_type == "tilt_series":
            self._tomography(job)

    def _each_micrograph_row(self, job: JobDiscovered, fn: Callable[[Path, pd.Series], None]) -> None:
        """Run ``fn(star_path, row)`` per micrograph row; a bad row is reported and the others go on."""
        star_path = Path(job.files["star"])
        rows = star.micrograph_block(star.read_star(star_path), file=str(star_path))
        star.require_columns(rows, ["rlnMicrographName"], file=str(star_path), block="micrographs")
        for _, row in rows.iterrows():
            self._guarded(job, lambda: fn(star_path, row))

    def _guarded(self, job: JobDiscovered, fn: Callable[[], None]) -> None:
        try:
            fn()
        except InputError as exc:
            self.ctx.fail_item(exc.reason, file=exc.file, field=exc.field, dataset=job.dataset)

    def _existing(self, job: JobDiscovered, path: Path, referenced_by: Path, field: str) -> bool:
        if path.is_file():
            return True
        self.ctx.report_missing(dataset=job.dataset, path=str(path), referenced_by=str(referenced_by), field=field)
        return False

    def _motioncorr_row(self, star_path: Path, row: pd.Series) -> None:
        job = self._current
        path = Path(job.project_dir) / row["rlnMicrographName"]
        if self._existing(job, path, star_path, "rlnMicrographName"):
            self.micrograph(dataset=job.dataset, name=star.micrograph_name(row["rlnMicrographName"]), path=path,
                            with_spectrum=False)

    def _ctffind_row(self, star_path: Path, row: pd.Series) -> None:
        job = self._current
        project = Path(job.project_dir)
        name = star.micrograph_name(row["rlnMicrographName"])
        key = self.key(job.dataset, f"webp/{name}_ctffit.webp")
        if not self.wanted(key):
            return
        if isinstance(row.get("rlnCtfImage"), str):
            diagnostic = project / ctffind.diagnostic_image_path(row["rlnCtfImage"])
            if diagnostic.is_file():
                image, _ = mrc.read_image(diagnostic, section=0, max_bytes=self.max_bytes)
                self.store(dataset=job.dataset, key=key, img=power_spectrum.ctffind_diagnostic_preview(image),
                           kind="power_spectrum", name=name, source=diagnostic, method="ctffind_diagnostic")
                if self.params.tag is None:
                    SpectrumState(diagnostic=True, source=str(diagnostic)).save(self.ctx, job.dataset, name)
                return
            self.ctx.report_missing(dataset=job.dataset, path=str(diagnostic), referenced_by=str(star_path), field="rlnCtfImage")
        path = project / row["rlnMicrographName"]
        if not self._existing(job, path, star_path, "rlnMicrographName"):
            return
        image, voxel = self.read_micrograph(path)
        self.computed_spectrum(dataset=job.dataset, name=name, image=image, source=path,
                               ctf=ctf_from_relion_row(row, voxel, file=str(star_path)))

    def _relion_autopick(self, job: JobDiscovered) -> None:
        autopick_star = Path(job.files["star"])
        project = Path(job.project_dir)
        found = []
        for mic, coords in picks.relion_coordinate_files(autopick_star):
            if self._existing(job, project / coords, autopick_star, "rlnMicrographCoordinates"):
                try:
                    found.append(picks.relion_coordinates(project / coords, mic))
                except InputError as exc:
                    self.ctx.fail_item(exc.reason, file=exc.file, field=exc.field, dataset=job.dataset)
        self._picks(job, found, autopick_star, relion=True)

    def _cryosparc_picks(self, job: JobDiscovered) -> None:
        cs_path = Path(job.files["cs"])
        fields = cryosparc.read_cs(cs_path).dtype.names or ()
        if "location/center_x_frac" not in fields:
            return  # particles without picks (e.g. imported stacks): nothing to draw
        self._picks(job, picks.cryosparc_particles(cs_path), cs_path, relion=False)

    def _picks(self, job: JobDiscovered, found: list[picks.MicrographPicks], source: Path, *, relion: bool) -> None:
        job_name = Path(job.job_dir).name
        field = "rlnMicrographName" if relion else "location/micrograph_path"
        for mp in found:
            def one(mp: picks.MicrographPicks = mp) -> None:
                name = micrograph_name(mp.micrograph)
                key = self.key(job.dataset, f"picks/{job_name}/{name}_boxed.webp")
                path = Path(job.project_dir) / mp.micrograph
                if not self.wanted(key) or not self._existing(job, path, source, field):
                    return
                image, voxel = self.read_micrograph(path)
                factor = micrograph.binning_factor(image.shape, self.params.max_size)
                preview = micrograph.preview(image, max_size=self.params.max_size, clip_percentiles=self.params.clip_percentiles)
                radius = picks.radius_px(mp, image_shape=image.shape, pixel_size_A=voxel, radius_A=self.params.pick_radius_A)
                img = picks.draw_picks(preview, mp, binning=factor, radius=radius)
                self.store(dataset=job.dataset, key=key, img=img, kind="particle_picks", name=name, source=path,
                           method=f"{len(mp.x)} picks from {source.name}")
            self._guarded(job, one)

    def _classes(self, job: JobDiscovered, class_set: ClassSet) -> None:
        """One PNG per class (numbered as the source numbers them) and the labelled montage."""
        if not class_set.classes:
            return
        job_name = Path(job.job_dir).name
        iteration = f"it{job.iteration:03d}" if job.iteration is not None else "final"
        folder = f"class_averages/{job_name}/{iteration}"
        source = Path(class_set.sources.get("classes_mrcs") or class_set.sources["mrc"])
        stack = np.stack([c.image for c in class_set.classes])
        images = class_averages.class_images(stack, clip_percentiles=self.params.clip_percentiles)
        numbers = [c.number for c in class_set.classes]
        for number, img in zip(numbers, images):
            name = f"{job_name}/{iteration}/class_{number:03d}"
            key = self.key(job.dataset, f"{folder}/class_{number:03d}.png")
            if self.wanted(key):
                self.store(dataset=job.dataset, key=key, img=img, kind="class_average", name=name, source=source,
                           method="per_class_percentile_clip")
        key = self.key(job.dataset, f"{folder}/montage.webp")
        if self.wanted(key):
            labels = [montage.ClassLabel(c.number, c.particle_count, c.resolution_A) for c in class_set.classes]
            self.store(dataset=job.dataset, key=key, img=montage.montage(images, labels), kind="class_average_montage",
                       name=f"{job_name}/{iteration}/montage", source=source, method="labelled_montage")

    def _tomography(self, job: JobDiscovered) -> None:
        run = Path(job.job_dir).name
        if "tilt_series" in job.files:
            path = Path(job.files["tilt_series"])
            key = self.key(job.dataset, f"tomography/{run}/tilt_series.webp")

            def tilt() -> None:
                if self.wanted(key) and self._existing(job, path, Path(job.job_dir), "tilt_series"):
                    image, index = tomography.tilt_series_slice(path, _tilt_angles(job), max_bytes=self.max_bytes)
                    self.store(dataset=job.dataset, key=key, img=micrograph.preview(image, max_size=self.params.max_size),
                               kind="tilt_series_slice", name=f"{run}/tilt_series", source=path,
                               method=f"section {index} (closest to 0°)")
            self._guarded(job, tilt)
        for role, value in sorted(job.files.items()):
            if not role.startswith("tomogram"):
                continue
            path = Path(value)
            key = self.key(job.dataset, f"tomography/{run}/{path.stem}.webp")

            def tomo(path: Path = path, key: str = key) -> None:
                if self.wanted(key) and self._existing(job, path, Path(job.job_dir), "tomogram"):
                    image, axis = tomography.tomogram_slice(path, slab=self.params.tomogram_slab, max_bytes=self.max_bytes)
                    self.store(dataset=job.dataset, key=key, img=micrograph.preview(image, max_size=self.params.max_size),
                               kind="tomogram_slice", name=f"{run}/{path.stem}", source=path,
                               method=f"central plane across {axis}, slab {self.params.tomogram_slab}")
            self._guarded(job, tomo)


def ctf_from_relion_row(row: pd.Series, voxel_size_A: float | None, *, file: str) -> ctf_overlay.CtfParams | None:
    """The CTF fit of one ``micrographs_ctf.star`` row (optics merged), or None when it has none.

    Pixel size: ``rlnMicrographPixelSize``, else the micrograph header's. ``rlnCtfMaxResolution``
    (Å) bounds the rings; ``rlnPhaseShift`` (degrees) is used when present.

    Raises:
        InputError: a CTF value is present but not a usable number (field named).
    """
    needed = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    if any(c not in row.index for c in needed):
        return None
    pixel = row.get("rlnMicrographPixelSize", voxel_size_A)
    if pixel is None or not float(pixel) > 0:
        return None
    resolution = row.get("rlnCtfMaxResolution")
    try:
        return ctf_overlay.CtfParams(
            defocus_u_A=float(row["rlnDefocusU"]), defocus_v_A=float(row["rlnDefocusV"]),
            astigmatism_angle_deg=float(row["rlnDefocusAngle"]), voltage_kV=float(row["rlnVoltage"]),
            cs_mm=float(row["rlnSphericalAberration"]), amplitude_contrast=float(row["rlnAmplitudeContrast"]),
            pixel_size_A=float(pixel), phase_shift_deg=float(row.get("rlnPhaseShift", 0.0)),
            fit_resolution_A=float(resolution) if resolution is not None else None,
        )
    except (TypeError, ValueError) as err:
        raise InputError(f"unusable CTF value: {err}", file=file, field="rlnDefocusU") from err


def ctf_key(ctf: ctf_overlay.CtfParams | None) -> list[float] | None:
    """The values that decide how a fit is drawn, rounded so float noise is not a change."""
    if ctf is None:
        return None
    values = (ctf.defocus_u_A, ctf.defocus_v_A, ctf.astigmatism_angle_deg, ctf.voltage_kV, ctf.cs_mm,
              ctf.amplitude_contrast, ctf.pixel_size_A, ctf.phase_shift_deg, ctf.fit_resolution_A or 0.0)
    return [round(float(v), 4) for v in values]


class SpectrumState:
    """What render knows about one micrograph's ``_ctffit.webp`` (KV ``cryobus_render``).

    ``diagnostic``: it is CTFFIND's own image (the fit already drawn by CTFFIND; never redrawn here).
    Otherwise ``periodogram_key`` holds the computed periodogram (``.npy`` in the store) and ``ctf``
    the :func:`ctf_key` of the fit drawn on it (None: no fit yet).
    """

    def __init__(self, *, periodogram_key: str | None = None, source: str = "", ctf: list[float] | None = None,
                 diagnostic: bool = False):
        self.periodogram_key, self.source, self.ctf, self.diagnostic = periodogram_key, source, ctf, diagnostic

    @staticmethod
    def kv_key(dataset: str, name: str) -> str:
        return "spectrum." + hashlib.sha256(f"{dataset}/{name}".encode()).hexdigest()[:40]

    def save(self, ctx: HandlerContext, dataset: str, name: str) -> None:
        ctx.kv_put(BUCKET, self.kv_key(dataset, name), json.dumps(vars(self)).encode())
        _STATE_CACHE.put((dataset, name), self)

    @classmethod
    def load(cls, ctx: HandlerContext, dataset: str, name: str) -> SpectrumState | None:
        hit, state = _STATE_CACHE.get((dataset, name))
        if hit:
            return state
        raw = ctx.kv_get(BUCKET, cls.kv_key(dataset, name))
        state = cls(**json.loads(raw)) if raw else None
        _STATE_CACHE.put((dataset, name), state)
        return state


class _StateCache:
    """In-process cache of :class:`SpectrumState` so a metadata.updated of a 10,000-row table costs
    KV reads only for micrographs not seen before. KV is the truth (several replicas): entries expire
    after ``ttl_s`` so another replica's writes are seen."""

    def __init__(self, ttl_s: float = 60.0):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[float, SpectrumState | None]] = {}

    def get(self, key: tuple[str, str]) -> tuple[bool, SpectrumState | None]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return False, None
        return True, entry[1]

    def put(self, key: tuple[str, str], state: SpectrumState | None) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), state)


_STATE_CACHE = _StateCache()


def ctf_from_table_row(row: pd.Series) -> ctf_overlay.CtfParams | None:
    """The CTF fit of one ``micrograph_metadata.parquet`` row, or None when a value the model needs is missing."""
    names = ("defocus_u_A", "defocus_v_A", "voltage_kV", "cs_mm", "amplitude_contrast", "pixel_size_A")
    values = [row.get(n) for n in names]
    if any(v is None or not np.isfinite(float(v)) for v in values):
        return None
    angle = row.get("defocus_angle_deg")
    resolution = row.get("est_resolution")
    try:
        return ctf_overlay.CtfParams(
            defocus_u_A=float(values[0]), defocus_v_A=float(values[1]),
            astigmatism_angle_deg=float(angle) if angle is not None and np.isfinite(angle) else 0.0,
            voltage_kV=float(values[2]), cs_mm=float(values[3]), amplitude_contrast=float(values[4]),
            pixel_size_A=float(values[5]),
            fit_resolution_A=float(resolution) if resolution is not None and np.isfinite(resolution) else None,
        )
    except ValueError:
        return None  # e.g. a zero defocus (failed fit): nothing to draw


def _tilt_angles(job: JobDiscovered) -> list[float] | None:
    """Tilt angles in stack order from ``.tlt`` / ``.rawtlt`` (IMOD), else ``.mdoc`` TiltAngle, else None."""
    from cryobus.services.metadata.cryoet import imod, mdoc

    for role in ("tlt", "rawtlt"):
        if role in job.files and Path(job.files[role]).is_file():
            return imod.read_tilt_angles(job.files[role])
    if "mdoc" in job.files and Path(job.files["mdoc"]).is_file():
        try:
            angles = mdoc.read_mdoc(job.files["mdoc"]).tilt_angles
        except InputError:
            return None  # the metadata service reports a bad .mdoc; here the middle section will do
        return angles if all(math.isfinite(a) for a in angles) else None
    return None


@service.handler(ExposureDiscovered)
def on_exposure(event: Envelope[ExposureDiscovered], ctx: HandlerContext) -> None:
    """A new micrograph in a watched folder → its preview and computed power spectrum."""
    exp = event.data
    if exp.file_format == "eer":
        ctx.log.info("EER movie %s: previews are made from motion-corrected micrographs, skipping", exp.path)
        return
    Renderer(ctx).micrograph(dataset=exp.dataset, name=exp.micrograph_name, path=Path(exp.path), file_format=exp.file_format)


@service.handler(JobDiscovered)
def on_job(event: Envelope[JobDiscovered], ctx: HandlerContext) -> None:
    """MotionCorr → previews; CtfFind → spectra; AutoPick/Extract/particles → picks; 2D → classes; tilt series → slices."""
    Renderer(ctx).job(event.data)


@service.handler(MetadataUpdated)
def on_metadata(event: Envelope[MetadataUpdated], ctx: HandlerContext) -> None:
    """A new or changed CTF fit in the metadata table → the computed spectrum redrawn with it.

    Only micrographs whose spectrum render computed (not CTFFIND diagnostics, which show CTFFIND's
    own fit) and whose fit differs from the one drawn are redrawn, from the kept periodogram.
    """
    md = event.data
    if not md.table_parquet_uri:
        return
    table = pd.read_parquet(io.BytesIO(ctx.store.get(ctx.store.key_of(md.table_parquet_uri))))
    renderer = Renderer(ctx)
    redrawn = 0
    for _, row in table.iterrows():
        ctf = ctf_from_table_row(row)
        if ctf is None:
            continue
        name = str(row["micrograph_name"])
        state = SpectrumState.load(ctx, md.dataset, name)
        if state is None or state.diagnostic or state.periodogram_key is None or state.ctf == ctf_key(ctf):
            continue
        try:
            ps = np.load(io.BytesIO(ctx.store.get(state.periodogram_key)), allow_pickle=False)
        except KeyError:
            continue  # state of a store that was wiped: the next render of the micrograph recreates it
        renderer.spectrum_from_periodogram(dataset=md.dataset, name=name, ps=ps, source=Path(state.source), ctf=ctf)
        SpectrumState(periodogram_key=state.periodogram_key, source=state.source, ctf=ctf_key(ctf)).save(ctx, md.dataset, name)
        redrawn += 1
    if redrawn:
        ctx.log.info("redrew %d power spectra of %s with their new CTF fit", redrawn, md.dataset)


@service.handler(RenderRequested)
def on_request(event: Envelope[RenderRequested], ctx: HandlerContext) -> None:
    """Re-render a dataset from its discovery events with the requested parameters.

    Images that already exist for these parameters are skipped, so the same request twice does
    no duplicate work. Outputs carry the command's correlation id.
    """
    request = event.data
    params = RenderParams.parse(request.params)
    renderer = Renderer(ctx, params, skip_existing=True)
    subjects = [ExposureDiscovered.static_subject(), JobDiscovered.static_subject()]
    replayed = ctx.replay(subjects, since=request.since)
    done = 0
    for env in replayed:
        data = env.data
        if getattr(data, "dataset", None) != request.dataset:
            continue
        try:
            if isinstance(data, ExposureDiscovered):
                if data.file_format != "eer":
                    renderer.micrograph(dataset=data.dataset, name=data.micrograph_name, path=Path(data.path),
                                        file_format=data.file_format)
            elif isinstance(data, JobDiscovered):
                renderer.job(data)
        except InputError as exc:
            ctx.fail_item(exc.reason, file=exc.file, field=exc.field, dataset=request.dataset)
        except FileNotFoundError as exc:
            ctx.fail_item(f"input no longer exists: {exc.filename}", file=exc.filename, dataset=request.dataset)
        done += 1
    ctx.log.info("re-rendered %d discovery events of %s with %s", done, request.dataset, params.changed() or "defaults")
