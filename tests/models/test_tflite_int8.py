"""Int8 post-training quantization: the file follows TFLite's int8 scheme, loads in
ai-edge-litert, and agrees with the float32 export on held-out beats."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="TFLite tests need the 'tflite' extra "
                    "(pip install 'fedbeat[tflite]')")

import tflite
from click.testing import CliRunner
from models.test_tflite import ARCHITECTURES, case, inputs

from fedbeat.device.tflite_model import TFLiteModel
from fedbeat.device.trainer import TrainConfig, Trainer, balanced_class_weight
from fedbeat.models.graph.export import build_model_dir
from fedbeat.models.params import Params
from fedbeat.models.tflite_export import export_tflite
from fedbeat.models.tflite_quant import (
    CalibrationError,
    export_tflite_int8,
    representative_beats,
    write_tflite_int8,
)
from fedbeat.models.zoo import create_architecture
from fedbeat.tools.cli import cli
from fedbeat.tools.datasets import load_dataset, stack

if TYPE_CHECKING:
    from pathlib import Path

CALIBRATION_BEATS = 400


@cache
def quantized(arch_name: str, io: str = "float32", dynamic_batch: bool = True,
              groupnorm: str = "int16") -> bytes:
    c = case(arch_name, 0)
    window, rr = inputs(CALIBRATION_BEATS, 1000)
    return export_tflite_int8(c.arch, c.params, window, rr, io=io, dynamic_batch=dynamic_batch,
                              groupnorm=groupnorm)


def agreement(arch_name: str, io: str, groupnorm: str = "int16") -> tuple[float, float]:
    """(top-1 agreement, max |prob difference|) with the float32 export on held-out inputs."""
    c = case(arch_name, 0)
    window, rr = inputs(300, 2000)
    reference, model = TFLiteModel(export_tflite(c.arch, c.params)), TFLiteModel(
        quantized(arch_name, io, groupnorm=groupnorm))
    top1 = (model.predict_logits(window, rr).argmax(1)      # int8 probs (1/256 steps) tie
            == reference.predict_logits(window, rr).argmax(1))
    diff = np.abs(model.predict(window, rr) - reference.predict(window, rr))
    return float(np.mean(top1)), float(np.max(diff))


@pytest.mark.parametrize("groupnorm", ["int16", "float", "int8"])
@pytest.mark.parametrize("io", ["float32", "int8"])
@pytest.mark.parametrize("arch_name", list(ARCHITECTURES))
def test_int8_agrees_with_float32_on_held_out_inputs(arch_name: str, io: str,
                                                     groupnorm: str) -> None:
    """Random weights give near-uniform probabilities, the hardest case for top-1 agreement."""
    agree, max_diff = agreement(arch_name, io, groupnorm)
    assert agree >= 0.9, f"top-1 agreement {agree:.3f}"
    assert max_diff <= 0.02 if io == "float32" else max_diff <= 0.03, f"max |dp| {max_diff:.3g}"


@cache
def trained_on_synthetic_beats(tmp: str) -> tuple[Params, tuple[np.ndarray, ...],
                                                  tuple[np.ndarray, ...]]:
    """ecg-cnn-s trained briefly on synthetic patients: confident, meaningful predictions."""
    from pathlib import Path

    model_dir = Path(tmp) / "model"
    build_model_dir("ecg-cnn-s", model_dir, optimizers=("sgd",))
    dataset = load_dataset(None, seed=0)
    windows, rr, labels = stack(dataset.train)
    trainer = Trainer(model_dir)
    beats = trainer.beats(windows[::3], rr[::3], labels[::3])
    assert beats.labels is not None
    trainer.fit(beats, TrainConfig(epochs=2, lr=0.02, seed=0, class_weight=balanced_class_weight(
        beats.labels, 5)))
    return trainer.params, (windows[1::3], rr[1::3]), tuple(stack(dataset.test)[:2])


def test_trained_model_int8_agrees_on_held_out_patients(tmp_path_factory:
                                                        pytest.TempPathFactory) -> None:
    params, train, test = trained_on_synthetic_beats(str(tmp_path_factory.mktemp("int8")))
    arch = create_architecture("ecg-cnn-s")
    calibration = representative_beats(*train, count=1000)
    want = TFLiteModel(export_tflite(arch, params)).predict(*test)
    got = TFLiteModel(export_tflite_int8(arch, params, *calibration)).predict(*test)
    agree = float(np.mean(got.argmax(1) == want.argmax(1)))
    mean_diff = float(np.mean(np.abs(got - want)))
    assert agree >= 0.98, f"top-1 agreement {agree:.4f} on {len(want)} held-out beats"
    assert mean_diff <= 0.01, f"mean |dp| {mean_diff:.3g}"


def tensors_of(data: bytes) -> tuple[tflite.SubGraph, tflite.Model]:
    model = tflite.Model.GetRootAsModel(data, 0)
    return model.Subgraphs(0), model


def op_names(data: bytes) -> list[str]:
    graph, model = tensors_of(data)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    return [names[model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode()]
            for i in range(graph.OperatorsLength())]


@pytest.mark.parametrize("groupnorm", ["int16", "float", "int8"])
@pytest.mark.parametrize("arch_name", ["ecg-cnn-s", "ecg-cnn-m"])
def test_file_follows_the_int8_scheme(arch_name: str, groupnorm: str) -> None:
    data = quantized(arch_name, groupnorm=groupnorm)
    graph, model = tensors_of(data)
    assert b"int8" in model.Description()
    ops = op_names(data)
    assert ops[:2] == ["QUANTIZE", "QUANTIZE"]
    assert ops[-2:] == ["DEQUANTIZE", "SOFTMAX"]
    arch = create_architecture(arch_name)
    norms = [n.name for n in arch.nodes if type(n.layer).__name__ == "GroupNorm"]
    islands = len(norms) if groupnorm != "int8" else 0
    assert ops.count("QUANTIZE") == 2 + (2 if groupnorm == "int16" else 1) * islands
    assert ops.count("DEQUANTIZE") == 1 + (islands if groupnorm == "float" else 0)
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
    by_name = {t.Name().decode(): t for t in tensors}
    for name in ("window", "rr", "logits", "probs"):
        assert by_name[name].Type() == tflite.TensorType.FLOAT32, name
    float_tensors = {"window", "rr", "logits", "probs"}
    for t in tensors:
        name = t.Name().decode()
        if groupnorm != "int8" and any(name.startswith(n) and not name.endswith("/int8")
                                       for n in norms):
            island_type = (tflite.TensorType.INT16 if groupnorm == "int16"
                           else tflite.TensorType.FLOAT32)
            assert t.Type() in (island_type, tflite.TensorType.INT32), name   # int32: shapes
            if t.Type() == tflite.TensorType.INT16:
                assert t.Quantization().ZeroPointAsNumpy().tolist() == [0], name
            continue
        q = t.Quantization()
        if t.Type() == tflite.TensorType.INT8:
            assert q is not None, name
            assert q.ScaleLength() >= 1, name
        elif t.Type() == tflite.TensorType.FLOAT32:
            assert name in float_tensors, f"{name} left in float32"
    for node in arch.nodes:
        if type(node.layer).__name__ == "Conv1d":
            w, b = by_name[f"{node.name}.weight"], by_name[f"{node.name}.bias"]
            assert w.Type() == tflite.TensorType.INT8
            assert b.Type() == tflite.TensorType.INT32
            channels = node.layer.out_channels  # type: ignore[attr-defined]
            for t in (w, b):
                q = t.Quantization()
                assert q.ScaleLength() == channels
                assert q.QuantizedDimension() == 0
                assert not q.ZeroPointAsNumpy().any()
        elif type(node.layer).__name__ == "Linear":
            w, b = by_name[f"{node.name}.weight"], by_name[f"{node.name}.bias"]
            assert w.Type() == tflite.TensorType.INT8
            assert b.Type() == tflite.TensorType.INT32
            assert w.Quantization().ScaleLength() == 1
            assert w.Quantization().ZeroPointAsNumpy().tolist() == [0]
    codes = {model.OperatorCodes(i).BuiltinCode(): model.OperatorCodes(i).Version()
             for i in range(model.OperatorCodesLength())}
    assert codes[tflite.BuiltinOperator.CONV_2D] == 3
    assert codes[tflite.BuiltinOperator.FULLY_CONNECTED] == 4
    assert len(data) < 0.8 * len(export_tflite(arch, case(arch_name, 0).params))


def test_int16_islands_use_general_int16_add_and_sub() -> None:
    """``PotScaleInt16=False``: TFLite's default assumes power-of-two int16 scales."""
    data = quantized("ecg-cnn-s")
    graph, model = tensors_of(data)
    found = 0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
        output = graph.Tensors(op.Outputs(0))
        if code in (tflite.BuiltinOperator.ADD, tflite.BuiltinOperator.SUB) \
                and output.Type() == tflite.TensorType.INT16:
            table = op.BuiltinOptions()
            options = (tflite.AddOptions() if code == tflite.BuiltinOperator.ADD
                       else tflite.SubOptions())
            options.Init(table.Bytes, table.Pos)
            assert options.PotScaleInt16() is False
            found += 1
    assert found == 3 * 3          # per GroupNorm: SUB (centring), ADD (epsilon), ADD (bias)


