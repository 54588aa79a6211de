"""The TFLite export computes what the ONNX inference graph computes (onnxruntime as reference)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="TFLite tests need the 'tflite' extra "
                    "(pip install 'fedbeat[tflite]')")

import onnxruntime as ort
import tflite
from ai_edge_litert.interpreter import Interpreter

from fedbeat.device.tflite_model import TFLiteModel, TFLiteRuntimeMissingError
from fedbeat.models import layers
from fedbeat.models.graph.build import build_inference
from fedbeat.models.params import Params
from fedbeat.models.tflite_export import (
    TFLiteExportError,
    export_tflite,
    write_tflite,
)
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture, Node, create_architecture

if TYPE_CHECKING:
    from pathlib import Path

    from fedbeat.models.graph.emit import GraphBuilder

TOLERANCE = 1e-5
SEEDS = (0, 7)
BATCH_SIZES = (1, 5, 16)


def exotic_architecture() -> Architecture:
    """Paths the zoo does not take: unpadded conv, pool strides unlike kernels, sequence
    concat, flatten after average pooling, a residual sum of feature vectors."""
    nodes = (
        Node("c1", layers.Conv1d(1, 4, 3), (INPUT_WINDOW,)),                          # 4 x 126
        Node("a1", layers.LeakyReLU(0.2), ("c1",)),
        Node("p1", layers.MaxPool1d(3, stride=2), ("a1",)),                           # 4 x 62
        Node("c2", layers.Conv1d(4, 4, 3, stride=1, padding=1), ("p1",)),             # 4 x 62
        Node("cat", layers.Concat(), ("p1", "c2")),                                   # 8 x 62
        Node("gn", layers.GroupNorm(2, 8, eps=1e-3), ("cat",)),
        Node("p2", layers.AvgPool1d(4, stride=3), ("gn",)),                           # 8 x 20
        Node("flat", layers.Flatten(), ("p2",)),                                      # 160
        Node("wave", layers.Linear(160, 16), ("flat",)),
        Node("rr.fc", layers.Linear(8, 16), (INPUT_RR,)),
        Node("sum", layers.Add(), ("wave", "rr.fc")),
        Node("act", layers.ReLU(), ("sum",)),
        Node("drop", layers.Dropout(0.5), ("act",)),
        Node("logits", layers.Linear(16, 5), ("drop",)),
    )
    return Architecture("test-exotic", nodes)


ARCHITECTURES = {"ecg-cnn-s": lambda: create_architecture("ecg-cnn-s"),
                 "ecg-cnn-m": lambda: create_architecture("ecg-cnn-m"),
                 "test-exotic": exotic_architecture}


@dataclass(frozen=True)
class Case:
    arch: Architecture
    params: Params
    session: ort.InferenceSession

    def reference(self, window: np.ndarray, rr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probs"], {"window": window, "rr": rr})
        return logits, probs


@cache
def case(arch_name: str, seed: int) -> Case:
    """Initial parameters, with GroupNorm's ones/zeros affine perturbed so it is exercised."""
    arch = ARCHITECTURES[arch_name]()
    initial = Params.initial(arch, seed=seed)
    rng = np.random.default_rng(seed + 100)
    constant = {name for name, spec in arch.param_specs() if spec.init in ("ones", "zeros")}
    params = Params(initial.layout, {
        name: value + rng.normal(0.0, 0.2, value.shape) if name in constant else value
        for name, value in initial.items()})
    session = ort.InferenceSession(build_inference(arch, params).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return Case(arch, params, session)


@cache
def exported(arch_name: str, seed: int, dynamic_batch: bool = True) -> bytes:
    c = case(arch_name, seed)
    return export_tflite(c.arch, c.params, dynamic_batch=dynamic_batch)


def inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    window = rng.standard_normal((n, 1, 128)).astype(np.float32)
    rr = rng.uniform(0.2, 2.0, size=(n, 8)).astype(np.float32)
    return window, rr


def assert_close(name: str, got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, name
    diff = float(np.max(np.abs(got - want)))
    assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.3g} > {TOLERANCE}"
    return diff


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("arch_name", list(ARCHITECTURES))
def test_dynamic_batch_matches_onnxruntime(arch_name: str, seed: int) -> None:
    c = case(arch_name, seed)
    model = TFLiteModel(exported(arch_name, seed))
    assert model.dynamic_batch
    for i, n in enumerate(BATCH_SIZES):
        window, rr = inputs(n, seed * 10 + i)
        logits, probs = c.reference(window, rr)
        assert_close("logits", model.predict_logits(window, rr), logits)
        assert_close("probs", model.predict(window, rr), probs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("arch_name", list(ARCHITECTURES))
def test_fixed_batch_runs_one_example_at_a_time(arch_name: str, seed: int) -> None:
    c = case(arch_name, seed)
    model = TFLiteModel(exported(arch_name, seed, dynamic_batch=False), threads=2)
    assert not model.dynamic_batch
    window, rr = inputs(6, seed + 1)
    logits, probs = c.reference(window, rr)
    assert_close("logits", model.predict_logits(window, rr), logits)
    assert_close("probs", model.predict(window, rr), probs)


@pytest.mark.parametrize("arch_name", ["ecg-cnn-s", "ecg-cnn-m"])
def test_signature_runner_on_the_interpreter(arch_name: str) -> None:
    c = case(arch_name, 0)
    interpreter = Interpreter(model_content=exported(arch_name, 0))
    runner = interpreter.get_signature_runner("serving_default")
    window, rr = inputs(3, 42)
    out = runner(window=window, rr=rr)
    logits, probs = c.reference(window, rr)
    assert_close("logits", out["logits"], logits)
    assert_close("probs", out["probs"], probs)


def test_tflite_runtime_matches_onnxruntime() -> None:
    pytest.importorskip("tflite_runtime.interpreter",
                        reason="tflite-runtime is not installed (ai-edge-litert is its successor)")
    c = case("ecg-cnn-s", 0)
    model = TFLiteModel(exported("ecg-cnn-s", 0), runtime="tflite_runtime")
    window, rr = inputs(4, 3)
    logits, _ = c.reference(window, rr)
    assert_close("logits", model.predict_logits(window, rr), logits)


@pytest.mark.parametrize("arch_name", ["ecg-cnn-s", "ecg-cnn-m"])
def test_flatbuffer_follows_the_schema_conventions(arch_name: str) -> None:
    data = exported(arch_name, 0)
    model = tflite.Model.GetRootAsModel(data, 0)
    assert tflite.Model.ModelBufferHasIdentifier(data, 0)
    assert model.Version() == 3
    assert arch_name.encode() in model.Description()
    assert model.Buffers(0).DataLength() == 0
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        assert code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)
    graph = model.Subgraphs(0)
    names = [graph.Tensors(graph.Inputs(i)).Name() for i in range(graph.InputsLength())]
    assert names == [b"window", b"rr"]
    outputs = [graph.Tensors(graph.Outputs(i)) for i in range(graph.OutputsLength())]
    assert [t.Name() for t in outputs] == [b"logits", b"probs"]
    assert all(list(t.ShapeAsNumpy()) == [1, 5] for t in outputs)
    assert all(list(t.ShapeSignatureAsNumpy()) == [-1, 5] for t in outputs)


def test_write_tflite_and_load_from_path(tmp_path: Path) -> None:
    c = case("ecg-cnn-s", 0)
    path = write_tflite(c.arch, c.params, tmp_path / "model.tflite")
    assert path.read_bytes() == exported("ecg-cnn-s", 0)
    window, rr = inputs(2, 5)
    probs = TFLiteModel(path).predict(window, rr)
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("window_shape", "rr_shape", "match"), [
    ((2, 1, 100), (2, 8), "windows must have shape"),
    ((2, 100), (2, 8), "windows must have shape"),
    ((2, 2, 128), (2, 8), "windows must have shape"),
    ((2, 1, 128), (2, 7), "rr must have shape"),
    ((2, 1, 128), (8,), "rr must have shape"),
    ((2, 1, 128), (3, 8), r"rr must have shape \(2, 8\)"),
])
def test_bad_input_shape_is_a_value_error(window_shape: tuple[int, ...],
                                          rr_shape: tuple[int, ...], match: str) -> None:
    model = TFLiteModel(exported("ecg-cnn-s", 0))
    with pytest.raises(ValueError, match=match):
        model.predict(np.zeros(window_shape, np.float32), np.zeros(rr_shape, np.float32))


