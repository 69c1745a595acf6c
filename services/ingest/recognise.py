"""Recognise what lies under a watched root: exposures and processing-job outputs.

One pass over a folder tree (:func:`scan_tree`) sorts what it meets into:

* **RELION projects**: a folder holding RELION job-type folders (``MotionCorr/``, ``CtfFind/``,
  ``AutoPick/``, ``Extract/``, ``Class2D/``, ``Import/``, ...) with ``jobNNN/`` children.
  One :class:`JobDiscovered` per finished job of a supported type, naming the job's output
  STAR file(s) (RELION 5 pipeliner output names):

  ============  ==========================================================================
  MotionCorr    ``{"star": corrected_micrographs.star}``
  CtfFind       ``{"star": micrographs_ctf.star}`` (the CTFFIND ``.ctf``/``.txt`` outputs
                are reached by consumers through its ``rlnCtfImage`` column)
  AutoPick      ``{"star": autopick.star}``
  Extract       ``{"star": particles.star}``
  Class2D       ``{"data_star", "model_star", "classes_mrcs"}`` of the highest iteration
                ``run_itNNN_*`` whose three files are all present; ``iteration`` = NNN
  ============  ==========================================================================

  Nothing else inside a RELION project is announced: the micrographs, movies and particle
  stacks in it (``MotionCorr/job*/Movies/*.mrc``, ``Extract/job*/Movies/*.mrcs``, raw
  ``Movies/``) are *not* plain exposures; the job events cover them, and announcing them too
  would put every micrograph into the metadata table twice. ``Import`` jobs mark a project
  but are not announced (their movies are read through MotionCorr's STAR file).
* **CryoSPARC job folders** ``J<n>/`` (holding ``job.json`` or ``J<n>_*.cs``): one
  :class:`JobDiscovered` per output group, ``job_type`` ``exposures`` / ``particles`` /
  ``class_averages`` from the file name; ``files["cs"]`` is the highest iteration
  (``J<n>_<iii>_<name>.cs``) or the plain output, ``files["passthrough_cs"]`` the
  ``J<n>_passthrough_<name>.cs`` beside it; class averages also give ``files["mrc"]``.
  A job's ``ctffind_output/`` folder (CryoSPARC's CTFFIND4 job) is announced as CTFFIND outputs
  (below), with the job folder as ``job_dir``.
* **CryoSPARC exports** ``<project>/exports/groups/<group>/<name>_exported.cs``: one
  :class:`JobDiscovered` per file, ``job_type`` ``exposures`` / ``particles`` from the name,
  ``files["cs"]``; ``project_dir`` is ``<project>``. The group folder is not scanned further.
* **CTFFIND outputs**: a folder holding CTFFIND result files (``*.txt`` starting with
  ``# Output from CTFFind``; ``*_avrot.txt`` profiles do not count): one :class:`JobDiscovered`
  (``software`` ``ctffind``, ``job_type`` ``ctffind_outputs``, ``files["dir"]``) once every result
  file is stable. The diagnostic image ``X.mrc`` of a result ``X.txt`` is not an exposure; other
  files of the folder are scanned as usual.
* **NextPYP**: a folder with a ``pkl/`` folder of ``*.pkl`` files, one :class:`JobDiscovered`
  (``job_type`` ``pkl``, ``files["pkl_dir"]``). As for RELION, the rest of that folder is
  NextPYP's own and is not scanned for exposures.
* **Tilt series** (SerialEM / IMOD, see :mod:`tilt_series` for the grouping rules): a folder
  holding a tilt-series ``.mdoc`` (``[ZValue]`` sections) or IMOD ``.rawtlt``/``.tlt`` gives one
  :class:`JobDiscovered` per tilt series (``software`` ``serialem``, ``job_type``
  ``tilt_series``, ``job_dir`` the folder) with the roles present among ``mdoc``, ``rawtlt``,
  ``tlt``, ``xf``, ``tilt_series`` (the stack; ``.st`` before ``.mrcs``, ``.mrc``, ``.ali``),
  ``tomogram_0``, ``tomogram_1``… (by name) and ``config``: the nearest ``cryoet_dataset.yaml``
  in the folder or a parent, up to the root (``project_dir`` is its folder, else the tilt-series
  folder). A volume still being written holds the event back; one that can never be read (not an
  MRC) is refused and left out. The folder's other files are not exposures or CTFFIND outputs
  (tilt movies, per-tilt CTF fits); its sub-folders are scanned as usual.
* **Plain micrograph folders**: every other ``*.mrc``, ``*.tif``, ``*.tiff``, ``*.eer`` becomes
  one :class:`ExposureDiscovered`. Hidden names (``.*``, including ``.snapshot`` folders on
  NetApp NFS) and temporary names (``*.tmp``, ``*~``) are skipped.

Only complete files are announced: every file an event names must pass ``is_stable`` and,
for MRC files, :func:`cryobus.shared.formats.mrc.is_complete`; otherwise it is *pending* and
the event waits for a later scan. Every path is checked against the allowed roots on its
real path, so a symlink leading out of the roots is *refused*, never followed.

Event ids (:func:`discovery_id`) are derived from the dataset, the path and the
(path, size, mtime_ns) of every named file, so a rescan or a restart yields the same id and
only a changed file yields a new one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryobus.services.ingest.roots import AllowedRoots
from cryobus.services.ingest.stability import MRC_SUFFIXES
from cryobus.services.ingest.tilt_series import (
    AMBIGUOUS_SUFFIXES,
    CONFIG_NAME,
    STACK_PRIORITY,
    TOMOGRAM_SUFFIXES,
    VOLUME_SUFFIXES,
    TiltSeriesFiles,
    group_tilt_series,
    series_stem,
)
from cryobus.shared.errors import InputError
from cryobus.shared.events.envelope import content_digest, stable_event_id
from cryobus.shared.events.models import ExposureDiscovered, JobDiscovered, JobSoftware

Discovery = ExposureDiscovered | JobDiscovered

# Every RELION 3/4/5 job-type folder name: any of them marks a project folder.
RELION_JOB_TYPES = frozenset(
    {
        "Import", "MotionCorr", "CtfFind", "ManualPick", "AutoPick", "Extract", "Select",
        "Class2D", "Class3D", "InitialModel", "Refine3D", "MultiBody", "MaskCreate", "JoinStar",
        "Subtract", "PostProcess", "LocalRes", "CtfRefine", "Polish", "External", "DynaMight",
        "ModelAngelo", "ImportTomo", "ExcludeTiltImages", "AlignTiltSeries",
        "ReconstructTomograms", "PseudoSubtomo", "ReconstructParticleTomo", "FrameAlignTomo",
        "CtfRefineTomo", "Denoise", "MaskCreateTomo",
    }
)  # fmt: skip
# The jobs ingest announces, and the single output STAR file each one is read through.
RELION_SINGLE_OUTPUT = {
    "MotionCorr": "corrected_micrographs.star",
    "CtfFind": "micrographs_ctf.star",
    "AutoPick": "autopick.star",
    "Extract": "particles.star",
}
_RELION_JOB_DIR = re.compile(r"^job\d+$")
# run_it025_data.star, and run_ct25_it030_data.star after a "continue".
_CLASS2D_DATA = re.compile(r"^(run(?:_ct\d+)?_it(\d+))_data\.star$")

_CRYOSPARC_JOB_DIR = re.compile(r"^J(\d+)$")
# J12_passthrough_particles.cs, J12_020_class_averages.cs, J3_exposures_accepted.cs
_CRYOSPARC_CS = re.compile(r"^J(\d+)_(?:(\d+)_)?(passthrough_)?([A-Za-z][\w]*)\.cs$")
_EXPORTED_CS_SUFFIX = "_exported.cs"
# CryoSPARC's CTFFIND4 job writes CTFFIND's own outputs into this folder of the job.
CRYOSPARC_CTFFIND_DIR = "ctffind_output"
_CTFFIND_MAGIC = b"# output from ctffind"

# MRC-format files whose completeness is checked: tilt-series stacks and tomograms too.
MRC_LIKE_SUFFIXES = MRC_SUFFIXES | frozenset(VOLUME_SUFFIXES)
# read_header's fields that no amount of waiting can fix (see shared/formats/mrc.py).
_PERMANENT_MRC_FIELDS = frozenset({"map", "mode", "nsymbt"})

EXPOSURE_FORMATS = {".mrc": "mrc", ".tif": "tiff", ".tiff": "tiff", ".eer": "eer"}


@dataclass
class ScanResult:
    """What one scan of a root found.

    Attributes:
        root: the real path that was scanned.
        dataset: the dataset name given to every discovery.
        found: complete inputs, one discovery each, in scan order, without duplicates.
        refused: (path, reason) for paths that cannot be read: outside the allowed roots
            (symlinks included) or unreadable folders.
        pending: files seen but not yet stable/complete; a later scan looks again.
    """

    root: Path
    dataset: str
    found: list[Discovery] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    pending: list[Path] = field(default_factory=list)


def discovery_id(d: Discovery) -> str:
    """The deterministic event id of a discovery (also its ``Nats-Msg-Id``).

    ``stable_event_id(dataset, type, path or job_dir, fingerprint)``: the same on every rescan
    and restart, different as soon as a named file's size or mtime changes.
    """
    if isinstance(d, ExposureDiscovered):
        return stable_event_id(d.dataset, d.event_type(), d.path, content_digest(d.path, d.size_bytes, d.mtime_ns))
    return stable_event_id(d.dataset, d.event_type(), d.job_dir, d.fingerprint)


def fingerprint(files: Iterable[tuple[Path, os.stat_result]]) -> str:
    """Digest of the sorted (path, size, mtime_ns) of ``files`` (12 hex chars)."""
    return content_digest(*sorted(f"{p}|{st.st_size}|{st.st_mtime_ns}" for p, st in files))


def _hidden_or_temp(name: str) -> bool:
    return name.startswith(".") or name.endswith("~") or name.lower().endswith(".tmp")


class _Scan:
    """The state of one scan: where results go, and the checks every file passes."""

    def __init__(self, root: Path, dataset: str, allowed: AllowedRoots, is_stable: Callable[[Path], bool]):
        self.allowed = allowed
        self.is_stable = is_stable
        self.result = ScanResult(root=root, dataset=dataset)
        self._ids: set[str] = set()
        self._headers: dict[Path, object] = {}  # MRC headers read by the completeness check

    # -- recording -------------------------------------------------------------------------
    def emit(self, d: Discovery) -> None:
        did = discovery_id(d)
        if did not in self._ids:  # a file reached twice (e.g. through a symlink inside the roots)
            self._ids.add(did)
            self.result.found.append(d)

    def refuse(self, path: Path, reason: str) -> None:
        self.result.refused.append((path, reason))

    def inside(self, path: Path) -> Path | None:
        """Real path of ``path`` if inside the roots, else record the refusal and return None."""
        if not path.is_symlink():
            return path  # the walk starts from a real root and follows no links
        try:
            return self.allowed.resolve_inside(path)
        except InputError as exc:
            self.refuse(path, exc.reason)
            return None

    def ready(self, path: Path) -> tuple[Path, os.stat_result] | None:
        """(real path, stat) of a file that is inside the roots, stable and complete.

        Returns None, recording the path as refused or pending, otherwise; a missing file
        returns None silently (a job that has not written it yet).
        """
        real = self.inside(path)
        if real is None:
            return None
        try:
            before = os.stat(real)
        except OSError:
            return None
        complete = self._complete(real)
        if complete is None:
            return None  # refused: not an MRC file at all
        if not (complete and self.is_stable(real)):
            self.result.pending.append(real)
            return None
        try:
            after = os.stat(real)
        except OSError:
            return None
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            self.result.pending.append(real)  # changed while we looked
            return None
        return real, after

    def _complete(self, path: Path) -> bool | None:
        """For MRC files: is the header readable and the file as long as the header promises?

        True/False (not yet complete), or None when the header can never become valid (not
        an MRC, unsupported mode): the file is then refused. A header of 1024 bytes is
        written first by every writer, so a defect in it is not a file still being written;
        a short file or a short data block is. The header is kept for the pixel size.
        """
        if path.suffix.lower() not in MRC_LIKE_SUFFIXES:
            return True
        from cryobus.shared.formats.mrc import read_header  # lazy: keeps ingest's import light

        try:
            header = read_header(path)
        except InputError as exc:
            if exc.field in _PERMANENT_MRC_FIELDS:
                self.refuse(path, exc.reason)
                return None
            return False  # short header or short data: still being written
        except OSError:
            return False  # vanished or unreadable for now
        if header.file_bytes < header.expected_bytes:
            return False
        self._headers[path] = header
        return True

    def subdirs(self, folder: Path, pattern: re.Pattern[str]) -> list[Path]:
        """Real, non-hidden sub-folders of ``folder`` whose names match ``pattern``, sorted."""
        out = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            self.refuse(folder, f"unreadable folder: {exc.strerror}")
            return out
        for entry in entries:
            if not pattern.match(entry.name):
                continue
            if entry.is_symlink():
                # RELION aliases are symlinks to job folders that are scanned anyway; a link
                # leading out of the roots is refused.
                self.inside(Path(entry.path))
                continue
            if entry.is_dir():
                out.append(Path(entry.path))
        return out

    # -- RELION ----------------------------------------------------------------------------
    def relion_project(self, project: Path, job_types: Iterable[str]) -> None:
        for job_type in sorted(job_types):
            if job_type in RELION_SINGLE_OUTPUT or job_type == "Class2D":
                for job_dir in self.subdirs(project / job_type, _RELION_JOB_DIR):
                    self.relion_job(project, job_type, job_dir)

    def relion_job(self, project: Path, job_type: str, job_dir: Path) -> None:
        iteration = None
        if job_type == "Class2D":
            picked = self._class2d_iteration(job_dir)
            if picked is None:
                return
            prefix, iteration = picked
            roles = {
                "data_star": job_dir / f"{prefix}_data.star",
                "model_star": job_dir / f"{prefix}_model.star",
                "classes_mrcs": job_dir / f"{prefix}_classes.mrcs",
            }
        elif job_type in RELION_SINGLE_OUTPUT:
            star = job_dir / RELION_SINGLE_OUTPUT[job_type]
            if not star.exists() and not star.is_symlink():
                return  # job still running (or failed): nothing to announce yet
            roles = {"star": star}
        else:
            return
        files = self._all_ready(roles)
        if files is None:
            return
        self.job("relion", job_type, project_dir=project, job_dir=job_dir, files=files, iteration=iteration)

    @staticmethod
    def _class2d_iteration(job_dir: Path) -> tuple[str, int] | None:
        """(file prefix, iteration) of the highest iteration with data, model and classes."""
        candidates = []
        try:
            names = set(os.listdir(job_dir))
        except OSError:
            return None
        for name in names:
            m = _CLASS2D_DATA.match(name)
            if m and {f"{m[1]}_model.star", f"{m[1]}_classes.mrcs"} <= names:
                candidates.append((int(m[2]), m[1]))
        if not candidates:
            return None
        iteration, prefix = max(candidates)
        return prefix, iteration

    def job(
        self,
        software: JobSoftware,
        job_type: str,
        *,
        project_dir: Path,
        job_dir: Path,
        files: dict[str, tuple[Path, os.stat_result] | Path],
        checked: Iterable[tuple[Path, os.stat_result]] = (),
        iteration: int | None = None,
    ) -> None:
        """Announce one job's complete outputs.

        ``files`` maps a role to a checked ``(path, stat)`` (see :meth:`ready`) or to a folder;
        the fingerprint covers every checked file: those in ``files`` plus ``checked`` (e.g. the
        pickles inside a ``pkl_dir``), so a rewritten output announces the job again.
        """
        ready = [v for v in files.values() if isinstance(v, tuple)] + list(checked)
        self.emit(
            JobDiscovered(
                dataset=self.result.dataset,
                software=software,
                job_type=job_type,
                project_dir=str(project_dir),
                job_dir=str(job_dir),
                files={role: str(v[0] if isinstance(v, tuple) else v) for role, v in files.items()},
                iteration=iteration,
                fingerprint=fingerprint(ready),
            )
        )

    def _all_ready(self, roles: dict[str, Path]) -> dict[str, tuple[Path, os.stat_result]] | None:
        """Every role's file ready, or None (each failing file is recorded)."""
        checked = {role: self.ready(path) for role, path in roles.items()}
        if any(v is None for v in checked.values()):
            return None
        return checked  # type: ignore[return-value]

    # -- CryoSPARC -------------------------------------------------------------------------
    def cryosparc_job(self, job_dir: Path, filenames: list[str]) -> None:
        number = _CRYOSPARC_JOB_DIR.match(job_dir.name)[1]  # type: ignore[index]
        # output name -> {"iter": {n: name}, "plain": name, "passthrough": name}
        groups: dict[str, dict] = {}
        for name in filenames:
            m = _CRYOSPARC_CS.match(name)
            if not m or m[1] != number or _hidden_or_temp(name):
                continue
            group = groups.setdefault(m[4], {"iter": {}, "plain": None, "passthrough": None})
            if m[3]:
                group["passthrough"] = name
            elif m[2] is not None:
                group["iter"][int(m[2])] = name
            else:
                group["plain"] = name
        present = set(filenames)
        for output, group in sorted(groups.items()):
            job_type = _cryosparc_job_type(output)
            if job_type is None:
                continue
            iteration = None
            if job_type == "class_averages":
                # the highest iteration whose .cs and .mrc are both there
                usable = [i for i, n in group["iter"].items() if n[:-3] + ".mrc" in present]
                if usable:
                    iteration = max(usable)
                    primary = group["iter"][iteration]
                elif group["plain"] and group["plain"][:-3] + ".mrc" in present:
                    primary = group["plain"]
                else:
                    continue
                roles = {"cs": job_dir / primary, "mrc": job_dir / (primary[:-3] + ".mrc")}
            else:
                if group["iter"]:
                    iteration = max(group["iter"])
                    primary = group["iter"][iteration]
                else:
                    primary = group["plain"] or group["passthrough"]
                roles = {"cs": job_dir / primary}
                if group["passthrough"] and group["passthrough"] != primary:
                    roles["passthrough_cs"] = job_dir / group["passthrough"]
            files = self._all_ready(roles)
            if files is None:
                continue
            self.job("cryosparc", job_type, project_dir=job_dir.parent, job_dir=job_dir, files=files, iteration=iteration)
        ctffind_dir = job_dir / CRYOSPARC_CTFFIND_DIR
        if ctffind_dir.is_dir() and not ctffind_dir.is_symlink():
            try:
                names = sorted(os.listdir(ctffind_dir))
            except OSError as exc:
                self.refuse(ctffind_dir, f"unreadable folder: {exc.strerror}")
                return
            self.ctffind_outputs(ctffind_dir, names, project_dir=job_dir.parent, job_dir=job_dir)

    def cryosparc_export(self, group_dir: Path, names: list[str]) -> None:
        """``exports/groups/<group>/<name>_exported.cs``: exposures and particles groups."""
        for name in names:
            job_type = _cryosparc_job_type(name[: -len(_EXPORTED_CS_SUFFIX)])
            if job_type not in ("exposures", "particles"):
                continue
            ready = self.ready(group_dir / name)
            if ready is None:
                continue
            self.job("cryosparc", job_type, project_dir=group_dir.parent.parent.parent, job_dir=group_dir,
                     files={"cs": ready})

    # -- CTFFIND ---------------------------------------------------------------------------
    def ctffind_outputs(self, folder: Path, filenames: Iterable[str], *, project_dir: Path, job_dir: Path) -> set[str]:
        """Announce ``folder``'s CTFFIND result files, once all are stable.

        Returns:
            The stems of the result files (their diagnostic images are not exposures).
        """
        results = [folder / n for n in filenames if _is_ctffind_result(folder / n)]
        if not results:
            return set()
        ready = [self.ready(p) for p in results]
        if all(r is not None for r in ready):
            self.job("ctffind", "ctffind_outputs", project_dir=project_dir, job_dir=job_dir, files={"dir": folder},
                     checked=[r for r in ready if r is not None])
        return {p.stem for p in results}

    # -- NextPYP ---------------------------------------------------------------------------
    def nextpyp(self, folder: Path) -> None:
        pkl_dir = folder / "pkl"
        names = sorted(n for n in os.listdir(pkl_dir) if n.endswith(".pkl") and not _hidden_or_temp(n))
        files = [self.ready(pkl_dir / n) for n in names]
        if not files or any(f is None for f in files):
            return  # wait until every pickle is written
        self.job("nextpyp", "pkl", project_dir=folder, job_dir=folder, files={"pkl_dir": pkl_dir},
                 checked=[f for f in files if f is not None])

    # -- tilt series (SerialEM / IMOD) ------------------------------------------------------
    def tilt_series(self, folder: Path, groups: list[TiltSeriesFiles]) -> None:
        config = self._dataset_config(folder)
        for group in groups:
            self._one_tilt_series(folder, group, config)

    def _dataset_config(self, folder: Path) -> Path | None:
        """The nearest ``cryoet_dataset.yaml`` in ``folder`` or a parent, up to (and in) its root."""
        try:
            root = self.allowed.root_of(folder)
        except InputError:
            return None
        for candidate in (folder, *folder.parents):
            path = candidate / CONFIG_NAME
            if path.is_file():
                return path
            if candidate == root or not candidate.is_relative_to(root):
                return None
        return None

    def _one_tilt_series(self, folder: Path, group: TiltSeriesFiles, config: Path | None) -> None:
        """Announce one tilt series once all its files are ready; volumes become stack or tomograms."""
        named = {"mdoc": group.mdoc, "rawtlt": group.rawtlt, "tlt": group.tlt, "xf": group.xf, "config": config}
        files = self._all_ready({role: p for role, p in named.items() if p is not None})
        if files is None:
            return
        stacks, tomograms = [], []
        for path in sorted(group.volumes):
            waiting = len(self.result.pending)
            ready = self.ready(path)
            if ready is None:
                if len(self.result.pending) > waiting:
                    return  # still being written: announce the whole tilt series later
                continue  # refused (not an MRC) or vanished: not part of it
            suffix = path.suffix.lower()
            header = self._headers.pop(ready[0], None)
            if suffix in TOMOGRAM_SUFFIXES or (
                suffix in AMBIGUOUS_SUFFIXES and (header is None or header.nz != group.n_angles)  # type: ignore[attr-defined]
            ):
                tomograms.append(ready)
            else:
                rank = (STACK_PRIORITY[suffix], series_stem(path.name) != group.stem, path.name)
                stacks.append((rank, ready))
        if stacks:
            files["tilt_series"] = min(stacks, key=lambda s: s[0])[1]
        for i, ready in enumerate(tomograms):
            files[f"tomogram_{i}"] = ready
        self.job("serialem", "tilt_series", project_dir=config.parent if config else folder, job_dir=folder, files=files)

    # -- plain exposures -------------------------------------------------------------------
    def exposure(self, path: Path) -> None:
        fmt = EXPOSURE_FORMATS.get(path.suffix.lower())
        if fmt is None or _hidden_or_temp(path.name):
            return
        ready = self.ready(path)
        if ready is None:
            return
        real, st = ready
        pixel_size = None
        header = self._headers.pop(real, None)
        if header is not None:
            size = header.voxel_size_A  # type: ignore[attr-defined]
            pixel_size = float(size) if size is not None and size > 0 else None
        self.emit(
            ExposureDiscovered(
                dataset=self.result.dataset,
                path=str(real),
                micrograph_name=real.stem,
                file_format=fmt,  # type: ignore[arg-type]
                size_bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
                pixel_size_A=pixel_size,
            )
        )