def test_bias_scale_is_input_scale_times_weight_scale() -> None:
    graph, _ = tensors_of(quantized("ecg-cnn-s"))
    by_name = {graph.Tensors(i).Name().decode(): graph.Tensors(i)
               for i in range(graph.TensorsLength())}
    pad = by_name["b2.conv/pad"].Quantization().ScaleAsNumpy()
    weight = by_name["b2.conv.weight"].Quantization().ScaleAsNumpy()
    bias = by_name["b2.conv.bias"].Quantization().ScaleAsNumpy()
    np.testing.assert_allclose(bias, pad[0] * weight, rtol=1e-6)


def test_int8_io_model_is_run_with_float_beats() -> None:
    model = TFLiteModel(quantized("ecg-cnn-s", "int8"))
    assert model.precision == "int8"
    graph, _ = tensors_of(quantized("ecg-cnn-s", "int8"))
    types = [graph.Tensors(graph.Inputs(i)).Type() for i in range(graph.InputsLength())]
    assert types == [tflite.TensorType.INT8] * 2
    window, rr = inputs(5, 3)
    probs = model.predict(window, rr)
    assert probs.dtype == np.float32
    assert probs.shape == (5, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=5 * 2 ** -8)
    float_edges = TFLiteModel(quantized("ecg-cnn-s")).predict(window, rr)
    assert np.max(np.abs(probs - float_edges)) <= 0.02


