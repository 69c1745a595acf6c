"""The convert service on a real nats-server, and ``cryobus convert --local``: a conversion request
or a particle job announced by ingest → CryoLike's files, each announced by ``artifact.stored``,
each stack by ``particles.converted``, equal to CryoLike's own outputs; bad input →
``convert.failed`` naming file, field and row, before anything is announced."""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryobus.cli import main as cryobus_main
from cryobus.services.convert.polar_grid import PolarGrid
from cryobus.services.convert.params import read_params
from cryobus.services.convert.service import service
from cryobus.services.ingest.recognise import scan_tree
from cryobus.services.ingest.roots import AllowedRoots
from cryobus.shared.bus.topology import COMMANDS_STREAM, EVENTS_STREAM
from cryobus.shared.config import Settings
from cryobus.shared.events import ConvertRequested, JobDiscovered
from cryobus.summary import read_events
from tests.runtime_harness import publish, run_service, test_settings, until
from tests.convert.conftest import assert_npz_equal, load, relative_error, tolerance

C1 = "c1_star_single"


# ------------------------------------------------------------------------------ helpers


def settings_for(server, tmp_path: Path, **kw) -> Settings:
    return test_settings(server, tmp_path, **{"ack_wait_s": 10.0, "max_deliver": 2, **kw})


async def handled(js, acks) -> bool:
    """Every published message acked by the service (its ack floor has passed them)."""
    durables = {EVENTS_STREAM: "convert", COMMANDS_STREAM: "convert-commands"}
    for stream in {a.stream for a in acks}:
        info = await js.consumer_info(stream, durables[stream])
        if info.num_ack_pending or info.ack_floor.stream_seq < max(a.seq for a in acks if a.stream == stream):
            return False
    return True


def convert_messages(settings: Settings, messages: list) -> list:
    """Run the convert service, publish ``messages``, wait until it has handled them; return
    ``(envelope id, the events it caused, in stream order)`` per message."""

    async def scenario(js, rt):
        sent, acks = zip(*[await publish(js, m) for m in messages])
        assert await until(lambda: handled(js, acks), 60)
        events = await read_events(js, 0)
        return [(env.id, [e for e in events if e.correlation_id == env.id and e.id != env.id]) for env in sent]

    return run_service(service, settings, scenario)


