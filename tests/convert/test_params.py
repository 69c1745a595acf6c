"""CryoLike params files: the golden ones read back exactly, ours are written in CryoLike's layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from cryobus.services.convert.params import (
    DESCRIPTOR_KEYS,
    ImageDescriptor,
    load_npz_safely,
    params_bytes,
    read_params,
    write_params,
)
from cryobus.shared.errors import InputError

# The exact calls of the reference README ("Params files").
CALLS = {
    "a_cs_single/params_empiar_single.npz": dict(n_pixels=320, pixel_size=1.3099979, precision="single", n_inplanes=128),
    "a_cs_double/params_empiar_double.npz": dict(n_pixels=320, pixel_size=1.3099979, precision="double", n_inplanes=128),
    "c1_star_single/params_sppractice_single.npz": dict(
        n_pixels=64, pixel_size=3.54, precision="single", resolution_factor=0.5, n_inplanes=32
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_reference_params_read_and_rebuild(reference: Path, tmp_path: Path, name: str):
    desc = read_params(reference / name)
    assert desc == ImageDescriptor.from_values(**CALLS[name])
    written = write_params(desc, tmp_path / "p.npz")
    ours, theirs = np.load(written, allow_pickle=True), np.load(reference / name, allow_pickle=True)
    assert ours.files == theirs.files == list(DESCRIPTOR_KEYS)
    for key in DESCRIPTOR_KEYS:
        assert (ours[key].dtype, ours[key].shape) == (theirs[key].dtype, theirs[key].shape), key
        if ours[key].ndim == 0:
            assert ours[key].item() == theirs[key].item(), key
        else:
            assert np.array_equal(ours[key], theirs[key]), key
    assert read_params(params_bytes(desc)) == desc


def test_derived_values_follow_cryolike():
    desc = ImageDescriptor.from_values(128, 1.0)
    assert desc.radius_max == 32.0 and desc.n_inplanes == 256 and desc.dist_radii == 0.25
    assert desc.viewing_distance == pytest.approx(1 / (4 * np.pi))
    assert desc.box_size_A == (128.0, 128.0)


def test_bad_params_are_refused(tmp_path: Path, reference: Path):
    raw = dict(np.load(reference / "a_cs_single/params_empiar_single.npz", allow_pickle=True))
    del raw["n_inplanes"]
    path = tmp_path / "missing.npz"
    np.savez(path, **raw)
    with pytest.raises(InputError) as err:
        read_params(path)
    assert (err.value.field, err.value.file) == ("n_inplanes", str(path))

    raw = dict(np.load(reference / "a_cs_single/params_empiar_single.npz", allow_pickle=True))
    raw["pixel_size"] = np.array([-1.0, -1.0])
    np.savez(tmp_path / "neg.npz", **raw)
    with pytest.raises(InputError) as err:
        read_params(tmp_path / "neg.npz")
    assert err.value.field == "pixel_size"

    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(InputError):
        read_params(tmp_path / "text.npz")
    with pytest.raises(InputError) as err:
        write_params(ImageDescriptor.from_values(64, 1.0), reference / "a_cs_single/params_empiar_single.npz")
    assert err.value.field == "overwrite"


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_in_an_npz_is_never_run(tmp_path: Path, capsys):
    path = tmp_path / "evil.npz"
    with open(path, "wb") as fh:
        np.savez(fh, n_pixels=np.array([64, 64]), atom_radii=np.array(_Payload(), dtype=object))
    with pytest.raises(InputError) as err:
        load_npz_safely(path)
    assert err.value.field == "atom_radii"
    assert "pwned" not in capsys.readouterr().out
    # Plain None/str object arrays (what CryoLike writes) load.
    buf = io.BytesIO()
    np.savez(buf, a=np.array(None, dtype=object), b=np.array(["x", 1.5, None], dtype=object))
    loaded = load_npz_safely(buf.getvalue())
    assert loaded["a"].item() is None and loaded["b"].tolist() == ["x", 1.5, None]