def test_fixed_batch_int8_runs_beat_by_beat() -> None:
    model = TFLiteModel(quantized("ecg-cnn-s", dynamic_batch=False))
    assert not model.dynamic_batch
    assert model.precision == "int8"
    window, rr = inputs(4, 9)
    batched = TFLiteModel(quantized("ecg-cnn-s")).predict(window, rr)
    np.testing.assert_allclose(model.predict(window, rr), batched, atol=1e-6)


def test_float32_export_stays_float() -> None:
    c = case("ecg-cnn-s", 0)
    model = TFLiteModel(export_tflite(c.arch, c.params))
    assert model.precision == "float32"
    assert "QUANTIZE" not in op_names(export_tflite(c.arch, c.params))


def test_same_calibration_gives_the_same_bytes(tmp_path: Path) -> None:
    c = case("ecg-cnn-s", 0)
    window, rr = inputs(CALIBRATION_BEATS, 1000)
    path = write_tflite_int8(c.arch, c.params, tmp_path / "m.tflite", window, rr)
    assert path.read_bytes() == quantized("ecg-cnn-s")


def test_bad_calibration_beats_are_refused() -> None:
    c = case("ecg-cnn-s", 0)
    window, rr = inputs(3, 0)
    with pytest.raises(CalibrationError, match="no calibration beats"):
        export_tflite_int8(c.arch, c.params, window[:0], rr[:0])
    with pytest.raises(CalibrationError, match="128 samples"):
        export_tflite_int8(c.arch, c.params, window[:, :, :100], rr)
    window[0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="NaN"):
        export_tflite_int8(c.arch, c.params, window, rr)
    with pytest.raises(ValueError, match="io"):
        export_tflite_int8(c.arch, c.params, *inputs(3, 0), io="int4")
    with pytest.raises(ValueError, match="groupnorm"):
        export_tflite_int8(c.arch, c.params, *inputs(3, 0), groupnorm="int4")
    with pytest.raises(CalibrationError, match="coverage"):
        export_tflite_int8(c.arch, c.params, *inputs(3, 0), coverage=0.2)


def test_representative_beats_is_a_seeded_subset() -> None:
    window, rr = inputs(50, 4)
    w1, r1 = representative_beats(window, rr, count=10, seed=3)
    w2, _ = representative_beats(window, rr, count=10, seed=3)
    assert w1.shape == (10, 1, 128)
    assert r1.shape == (10, 8)
    np.testing.assert_array_equal(w1, w2)
    assert all(any(np.array_equal(row, x) for x in window) for row in w1)
    assert representative_beats(window, rr, count=100)[0].shape == (50, 1, 128)


def test_cli_exports_int8_from_an_npz(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    build_model_dir("ecg-cnn-s", model_dir, optimizers=("sgd",))
    window, rr = inputs(200, 5)
    np.savez(tmp_path / "cal.npz", windows=window, rr=rr)
    out = tmp_path / "m.tflite"
    result = CliRunner().invoke(cli, ["model", "export-tflite", str(model_dir), "--out", str(out),
                                      "--int8", "--calibration", str(tmp_path / "cal.npz"),
                                      "--calibration-beats", "150", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["precision"] == "int8"
    assert report["calibration_beats"] == 150
    assert TFLiteModel(out).precision == "int8"
    bad = CliRunner().invoke(cli, ["model", "export-tflite", str(model_dir), "--out", str(out),
                                   "--int8"])
    assert bad.exit_code != 0
    assert "--calibration" in bad.output
