"""Reference architectures and the registry that names them.

Both take a beat window at the canonical rate plus RR-interval features (``fedbeat.models.spec``)
and produce five AAMI-class logits. ``ecg-cnn-s`` fits a wearable (under 10k parameters, so a
float32 update is under 40 KB); ``ecg-cnn-m`` is for a Raspberry Pi-class gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fedbeat.models import layers as L
from fedbeat.models.spec import NUM_CLASSES, RR_FEATURES, WINDOW_SAMPLES

INPUT_WINDOW = "window"
INPUT_RR = "rr"
GRAPH_INPUTS = (INPUT_WINDOW, INPUT_RR)


class UnknownModelError(ValueError):
    """Raised for a model name that is not in the registry."""


@dataclass(frozen=True)
class Node:
    """One layer applied to named inputs (graph inputs or earlier nodes)."""

    name: str
    layer: L.Layer
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Architecture:
    """A directed acyclic graph of layers in topological order; the last node gives the logits."""

    name: str
    nodes: tuple[Node, ...]
    window_samples: int = WINDOW_SAMPLES
    rr_features: int = len(RR_FEATURES)
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        seen = set(GRAPH_INPUTS)
        for node in self.nodes:
            missing = [i for i in node.inputs if i not in seen]
            if missing:
                raise ValueError(f"{self.name}: node {node.name!r} reads {missing} "
                                 "before they exist")
            if node.name in seen:
                raise ValueError(f"{self.name}: duplicate node name {node.name!r}")
            seen.add(node.name)

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    def param_specs(self) -> Iterator[tuple[str, L.ParamSpec]]:
        """Yield (full name, spec) for every parameter in the stable declaration order."""
        for node in self.nodes:
            for spec in node.layer.param_specs():
                yield f"{node.name}.{spec.suffix}", spec

    def num_params(self) -> int:
        total = 0
        for _, spec in self.param_specs():
            size = 1
            for dim in spec.shape:
                size *= dim
            total += size
        return total


class _Chain:
    """Tiny helper to write sequential stretches of a DAG without repeating input names."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, name: str, layer: L.Layer, *inputs: str) -> str:
        prev = inputs or (self.nodes[-1].name,)
        self.nodes.append(Node(name, layer, tuple(prev)))
        return name

    def conv_block(self, name: str, conv: L.Conv1d, groups: int, *inputs: str) -> str:
        """Conv -> GroupNorm -> ReLU, the basic unit of both models."""
        self.add(f"{name}.conv", conv, *inputs)
        self.add(f"{name}.norm", L.GroupNorm(groups, conv.out_channels))
        return self.add(f"{name}.act", L.ReLU())


def ecg_cnn_s() -> Architecture:
    """Wearable-class model: three conv blocks, global average pooling, a small RR branch."""
    c = _Chain()
    c.conv_block("b1", L.Conv1d(1, 8, 7, padding=3), 2, INPUT_WINDOW)
    c.add("pool1", L.MaxPool1d(2))                                   # 64
    c.conv_block("b2", L.Conv1d(8, 16, 5, padding=2), 4)
    c.add("pool2", L.MaxPool1d(2))                                   # 32
    c.conv_block("b3", L.Conv1d(16, 32, 5, padding=4, dilation=2), 4)
    wave = c.add("gap", L.GlobalAvgPool())                           # 32
    c.add("rr.fc", L.Linear(len(RR_FEATURES), 8), INPUT_RR)
    rr = c.add("rr.act", L.ReLU())
    c.add("join", L.Concat(), wave, rr)                              # 40
    c.add("head.fc", L.Linear(40, 32))
    c.add("head.act", L.ReLU())
    c.add("head.drop", L.Dropout(0.2))
    c.add("logits", L.Linear(32, NUM_CLASSES))
    return Architecture("ecg-cnn-s", tuple(c.nodes))


def ecg_cnn_m() -> Architecture:
    """Pi-class model: a residual dilated block, strided conv, pooled map kept in time order."""
    c = _Chain()
    c.conv_block("stem", L.Conv1d(1, 16, 7, padding=3), 4, INPUT_WINDOW)
    c.add("pool1", L.MaxPool1d(2))                                   # 16 x 64
    c.conv_block("b1", L.Conv1d(16, 32, 5, padding=2), 8)
    skip = c.add("pool2", L.MaxPool1d(2))                            # 32 x 32
    c.conv_block("res.a", L.Conv1d(32, 32, 3, padding=1), 8)
    c.add("res.b.conv", L.Conv1d(32, 32, 3, padding=2, dilation=2))
    c.add("res.b.norm", L.GroupNorm(8, 32))
    c.add("res.sum", L.Add(), "res.b.norm", skip)
    c.add("res.act", L.ReLU())
    c.conv_block("b2", L.Conv1d(32, 64, 3, stride=2, padding=1), 8)  # 64 x 16
    c.add("pool3", L.AvgPool1d(2))                                   # 64 x 8
    wave = c.add("flat", L.Flatten())                                # 512
    c.add("rr.fc", L.Linear(len(RR_FEATURES), 16), INPUT_RR)
    rr = c.add("rr.act", L.LeakyReLU(0.1))
    c.add("join", L.Concat(), wave, rr)                              # 528
    c.add("head.fc", L.Linear(528, 64))
    c.add("head.act", L.ReLU())
    c.add("head.drop", L.Dropout(0.3))
    c.add("logits", L.Linear(64, NUM_CLASSES))
    return Architecture("ecg-cnn-m", tuple(c.nodes))


ARCHITECTURES: dict[str, Callable[[], Architecture]] = {
    "ecg-cnn-s": ecg_cnn_s,
    "ecg-cnn-m": ecg_cnn_m,
}


def create_architecture(name: str) -> Architecture:
    """Return the architecture registered as ``name``.

    Raises
    ------
    UnknownModelError
        If no architecture has that name; the message lists the known ones.
    """
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {known}") from None
    return factory()
