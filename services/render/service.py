"""The render service: previews of micrographs, power spectra and class averages.

Layout in the store (prismPYP's, so a dataset folder can be handed to prismPYP unchanged):

* ``<dataset>/webp/<micrograph_name>.webp`` — the micrograph preview;
* ``<dataset>/webp/<micrograph_name>_ctffit.webp`` — CTFFIND's diagnostic image when it exists,
  otherwise a computed power spectrum (averaged periodogram);
* ``<dataset>/class_averages/<job>/it<NNN>/class_<KKK>.png`` — one lossless PNG per class,
  numbered as the source numbers them (RELION: 1-based; CryoSPARC: 0-based).

Every image is announced by ``artifact.stored`` and ``render.completed``. Within a job a bad
image is reported with its own ``render.failed`` and the rest of the job goes on; a referenced
file that does not exist is reported once with ``input.missing``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryobus.services.render import class_averages, encode, micrograph, power_spectrum
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, ExposureDiscovered, JobDiscovered, RenderCompleted
from cryobus.shared.formats import ctffind, mrc, star

service = Service(name="render")

WEBP = "image/webp"
PNG = "image/png"


def _read_micrograph(path: Path, file_format: str, max_bytes: int) -> np.ndarray:
    if file_format == "tiff" or path.suffix.lower() in (".tif", ".tiff"):
        return mrc.read_tiff_image(path)
    image, _header = mrc.read_image(path, section=0, max_bytes=max_bytes)
    return image


def _store_image(
    ctx: HandlerContext, *, dataset: str, key: str, img: np.ndarray, kind: str, name: str, source: Path, method: str
) -> None:
    data = encode.png_bytes(img) if key.endswith(".png") else encode.webp_bytes(img, lossless=True)
    role = {"micrograph": "micrograph_preview", "power_spectrum": "power_spectrum_preview"}.get(kind, kind)
    stored = ctx.put_artifact(
        key, data, media_type=PNG if key.endswith(".png") else WEBP, role=role, dataset=dataset, inputs=[str(source)]
    )
    ctx.emit(
        RenderCompleted(
            dataset=dataset, image_kind=kind, name=name, source=str(source), artifact_uri=stored.uri,
            width=int(img.shape[1]), height=int(img.shape[0]), method=method,
        ),
        dedup_key=stored.key + stored.sha256,
    )


def render_micrograph(ctx: HandlerContext, *, dataset: str, name: str, path: Path, file_format: str = "mrc",
                      with_spectrum: bool = True) -> None:
    """Preview (and, if asked, computed power spectrum) of one micrograph file."""
    image = _read_micrograph(path, file_format, ctx.settings.max_image_bytes)
    _store_image(ctx, dataset=dataset, key=f"{dataset}/webp/{name}.webp", img=micrograph.preview(image),
                 kind="micrograph", name=name, source=path, method="binned_percentile_clip")
    if with_spectrum:
        spectrum = power_spectrum.spectrum_preview(power_spectrum.periodogram(image))
        _store_image(ctx, dataset=dataset, key=f"{dataset}/webp/{name}_ctffit.webp", img=spectrum,
                     kind="power_spectrum", name=name, source=path, method="computed_periodogram")


@service.handler(ExposureDiscovered)
def on_exposure(event: Envelope[ExposureDiscovered], ctx: HandlerContext) -> None:
    """A new micrograph in a watched folder → its preview and computed power spectrum."""
    exp = event.data
    if exp.file_format == "eer":
        ctx.log.info("EER movie %s: previews are made from motion-corrected micrographs, skipping", exp.path)
        return
    render_micrograph(ctx, dataset=exp.dataset, name=exp.micrograph_name, path=Path(exp.path), file_format=exp.file_format)


def _project_path(project: Path, relion_name: str) -> Path:
    return project / relion_name.split(":")[0]


def _micrograph_rows(job: JobDiscovered):
    star_path = Path(job.files["star"])
    return star_path, star.micrograph_block(star.read_star(star_path), file=str(star_path))


def _each_row(ctx: HandlerContext, job: JobDiscovered, fn) -> None:
    """Run ``fn(row)`` for each micrograph row; a bad row is reported and the others go on."""
    star_path, rows = _micrograph_rows(job)
    star.require_columns(rows, ["rlnMicrographName"], file=str(star_path), block="micrographs")
    for _, row in rows.iterrows():
        try:
            fn(star_path, row)
        except InputError as exc:
            ctx.fail_item(exc.reason, file=exc.file, field=exc.field, dataset=job.dataset)


def _render_motioncorr(ctx: HandlerContext, job: JobDiscovered) -> None:
    project = Path(job.project_dir)

    def one(star_path: Path, row) -> None:
        path = _project_path(project, row["rlnMicrographName"])
        name = star.micrograph_name(row["rlnMicrographName"])
        if not path.is_file():
            ctx.report_missing(dataset=job.dataset, path=str(path), referenced_by=str(star_path), field="rlnMicrographName")
            return
        render_micrograph(ctx, dataset=job.dataset, name=name, path=path, with_spectrum=False)

    _each_row(ctx, job, one)


def _render_ctffind(ctx: HandlerContext, job: JobDiscovered) -> None:
    project = Path(job.project_dir)

    def one(star_path: Path, row) -> None:
        name = star.micrograph_name(row["rlnMicrographName"])
        key = f"{job.dataset}/webp/{name}_ctffit.webp"
        if "rlnCtfImage" in row and isinstance(row["rlnCtfImage"], str):
            diagnostic = project / ctffind.diagnostic_image_path(row["rlnCtfImage"])
            if diagnostic.is_file():
                image, _ = mrc.read_image(diagnostic, section=0, max_bytes=ctx.settings.max_image_bytes)
                _store_image(ctx, dataset=job.dataset, key=key, img=power_spectrum.ctffind_diagnostic_preview(image),
                             kind="power_spectrum", name=name, source=diagnostic, method="ctffind_diagnostic")
                return
            ctx.report_missing(dataset=job.dataset, path=str(diagnostic), referenced_by=str(star_path), field="rlnCtfImage")
        micrograph_path = _project_path(project, row["rlnMicrographName"])
        if not micrograph_path.is_file():
            ctx.report_missing(dataset=job.dataset, path=str(micrograph_path), referenced_by=str(star_path), field="rlnMicrographName")
            return
        image, _ = mrc.read_image(micrograph_path, section=0, max_bytes=ctx.settings.max_image_bytes)
        spectrum = power_spectrum.spectrum_preview(power_spectrum.periodogram(image))
        _store_image(ctx, dataset=job.dataset, key=key, img=spectrum, kind="power_spectrum", name=name,
                     source=micrograph_path, method="computed_periodogram")

    _each_row(ctx, job, one)


def _render_classes(ctx: HandlerContext, job: JobDiscovered, stack_path: Path, first_number: int) -> None:
    stack, _ = mrc.read_stack(stack_path, max_bytes=ctx.settings.max_image_bytes)
    job_name = Path(job.job_dir).name
    iteration = f"it{job.iteration:03d}" if job.iteration is not None else "final"
    for i, img in enumerate(class_averages.class_images(stack)):
        number = i + first_number
        name = f"{job_name}/{iteration}/class_{number:03d}"
        _store_image(ctx, dataset=job.dataset, key=f"{job.dataset}/class_averages/{name}.png", img=img,
                     kind="class_average", name=name, source=stack_path, method="per_class_percentile_clip")


@service.handler(JobDiscovered)
def on_job(event: Envelope[JobDiscovered], ctx: HandlerContext) -> None:
    """RELION MotionCorr → micrograph previews; CtfFind → power spectra; Class2D / CryoSPARC 2D → class images."""
    job = event.data
    if job.software == "relion" and job.job_type == "MotionCorr":
        _render_motioncorr(ctx, job)
    elif job.software == "relion" and job.job_type == "CtfFind":
        _render_ctffind(ctx, job)
    elif job.software == "relion" and job.job_type == "Class2D":
        _render_classes(ctx, job, Path(job.files["classes_mrcs"]), first_number=1)
    elif job.software == "cryosparc" and job.job_type == "class_averages" and "mrc" in job.files:
        _render_classes(ctx, job, Path(job.files["mrc"]), first_number=0)
