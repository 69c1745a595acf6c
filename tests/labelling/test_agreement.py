"""Agreement: Fleiss' kappa against a published worked example, the classes labelers disagree on
most come first, and the consensus target follows the mean grade."""

from __future__ import annotations

import numpy as np
import pytest

from cryobus.services.labelling.agreement import agreement, consensus, fleiss_kappa

# The worked example of the "Fleiss' kappa" article (Wikipedia): 10 subjects, 14 raters each,
# 5 categories; published P̄ = 0.378, P̄e = 0.213, κ = 0.210.
WORKED_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_fleiss_kappa_matches_the_worked_example():
    assert fleiss_kappa(WORKED_EXAMPLE) == pytest.approx(0.210, abs=5e-4)


def test_kappa_limits():
    assert fleiss_kappa(np.array([[3, 0, 0, 0, 0], [0, 0, 3, 0, 0], [0, 0, 0, 0, 3]])) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[3, 0, 0, 0, 0], [3, 0, 0, 0, 0]])) is None  # one category only: undefined
    assert fleiss_kappa(np.array([[1, 0, 0, 0, 0]])) is None  # nobody to agree with
    # Systematic disagreement is worse than chance.
    assert fleiss_kappa(np.array([[1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1]])) < 0


def _rows(grades: dict[int, dict[str, str]]):
    return [(cid, f"ds/job/it001/class_{cid:03d}", who, g) for cid, by in grades.items() for who, g in by.items()]


def test_report_orders_by_disagreement_and_counts_complete_classes():
    grades = {
        1: {"ana": "A", "ben": "A", "cy": "A"},
        2: {"ana": "A", "ben": "F", "cy": "C"},
        3: {"ana": "B", "ben": "C"},
        4: {"ana": "D"},
    }
    report = agreement(_rows(grades))
    assert [c.class_id for c in report.classes] == [2, 3, 1, 4]
    assert report.labelers == ["ana", "ben", "cy"]
    top = report.classes[0]
    assert top.grades == {"ana": "A", "ben": "F", "cy": "C"}
    assert top.mean == pytest.approx(3.0) and top.range == 4 and top.spread == pytest.approx(np.std([1, 5, 3]))
    assert (report.kappa_classes, report.complete_classes) == (3, 2)
    counts = np.array([[3, 0, 0, 0, 0], [1, 0, 1, 0, 1], [0, 1, 1, 0, 0]])
    assert report.kappa == pytest.approx(fleiss_kappa(counts))
    assert report.kappa_complete == pytest.approx(fleiss_kappa(counts[:2]))


def test_consensus_target():
    assert consensus({"a": "A", "b": "A"}) == (1.0, "A", 1.0)
    assert consensus({"a": "F"}) == (5.0, "F", 0.0)
    mean, letter, target = consensus({"a": "A", "b": "B"})
    assert (mean, letter, target) == (1.5, "A", pytest.approx(0.875))  # halves go to the better grade
    assert consensus({"a": "B", "b": "C", "c": "F"})[1] == "C"  # mean 3.33
    with pytest.raises(ValueError):
        consensus({})
