"""Tilt series land in a watched facility → CryoET Data Portal metadata in the store, or a clear
`metadata.failed` naming the file and the field; a bad tilt series holds up no good one.

Real acquisition files: cryoCAT's TS_017 (017.mdoc, 017.tlt) and teamtomo/mdocfile's older
tilt_series.mdoc (no Voltage, ExposureDose 0). Stacks and tomograms are small synthetic MRCs.
Ingest and metadata run as `cryobus up` runs them, on a real (embedded) nats-server.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from cryobus.services.metadata.cryoet import read_mdoc, validate_file
from tests.cryoet.conftest import CONFIG, TEAMTOMO, TS_017, write_mrc

from .helpers import cryobus, events_in_state_dir, sha256_file, stored_by_key

pytestmark = pytest.mark.slow

CONFIG_NAME = "cryoet_dataset.yaml"


def _ts_017(shared_data: Path, folder: Path, *, drop_tilt_angle_of: int | None = None) -> Path:
    """017.mdoc + 017.tlt, a 60-section stack and a tomogram; optionally one section without TiltAngle."""
    folder.mkdir(parents=True)
    mdoc = (shared_data / TS_017 / "017.mdoc").read_text()
    if drop_tilt_angle_of is not None:
        head, section = mdoc.split(f"[ZValue = {drop_tilt_angle_of}]", 1)
        line = next(line for line in section.splitlines() if line.startswith("TiltAngle"))
        mdoc = f"{head}[ZValue = {drop_tilt_angle_of}]{section.replace(line + chr(10), '', 1)}"
    (folder / "017.mdoc").write_text(mdoc)
    (folder / "017.tlt").write_bytes((shared_data / TS_017 / "017.tlt").read_bytes())
    write_mrc(folder / "017.st", (60, 16, 16), 1.971)
    write_mrc(folder / "017_rec.mrc", (21, 30, 41), 7.884, seed=1)
    return folder


def _config(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def tomo_run(shared_data: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("tomo")
    facility, other_lab = work / "facility", work / "lab_b"
    good = _ts_017(shared_data, facility / "TS_017")
    _config(facility / CONFIG_NAME, CONFIG)
    # a tilt series without a tomogram (yet): the same config serves it
    stack_only = facility / "TS_045"
    stack_only.mkdir()
    (stack_only / "045.mdoc").write_bytes((shared_data / TS_017 / "017.mdoc").read_bytes())
    write_mrc(stack_only / "045.st", (60, 16, 16), 1.971)
    # the old mdoc gives neither voltage nor dose, and the facility config does not either
    old = facility / "TS_01"
    old.mkdir()
    (old / "TS_01.mdoc").write_bytes((shared_data / TEAMTOMO / "tilt_series.mdoc").read_bytes())
    write_mrc(old / "TS_01.mrc", (41, 16, 16), 5.4)
    no_angle = _ts_017(shared_data, facility / "bad_mdoc", drop_tilt_angle_of=5)
    # a group with its own config, which lacks the camera model
    incomplete = copy.deepcopy(CONFIG)
    del incomplete["tiltseries"]["camera"]["model"]
    (facility / "group_b").mkdir()
    _config(facility / "group_b" / CONFIG_NAME, incomplete)
    group_b = _ts_017(shared_data, facility / "group_b" / "TS_017")
    # a second watched root without any config
    no_config = _ts_017(shared_data, other_lab / "TS_017")
    old_time = time.time() - 120
    for p in [*facility.rglob("*"), *other_lab.rglob("*")]:
        os.utime(p, (old_time, old_time))

    out = work / "out"
    proc = cryobus("up", "--services", "ingest,metadata", "--watch", str(facility), "--watch", str(other_lab),
                   "--store", (out / "artifacts").as_uri(), "--state-dir", str(out / "state"),
                   "--exit-when-idle", "--idle-timeout", "240", timeout=400, env={"CRYOBUS_SETTLE_S": "0.2"})
    events = events_in_state_dir(out / "state")
    return {
        "proc": proc, "events": events, "store": out / "artifacts", "good": good, "stack_only": stack_only, "old": old,
        "no_angle": no_angle, "group_b": group_b, "no_config": no_config, "facility": facility,
        "written": [e.data for e in events if e.type == "cryobus.cryoet.written.v1"],
        "failed": [e.data for e in events if e.type == "cryobus.metadata.failed.v1"],
    }


def _path(uri: str) -> Path:
    return Path(urlparse(uri).path)


def test_a_good_tilt_series_lands_in_the_portal_layout(tomo_run):
    written = {w.run_name: w for w in tomo_run["written"]}
    assert sorted(written) == ["017", "045"], tomo_run["proc"].stdout[-3000:]
    w = written["017"]
    assert (w.dataset, w.portal_dataset_id, w.deposition_id) == ("facility", 10001, 10000)
    assert w.source_dir == str(tomo_run["good"]) and w.config == str(tomo_run["facility"] / CONFIG_NAME)
    assert w.voxel_spacings_A == [7.884] and w.missing_config_fields == []
    bucket = tomo_run["store"] / "facility" / "cryoet"
    rel = sorted(_path(u).relative_to(bucket).as_posix() for u in w.artifact_uris)
    assert rel == [
        "10001/017/Reconstructions/VoxelSpacing7.884/Tomograms/100/tomogram_metadata.json",
        "10001/017/TiltSeries/100/017.rawtlt",
        "10001/017/TiltSeries/100/tiltseries_metadata.json",
        "10001/017/run_metadata.json",
        "10001/dataset_metadata.json",
    ]
    assert [_path(u) for u in w.omezarr_uris] == [bucket / "10001/017/Reconstructions/VoxelSpacing7.884/Tomograms/100/017.zarr"]
    assert w.files_written == len([p for p in (bucket / "10001/017").rglob("*") if p.is_file()]) + 1  # + dataset


def test_a_tilt_series_without_tomogram_gets_its_tilt_series_metadata(tomo_run):
    w = {w.run_name: w for w in tomo_run["written"]}["045"]
    assert w.source_dir == str(tomo_run["stack_only"]) and w.voxel_spacings_A == [] and w.omezarr_uris == []
    bucket = tomo_run["store"] / "facility" / "cryoet"
    assert sorted(p.relative_to(bucket / "10001/045").as_posix() for p in (bucket / "10001/045").rglob("*") if p.is_file()) == [
        "TiltSeries/100/045.rawtlt", "TiltSeries/100/tiltseries_metadata.json", "run_metadata.json",
    ]


def test_every_json_validates_against_the_portal_models(tomo_run, shared_data: Path):
    bucket = tomo_run["store"] / "facility" / "cryoet"
    kinds = sorted(type(validate_file(p)).__name__ for p in bucket.rglob("*_metadata.json"))
    assert kinds == ["DatasetMetadata", "RunMetadata", "RunMetadata", "TiltSeriesMetadata", "TiltSeriesMetadata",
                     "TomogramMetadata"]
    ts = json.loads((bucket / "10001/017/TiltSeries/100/tiltseries_metadata.json").read_text())
    # derived from the real 017.mdoc (Voltage in kV, the tilt axis from its title line)
    mdoc = read_mdoc(shared_data / TS_017 / "017.mdoc")
    assert ts["acceleration_voltage"] == mdoc.voltage_kV * 1000 and ts["tilt_axis"] == mdoc.tilt_axis_deg
    assert ts["tilt_range"] == {"min": round(min(mdoc.tilt_angles), 2), "max": round(max(mdoc.tilt_angles), 2)}
    assert [s["raw_angle"] for s in ts["per_section_parameter"]] == mdoc.tilt_angles
    assert ts["size"] == {"x": 16, "y": 16, "z": 60} and ts["pixel_spacing"] == pytest.approx(1.971, abs=1e-3)
    tomo = json.loads((bucket / "10001/017/Reconstructions/VoxelSpacing7.884/Tomograms/100/tomogram_metadata.json").read_text())
    assert tomo["size"] == {"x": 41, "y": 30, "z": 21} and len(tomo["scales"]) == 3
    assert (bucket / tomo["omezarr_dir"] / ".zattrs").is_file()


def test_every_file_is_announced_with_its_bytes(tomo_run):
    stored = stored_by_key(tomo_run["events"])
    bucket = tomo_run["store"] / "facility" / "cryoet"
    files = [p for p in bucket.rglob("*") if p.is_file()]
    assert files
    for p in files:
        key = p.relative_to(tomo_run["store"]).as_posix()
        assert stored.get(key) == {sha256_file(p)}, key
    roles = {e.data.role for e in tomo_run["events"] if e.type == "cryobus.artifact.stored.v1"}
    assert {"cryoet_dataset_metadata", "cryoet_run_metadata", "cryoet_tiltseries_metadata",
            "cryoet_tomogram_metadata", "cryoet_rawtlt", "cryoet_omezarr"} <= roles


def test_each_bad_tilt_series_fails_naming_file_and_field(tomo_run):
    assert len(tomo_run["failed"]) == 4, [(f.file, f.field, f.reason) for f in tomo_run["failed"]]
    by_field = {f.field: f for f in tomo_run["failed"]}
    assert all(f.error_class == "permanent" and f.service == "metadata" for f in tomo_run["failed"])

    angle = by_field["TiltAngle"]  # an mdoc section without its tilt angle
    assert angle.file == str(tomo_run["no_angle"] / "017.mdoc") and "ZValue = 5" in angle.reason

    missing = by_field["config"]  # no cryoet_dataset.yaml anywhere up to the watched root
    assert missing.file == str(tomo_run["no_config"] / CONFIG_NAME) and missing.dataset == "lab_b"

    camera = by_field["tiltseries.camera.model"]  # the nearest config lacks a required field
    assert camera.file == str(tomo_run["group_b"].parent / CONFIG_NAME)

    # the old mdoc: voltage and dose are neither in the files nor in the config; all are named
    derivable = by_field["tiltseries.acceleration_voltage"]
    assert derivable.file == str(tomo_run["facility"] / CONFIG_NAME)
    assert "TS_01" in derivable.reason and "tiltseries.total_flux" in derivable.reason
    assert "tomogram" not in derivable.reason  # TS_01 has no tomogram to describe


def test_failures_set_the_exit_code_and_nothing_partial_is_stored(tomo_run):
    assert tomo_run["proc"].returncode == 1  # --exit-when-idle with failures
    runs = sorted(p.name for p in (tomo_run["store"] / "facility" / "cryoet" / "10001").iterdir() if p.is_dir())
    assert runs == ["017", "045"]  # neither TS_01 nor bad_mdoc/group_b left a half-written run
    assert not (tomo_run["store"] / "lab_b").exists()
