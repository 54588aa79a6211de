"""AAMI EC57 metrics: agree with a brute-force count, and with hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbeat.models.metrics import (
    MACRO_NSV,
    MACRO_NSVF,
    AamiMetrics,
    ClassMetrics,
    confusion_matrix,
)
from fedbeat.models.spec import CLASSES

N, S, V, F, Q = range(5)


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted labels, often with classes missing from either, sometimes accurate."""
    size = draw(st.integers(0, 60))
    classes = st.lists(st.integers(0, 4), min_size=1, max_size=5, unique=True)
    truth_classes, predicted_classes = draw(classes), draw(classes)
    labels = draw(st.lists(st.sampled_from(truth_classes), min_size=size, max_size=size))
    guesses = draw(st.lists(st.sampled_from(predicted_classes), min_size=size, max_size=size))
    if draw(st.booleans()):                         # mostly right: keep the truth where True
        keep = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        guesses = [t if k else g for t, g, k in zip(labels, guesses, keep, strict=True)]
    return np.array(labels, dtype=np.int64), np.array(guesses, dtype=np.int64)


def brute_force(labels: np.ndarray, predicted: np.ndarray, c: int) -> dict[str, float | None]:
    """The EC57 definitions, counted pair by pair."""
    pairs = list(zip(labels.tolist(), predicted.tolist(), strict=True))
    tp = sum(t == c and p == c for t, p in pairs)
    fp = sum(t != c and p == c for t, p in pairs)
    fn = sum(t == c and p != c for t, p in pairs)
    tn = sum(t != c and p != c for t, p in pairs)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "positive_predictivity": tp / (tp + fp) if tp + fp else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "false_positive_rate": fp / (tn + fp) if tn + fp else None}


def assert_close(actual: float | None, expected: float | None) -> None:
    if expected is None:
        assert actual is None
    else:
        assert actual == pytest.approx(expected)


@given(label_pairs())
def test_metrics_agree_with_brute_force(pair: tuple[np.ndarray, np.ndarray]) -> None:
    labels, predicted = pair
    metrics = AamiMetrics.from_labels(labels, predicted)
    for c, name in enumerate(CLASSES):
        got = metrics.per_class[name].to_json()
        for key, value in brute_force(labels, predicted, c).items():
            assert_close(got[key], value)
    assert metrics.total == labels.size
    assert_close(metrics.accuracy, float(np.mean(labels == predicted)) if labels.size else None)


@given(label_pairs())
def test_f1_is_the_harmonic_mean_of_se_and_ppv(pair: tuple[np.ndarray, np.ndarray]) -> None:
    for m in AamiMetrics.from_labels(*pair).per_class.values():
        se, ppv = m.sensitivity, m.positive_predictivity
        if se is None:                              # absent from the truth
            assert m.f1 is None
        elif se == 0 or ppv is None or ppv == 0:
            assert m.f1 == 0.0
        else:
            assert m.f1 == pytest.approx(2 * se * ppv / (se + ppv))


@given(label_pairs())
def test_macro_f1_averages_the_present_classes_of_its_group(
        pair: tuple[np.ndarray, np.ndarray]) -> None:
    metrics = AamiMetrics.from_labels(*pair)
    for group, value in ((MACRO_NSVF, metrics.macro_f1_nsvf), (MACRO_NSV, metrics.macro_f1_nsv)):
        scores = [f1 for name in group if (f1 := metrics.per_class[name].f1) is not None]
        assert_close(value, float(np.mean(scores)) if scores else None)


@given(label_pairs(), st.integers(1, 50))
def test_macro_f1_ignores_q(pair: tuple[np.ndarray, np.ndarray], extra: int) -> None:
    """More correctly found Q beats change Q's F1 (and others' TN), never the macros."""
    before = AamiMetrics.from_labels(*pair)
    bump = np.zeros((5, 5), dtype=np.int64)
    bump[Q, Q] = extra
    after = before + AamiMetrics.from_confusion(bump)
    assert after.per_class["Q"].f1 == 1.0 or after.per_class["Q"].f1 != before.per_class["Q"].f1
    assert after.macro_f1_nsvf == before.macro_f1_nsvf
    assert after.macro_f1_nsv == before.macro_f1_nsv


@given(st.lists(st.integers(0, 4), min_size=1, max_size=60))
def test_perfect_prediction_scores_one_wherever_defined(values: list[int]) -> None:
    labels = np.array(values, dtype=np.int64)
    metrics = AamiMetrics.from_labels(labels, labels)
    assert metrics.accuracy == 1.0
    assert metrics.macro_f1_nsv in (1.0, None)
    assert metrics.macro_f1_nsvf in (1.0, None)
    for c, m in enumerate(metrics.per_class.values()):
        present = bool(np.any(labels == c))
        for value in (m.sensitivity, m.positive_predictivity, m.f1):
            assert value == (1.0 if present else None)
        assert m.specificity in (1.0, None)
        assert m.false_positive_rate in (0.0, None)


