"""``cryobus convert cs FILE.cs | star FILE.star | star-pairs --star A --mrc A ... | job-dir FOLDER --job N``.

Particle stacks → CryoLike's layout (docs/convert.md). Two ways, one code path (the request is
the same :class:`~cryobus.shared.events.ConvertRequested` either way, turned into the pipeline's
inputs, descriptor and options by the convert service's own functions):

* ``--local``: converted in this process by :func:`cryobus.services.convert.pipeline.convert`;
  ``--out`` is a folder (or ``file://`` / ``s3://`` URL) that receives ``phys/``, ``fft/``, ``plots/``.
* otherwise: the request is published on the bus (``--nats`` or ``$CRYOBUS_NATS_URL``) for the
  convert service (``cryobus up --services ...,convert``), and the command waits for the
  ``particles.converted`` events of its correlation id (one per stack) or a ``convert.failed``,
  printing them. ``--out`` is then the key prefix inside the service's artifact store (default
  ``<dataset>/cryolike/<input name>``); the printed URIs say where the files are.

Options are CryoLike's names (``--batch-size`` or ``--batch_size``, ...). Without ``--params`` the
image descriptor is built from the particles with CryoLike's defaults (``--resolution-factor``,
``--n-inplanes`` adjust it). Exit status: 0 done, 1 refused (bad input), 2 usage/connection, 3
no answer before ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from cryobus.shared.errors import InputError

DEFAULT_DATASET = "convert"


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``convert`` and its four modes to the ``cryobus`` sub-command parser."""
    conv = sub.add_parser(
        "convert", help="particle stacks -> CryoLike's layout (phys/, fft/, plots/): cs | star | star-pairs | job-dir",
        description=__doc__.replace("``", "").replace(":class:", "").replace(":func:", "").replace("`~", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = conv.add_subparsers(dest="mode", required=True, metavar="{cs,star,star-pairs,job-dir}")

    cs = modes.add_parser("cs", help="an indexed CryoSPARC particle .cs (blob/path, blob/idx, ctf/*)")
    cs.add_argument("cs_file", metavar="FILE.cs")
    cs.add_argument("--passthrough", metavar="PASSTHROUGH.cs", help="its passthrough .cs (fields the .cs lacks, by uid)")

    star = modes.add_parser("star", help="an indexed RELION particle STAR (rlnImageName = idx@stack)")
    star.add_argument("star_file", metavar="FILE.star")

    pairs = modes.add_parser("star-pairs", help="STAR + MRC pairs: row k of each STAR = image k of its MRC")
    pairs.add_argument("--star", action="append", required=True, metavar="A.star", help="STAR file (repeatable, in order)")
    pairs.add_argument("--mrc", action="append", required=True, metavar="A.mrcs", help="its MRC stack (repeatable, in order)")
    pairs.add_argument("--defocus-angle-radians", action="store_true", help="rlnDefocusAngle is in radians (default degrees)")
    pairs.add_argument("--phase-shift-radians", action="store_true", help="rlnPhaseShift is in radians (default degrees)")

    jd = modes.add_parser("job-dir", help="a CryoSPARC job folder J<N> (passthrough .cs + restack/ or downsample/)")
    jd.add_argument("job_folder", metavar="FOLDER", help="the folder holding J<N>/")
    jd.add_argument("--job", type=int, required=True, metavar="N", help="job number")

    for sp in (cs, star, pairs, jd):
        common(sp)
        _options(sp, indexed=sp in (cs, star))
        sp.set_defaults(func=run)


def _options(sp: argparse.ArgumentParser, *, indexed: bool) -> None:
    g = sp.add_argument_group("output")
    g.add_argument("--out", metavar="DIR",
                   help="--local: output folder or file:// / s3:// URL (required); bus: key prefix in the service's store")
    g.add_argument("--local", action="store_true", help="convert in this process instead of through the bus")
    g.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset of the outputs (bus; default {DEFAULT_DATASET!r})")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse them)")
    g.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="bus: how long to wait for the result")
    g.add_argument("--json", action="store_true", help="print each result event as one JSON line")

    d = sp.add_argument_group("image descriptor")
    d.add_argument("--params", metavar="PARAMS.npz", help="CryoLike params .npz (default: CryoLike's defaults for the particles)")
    d.add_argument("--resolution-factor", "--resolution_factor", type=float, metavar="F",
                   help="without --params: radius_max = F * n_pixels / 4 (default 1)")
    d.add_argument("--n-inplanes", "--n_inplanes", type=int, metavar="N", help="without --params: angles per shell (default 2*n_pixels)")

    o = sp.add_argument_group("conversion (CryoLike's parameters)")
    o.add_argument("--batch-size", "--batch_size", type=int, default=1024, metavar="N", help="images per output stack (1024)")
    o.add_argument("--n-stacks-max", "--n_stacks_max", type=int, default=-1, metavar="N", help="stop after N stacks (-1: all)")
    o.add_argument("--downsample-factor", "--downsample_factor", type=int, default=1, metavar="F", help="pool images by F (1: off)")
    o.add_argument("--downsample-type", "--downsample_type", choices=["mean", "max"], default="mean")
    o.add_argument("--pixel-size", "--pixel_size", type=float, metavar="A", help="pixel size of the input images, Å")
    o.add_argument("--override-pixel-size", action="store_true", help="let --pixel-size win over a different file value")
    o.add_argument("--flag-plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the three PNGs per stack (default on)")
    o.add_argument("--precision", choices=["single", "double"], help="default: the descriptor's")
    o.add_argument("--folder", metavar="DIR", help="CryoLike's folder_mrc / folder_cryosparc: stacks looked up here by name")
    if indexed:
        o.add_argument("--project-dir", metavar="DIR", help="folder the metadata's relative stack paths are relative to")
        o.add_argument("--cryolike-compatible", action="store_true",
                       help="CryoLike's image order (grouped by sorted stack path) instead of metadata row order")
    o.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: a GPU when usable")


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def build_request(args: argparse.Namespace) -> Any:
    """The :class:`ConvertRequested` the arguments describe (paths made absolute).

    Raises:
        SystemExit: arguments that do not make a valid request.
    """
    from pydantic import ValidationError

    from cryobus.shared.events import ConvertRequested, ImageDescriptorValues

    descriptor = None
    if args.params is None and (args.resolution_factor is not None or args.n_inplanes is not None):
        descriptor = ImageDescriptorValues(
            resolution_factor=args.resolution_factor if args.resolution_factor is not None else 1.0,
            n_inplanes=args.n_inplanes,
            precision=args.precision or "single",
        )
    elif args.params is not None and (args.resolution_factor is not None or args.n_inplanes is not None):
        raise SystemExit("cryobus convert: --resolution-factor / --n-inplanes only apply without --params")
    fields: dict[str, Any] = dict(
        dataset=args.dataset,
        mode=args.mode,
        folder=_abs(args.folder),
        project_dir=_abs(getattr(args, "project_dir", None)),
        params_file=_abs(args.params),
        descriptor=descriptor,
        batch_size=args.batch_size,
        n_stacks_max=args.n_stacks_max,
        downsample_factor=args.downsample_factor,
        downsample_type=args.downsample_type,
        pixel_size=args.pixel_size,
        override_pixel_size=args.override_pixel_size,
        flag_plots=args.flag_plots,
        precision=args.precision,
        cryolike_compatible=getattr(args, "cryolike_compatible", False),
        overwrite=args.overwrite,
        device=args.device,
    )
    if args.mode == "cs":
        fields |= dict(cs_file=_abs(args.cs_file), passthrough_file=_abs(args.passthrough))
    elif args.mode == "star":
        fields |= dict(star_file=_abs(args.star_file))
    elif args.mode == "star-pairs":
        fields |= dict(
            star_files=[_abs(s) for s in args.star], mrc_files=[_abs(m) for m in args.mrc],
            defocus_angle_is_degree=not args.defocus_angle_radians, phase_shift_is_degree=not args.phase_shift_radians,
        )
    else:
        fields |= dict(job_folder=_abs(args.job_folder), job=args.job)
    if not args.local and args.out:
        if Path(args.out).is_absolute() or "://" in args.out:
            raise SystemExit(
                "cryobus convert: without --local, --out is a key prefix inside the convert service's artifact "
                f"store (e.g. mydata/cryolike/run1), not {args.out!r}; use --local to write to a folder"
            )
        fields["prefix"] = args.out
    try:
        return ConvertRequested(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise SystemExit(f"cryobus convert: {err['msg']}" + (f" ({where})" if where else "")) from None


def _print_stack(event: Any, *, as_json: bool) -> None:
    if as_json:
        print(event.model_dump_json(), flush=True)
        return
    t = event.timings_s
    timing = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in t.items())
    gpu = f", GPU memory {event.gpu_memory_bytes / 2**20:.0f} MiB" if event.gpu_memory_bytes else ""
    print(
        f"stack {event.stack_index:06d}/{event.n_stacks - 1:06d}: {event.n_images} images "
        f"{event.image_shape[0]}x{event.image_shape[1]} {event.phys_dtype} -> {event.fourier_dtype} on {event.device} "
        f"({timing}{gpu})",
        flush=True,
    )
    for uri in (event.phys_uri, event.fourier_uri, event.npz_uri, *event.plot_uris.values()):
        print(f"  {uri}", flush=True)


