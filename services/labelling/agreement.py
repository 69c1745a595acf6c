"""How much the labelers agree: per class mean and spread of the grades, and Fleiss' kappa overall.

Grades are numbers A=1 (best) … F=5 (unusable) for the mean and spread; kappa treats them as five
unordered categories, as Fleiss' kappa does.

Fleiss' kappa (Fleiss 1971, *Psychological Bulletin* 76:378–382), for N classes, class i graded
by n_i labelers, n_ij of whom gave grade j::

    P_i  = Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1))      agreement within class i
    P̄    = mean_i P_i
    p_j  = Σ_i n_ij / Σ_i n_i                          share of grade j
    P̄_e  = Σ_j p_j²
    κ    = (P̄ − P̄_e) / (1 − P̄_e)

Fleiss defines it for a constant n_i = n; these are the same formulas with each class's own n_i
(classes with fewer than two grades carry no agreement information and are left out), so with
every class graded by everyone it *is* Fleiss' kappa. Both are reported: over every class with at
least two grades, and over the classes graded by every labeler. κ is undefined (``None``) when
fewer than one class qualifies or when every grade is the same (P̄_e = 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cryobus.services.labelling.store import GRADE_VALUE, GRADES


@dataclass
class ClassAgreement:
    """One class's grades.

    Attributes:
        class_id, uid: the class.
        grades: labeler e-mail → grade letter.
        mean: mean grade, 1 (A) … 5 (F).
        spread: population standard deviation of the numeric grades (0 with one grade).
        range: highest minus lowest numeric grade.
    """

    class_id: int
    uid: str
    grades: dict[str, str] = field(default_factory=dict)
    mean: float = 0.0
    spread: float = 0.0
    range: int = 0

    @property
    def n(self) -> int:
        return len(self.grades)


@dataclass
class AgreementReport:
    """Per-class agreement, most disagreement first, and kappa overall.

    Attributes:
        classes: classes with at least one grade, sorted by spread, then range, then number of
            grades (all descending), then class id.
        labelers: every labeler with a grade, sorted.
        kappa: over classes with ≥ 2 grades (``kappa_classes`` of them).
        kappa_complete: over classes graded by every labeler (``complete_classes``), None with
            fewer than two labelers.
    """

    classes: list[ClassAgreement]
    labelers: list[str]
    kappa: float | None
    kappa_classes: int
    kappa_complete: float | None
    complete_classes: int


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa from an (N classes, K grades) count matrix (see the module docstring).

    Rows with fewer than two ratings are ignored; ``None`` when no row remains or all ratings
    fall in one category.

    Raises:
        ValueError: ``counts`` is not 2-D or holds negative numbers.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or (counts < 0).any():
        raise ValueError("counts must be a 2-D matrix of non-negative numbers")
    n_i = counts.sum(axis=1)
    keep = n_i >= 2
    counts, n_i = counts[keep], n_i[keep]
    if counts.shape[0] == 0:
        return None
    p_i = (counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0 - 1e-12:
        return None
    return float((p_bar - p_e) / (1.0 - p_e))


def _count_matrix(classes: Sequence[ClassAgreement]) -> np.ndarray:
    m = np.zeros((len(classes), len(GRADES)), dtype=np.int64)
    for i, c in enumerate(classes):
        for g in c.grades.values():
            m[i, GRADE_VALUE[g] - 1] += 1
    return m


def agreement(rows: Iterable[tuple[int, str, str, str]]) -> AgreementReport:
    """Agreement from current grades.

    Args:
        rows: ``(class id, class uid, labeler e-mail, grade letter)``, one per current grade.

    Returns:
        An :class:`AgreementReport`.
    """
    by_class: dict[int, ClassAgreement] = {}
    labelers: set[str] = set()
    for class_id, uid, email, grade in rows:
        by_class.setdefault(class_id, ClassAgreement(class_id, uid)).grades[email] = grade
        labelers.add(email)
    for c in by_class.values():
        values = np.array([GRADE_VALUE[g] for g in c.grades.values()], dtype=np.float64)
        c.mean = float(values.mean())
        c.spread = float(values.std())
        c.range = int(values.max() - values.min())
    classes = sorted(by_class.values(), key=lambda c: (-c.spread, -c.range, -c.n, c.class_id))
    multi = [c for c in classes if c.n >= 2]
    complete = [c for c in classes if c.n == len(labelers)] if len(labelers) >= 2 else []
    return AgreementReport(
        classes=classes,
        labelers=sorted(labelers),
        kappa=fleiss_kappa(_count_matrix(multi)) if multi else None,
        kappa_classes=len(multi),
        kappa_complete=fleiss_kappa(_count_matrix(complete)) if complete else None,
        complete_classes=len(complete),
    )


def consensus(grades: Mapping[str, str]) -> tuple[float, str, float]:
    """The consensus of one class's grades: ``(mean 1–5, letter, target)``.

    ``letter`` is the grade nearest the mean (halves round towards the better grade);
    ``target`` = (5 − mean) / 4, 1.0 when everyone gave A and 0.0 when everyone gave F — the
    label part of Magellon's training score ``(5 − mean)·0.2 + 0.2·(min_res/res)²`` rescaled to
    [0, 1], without the resolution term (resolution is already one of the model's features).

    Raises:
        ValueError: no grades.
    """
    if not grades:
        raise ValueError("no grades")
    mean = float(np.mean([GRADE_VALUE[g] for g in grades.values()]))
    letter = GRADES[int(np.ceil(mean - 0.5)) - 1]
    return mean, letter, (5.0 - mean) / 4.0