def test_hand_computed_example() -> None:
    labels = np.array([N, N, N, N, S, S, V, V, V, F])
    predicted = np.array([N, N, N, S, S, N, V, V, N, V])
    metrics = AamiMetrics.from_labels(labels, predicted)
    per_class = metrics.per_class
    assert per_class["N"] == ClassMetrics("N", tp=3, fp=2, fn=1, tn=4)
    assert per_class["N"].sensitivity == 0.75
    assert per_class["N"].positive_predictivity == 0.6
    assert per_class["N"].f1 == pytest.approx(2 / 3)
    assert per_class["N"].specificity == pytest.approx(4 / 6)
    assert per_class["N"].false_positive_rate == pytest.approx(2 / 6)
    assert (per_class["S"].sensitivity, per_class["S"].f1) == (0.5, 0.5)
    assert per_class["V"].f1 == pytest.approx(2 / 3)
    assert per_class["V"].specificity == pytest.approx(6 / 7)
    # F: present, never predicted; Q: absent, never predicted
    assert (per_class["F"].sensitivity, per_class["F"].positive_predictivity) == (0.0, None)
    assert per_class["F"].f1 == 0.0
    assert (per_class["Q"].sensitivity, per_class["Q"].f1, per_class["Q"].specificity) == (
        None, None, 1.0)
    assert metrics.accuracy == 0.6
    assert metrics.macro_f1_nsvf == pytest.approx((2 / 3 + 0.5 + 2 / 3 + 0) / 4)
    assert metrics.macro_f1_nsv == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert metrics.matrix.tolist() == [[3, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 2, 0, 0],
                                       [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_a_class_predicted_but_absent_has_ppv_zero_and_no_f1() -> None:
    metrics = AamiMetrics.from_labels(np.array([N, N]), np.array([N, S]))
    s = metrics.per_class["S"]
    assert (s.sensitivity, s.positive_predictivity, s.f1, s.fp) == (None, 0.0, None, 1)
    assert metrics.macro_f1_nsvf == pytest.approx(2 / 3)     # N only: Se 1/2, +P 1


def test_one_class_only_has_no_specificity() -> None:
    n = AamiMetrics.from_labels(np.array([N, N, N]), np.array([N, N, N])).per_class["N"]
    assert (n.specificity, n.false_positive_rate) == (None, None)


def test_no_beats_gives_none_everywhere() -> None:
    metrics = AamiMetrics.from_labels(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert (metrics.accuracy, metrics.macro_f1_nsvf, metrics.macro_f1_nsv) == (None, None, None)
    assert all(m.sensitivity is None and m.specificity is None
               for m in metrics.per_class.values())


@given(label_pairs(), label_pairs())
def test_adding_metrics_pools_the_beats(a: tuple[np.ndarray, np.ndarray],
                                        b: tuple[np.ndarray, np.ndarray]) -> None:
    pooled = AamiMetrics.from_labels(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    assert AamiMetrics.from_labels(*a) + AamiMetrics.from_labels(*b) == pooled


@given(label_pairs())
def test_json_is_strict_json_with_null_for_undefined(pair: tuple[np.ndarray, np.ndarray]) -> None:
    data = json.loads(json.dumps(AamiMetrics.from_labels(*pair).to_json(), allow_nan=False))
    assert data["classes"] == list(CLASSES)
    assert sum(map(sum, data["confusion_matrix"])) == data["beats"]
    values = [v for m in data["per_class"].values() for v in m.values()]
    assert all(v is None or (isinstance(v, int | float) and math.isfinite(v)) for v in values)


@pytest.mark.parametrize(("labels", "predicted", "message"), [
    ([0, 1], [0], "differ in length"),
    ([0, 5], [0, 0], "class indices 0..4"),
    ([0, -1], [0, 0], "class indices 0..4"),
    ([0.0, 1.0], [0, 1], "1-D array of class indices"),
    ([[0, 1]], [[0, 1]], "1-D array of class indices"),
])
def test_bad_labels_are_refused(labels: list[object], predicted: list[object],
                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(labels), np.array(predicted))


@pytest.mark.parametrize("matrix", [np.zeros((4, 4), dtype=np.int64), np.zeros((5, 5)),
                                    -np.eye(5, dtype=np.int64)])
def test_bad_confusion_matrices_are_refused(matrix: np.ndarray) -> None:
    with pytest.raises(ValueError, match="confusion matrix"):
        AamiMetrics.from_confusion(matrix)
