"""Ingest reads only below its configured roots, whatever path or symlink it is handed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryobus.services.ingest.recognise import scan_tree
from cryobus.services.ingest.roots import AllowedRoots, dataset_name
from cryobus.shared.errors import InputError


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "facility" / "session_01"
    outside = tmp_path / "secrets"
    root.mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd.mrc").write_bytes(b"not yours")
    (root / "a.mrc").write_bytes(b"x")
    return root, outside


def test_a_path_inside_resolves_to_its_real_path(layout):
    root, _ = layout
    allowed = AllowedRoots([root])
    assert allowed.resolve_inside(root / "sub" / ".." / "a.mrc") == root / "a.mrc"
    assert allowed.resolve_inside(root) == root
    assert allowed.root_of(root / "a.mrc") == root
    # a file that does not exist yet still resolves (it cannot escape)
    assert allowed.resolve_inside(root / "later.mrc") == root / "later.mrc"


def test_dotdot_escape_is_refused(layout):
    root, outside = layout
    allowed = AllowedRoots([root])
    escape = root / ".." / ".." / "secrets" / "passwd.mrc"
    with pytest.raises(InputError) as err:
        allowed.resolve_inside(escape)
    assert "outside the allowed roots" in err.value.reason
    assert err.value.file == str(escape)
    assert str(outside / "passwd.mrc") in err.value.reason


def test_absolute_path_elsewhere_is_refused(layout):
    root, outside = layout
    with pytest.raises(InputError, match="outside the allowed roots"):
        AllowedRoots([root]).resolve_inside(outside / "passwd.mrc")


def test_sibling_with_common_prefix_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data2").mkdir()
    with pytest.raises(InputError):
        AllowedRoots([tmp_path / "data"]).resolve_inside(tmp_path / "data2" / "x.mrc")


def test_nul_byte_is_refused(layout):
    root, _ = layout
    with pytest.raises(InputError, match="NUL"):
        AllowedRoots([root]).resolve_inside(f"{root}/a.mrc\x00/../../etc/passwd")


def test_symlink_pointing_outside_is_refused(layout):
    root, outside = layout
    link = root / "innocent.mrc"
    link.symlink_to(outside / "passwd.mrc")
    allowed = AllowedRoots([root])
    with pytest.raises(InputError) as err:
        allowed.resolve_inside(link)
    assert err.value.file == str(link)
    assert str(outside / "passwd.mrc") in err.value.reason
    assert link not in allowed


def test_scan_refuses_symlinks_leading_out_and_names_them(layout):
    root, outside = layout
    (root / "innocent.mrc").symlink_to(outside / "passwd.mrc")
    (root / "more_data").symlink_to(outside, target_is_directory=True)
    result = scan_tree(root, dataset="s", allowed=AllowedRoots([root]), is_stable=lambda p: True)
    refused = dict(result.refused)
    assert set(refused) == {root / "innocent.mrc", root / "more_data"}
    assert "outside the allowed roots" in refused[root / "innocent.mrc"]
    assert str(outside / "passwd.mrc") in refused[root / "innocent.mrc"]
    assert str(outside) in refused[root / "more_data"]
    found_paths = {d.path for d in result.found}
    assert not any(str(outside) in p for p in found_paths)


def test_scan_of_a_root_outside_is_refused(layout):
    root, outside = layout
    with pytest.raises(InputError, match="outside the allowed roots"):
        scan_tree(outside, dataset="s", allowed=AllowedRoots([root]), is_stable=lambda p: True)


def test_a_root_that_is_a_symlink_is_honoured(layout, tmp_path):
    root, _ = layout
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    allowed = AllowedRoots([alias])
    assert allowed.resolve_inside(alias / "a.mrc") == root / "a.mrc"
    assert allowed.root_of(root / "a.mrc") == root


def test_root_of_picks_the_innermost_root(tmp_path):
    inner = tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    allowed = AllowedRoots([tmp_path / "outer", inner])
    assert allowed.root_of(inner / "x.mrc") == inner
    assert allowed.root_of(tmp_path / "outer" / "y.mrc") == tmp_path / "outer"


def test_no_roots_is_an_error():
    with pytest.raises(InputError):
        AllowedRoots([])


def test_dataset_name_is_the_folder_name_sanitised():
    assert dataset_name(Path("/data/2024-05-01_apoferritin")) == "2024-05-01_apoferritin"
    assert dataset_name(Path("/data/grid 3 (good)/")) == "grid_3_good_"
    assert dataset_name(Path("/data/x"), "beta gal/../v2") == "beta_gal_.._v2"
    assert dataset_name(Path("/data/.hidden")) == "hidden"
    assert os.sep not in dataset_name(Path("/data/x"), "a/b")


def test_dataset_name_without_anything_usable_is_an_error():
    with pytest.raises(InputError, match="dataset name"):
        dataset_name(Path("/"))
    with pytest.raises(InputError):
        dataset_name(Path("/data/x"), "..")
