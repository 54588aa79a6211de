"""Write a complete model directory: graphs, initial parameters, manifest."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import onnx

from fedbeat import __version__
from fedbeat.models.graph.build import (
    build_apply,
    build_dpsgd_grad,
    build_inference,
    build_train_step,
)
from fedbeat.models.graph.emit import IR_VERSION, OPSET
from fedbeat.models.graph.head import (
    build_head_apply,
    build_head_dpsgd,
    build_head_features,
    build_head_train_step,
    split_head,
)
from fedbeat.models.graph.optim import OPTIMIZERS
from fedbeat.models.layers import Dropout
from fedbeat.models.manifest import InputSpec, ModelManifest, sha256_file
from fedbeat.models.params import ParamLayout, Params
from fedbeat.models.spec import CLASSES, R_PEAK_INDEX, RR_FEATURES, SAMPLE_RATE_HZ
from fedbeat.models.zoo import create_architecture


def build_model_dir(model: str, out_dir: Path, *, seed: int = 0,
                    optimizers: Iterable[str] = tuple(OPTIMIZERS)) -> ModelManifest:
    """Build every graph of ``model`` into ``out_dir`` and write ``manifest.json`` last.

    Writing the manifest last means an interrupted build never looks complete.
    """
    arch = create_architecture(model)
    optimizers = tuple(optimizers)
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {unknown}; choose from {sorted(OPTIMIZERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, onnx.ModelProto] = {
        "inference": build_inference(arch),
        "dpsgd": build_dpsgd_grad(arch),
    }
    for opt in optimizers:
        graphs[f"train_{opt}"] = build_train_step(arch, opt)
        graphs[f"apply_{opt}"] = build_apply(arch, opt)
    head = split_head(arch)
    graphs["head_features"] = build_head_features(arch)
    graphs["dpsgd_head"] = build_head_dpsgd(arch)
    for opt in optimizers:
        graphs[f"train_head_{opt}"] = build_head_train_step(arch, opt)
        graphs[f"apply_head_{opt}"] = build_head_apply(arch, opt)
    files: dict[str, tuple[str, str]] = {}
    for role, graph in graphs.items():
        path = out_dir / f"{role}.onnx"
        onnx.save_model(graph, path)
        files[role] = (path.name, sha256_file(path))
    params_path = out_dir / "params.bin"
    Params.initial(arch, seed=seed).save(params_path)
    files["params"] = (params_path.name, sha256_file(params_path))
    manifest = ModelManifest(
        model=model,
        layout=ParamLayout.from_architecture(arch),
        inputs=InputSpec(SAMPLE_RATE_HZ, arch.window_samples, R_PEAK_INDEX, RR_FEATURES,
                         CLASSES),
        files=files,
        optimizers=optimizers,
        opset=OPSET,
        ir_version=IR_VERSION,
        seed=seed,
        dropout={node.name: node.layer.p for node in arch.nodes
                 if isinstance(node.layer, Dropout)},
        fedbeat_version=__version__,
        extra={"head": {"boundary": head.boundary, "features": head.features,
                        "tensors": list(head.tensors)}},
    )
    manifest.write(out_dir)
    return manifest
