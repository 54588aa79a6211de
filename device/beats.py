"""Validated arrays of beats: what the trainer and the classifier consume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedbeat.models.manifest import InputSpec


class InvalidBeatsError(ValueError):
    """Beat arrays with the wrong shape, type or values for the model."""


@dataclass(frozen=True)
class Beats:
    """``windows`` (n, 1, W) float32, ``rr`` (n, F) float32, optional ``labels`` (n,) int64."""

    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    @classmethod
    def from_arrays(cls, windows: np.ndarray, rr: np.ndarray, labels: np.ndarray | None = None,
                    *, spec: InputSpec) -> Beats:
        """Check shapes, dtypes and values against the model's input spec.

        ``windows`` may be (n, W) or (n, 1, W). Raises :class:`InvalidBeatsError` with a
        message that names the array and what was expected.
        """
        windows, rr = check_model_inputs(windows, rr, window_samples=spec.window_samples,
                                         rr_features=len(spec.rr_features))
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (windows.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise InvalidBeatsError(f"labels must be {windows.shape[0]} integers, got "
                                        f"{labels.dtype} array of shape {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
                raise InvalidBeatsError(f"labels must be class indices 0..{len(spec.classes) - 1}"
                                        f" ({', '.join(spec.classes)})")
            labels = labels.astype(np.int64)
        return cls(windows, rr, labels)

    def take(self, index: np.ndarray) -> Beats:
        return Beats(self.windows[index], self.rr[index],
                     None if self.labels is None else self.labels[index])


def check_model_inputs(windows: np.ndarray, rr: np.ndarray, *, window_samples: int,
                       rr_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise model inputs for any runtime (ONNX Runtime or TFLite).

    Returns contiguous float32 ``windows`` (n, 1, W) and ``rr`` (n, F); ``windows`` may come
    as (n, W). Raises :class:`InvalidBeatsError` naming the array and what was expected.
    """
    windows = _floating("windows", windows)
    if windows.ndim == 2:
        windows = windows[:, None, :]
    if windows.ndim != 3 or windows.shape[1:] != (1, window_samples):
        raise InvalidBeatsError(f"windows must have shape (n, {window_samples}) or "
                                f"(n, 1, {window_samples}), got {windows.shape}")
    rr = _floating("rr", rr)
    if rr.ndim != 2 or rr.shape != (windows.shape[0], rr_features):
        raise InvalidBeatsError(f"rr must have shape ({windows.shape[0]}, {rr_features}), "
                                f"got {rr.shape}")
    return windows, rr


def _floating(name: str, value: np.ndarray) -> np.ndarray:
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InvalidBeatsError(f"{name} must be numeric, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise InvalidBeatsError(f"{name} contains NaN or infinite values; drop or repair those "
                                "beats before training")
    return array