def _cryosparc_job_type(output: str) -> str | None:
    if "class_averages" in output:
        return "class_averages"
    if "particles" in output:
        return "particles"
    if "exposures" in output or "micrographs" in output:
        return "exposures"
    return None


def _relion_project_types(folder: Path, dirnames: Iterable[str]) -> list[str]:
    """The RELION job-type folders of ``folder`` that hold at least one ``jobNNN/``."""
    found = []
    for name in dirnames:
        if name not in RELION_JOB_TYPES:
            continue
        try:
            if any(_RELION_JOB_DIR.match(e.name) and e.is_dir() for e in os.scandir(folder / name)):
                found.append(name)
        except OSError:
            continue
    return found


def _is_cryosparc_job(folder: Path, filenames: Iterable[str]) -> bool:
    m = _CRYOSPARC_JOB_DIR.match(folder.name)
    if not m:
        return False
    prefix = f"J{m[1]}_"
    return any(n == "job.json" or (n.startswith(prefix) and n.endswith(".cs")) for n in filenames)


def _is_ctffind_result(path: Path) -> bool:
    """A CTFFIND result summary: ``*.txt`` (not ``*_avrot.txt``) whose first line is CTFFIND's banner."""
    name = path.name.lower()
    if not name.endswith(".txt") or name.endswith("_avrot.txt") or _hidden_or_temp(path.name):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(_CTFFIND_MAGIC)).lower() == _CTFFIND_MAGIC
    except OSError:
        return False


