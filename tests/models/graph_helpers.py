"""Shared helpers for the graph-gradient tests: run ONNX models, compare with a float64 oracle.

Imported as ``models.graph_helpers`` (``tests`` is on ``pythonpath``). Needs torch, so test
modules import it only after ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

BATCH_DIM = "N"
"""Symbolic batch axis, as in the generated training graphs."""


@pytest.fixture(autouse=True, scope="module")
def single_threaded_torch() -> Iterator[None]:
    """Run the oracle on one thread (autouse in the modules that import it).

    Its tensors are tiny; with two cores shared with onnxruntime's thread pool or another
    process, torch's spinning OpenMP workers made the tests 5-50x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def session(model: onnx.ModelProto, *, prepack: bool = True) -> ort.InferenceSession:
    """A CPU session on stock onnxruntime (no training build, no custom ops).

    ``prepack=False`` stops MLAS from re-laying out constant GEMM/Conv weights, which changes
    the float32 summation order of embedded weights relative to weights fed as inputs.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | ort.InferenceSession,
        feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model (or an existing session) and return its outputs by name.

    Only inputs the model declares are fed, so one feed dictionary can serve several graphs.
    """
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    wanted = {i.name for i in sess.get_inputs()}
    missing = wanted - set(feed)
    assert not missing, f"feed lacks graph inputs {sorted(missing)}"
    outputs = sess.run(None, {k: v for k, v in feed.items() if k in wanted})
    return {o.name: v for o, v in zip(sess.get_outputs(), outputs, strict=True)}


def scalar(value: float) -> np.ndarray:
    """A 0-d float32 array: how scalar graph inputs (lr, step, clip_norm, ...) are fed."""
    return np.asarray(value, dtype=np.float32)


def f64(value: np.ndarray) -> torch.Tensor:
    """The exact float32 (or integer) values as a float64 torch tensor."""
    return torch.from_numpy(np.asarray(value, dtype=np.float64))


def rel_err(ours: np.ndarray, ref: np.ndarray | torch.Tensor) -> float:
    """Norm-wise relative error ``||ours - ref|| / ||ref||`` computed in float64."""
    ref64 = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ref64 = ref64.astype(np.float64)
    ours64 = np.asarray(ours, dtype=np.float64)
    assert ours64.shape == ref64.shape, f"shape {ours64.shape} != reference {ref64.shape}"
    scale = float(np.linalg.norm(ref64))
    assert scale > 0.0, "reference is exactly zero; a relative error would be meaningless"
    return float(np.linalg.norm(ours64 - ref64)) / scale


def assert_rel(ours: np.ndarray, ref: np.ndarray | torch.Tensor, tol: float, what: str) -> None:
    """Assert the norm-wise relative error of ``ours`` against ``ref`` is at most ``tol``."""
    err = rel_err(ours, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
