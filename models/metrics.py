"""AAMI EC57 beat-classification metrics, computed from a confusion matrix (numpy only).

The definitions are those of ANSI/AAMI EC57 (*Testing and reporting performance results of
cardiac rhythm and ST segment measurement algorithms*) as used for the five AAMI classes by
de Chazal, O'Dwyer & Reilly 2004 (IEEE Trans. Biomed. Eng. 51(7):1196-1206). Each class ``c``
is scored one against the rest from the confusion matrix ``C`` (rows true, columns predicted)::

    TP = C[c, c]     FN = sum(C[c, :]) - TP     FP = sum(C[:, c]) - TP
    TN = sum(C) - TP - FN - FP

    Se  = TP / (TP + FN)              sensitivity (recall)
    +P  = TP / (TP + FP)              positive predictivity (precision)
    FPR = FP / (TN + FP)              false positive rate
    Sp  = TN / (TN + FP) = 1 - FPR    specificity
    F1  = 2 TP / (2 TP + FP + FN)     the harmonic mean of Se and +P

A value whose denominator is zero is ``None`` (never 0 or NaN):

* Se is ``None`` when the class is absent from the truth (``TP + FN = 0``), and so is F1,
  even if the class was predicted: those false alarms still lower +P and Sp.
* +P is ``None`` when the class was never predicted (``TP + FP = 0``). F1 is then 0 if the class
  is present (every one of its beats was missed), so F1 is defined exactly when Se is.
* Sp and FPR are ``None`` when every beat belongs to the class (``TN + FP = 0``).
* Accuracy is ``None`` for no beats at all.

Macro-F1 is the unweighted mean of F1 over a group of classes, taken over those classes of
the group that are present in the truth; it is ``None`` if none is. Two groups are reported:
N, S, V, F (:data:`MACRO_NSVF`; Q, a handful of unclassifiable beats, is reported per class but
left out) and N, S, V (:data:`MACRO_NSV`; F, fusion beats, is rare and mostly one patient's).

Metrics are built from counts, so confusion matrices from several devices or records can be
summed first (``a + b``) and scored once: the pooled ("gross") statistics of EC57.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from fedbeat.models.spec import CLASSES, NUM_CLASSES

MACRO_NSVF: Final = ("N", "S", "V", "F")
"""Classes in the headline macro-F1 (Q excluded)."""

MACRO_NSV: Final = ("N", "S", "V")
"""Classes in the second macro-F1 (Q and F excluded)."""


def ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    return numerator / denominator if denominator else None


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) class pairs: shape (5, 5) int64, rows true.

    Raises
    ------
    ValueError
        If the arrays are not 1-D integer class indices 0..4 of the same length.
    """
    labels = _class_indices("labels", labels)
    predicted = _class_indices("predicted", predicted)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels and predicted differ in length: {labels.size} and "
                         f"{predicted.size}")
    pairs = labels * NUM_CLASSES + predicted
    return np.bincount(pairs, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


def _class_indices(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(f"{name} must be a 1-D array of class indices, got {array.dtype} "
                         f"array of shape {array.shape}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= NUM_CLASSES):
        raise ValueError(f"{name} must be class indices 0..{NUM_CLASSES - 1} "
                         f"({', '.join(CLASSES)})")
    return array


@dataclass(frozen=True)
class ClassMetrics:
    """One class scored against the rest: the four counts and what follows from them."""

    name: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def support(self) -> int:
        """True beats of the class (TP + FN)."""
        return self.tp + self.fn

    @property
    def predicted(self) -> int:
        """Beats predicted as the class (TP + FP)."""
        return self.tp + self.fp

    @property
    def sensitivity(self) -> float | None:
        """Se = TP / (TP + FN); ``None`` if the class is absent from the truth."""
        return ratio(self.tp, self.support)

    @property
    def positive_predictivity(self) -> float | None:
        """+P = TP / (TP + FP); ``None`` if the class was never predicted."""
        return ratio(self.tp, self.predicted)

    @property
    def specificity(self) -> float | None:
        """Sp = TN / (TN + FP); ``None`` if every beat is of this class."""
        return ratio(self.tn, self.tn + self.fp)

    @property
    def false_positive_rate(self) -> float | None:
        """FPR = FP / (TN + FP) = 1 - Sp; ``None`` if every beat is of this class."""
        return ratio(self.fp, self.tn + self.fp)

    @property
    def f1(self) -> float | None:
        """F1 = 2 TP / (2 TP + FP + FN); ``None`` if the class is absent from the truth."""
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn) if self.support else None

    def to_json(self) -> dict[str, Any]:
        return {"support": self.support, "predicted": self.predicted, "tp": self.tp,
                "fp": self.fp, "fn": self.fn, "tn": self.tn, "sensitivity": self.sensitivity,
                "positive_predictivity": self.positive_predictivity,
                "specificity": self.specificity, "false_positive_rate": self.false_positive_rate,
                "f1": self.f1}


def one_vs_rest(matrix: np.ndarray) -> dict[str, ClassMetrics]:
    """Per-class counts from a confusion matrix (rows true, columns predicted), by class name."""
    tp = np.diag(matrix)
    fn = matrix.sum(axis=1) - tp
    fp = matrix.sum(axis=0) - tp
    tn = matrix.sum() - tp - fn - fp
    return {name: ClassMetrics(name, int(tp[i]), int(fp[i]), int(fn[i]), int(tn[i]))
            for i, name in enumerate(CLASSES)}


def macro_f1(per_class: dict[str, ClassMetrics], names: tuple[str, ...]) -> float | None:
    """Mean F1 over the classes in ``names`` present in the truth; ``None`` if none is."""
    scores = [f1 for name in names if (f1 := per_class[name].f1) is not None]
    return sum(scores) / len(scores) if scores else None


@dataclass(frozen=True)
class AamiMetrics:
    """AAMI EC57 metrics of one evaluation, held as its 5×5 confusion matrix.

    Build with :meth:`from_labels` or :meth:`from_confusion`; add two to pool their beats.
    """

    confusion: tuple[tuple[int, ...], ...]

    @classmethod
    def from_confusion(cls, matrix: np.ndarray) -> AamiMetrics:
        """From a (5, 5) matrix of non-negative counts, rows true and columns predicted."""
        array = np.asarray(matrix)
        if array.shape != (NUM_CLASSES, NUM_CLASSES) or not np.issubdtype(array.dtype,
                                                                          np.integer):
            raise ValueError(f"confusion matrix must be {NUM_CLASSES}x{NUM_CLASSES} integers, "
                             f"got {array.dtype} array of shape {array.shape}")
        if (array < 0).any():
            raise ValueError("confusion matrix counts must be non-negative")
        return cls(tuple(tuple(int(v) for v in row) for row in array))

    @classmethod
    def from_labels(cls, labels: np.ndarray, predicted: np.ndarray) -> AamiMetrics:
        """From true and predicted class indices (see :func:`confusion_matrix`)."""
        return cls.from_confusion(confusion_matrix(labels, predicted))

    def __add__(self, other: AamiMetrics) -> AamiMetrics:
        return AamiMetrics.from_confusion(self.matrix + other.matrix)

    @property
    def matrix(self) -> np.ndarray:
        """The confusion matrix as a fresh (5, 5) int64 array."""
        return np.array(self.confusion, dtype=np.int64)

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def per_class(self) -> dict[str, ClassMetrics]:
        """Class name → its one-against-the-rest metrics, in :data:`CLASSES` order."""
        return one_vs_rest(self.matrix)

    @property
    def accuracy(self) -> float | None:
        return ratio(int(np.trace(self.matrix)), self.total)

    @property
    def macro_f1_nsvf(self) -> float | None:
        """Macro-F1 over N, S, V, F (Q excluded)."""
        return macro_f1(self.per_class, MACRO_NSVF)

    @property
    def macro_f1_nsv(self) -> float | None:
        """Macro-F1 over N, S, V."""
        return macro_f1(self.per_class, MACRO_NSV)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; ``None`` marks an undefined value."""
        return {"classes": list(CLASSES), "beats": self.total, "accuracy": self.accuracy,
                "macro_f1_nsvf": self.macro_f1_nsvf, "macro_f1_nsv": self.macro_f1_nsv,
                "per_class": {name: m.to_json() for name, m in self.per_class.items()},
                "confusion_matrix": [list(row) for row in self.confusion]}
