"""IncrementalTable: after every upsert the table, CSV and pixel size equal a full merge_partials
of the same partials (synthetic partials from three sources, overlapping names, NaN holes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryobus.services.metadata.incremental import IncrementalTable
from cryobus.services.metadata.prismpyp_layout import table_csv_bytes, table_parquet_bytes
from cryobus.services.metadata.table import (
    CRYOSPARC_EXPOSURES,
    NEXTPYP_PKL,
    RELION_CTF,
    RELION_PARTICLES,
    Partial,
    merge_partials,
)
from cryobus.shared.errors import InputError


def ctf_like(names, rng, *, source_tag, holes=0.2):
    n = len(names)
    du = rng.uniform(8000, 30000, n)
    frame = pd.DataFrame({
        "micrograph_name": pd.Series(names, dtype=object),
        "ctf_fit": rng.uniform(0, 0.3, n), "est_resolution": rng.uniform(2.5, 9, n),
        "mean_defocus": du - 100, "defocus_u_A": du, "defocus_v_A": du - 200,
        "defocus_angle_deg": rng.uniform(-90, 90, n),
        "ctf_fit_source": pd.Series([source_tag] * n, dtype=object),
        "pixel_size_A": np.full(n, 0.885),
    })
    gone = rng.random(n) < holes
    frame.loc[gone, ["ctf_fit", "mean_defocus"]] = np.nan
    frame.loc[gone, "ctf_fit_source"] = None
    return frame


def nextpyp_like(names, rng):
    frame = ctf_like(names, rng, source_tag="ctffind_cross_correlation")
    frame["avg_motion"] = rng.uniform(0.3, 3, len(names))
    frame["motion_source"] = pd.Series(["nextpyp_drift"] * len(names), dtype=object)
    frame["rel_ice_thickness"] = np.nan
    return frame


def partials(rng):
    a = [f"mic_{i:03d}" for i in range(0, 60)]
    b = [f"mic_{i:03d}" for i in range(20, 80)]
    c = [f"mic_{i:03d}" for i in range(10, 90, 2)]
    counts = pd.DataFrame({"micrograph_name": pd.Series(a[::3], dtype=object),
                           "num_particles": rng.integers(0, 200, len(a[::3]))})
    cs = ctf_like(b, rng, source_tag="gctf_figure_of_merit")
    cs["rel_ice_thickness"] = rng.uniform(1, 1.2, len(b))
    return [Partial(RELION_CTF, ctf_like(a, rng, source_tag="relion_figure_of_merit"), "ctf.star", 0.885),
            Partial(RELION_PARTICLES, counts, "particles.star"),
            Partial(CRYOSPARC_EXPOSURES, cs, "J12.cs", None),
            Partial(NEXTPYP_PKL, nextpyp_like(c, rng), "pkl", 1.06)]


def assert_same_as_full_merge(table: IncrementalTable) -> None:
    full = merge_partials(table.partials())
    pd.testing.assert_frame_equal(table.table(), full.table)
    assert table.csv_bytes() == table_csv_bytes(full.table)
    assert table.pixel_size_A == full.pixel_size_A
    assert table.parquet_bytes() == table_parquet_bytes(full.table)


def test_upserts_keep_the_table_equal_to_a_full_merge():
    rng = np.random.default_rng(3)
    table = IncrementalTable(partials(rng))
    assert_same_as_full_merge(table)
    sources = [RELION_CTF, CRYOSPARC_EXPOSURES, NEXTPYP_PKL, RELION_PARTICLES]
    for step in range(40):
        source = sources[step % 4]
        # known names, brand-new names (sorting before, between and after the others), NaN holes
        known = f"mic_{rng.integers(0, 95):03d}"
        names = list(dict.fromkeys([known, f"aaa_{step}", f"zzz_{step}", f"mic_{step:03d}x"]))
        names = names[: 1 + step % 4]
        if source == RELION_PARTICLES:
            rows = pd.DataFrame({"micrograph_name": pd.Series(names, dtype=object),
                                 "num_particles": rng.integers(0, 200, len(names))})
        elif source == NEXTPYP_PKL:
            rows = nextpyp_like(names, rng)
        else:
            rows = ctf_like(names, rng, source_tag="x", holes=0.5)
            if source == CRYOSPARC_EXPOSURES:
                rows["rel_ice_thickness"] = rng.uniform(1, 1.2, len(names))
        changed = table.upsert(source, rows, pixel_size_A=0.9 if step == 17 and source == NEXTPYP_PKL else None)
        assert changed == sorted(names)
        assert_same_as_full_merge(table)


def test_a_new_column_rebuilds_every_row():
    rng = np.random.default_rng(5)
    only_ctf = [Partial(RELION_CTF, ctf_like(["a", "b", "c"], rng, source_tag="t"), "ctf.star", 0.885),
                Partial(NEXTPYP_PKL, nextpyp_like(["b"], rng), "pkl", None)]
    table = IncrementalTable(only_ctf)
    assert table.table()["num_particles"].isna().all()  # no source counts particles: unknown
    table.upsert(NEXTPYP_PKL, pd.DataFrame({"micrograph_name": ["b"], "num_particles": [12]}))
    assert table.table()["num_particles"].tolist() == [0, 12, 0]  # merge_partials' rule, for every row
    assert_same_as_full_merge(table)


def test_errors():
    rng = np.random.default_rng(9)
    table = IncrementalTable(partials(rng))
    with pytest.raises(ValueError):
        table.upsert("no.such.source", pd.DataFrame({"micrograph_name": ["x"]}))
    with pytest.raises(InputError) as e:
        table.upsert(RELION_CTF, pd.DataFrame({"micrograph_name": ["x", "x"], "ctf_fit": [0.1, 0.2]}))
    assert e.value.field == "micrograph_name"
    assert_same_as_full_merge(table)