def test_non_numeric_or_non_finite_input_is_a_value_error() -> None:
    model = TFLiteModel(exported("ecg-cnn-s", 0))
    with pytest.raises(ValueError, match="numeric"):
        model.predict(np.full((1, 1, 128), "x"), np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full((1, 1, 128), np.nan, np.float32), np.zeros((1, 8), np.float32))


def test_inputs_are_accepted_as_the_onnx_path_accepts_them() -> None:
    """(n, W) windows and integer samples (raw ADC counts) work as with the ORT trainer."""
    model = TFLiteModel(exported("ecg-cnn-s", 0))
    window = np.arange(2 * 128, dtype=np.int16).reshape(2, 128) % 7
    rr = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(model.predict(window, rr),
                                  model.predict(window[:, None, :].astype(np.float32), rr))


def test_empty_batch_gives_no_rows() -> None:
    window, rr = inputs(0, 0)
    assert TFLiteModel(exported("ecg-cnn-s", 0)).predict(window, rr).shape == (0, 5)


def test_missing_runtime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(TFLiteRuntimeMissingError, match=r"pip install 'fedbeat\[tflite\]'"):
        TFLiteModel(exported("ecg-cnn-s", 0))


@dataclass(frozen=True)
class Gelu(layers._NoParams):
    """A layer with an ONNX form but no TFLite lowering."""

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("Gelu", inputs[:1], name=name)


def test_unsupported_layer_raises_export_error() -> None:
    arch = Architecture("test-gelu", (Node("rr.fc", layers.Linear(8, 5), (INPUT_RR,)),
                                      Node("logits", Gelu(), ("rr.fc",))))
    with pytest.raises(TFLiteExportError, match="Gelu"):
        export_tflite(arch, Params.initial(arch, seed=0))


def test_device_runner_imports_no_build_dependencies() -> None:
    code = ("import sys, fedbeat.device.tflite_model; "
            "print(sorted({'onnx', 'torch', 'tensorflow'} & {m.split('.')[0] "
            "for m in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
