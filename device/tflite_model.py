"""Run an exported fedbeat ``.tflite`` model on a device.

The interpreter comes from ``ai-edge-litert`` (the maintained TFLite runtime) or, failing that,
the older ``tflite-runtime`` wheel still found on some boards. Neither onnx, torch nor
TensorFlow is imported here. Models exported with a dynamic batch run a whole batch at once;
fixed-batch models (batch 1, the wearable case) run the examples one at a time.

Int8 models (``fedbeat.models.tflite_quant``) run through the same calls: with float32 edges
the file quantizes and dequantizes itself; with int8 inputs and outputs this runner quantizes
the float beats with each input's scale and zero point and dequantizes the outputs, so callers
always pass and receive float32.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.device.beats import check_model_inputs

INPUT_WINDOW = "window"
INPUT_RR = "rr"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBS = "probs"

RUNTIMES: dict[str, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
}
"""Interpreter modules by runtime name, in order of preference."""


class TFLiteRuntimeMissingError(ImportError):
    """No TFLite interpreter package is installed."""


def load_interpreter_class(runtime: str = "auto") -> Any:
    """Return an ``Interpreter`` class from ``runtime`` ("auto" tries each of :data:`RUNTIMES`).

    Raises
    ------
    TFLiteRuntimeMissingError
        If the requested runtime (or, for "auto", every runtime) cannot be imported.
    ValueError
        For an unknown runtime name.
    """
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ValueError(f"unknown TFLite runtime {runtime!r}; choose auto or one of "
                         f"{', '.join(RUNTIMES)}")
    names = list(RUNTIMES) if runtime == "auto" else [runtime]
    for name in names:
        try:
            module = importlib.import_module(RUNTIMES[name])
        except ImportError:
            continue
        return module.Interpreter
    raise TFLiteRuntimeMissingError(
        f"no TFLite interpreter found (tried {', '.join(RUNTIMES[n] for n in names)}); "
        "install one with: pip install 'fedbeat[tflite]'")


class TFLiteModel:
    """A fedbeat TFLite classifier: beat windows plus RR features in, class probabilities out.

    Parameters
    ----------
    path_or_bytes
        The ``.tflite`` file, or its contents.
    threads
        Interpreter threads (1 suits a wearable; more only helps large batches).
    runtime
        "auto" (ai-edge-litert, else tflite-runtime) or a name from :data:`RUNTIMES`.
    """

    def __init__(self, path_or_bytes: str | Path | bytes, *, threads: int = 1,
                 runtime: str = "auto") -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        interpreter_class = load_interpreter_class(runtime)
        if isinstance(path_or_bytes, bytes | bytearray):
            self._interpreter = interpreter_class(model_content=bytes(path_or_bytes),
                                                  num_threads=threads)
        else:
            self._interpreter = interpreter_class(model_path=str(path_or_bytes),
                                                  num_threads=threads)
        self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        self._outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        missing = {INPUT_WINDOW, INPUT_RR} - set(self._inputs)
        missing |= {OUTPUT_LOGITS, OUTPUT_PROBS} - set(self._outputs)
        if missing:
            raise ValueError(f"not a fedbeat model: tensors {sorted(missing)} are missing")
        window_shape = self._inputs[INPUT_WINDOW]["shape"]
        self.window_samples = int(window_shape[-1])
        self.rr_features = int(self._inputs[INPUT_RR]["shape"][-1])
        self.num_classes = int(self._outputs[OUTPUT_PROBS]["shape"][-1])
        signature = self._inputs[INPUT_WINDOW].get("shape_signature", window_shape)
        self.dynamic_batch = int(signature[0]) == -1
        self._batch = int(window_shape[0])
        self._interpreter.allocate_tensors()
        int8 = {np.dtype(d["dtype"]) == np.int8 for d in self._interpreter.get_tensor_details()}
        self.precision = "int8" if True in int8 else "float32"
        """"int8" for a quantized model (any int8 tensor), else "float32"."""

    def predict(self, window: np.ndarray, rr: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for windows (n, 1, T) and RR (n, F)."""
        return self._run(window, rr, OUTPUT_PROBS)

    def predict_logits(self, window: np.ndarray, rr: np.ndarray) -> np.ndarray:
        """Logits, shape (n, classes), for windows (n, 1, T) and RR features (n, F)."""
        return self._run(window, rr, OUTPUT_LOGITS)

    def _run(self, window: np.ndarray, rr: np.ndarray, output: str) -> np.ndarray:
        window, rr = self._validate(window, rr)
        n = window.shape[0]
        if n == 0:
            return np.empty((0, self.num_classes), dtype=np.float32)
        if self.dynamic_batch:
            return self._invoke(window, rr, output)
        return np.concatenate([self._invoke(window[i:i + 1], rr[i:i + 1], output)
                               for i in range(n)])

    def _validate(self, window: np.ndarray, rr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return check_model_inputs(window, rr, window_samples=self.window_samples,
                                  rr_features=self.rr_features)

    def _resize(self, n: int) -> None:
        """Give the interpreter batch ``n`` (only reallocates when the batch changes)."""
        if n == self._batch:
            return
        self._interpreter.resize_tensor_input(self._inputs[INPUT_WINDOW]["index"],
                                              [n, 1, self.window_samples])
        self._interpreter.resize_tensor_input(self._inputs[INPUT_RR]["index"],
                                              [n, self.rr_features])
        self._interpreter.allocate_tensors()
        self._batch = n

    def _invoke(self, window: np.ndarray, rr: np.ndarray, output: str) -> np.ndarray:
        self._resize(window.shape[0])
        for name, value in ((INPUT_WINDOW, window), (INPUT_RR, rr)):
            details = self._inputs[name]
            self._interpreter.set_tensor(details["index"], _to_input(value, details))
        self._interpreter.invoke()
        details = self._outputs[output]
        return _from_output(self._interpreter.get_tensor(details["index"]), details)


def _to_input(value: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Quantize float ``value`` for an integer input tensor (round half to even, saturate)."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return value
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    q = np.round(value.astype(np.float64) / float(scale)) + int(zero_point)
    return np.asarray(np.clip(q, info.min, info.max), dtype=dtype)


def _from_output(value: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Dequantize an integer output tensor; a float output is copied."""
    if np.dtype(details["dtype"]) == np.float32:
        return np.array(value, dtype=np.float32)
    scale, zero_point = details["quantization"]
    real = (value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return np.asarray(real, dtype=np.float32)
