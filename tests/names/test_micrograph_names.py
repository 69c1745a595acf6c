"""One micrograph, one name across RELION, CryoSPARC, NextPYP and CTFFIND files."""

from __future__ import annotations

import pytest

from cryobus.shared.micrograph_names import micrograph_name


@pytest.mark.parametrize(
    "path, expected",
    [
        ("MotionCorr/job002/Movies/20170629_00021_frameImage.mrc", "20170629_00021_frameImage"),  # date prefix kept
        ("J9/motioncorrected/012345678901234_mic_10_patch_aligned_doseweighted.mrc", "mic_10"),
        ("J9/motioncorrected/012345678901234_mic_10_patch_aligned.mrc", "mic_10"),
        (b"J1/imported/15498012345678901_FoilHole_1_Data_2.mrc", "FoilHole_1_Data_2"),
        ("FoilHole_12345_Data_678.mrc", "FoilHole_12345_Data_678"),  # prismPYP's \d+_ split would cut this
        ("Movies/mic_007_DW.mrc", "mic_007"),
        ("pkl/mic_007.pkl", "mic_007"),
        ("CtfFind/job005/Movies/mic_007_PS.ctf:mrc", "mic_007"),
        ("ctffind_output/mic_007_ctffind4.txt", "mic_007"),
        ("C:\\data\\grid1\\mic_007.tiff", "mic_007"),
        ("mic.frames.mrc", "mic.frames"),
        ("_DW.mrc", "_DW"),  # never empty
    ],
)
def test_names_normalise_to_the_same_micrograph(path, expected):
    assert micrograph_name(path) == expected


def test_known_uid_is_stripped_exactly_even_when_short():
    assert micrograph_name("J1/imported/0123_FoilHole_1_Data_2.mrc", uid="0123") == "FoilHole_1_Data_2"
    assert micrograph_name("J1/imported/0123_FoilHole_1_Data_2.mrc") == "0123_FoilHole_1_Data_2"
