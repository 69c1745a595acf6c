"""Hostile paths (``..``, symlinks out of the roots, loops, NUL bytes, unencodable names) and hostile
folder trees: ingest's root check and its recogniser refuse what leads out, name it, never crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryobus.services.ingest.recognise import scan_tree
from cryobus.services.ingest.roots import AllowedRoots, dataset_name
from cryobus.shared.events.models import ExposureDiscovered

from .corrupt import corpus_settings, fresh_dir, mrc_header, outcome

COMPONENTS = ["..", ".", "", "a", "b", "out_link", "in_link", "loop", "dangling", "x.mrc", "secret.mrc", "outside",
              "\x00", "a\x00b", "\udc80", "\ud800", "é", "a" * 300, "~", "$HOME", "*"]  # fmt: skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, Path]:
    """Two roots, a folder outside them, and symlinks in root ``a``: out, across, to itself, to nothing."""
    base = tmp_path_factory.mktemp("paths")
    a, b, outside = base / "roots" / "a", base / "roots" / "b", base / "outside"
    for folder in (a, b, outside):
        folder.mkdir(parents=True)
    (outside / "secret.mrc").write_bytes(b"secret")
    (a / "x.mrc").write_bytes(b"x")
    (a / "out_link").symlink_to(outside)
    (a / "in_link").symlink_to(b)
    (a / "loop").symlink_to(a / "loop")
    (a / "dangling").symlink_to(base / "nowhere")
    return {"base": base, "a": a, "b": b, "outside": outside}


@corpus_settings(100)
@given(
    start=st.sampled_from(["a", "b", "outside", "base", "/", "relative"]),
    parts=st.lists(st.sampled_from(COMPONENTS), max_size=7),
)
def test_paths_resolve_inside_a_root_or_are_refused_by_name(layout, start, parts):
    allowed = AllowedRoots([layout["a"], layout["b"]])
    head = "" if start == "relative" else ("/" if start == "/" else str(layout[start]))
    path = (head.rstrip("/") + "/" if head else "") + "/".join(parts)
    real, error = outcome(allowed.resolve_inside, path, files=[path, repr(path)], limit=None)
    if error is None:
        assert any(real == r or real.is_relative_to(r) for r in allowed.roots), (path, real)
        assert real == Path(os.path.realpath(path))
        assert path in allowed
    else:
        assert path not in allowed
        if "\x00" not in path:
            assert "outside the allowed roots" in error.reason or "encod" in error.reason, error


def test_symlinks_out_of_the_roots_and_dot_dot_escapes_are_refused(layout):
    allowed = AllowedRoots([layout["a"]])
    escapes = [layout["a"] / "out_link" / "secret.mrc", layout["a"] / ".." / "b", f"{layout['a']}/../../outside/secret.mrc",
               layout["a"] / "in_link", "/etc/passwd", f"{layout['a']}\x00/x.mrc"]  # fmt: skip
    for path in escapes:
        _, error = outcome(allowed.resolve_inside, path, files=[str(path), repr(str(path))], limit=None)
        assert error is not None, path


# ------------------------------------------------------------------------------------ trees

# Names that each recogniser reacts to, so generated trees reach every branch of scan_tree.
TREE_FILES = [
    "mic_0001.mrc", "mic_0002.tif", "mic_0003.eer", ".hidden.mrc", "partial.mrc.tmp",
    "J1/job.json", "J1/J1_particles.cs", "J1/J1_passthrough_particles.cs", "J1/J1_020_class_averages.cs",
    "J1/J1_020_class_averages.mrc", "J1/ctffind_output/mic_0001.txt", "exports/groups/g1/g1_particles_exported.cs",
    "MotionCorr/job002/corrected_micrographs.star", "CtfFind/job003/micrographs_ctf.star",
    "Class2D/job004/run_it025_data.star", "Class2D/job004/run_it025_model.star", "Class2D/job004/run_it025_classes.mrcs",
    "nextpyp/pkl/mic_0001.pkl", "ctf/mic_0001.txt", "ctf/mic_0001.mrc", "ts/TS_01.mdoc", "ts/TS_01.st",
    "ts/TS_01.rawtlt", "ts/TS_01_rec.mrc", "ts/cryoet_dataset.yaml",
]  # fmt: skip
CONTENTS = {
    "empty": b"",
    "garbage": bytes(range(256)) * 2,
    "mrc": mrc_header(nx=4, ny=4, nz=1, mode=2) + b"\0" * 64,
    "truncated mrc": mrc_header(nx=400, ny=400, nz=1, mode=2) + b"\0" * 64,
    "bad mode mrc": mrc_header(nx=4, ny=4, nz=1, mode=77) + b"\0" * 64,
    "ctffind": b"# Output from CTFFind version 4.1.14\n# Columns: #1 - micrograph number;\n1 garbage\n",
    "mdoc": b"PixelSpacing = x\n[ZValue = 0]\nTiltAngle = a\n[ZValue = 1]\nTiltAngle = 1e999\n[MontSection = 0]\n",
    "yaml": b"dataset: [unclosed\n\0",
    "json": b"{\"type\": ",
}
LINKS = ["outside_dir", "outside_file", "inside_dir", "loop", "dangling", "root_itself", "parent"]


@st.composite
def trees(draw) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    files = draw(st.lists(st.tuples(st.sampled_from(TREE_FILES), st.sampled_from(sorted(CONTENTS))),
                          max_size=12, unique_by=lambda t: t[0]))  # fmt: skip
    folders = sorted({str(Path(f).parent) for f, _ in files} | {"."})
    links = draw(st.lists(st.tuples(st.sampled_from(folders), st.sampled_from(LINKS)), max_size=4))
    return files, links


@corpus_settings(60)
@given(tree=trees())
def test_scan_of_hostile_trees_names_only_paths_inside_the_root(tmp_path, tree):
    base = fresh_dir(tmp_path)
    root, outside = base / "facility", base / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "stolen.mrc").write_bytes(CONTENTS["mrc"])
    files, links = tree
    for rel, content in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(CONTENTS[content])
    targets = {"outside_dir": outside, "outside_file": outside / "stolen.mrc", "inside_dir": root / "J1",
               "root_itself": root, "parent": base, "dangling": base / "nowhere"}  # fmt: skip
    for i, (folder, kind) in enumerate(links):
        link = root / folder / f"link{i}{'.mrc' if kind == 'outside_file' else ''}"
        link.symlink_to(link if kind == "loop" else targets[kind])
    for path in [*root.rglob("*"), root]:
        os.utime(path, (1e9, 1e9), follow_symlinks=False)

    allowed = AllowedRoots([root])
    result, error = outcome(scan_tree, root, dataset=dataset_name(root), allowed=allowed,
                            is_stable=lambda p: True, files=root, limit=None)  # fmt: skip
    assert error is None, error
    real_root = root.resolve()
    for d in result.found:
        named = [d.path] if isinstance(d, ExposureDiscovered) else [d.job_dir, d.project_dir, *d.files.values()]
        for p in named:
            assert Path(os.path.realpath(p)).is_relative_to(real_root), (p, d)
    for path, reason in result.refused:
        assert reason and Path(path).is_relative_to(real_root), (path, reason)
    for i, (folder, kind) in enumerate(links):
        if kind in ("outside_dir", "parent") and folder == ".":
            assert any(Path(p).name == f"link{i}" for p, _ in result.refused), result.refused


def test_dataset_names_from_hostile_folder_names():
    for raw in ["..", ".", "/", "a/../b", "é\x00", "\ud800x", " ", "-_-", "a" * 500, "$(rm -rf ~)"]:
        name, error = outcome(dataset_name, Path("/data") / raw if raw not in ("/",) else Path(raw), files=["/", "/data"],
                              limit=None)  # fmt: skip
        if error is None:
            assert name and not name.startswith(".") and set(name) <= set(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def test_unencodable_path_is_refused_not_crashed(layout):
    allowed = AllowedRoots([layout["a"]])
    for path in [f"{layout['a']}/\ud800.mrc", f"{layout['a']}/x\x00y.mrc", f"{layout['a']}/\udfff/../x.mrc"]:
        _, error = outcome(allowed.resolve_inside, path, files=[path, repr(path)], limit=None)
        assert error is not None
