"""Small classification summaries used by ``fedbeat model train``.

The full AAMI EC57 report (sensitivity, positive predictivity, F1 per class) lives with the ECG
data pipeline; this is the minimum needed to see that training learned something.
"""

from __future__ import annotations

import numpy as np

from fedbeat.models.spec import CLASSES


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray,
                     num_classes: int = len(CLASSES)) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def class_recall(matrix: np.ndarray) -> dict[str, float | None]:
    """Sensitivity per class (None where the class has no true examples)."""
    totals = matrix.sum(axis=1)
    return {name: (float(matrix[i, i] / totals[i]) if totals[i] else None)
            for i, name in enumerate(CLASSES)}


def balanced_class_weight(labels: np.ndarray, num_classes: int = len(CLASSES), *,
                          cap: float = 10.0) -> tuple[float, ...]:
    """Inverse-frequency weights ``n / (k * n_c)``, capped so a handful of beats cannot dominate.

    Classes absent from ``labels`` get weight 0 (they contribute no examples anyway).
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return tuple(float(w) for w in np.minimum(weights, cap))