def _print_failure(failed: Any, *, as_json: bool) -> None:
    if as_json:
        print(failed.model_dump_json(), flush=True)
        return
    where = "".join(f" {k}={v}" for k, v in (("file", failed.file), ("field", failed.field)) if v)
    print(f"cryobus convert: refused ({failed.error_class}): {failed.reason}{where}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cryobus convert ...``; returns the exit status."""
    if args.local and not args.out:
        raise SystemExit("cryobus convert --local needs --out DIR")
    req = build_request(args)
    return run_local(req, args) if args.local else run_bus(req, args)


def run_local(req: Any, args: argparse.Namespace) -> int:
    """Convert in this process, exactly as the service would (same spec, descriptor and options)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (docs/convert.md)
    from cryobus.services.convert.pipeline import StackWritten, convert, prepare
    from cryobus.services.convert.service import request_options, request_params, request_spec
    from cryobus.shared.events import ParticlesConverted
    from cryobus.shared.store import open_store

    try:
        t0 = time.perf_counter()
        spec, _ = request_spec(req)
        params, _ = request_params(req)
        options = request_options(req, prefix="", overwrite=req.overwrite)
        store = open_store(str(args.out))
        prepared = prepare(spec, params, options, store=store)
        for note in prepared.notes:
            if not args.json:
                print(f"note: {note}", flush=True)
        n_stacks = len(prepared.stacks)
        total = [0]

        def on_stack(w: StackWritten) -> None:
            total[0] += w.n_images
            art = w.artifacts
            _print_stack(
                ParticlesConverted(
                    dataset=req.dataset, stack_index=w.index, n_stacks=n_stacks, n_images=w.n_images,
                    prefix="", layout_uri=store.url, phys_uri=art["phys"].uri, fourier_uri=art["fourier"].uri,
                    npz_uri=art["npz"].uri,
                    plot_uris={k.removeprefix("plot_"): v.uri for k, v in art.items() if k.startswith("plot_")},
                    metadata_file=w.metadata_file, source_files=list(w.mrc_files), image_shape=list(w.image_shape),
                    phys_dtype=w.phys_dtype, fourier_dtype=w.fourier_dtype,
                    pixel_size_A=float(prepared.descriptors[prepared.stacks[w.index].source].pixel_size[0]), device=w.device,
                    timings_s=w.timings, gpu_memory_bytes=w.gpu_memory_bytes,
                ),
                as_json=args.json,
            )

        written = convert(spec, params, store, on_stack=on_stack, prepared=prepared)
    except InputError as exc:
        where = "".join(f" {k}={v}" for k, v in (("file", exc.file), ("field", exc.field)) if v)
        print(f"cryobus convert: refused: {exc.reason}{where}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # e.g. --device cuda without a usable GPU
        print(f"cryobus convert: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    if not args.json:
        print(f"converted {total[0]} images into {len(written)} stacks in {elapsed:.2f} s "
              f"({total[0] / elapsed if elapsed > 0 else float('nan'):.0f} images/s) -> {store.url}")
    return 0


def run_bus(req: Any, args: argparse.Namespace) -> int:
    """Publish the request and wait for its ``particles.converted`` / ``convert.failed`` events."""
    from cryobus.cli import _settings

    settings = _settings(args).model_copy(update={"connect_timeout_s": 10.0})
    return asyncio.run(_request_and_wait(settings, req, timeout=args.timeout, as_json=args.json))


async def _request_and_wait(settings: Any, req: Any, *, timeout: float, as_json: bool) -> int:
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from cryobus.shared.bus.connection import connect_with_retry
    from cryobus.shared.bus.topology import EVENTS_STREAM, ensure_streams
    from cryobus.shared.events import Envelope, ParticlesConverted, ProcessingFailed
    from cryobus.shared.events.envelope import parse_envelope

    nc = await connect_with_retry(settings, "cryobus-convert")
    name = f"convert-cli-{uuid.uuid4().hex[:12]}"
    js = nc.jetstream()
    try:
        await ensure_streams(js, replicas=settings.stream_replicas, update_existing=False)
        after = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        # Follow the answers from before the request is published, so none can be missed.
        await js.add_consumer(EVENTS_STREAM, config=ConsumerConfig(
            name=name,
            filter_subjects=[ParticlesConverted.static_subject(), "cryobus.events.convert.failed"],
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=120.0,
            mem_storage=True,
        ))
        sub = await js.pull_subscribe_bind(name, stream=EVENTS_STREAM)
        env = Envelope.wrap(req, source="/cryobus/cli")
        ack = await js.publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})
        if not as_json:
            print(f"convert requested: event {env.id} (stream seq {ack.seq}); waiting for the convert service...",
                  flush=True)
        stacks: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(64, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing new yet
                continue
            for msg in msgs:
                try:
                    got = parse_envelope(msg.data)
                except InputError:
                    continue
                if got.correlation_id != env.id:
                    continue
                if isinstance(got.data, ProcessingFailed):
                    _print_failure(got.data, as_json=as_json)
                    return 1
                if isinstance(got.data, ParticlesConverted) and got.data.stack_index not in stacks:
                    stacks.add(got.data.stack_index)
                    _print_stack(got.data, as_json=as_json)
                    if len(stacks) == got.data.n_stacks:
                        if not as_json:
                            print(f"converted {got.data.n_stacks} stacks -> {got.data.layout_uri}", flush=True)
                        return 0
        print(f"cryobus convert: no answer within {timeout:g} s (is the convert service running? "
              f"`cryobus up --services convert`); request {env.id}", file=sys.stderr)
        return 3
    finally:
        try:
            await js.delete_consumer(EVENTS_STREAM, name)
        except Exception:  # noqa: BLE001 - it expires on its own
            pass
        await nc.close()
