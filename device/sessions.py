"""Open onnxruntime sessions on a verified model directory's graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fedbeat.models.manifest import ModelDir, ModelFileError


def session_options(threads: int) -> ort.SessionOptions:
    """One intra-op pool of ``threads``; no inter-op parallelism (the graphs are a chain)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # constants the optimizer folds away are not news
    return options


class GraphRunner:
    """A session plus the names of its inputs and outputs, run with a dict of arrays."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelFileError(f"onnxruntime cannot load {path.name}: {exc}") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._input_shapes = {i.name: i.shape for i in self.session.get_inputs()}

    def declared_shape(self, name: str) -> tuple[int | str | None, ...]:
        """Shape of input ``name`` as the graph declares it (symbolic axes as names)."""
        return tuple(self._input_shapes[name])

    def input_shape(self, name: str) -> tuple[int, ...]:
        """Static shape of input ``name`` without its leading (batch) axis."""
        dims = self.declared_shape(name)[1:]
        if not all(isinstance(d, int) for d in dims):
            raise ModelFileError(f"input {name!r} has no static shape after the batch axis")
        return tuple(int(d) for d in dims if d is not None)

    def run(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {n: feed[n] for n in self.input_names})
        return dict(zip(self.output_names, outputs, strict=True))


class SessionCache:
    """Sessions opened on first use, so a device that only infers never loads training graphs."""

    def __init__(self, model_dir: ModelDir, threads: int) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self._runners: dict[str, GraphRunner] = {}

    def get(self, role: str) -> GraphRunner:
        if role not in self._runners:
            runner = GraphRunner(self.model_dir.file(role), self.threads)
            _check_parameter_inputs(runner, self.model_dir, role)
            self._runners[role] = runner
        return self._runners[role]


def _check_parameter_inputs(runner: GraphRunner, model_dir: ModelDir, role: str) -> None:
    """Refuse a graph whose parameter input differs from the manifest's layout.

    The hashes prove the files are the ones the manifest lists; this proves the manifest and
    the graphs agree, so a hand-assembled directory fails here and not mid-training.
    """
    size = model_dir.manifest.layout.size
    if "params" not in runner.input_names or runner.declared_shape("params") != (size,):
        raise ModelFileError(f"{role} graph does not take the {size} parameters of this "
                             "model's layout: it was built for another model; rebuild the "
                             "directory with `fedbeat model build`")
