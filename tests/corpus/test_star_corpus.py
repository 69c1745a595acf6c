"""STAR files with missing, duplicated or garbage columns, ragged rows and broken blocks: the STAR
reader, the RELION metadata tables and the pick readers refuse them by file and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryobus.services.metadata import relion_table
from cryobus.services.render import picks
from cryobus.shared.formats.star import micrograph_block, particle_block, read_star, require_columns

from .corrupt import MEM_LIMIT, corpus_settings, fresh_dir, outcome

RELION_COLUMNS = [
    "rlnMicrographName", "rlnOpticsGroup", "rlnOpticsGroupName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
    "rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnCtfImage", "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
    "rlnDetectorPixelSize", "rlnMagnification", "rlnMicrographMetadata", "rlnAccumMotionTotal", "rlnImageName",
    "rlnCoordinateX", "rlnCoordinateY", "rlnImageSize", "rlnImagePixelSize", "rlnMicrographCoordinates",
    "rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY", "rlnMicrographBinning",
]  # fmt: skip
GARBAGE_COLUMNS = ["rlnFoo", "rln", "x", "rlnDefocusU rlnDefocusV", "rlnΔ", "1"]
BLOCKS = ["optics", "micrographs", "particles", "", "images", "coordinate_files", "general", "global_shift", "Ü"]
NAMES = [
    "MotionCorr/job002/Movies/m1.mrc", "MotionCorr/job002/Movies/m1.star", "CtfFind/job003/Movies/m1.ctf:mrc",
    "000001@Extract/job004/Movies/m1.mrcs", "m1.mrc", "1", "../../../etc/passwd", "/m1.mrc",
]  # fmt: skip
GARBAGE = ["", '"', "'", "#", "data_", "loop_", "_rlnDefocusU", "nan", "-inf", "1e999", "0x10", "—", "\t", "a b"]
tokens = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(NAMES),
    st.sampled_from(GARBAGE),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
)


# Realistic layouts (RELION 3.1+ optics + table, RELION 3.0 single block, pick lists) whose
# columns are dropped, renamed or filled with garbage below.
TEMPLATES = {
    "ctf 3.1": [("optics", ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographPixelSize",
                            "rlnMicrographOriginalPixelSize", "rlnVoltage", "rlnSphericalAberration",
                            "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize"]),
                ("micrographs", ["rlnMicrographName", "rlnOpticsGroup", "rlnCtfImage", "rlnDefocusU", "rlnDefocusV",
                                 "rlnDefocusAngle", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit",
                                 "rlnMicrographMetadata", "rlnAccumMotionTotal"])],
    "relion 3.0": [("", ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDetectorPixelSize",
                         "rlnMagnification", "rlnVoltage", "rlnImageName", "rlnCoordinateX", "rlnCoordinateY",
                         "rlnImageSize", "rlnCtfImage"])],
    "particles 3.1": [("optics", ["rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize",
                                  "rlnMicrographOriginalPixelSize", "rlnVoltage"]),
                      ("particles", ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnImageName",
                                     "rlnOpticsGroup"])],
    "autopick": [("coordinate_files", ["rlnMicrographName", "rlnMicrographCoordinates"])],
    "coordinates": [("", ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"])],
}  # fmt: skip
NAME_COLUMNS = {"rlnMicrographName", "rlnCtfImage", "rlnMicrographMetadata", "rlnImageName", "rlnOpticsGroupName",
                "rlnMicrographCoordinates"}
VALID = {"rlnOpticsGroup": ["1", "2"], "rlnImageName": ["000001@Extract/job004/Movies/m1.mrcs"],
         "rlnCtfImage": ["CtfFind/job003/Movies/m1.ctf:mrc"], "rlnMicrographMetadata": ["MotionCorr/job002/Movies/m1.star"],
         "rlnOpticsGroupName": ["opticsGroup1"], "rlnMicrographCoordinates": ["AutoPick/job005/Movies/m1_autopick.star"]}  # fmt: skip


def _cell(draw, column: str) -> str:
    if draw(st.integers(0, 9)) == 0:  # one cell in ten is garbage
        return draw(tokens)
    if column in VALID:
        return draw(st.sampled_from(VALID[column]))
    if column in NAME_COLUMNS:
        return draw(st.sampled_from(["MotionCorr/job002/Movies/m1.mrc", "MotionCorr/job002/Movies/m2.mrc"]))
    return repr(draw(st.floats(-1e5, 1e5, allow_nan=False)))


@st.composite
def star_texts(draw) -> str:
    """A realistic layout with columns dropped, duplicated or renamed, a garbage cell in ten, ragged
    rows, renamed or missing blocks."""
    out = [draw(st.sampled_from(["", "# version 50001\n", "# version 30001\n", "\ufeff"]))]
    for block, cols in TEMPLATES[draw(st.sampled_from(sorted(TEMPLATES)))]:
        if draw(st.integers(0, 5)) == 0:
            continue  # the whole block is missing
        cols = [c for c in cols if draw(st.integers(0, 4))]  # each column dropped one time in five
        cols += draw(st.lists(st.one_of(st.sampled_from(RELION_COLUMNS), st.sampled_from(GARBAGE_COLUMNS)), max_size=2))
        if draw(st.integers(0, 5)) == 0:
            block = draw(st.sampled_from(BLOCKS))
        out.append(f"\ndata_{block}\n\n")
        if draw(st.integers(0, 5)) == 0:  # a key-value block instead of a loop
            out.extend(f"_{c} {_cell(draw, c)}\n" for c in cols)
            continue
        out.append("loop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(cols)))
        for _ in range(draw(st.integers(0, 4))):
            row = [_cell(draw, c) for c in cols]
            if draw(st.integers(0, 5)) == 0:
                row = row[: draw(st.integers(0, len(row)))] if draw(st.booleans()) else row + [draw(tokens)]
            out.append(" ".join(row) + "\n")
    if draw(st.integers(0, 5)) == 0:
        out.append(draw(st.sampled_from(["\0", "loop_", "_rlnX 1 2 3", "data_x", "data_\nloop_\n_rlnA #1\n"])))
    return "".join(out)


def _project(tmp_path: Path) -> Path:
    """A RELION project folder in which the names of :data:`NAMES` point at garbage files."""
    project = fresh_dir(tmp_path)
    (project / "MotionCorr/job002/Movies").mkdir(parents=True)
    (project / "MotionCorr/job002/Movies/m1.star").write_text("data_general\n_rlnImageSizeZ x\n")
    (project / "CtfFind/job003/Movies").mkdir(parents=True)
    (project / "CtfFind/job003/Movies/m1.txt").write_text("# Output from CTFFind\n1 2 3\n")
    return project


def exercise(path: Path, project: Path) -> None:
    """Every STAR entry point on ``path``; an error may also name a file the STAR refers to."""
    named = [path, project]
    blocks, error = outcome(read_star, path, files=named)
    if error is None:
        for select in (micrograph_block, particle_block):
            table, error = outcome(select, blocks, file=path, files=named, limit=None)
            if error is None:
                outcome(require_columns, table, ["rlnMicrographName", "rlnDefocusU"], file=path, block="x",
                        files=named, limit=None)  # fmt: skip
    # Memory is traced on the parse and on one full table build; the other readers re-parse the same text.
    for fn, kwargs, limit in [
        (relion_table.ctf_rows, {"project_dir": project}, MEM_LIMIT),
        (relion_table.motion_rows, {"project_dir": project, "n_frames": 24}, None),
        (relion_table.particle_counts, {}, None),
        (picks.relion_coordinate_files, {}, None),
        (picks.relion_coordinates, {"micrograph": "m1.mrc"}, None),
        (picks.relion_particles, {}, None),
    ]:
        outcome(fn, path, files=named, limit=limit, **kwargs)


@corpus_settings(60)
@given(text=star_texts())
def test_generated_star_files_are_read_or_refused_by_name(tmp_path, text):
    project = _project(tmp_path)
    path = project / "micrographs_ctf.star"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    exercise(path, project)


REAL_STARS = [
    "Conecsion__sppractice/CtfFind/job005/micrographs_ctf.star",
    "Conecsion__sppractice/MotionCorr/job002/corrected_micrographs.star",
    "Conecsion__sppractice/AutoPick/job008/autopick.star",
    "Conecsion__sppractice/AutoPick/job008/Movies/20170629_00021_frameImage_autopick.star",
    "ml-struct-bio__cryodrgn/tests/data/relion31.6opticsgroups.star",
    "ml-struct-bio__cryodrgn/tests/data/empiar_10076_7.star",
]


@pytest.fixture(scope="module")
def real_stars(shared_data: Path) -> dict[str, list[str]]:
    return {rel: (shared_data / rel).read_text().splitlines(keepends=True) for rel in REAL_STARS}


@corpus_settings(50)
@given(
    rel=st.sampled_from(REAL_STARS),
    edits=st.lists(
        st.tuples(st.sampled_from(["drop", "duplicate", "garble", "swap"]), st.integers(0, 200), tokens), max_size=4
    ),
    cut=st.one_of(st.none(), st.integers(0, 4000)),
)
def test_real_star_files_with_lines_dropped_garbled_or_cut(tmp_path, real_stars, rel, edits, cut):
    """Real RELION outputs with a column header dropped, a value replaced by garbage, lines
    duplicated or swapped, or the file cut mid-line."""
    lines = list(real_stars[rel])
    for op, at, token in edits:
        i = at % len(lines)
        if op == "drop":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif op == "garble":
            words = lines[i].split()
            if words:
                words[at % len(words)] = token
                lines[i] = " ".join(words) + "\n"
        if not lines:
            break
    text = "".join(lines)
    project = _project(tmp_path)
    path = project / Path(rel).name
    path.write_text(text if cut is None else text[:cut], encoding="utf-8", errors="surrogatepass")
    exercise(path, project)


@corpus_settings(30)
@given(data=st.binary(max_size=1024))
def test_binary_garbage_named_star(tmp_path, data):
    project = _project(tmp_path)
    path = project / "particles.star"
    path.write_bytes(data)
    exercise(path, project)


def test_missing_columns_name_the_column(tmp_path):
    """The fixed cases the property covers, spelled out: each missing column is the error's field."""
    path = tmp_path / "micrographs_ctf.star"
    for missing in ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV"):
        cols = [c for c in ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV") if c != missing]
        path.write_text("data_micrographs\nloop_\n" + "".join(f"_{c}\n" for c in cols) + "a.mrc 1\n")
        _, error = outcome(relion_table.ctf_rows, path, tmp_path, files=path)
        assert error is not None and error.field == missing and "data_micrographs" in error.reason
