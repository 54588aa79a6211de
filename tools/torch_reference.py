"""Torch reference implementation of fedbeat architectures.

The gradient oracle for tests (in float64) and the baseline for ``fedbeat bench train`` (in
float32). torch is never a runtime dependency: only tests and benchmarks import this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from fedbeat.models import layers as L
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture


def torch_params(params: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
            for n, v in params.items()}


def forward(arch: Architecture, params: Mapping[str, torch.Tensor], window: torch.Tensor,
            rr: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Run the architecture with torch.nn.functional; ``masks`` are scaled dropout masks."""
    values: dict[str, torch.Tensor] = {INPUT_WINDOW: window, INPUT_RR: rr}
    for node in arch.nodes:
        x = [values[i] for i in node.inputs]
        layer = node.layer

        def p(suffix: str, node_name: str = node.name) -> torch.Tensor:
            return params[f"{node_name}.{suffix}"]

        if isinstance(layer, L.Conv1d):
            y = F.conv1d(x[0], p("weight"), p("bias"), stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation)
        elif isinstance(layer, L.Linear):
            y = F.linear(x[0], p("weight"), p("bias"))
        elif isinstance(layer, L.GroupNorm):
            y = F.group_norm(x[0], layer.groups, p("weight").reshape(-1),
                             p("bias").reshape(-1), eps=layer.eps)
        elif isinstance(layer, L.ReLU):
            y = F.relu(x[0])
        elif isinstance(layer, L.LeakyReLU):
            y = F.leaky_relu(x[0], layer.alpha)
        elif isinstance(layer, L.MaxPool1d):
            y = F.max_pool1d(x[0], layer.kernel, layer.stride or layer.kernel)
        elif isinstance(layer, L.AvgPool1d):
            y = F.avg_pool1d(x[0], layer.kernel, layer.stride or layer.kernel)
        elif isinstance(layer, L.GlobalAvgPool):
            y = x[0].mean(dim=2)
        elif isinstance(layer, L.Flatten):
            y = x[0].flatten(1)
        elif isinstance(layer, L.Dropout):
            y = x[0] * masks[node.name] if masks and node.name in masks else x[0]
        elif isinstance(layer, L.Add):
            y = x[0] + x[1]
        elif isinstance(layer, L.Concat):
            y = torch.cat(x, dim=1)
        else:  # pragma: no cover - a new layer type needs an oracle branch
            raise NotImplementedError(type(layer).__name__)
        values[node.name] = y
    return values[arch.output]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, weight=class_weight)