def local_file(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def of_type(events, suffix: str) -> list:
    return [e for e in events if e.type.endswith(suffix)]


def discover(root: Path, dataset: str) -> list[JobDiscovered]:
    """What ingest announces for ``root`` (every file counts as stable)."""
    found = scan_tree(root, dataset=dataset, allowed=AllowedRoots([root]), is_stable=lambda p: True).found
    return [d for d in found if isinstance(d, JobDiscovered)]


@pytest.fixture(scope="module")
def c1_reference(reference: Path) -> dict:
    case = reference / C1
    return {
        "phys": load(case / "phys/particles_phys_stack_000000.pt"),
        "fourier": load(case / "fft/particles_fourier_stack_000000.pt"),
        "npz": [case / f"fft/particles_fourier_stack_{i:06d}.npz" for i in range(3)],
        "params": case / "params_sppractice_single.npz",
        "star": reference / "inputs" / "particles_noAnglePsi.star",
    }


def c1_request(relion_project: Path, c1_reference: dict, **kw) -> ConvertRequested:
    """The README's case c1 call, as a request."""
    return ConvertRequested(
        dataset="sppractice", mode="star", star_file=str(c1_reference["star"]),
        folder=str(relion_project / "Extract/job009/Movies"), params_file=str(c1_reference["params"]), **kw,
    )  # fmt: skip


def assert_c1_outputs(phys0: Path, fourier0: Path, npzs: list[Path], ref: dict) -> None:
    assert torch.equal(load(phys0), ref["phys"])  # float16 phys bit for bit
    fourier = load(fourier0)
    assert relative_error(fourier, ref["fourier"]) <= tolerance(ref["fourier"])
    for ours, theirs in zip(npzs, ref["npz"], strict=True):
        assert_npz_equal(ours, theirs)


# ------------------------------------------------------------------------------ CLI --local


def test_cli_local_writes_cryolikes_files(tmp_path, relion_project, c1_reference, capsys):
    out = tmp_path / "out"
    rc = cryobus_main([
        "convert", "star", str(c1_reference["star"]), "--folder", str(relion_project / "Extract/job009/Movies"),
        "--params", str(c1_reference["params"]), "--out", str(out), "--local", "--batch_size", "1024",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "converted 2374 images into 3 stacks" in printed
    assert_c1_outputs(out / "phys/particles_phys_stack_000000.pt", out / "fft/particles_fourier_stack_000000.pt",
                      [out / f"fft/particles_fourier_stack_{i:06d}.npz" for i in range(3)], c1_reference)  # fmt: skip
    assert len(list((out / "plots").glob("*.png"))) == 9
    # Same command again: the outputs exist, so it is refused and nothing changes.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc = cryobus_main(["convert", "star", str(c1_reference["star"]), "--folder", str(relion_project / "Extract/job009/Movies"),
                       "--params", str(c1_reference["params"]), "--out", str(out), "--local"])  # fmt: skip
    assert rc == 1 and "overwrite" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_cli_local_cryosparc_double(tmp_path, reference, cryodrgn, capsys):
    rc = cryobus_main(["convert", "cs", str(cryodrgn / "empiar_10076_7.cs"), "--folder", str(cryodrgn), "--local",
                       "--params", str(reference / "a_cs_double/params_empiar_double.npz"), "--out", str(tmp_path),
                       "--no-flag-plots"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    ref = load(reference / "a_cs_double/fft/particles_fourier_stack_000000.pt")
    assert relative_error(load(tmp_path / "fft/particles_fourier_stack_000000.pt"), ref) <= 1e-10
    assert_npz_equal(tmp_path / "fft/particles_fourier_stack_000000.npz",
                     reference / "a_cs_double/fft/particles_fourier_stack_000000.npz")  # fmt: skip
    assert not (tmp_path / "plots").exists()


# ------------------------------------------------------------------------------ the service


def test_request_converts_and_announces_every_stack(nats_server, tmp_path, relion_project, c1_reference):
    settings = settings_for(nats_server, tmp_path)
    [(_, events)] = convert_messages(settings, [c1_request(relion_project, c1_reference, flag_plots=False)])
    converted = [e.data for e in of_type(events, "particles.converted.v1")]
    assert [c.stack_index for c in converted] == [0, 1, 2]
    assert [c.n_images for c in converted] == [1024, 1024, 326] and {c.n_stacks for c in converted} == {3}
    assert {c.prefix for c in converted} == {"sppractice/cryolike/particles_noAnglePsi"}
    assert all(c.device == "cpu" and c.gpu_memory_bytes is None and c.phys_dtype == "float16" for c in converted)
    assert all(set(c.timings_s) == {"read_s", "transform_s", "write_s"} and not c.plot_uris for c in converted)
    assert converted[0].source_files[0].endswith("20170629_00021_frameImage.mrcs")
    assert_c1_outputs(local_file(converted[0].phys_uri), local_file(converted[0].fourier_uri),
                      [local_file(c.npz_uri) for c in converted], c1_reference)  # fmt: skip
    # Every file announced (with its sha256), and before the stack that holds it.
    seq = {id(e): i for i, e in enumerate(events)}
    stored = {e.data.uri: e for e in of_type(events, "artifact.stored.v1")}
    for c, env in zip(converted, of_type(events, "particles.converted.v1")):
        for uri in (c.phys_uri, c.fourier_uri, c.npz_uri):
            assert seq[id(stored[uri])] < seq[id(env)]
            assert stored[uri].data.producer == "convert" and stored[uri].data.role.startswith("particles_")
            assert stored[uri].data.size_bytes == local_file(uri).stat().st_size
    assert not of_type(events, "convert.failed.v1")


def test_particle_jobs_from_ingest_are_converted(nats_server, tmp_path, relion_project, c1_reference, reference, cryodrgn):
    """A RELION Extract job and a CryoSPARC extract job (CTF in its passthrough file), as ingest
    announces them; a CryoSPARC picking job (no images) is left alone."""
    project = tmp_path / "sppractice"
    shutil.copytree(relion_project / "Extract", project / "Extract")
    cs_project = tmp_path / "P1"
    _cryosparc_jobs(cs_project, cryodrgn)
    jobs = [*discover(project, "sppractice"), *discover(cs_project, "P1")]
    assert {(j.software, j.job_type, Path(j.job_dir).name) for j in jobs} >= {
        ("relion", "Extract", "job009"), ("cryosparc", "particles", "J3"), ("cryosparc", "particles", "J2")}
    # CryoLike's params for the CryoSPARC particles; the RELION job gets the particles' own defaults
    # only when no params file is set, so it runs in a second service instance below.
    settings = settings_for(nats_server, tmp_path, convert_params=reference / "a_cs_single/params_empiar_single.npz")
    cs_jobs = [j for j in jobs if j.software == "cryosparc"]
    results = convert_messages(settings, cs_jobs)
    by_job = {Path(j.job_dir).name: events for j, (_, events) in zip(cs_jobs, results)}
    assert by_job["J2"] == []  # picks only: nothing to convert, nothing failed
    [cs] = [e.data for e in of_type(by_job["J3"], "particles.converted.v1")]
    assert cs.prefix == "P1/cryolike/J3/J3_particles" and cs.n_images == 7
    assert relative_error(load(local_file(cs.fourier_uri)), load(reference / "a_cs_single/fft/particles_fourier_stack_000000.pt")) <= 1e-5
    ours = np.load(local_file(cs.npz_uri), allow_pickle=True)
    theirs = np.load(reference / "a_cs_single/fft/particles_fourier_stack_000000.npz", allow_pickle=True)
    for key in ("defocusU", "defocusV", "defocusAngle", "phaseShift", "voltage", "n_pixels", "pixel_size"):
        assert np.array_equal(ours[key], theirs[key]), key  # CTF matched on uid from the passthrough file

    relion_job = next(j for j in jobs if j.software == "relion")
    [(_, events)] = convert_messages(settings_for(nats_server, tmp_path / "second"), [relion_job])
    converted = [e.data for e in of_type(events, "particles.converted.v1")]
    assert [c.n_images for c in converted] == [1024, 1024, 326]
    assert converted[0].prefix == "sppractice/cryolike/Extract/job009"
    assert torch.equal(load(local_file(converted[0].phys_uri)), c1_reference["phys"])  # phys does not depend on params
    npz = np.load(local_file(converted[0].npz_uri), allow_pickle=True)
    # CryoLike's defaults for 64 px of 3.54 Å: rf 1 → radius_max 16, 2·64 in-plane angles.
    assert npz["n_pixels"].tolist() == [64, 64] and npz["pixel_size"].tolist() == [3.54, 3.54]
    assert float(npz["radius_max"]) == 16.0 and int(npz["n_inplanes"]) == 128
    fourier = load(local_file(converted[0].fourier_uri))
    grid = PolarGrid.from_descriptor(read_params(local_file(converted[0].npz_uri)))
    assert fourier.shape == (1024, 65, 128)
    norms = (fourier.abs().double() ** 2).sum(dim=2) @ torch.from_numpy(np.asarray(grid.shell_weights, dtype=np.float64))
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert len(converted[0].plot_uris) == 3


def _cryosparc_jobs(project: Path, cryodrgn: Path) -> None:
    """J3: an extract job (blob/* in J3_particles.cs, ctf/* only in the passthrough, rows in another
    order); J2: a picking job (locations, no images)."""
    full = np.load(cryodrgn / "empiar_10076_7.cs")
    j3 = project / "J3"
    (j3 / "extract").mkdir(parents=True)
    shutil.copyfile(cryodrgn / "empiar_10076_7.mrc", j3 / "extract" / "empiar_10076_7.mrc")
    blob = [n for n in full.dtype.names if n == "uid" or n.startswith("blob/")]
    main = np.empty(full.shape, dtype=[(n, full.dtype.fields[n][0]) for n in blob])
    for n in blob:
        main[n] = full[n]
    main["blob/path"] = b"J3/extract/empiar_10076_7.mrc"
    ctf = [n for n in full.dtype.names if n == "uid" or n.startswith("ctf/")]
    passthrough = np.empty(full.shape, dtype=[(n, full.dtype.fields[n][0]) for n in ctf])
    order = np.array([3, 6, 0, 5, 1, 4, 2])
    for n in ctf:
        passthrough[n] = full[n][order]
    for name, arr in (("J3_particles.cs", main), ("J3_passthrough_particles.cs", passthrough)):
        with open(j3 / name, "wb") as fh:
            np.save(fh, arr)
    picks = np.zeros(4, dtype=[("uid", "<u8"), ("location/micrograph_path", "S40"), ("location/center_x_frac", "<f4"),
                               ("location/center_y_frac", "<f4")])  # fmt: skip
    (project / "J2").mkdir()
    with open(project / "J2" / "J2_particles.cs", "wb") as fh:
        np.save(fh, picks)


def test_bad_input_fails_before_anything_is_announced(nats_server, tmp_path, cryodrgn, reference):
    params = str(reference / "a_cs_single/params_empiar_single.npz")
    # A .cs whose blob/path names a stack that does not exist (row 4).
    cs = np.load(cryodrgn / "empiar_10076_7.cs")
    cs["blob/path"][4] = b"gone.mrc"
    bad_cs = tmp_path / "bad.cs"
    with open(bad_cs, "wb") as fh:
        np.save(fh, cs)
    shutil.copyfile(cryodrgn / "empiar_10076_7.mrc", tmp_path / "empiar_10076_7.mrc")
    # A stack holding fewer images than its STAR has rows.
    short = tmp_path / "short.mrcs"
    with mrcfile.new(short) as m:
        m.set_data(mrcfile.read(cryodrgn / "empiar_10076_7.mrc")[:5])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # The service may read these folders only; /etc is not one of them.
    settings = settings_for(nats_server, tmp_path, roots=[tmp_path, cryodrgn, reference])
    requests = [
        ConvertRequested(dataset="d", mode="cs", cs_file=str(bad_cs), params_file=params),
        ConvertRequested(dataset="d", mode="star-pairs", star_files=[str(cryodrgn / "empiar_10076_7.star")],
                         mrc_files=[str(short)], params_file=params, pixel_size=1.3099979),  # fmt: skip
        ConvertRequested(dataset="d", mode="cs", cs_file=str(cryodrgn / "empiar_10076_7.cs"), folder=str(cryodrgn),
                         params_file=str(reference / "c1_star_single/params_sppractice_single.npz")),  # fmt: skip
        ConvertRequested(dataset="d", mode="star", star_file="/etc/passwd", params_file=params),
    ]
    results = convert_messages(settings, requests)
    failures = []
    for _, events in results:
        assert not of_type(events, "particles.converted.v1") and not of_type(events, "artifact.stored.v1")
        [failed] = of_type(events, "convert.failed.v1")
        assert failed.data.error_class == "permanent" and failed.data.service == "convert"
        failures.append(failed.data)
    missing, count, conflict, outside_roots = failures
    assert missing.file == str(bad_cs) and missing.field == "blob/path" and "row 4" in missing.reason
    assert count.file.endswith("empiar_10076_7.star") and count.field == "rows"
    assert "7 particle rows" in count.reason and "5 images" in count.reason
    assert conflict.field == "pixel_size" and conflict.file.endswith("params_sppractice_single.npz")
    assert outside_roots.field == "star_file" and "outside the allowed roots" in outside_roots.reason
    assert not (tmp_path / "store" / "d").exists()


def test_passthrough_rows_are_matched_on_uid(tmp_path, cryodrgn):
    """A .cs whose CTF lives in its passthrough file: fields joined on uid; a uid the passthrough
    lacks is refused naming that file, the field and the row."""
    from cryobus.services.convert.inputs.cryosparc import read_indexed_cs
    from cryobus.shared.errors import InputError

    _cryosparc_jobs(tmp_path, cryodrgn)
    j3 = tmp_path / "J3"
    source = read_indexed_cs(j3 / "J3_particles.cs", passthrough_file=j3 / "J3_passthrough_particles.cs", project_dir=tmp_path)
    full = np.load(cryodrgn / "empiar_10076_7.cs")
    assert np.array_equal(source.lens.per_image["defocusU"], full["ctf/df1_A"])  # row order of J3_particles.cs
    passthrough = np.load(j3 / "J3_passthrough_particles.cs")
    with open(j3 / "J3_passthrough_particles.cs", "wb") as fh:
        np.save(fh, passthrough[passthrough["uid"] != full["uid"][5]])
    with pytest.raises(InputError) as err:
        read_indexed_cs(j3 / "J3_particles.cs", passthrough_file=j3 / "J3_passthrough_particles.cs", project_dir=tmp_path)
    assert err.value.field == "uid" and err.value.file.endswith("J3_passthrough_particles.cs")
    assert "row 5" in err.value.reason