def _is_cryosparc_export_group(folder: Path) -> bool:
    return folder.parent.name == "groups" and folder.parent.parent.name == "exports"


def _has_pkl(folder: Path) -> bool:
    try:
        return any(n.endswith(".pkl") and not _hidden_or_temp(n) for n in os.listdir(folder))
    except OSError:
        return False


def scan_tree(
    root: str | os.PathLike[str],
    *,
    dataset: str,
    allowed: AllowedRoots,
    is_stable: Callable[[Path], bool],
) -> ScanResult:
    """Walk ``root`` once and return every complete exposure and job output under it.

    ``root`` may also be a single RELION job folder (``<project>/Class2D/job010``), a
    job-type folder (``<project>/Extract``) or one exposure file, for ``cryobus ingest PATH``.
    Symlinked folders are never descended into (their targets, when inside the roots, are
    scanned as part of their own root); a symlink leading outside is refused.

    Args:
        root: folder (or file) to scan; must lie inside ``allowed``.
        dataset: dataset name for every discovery (see :func:`roots.dataset_name`).
        allowed: the configured roots.
        is_stable: ``path -> bool``, True when a file has finished being written (see
            :class:`stability.StabilityTracker`); MRC completeness is checked here too.

    Returns:
        A :class:`ScanResult`; unreadable folders and escaping symlinks are in ``refused``.

    Raises:
        InputError: ``root`` itself is outside the allowed roots, or does not exist.
    """
    real_root = allowed.resolve_inside(root)
    if not real_root.exists():
        raise InputError("no such file or folder", file=os.fspath(root))
    scan = _Scan(real_root, dataset, allowed, is_stable)

    if real_root.is_file():
        scan.exposure(real_root)
        return scan.result
    # `cryobus ingest <project>/<JobType>[/jobNNN]`: scan just those jobs.
    if real_root.name in RELION_JOB_TYPES and _relion_project_types(real_root.parent, [real_root.name]):
        scan.relion_project(real_root.parent, [real_root.name])
        return scan.result
    if _RELION_JOB_DIR.match(real_root.name) and real_root.parent.name in RELION_JOB_TYPES:
        scan.relion_job(real_root.parent.parent, real_root.parent.name, real_root)
        return scan.result

    def unreadable(err: OSError) -> None:
        scan.refuse(Path(err.filename or real_root), f"unreadable folder: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(real_root, onerror=unreadable, followlinks=False):
        folder = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            sub = folder / name
            if name.startswith("."):
                continue
            if sub.is_symlink():
                scan.inside(sub)  # refuse links that lead out; links inside are scanned via their target
                continue
            keep.append(name)
        dirnames[:] = keep
        filenames.sort()

        relion_types = _relion_project_types(folder, dirnames)
        if relion_types:
            scan.relion_project(folder, relion_types)
            dirnames[:] = []
            continue
        if _is_cryosparc_job(folder, filenames):
            scan.cryosparc_job(folder, filenames)
            dirnames[:] = []
            continue
        if _is_cryosparc_export_group(folder):
            exported = [n for n in filenames if n.endswith(_EXPORTED_CS_SUFFIX) and not _hidden_or_temp(n)]
            if exported:
                scan.cryosparc_export(folder, exported)
                dirnames[:] = []
                continue
        if "pkl" in dirnames and _has_pkl(folder / "pkl"):
            scan.nextpyp(folder)
            dirnames[:] = []
            continue
        tilt_series = group_tilt_series(folder, [n for n in filenames if not _hidden_or_temp(n)])
        if tilt_series:
            scan.tilt_series(folder, tilt_series)
            continue  # its files are the tilt series'; sub-folders are scanned as usual
        diagnostics = scan.ctffind_outputs(folder, filenames, project_dir=folder, job_dir=folder)
        for name in filenames:
            if Path(name).stem in diagnostics:
                continue  # CTFFIND's diagnostic image of a result in this folder, not an exposure
            scan.exposure(folder / name)
    return scan.result
