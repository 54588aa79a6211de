"""Parameter layout, deterministic initialisation and the flat-vector form updates use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedbeat.models.params import ParamError, ParamLayout, Params
from fedbeat.models.zoo import UnknownModelError, create_architecture


@pytest.mark.parametrize(("name", "low", "high"),
                         [("ecg-cnn-s", 1, 10_000), ("ecg-cnn-m", 30_000, 100_000)])
def test_parameter_budgets(name: str, low: int, high: int) -> None:
    assert low <= create_architecture(name).num_params() <= high


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="ecg-cnn-s"):
        create_architecture("resnet-9000")


def test_initialisation_is_deterministic_per_seed() -> None:
    arch = create_architecture("ecg-cnn-s")
    a, b = Params.initial(arch, seed=3), Params.initial(arch, seed=3)
    c = Params.initial(arch, seed=4)
    assert np.array_equal(a.to_flat(), b.to_flat())
    assert not np.array_equal(a.to_flat(), c.to_flat())


def test_initial_values_follow_torch_default_bounds() -> None:
    arch = create_architecture("ecg-cnn-m")
    params = Params.initial(arch, seed=0)
    for name, spec in arch.param_specs():
        if spec.init == "uniform_fan_in":
            assert np.abs(params[name]).max() <= 1 / np.sqrt(spec.fan_in)
    assert np.all(params["stem.norm.weight"] == 1)
    assert np.all(params["stem.norm.bias"] == 0)


def test_flat_round_trip_and_file_round_trip(tmp_path: Path) -> None:
    arch = create_architecture("ecg-cnn-m")
    params = Params.initial(arch, seed=1)
    flat = params.to_flat()
    assert flat.dtype == np.float32
    assert flat.size == arch.num_params()
    again = Params.from_flat(params.layout, flat)
    assert all(np.array_equal(again[n], params[n]) for n in params)
    params.save(tmp_path / "p.bin")
    loaded = Params.load(params.layout, tmp_path / "p.bin")
    assert np.array_equal(loaded.to_flat(), flat)


def test_layout_order_is_declaration_order_and_digest_is_stable() -> None:
    layout = ParamLayout.from_architecture(create_architecture("ecg-cnn-s"))
    assert layout.names[:2] == ("b1.conv.weight", "b1.conv.bias")
    assert layout.names[-1] == "logits.bias"
    assert layout.digest() == ParamLayout.from_json(layout.to_json()).digest()
    other = ParamLayout.from_architecture(create_architecture("ecg-cnn-m"))
    assert layout.digest() != other.digest()


@pytest.mark.parametrize("bad", [
    np.zeros(10, dtype=np.float32),                       # wrong length
    np.zeros((2, 4973 // 2), dtype=np.float32),           # not flat
    np.zeros(4973, dtype=np.int32),                       # not floating point
    np.full(4973, np.nan, dtype=np.float32),              # not finite
])
def test_from_flat_rejects_bad_vectors(bad: np.ndarray) -> None:
    layout = ParamLayout.from_architecture(create_architecture("ecg-cnn-s"))
    with pytest.raises(ParamError):
        Params.from_flat(layout, bad)


def test_params_reject_wrong_names_and_shapes() -> None:
    arch = create_architecture("ecg-cnn-s")
    params = Params.initial(arch, seed=0)
    tensors = dict(params)
    tensors["extra"] = np.zeros(1, dtype=np.float32)
    with pytest.raises(ParamError, match="unexpected"):
        Params(params.layout, tensors)
    tensors = dict(params)
    tensors["logits.bias"] = np.zeros(7, dtype=np.float32)
    with pytest.raises(ParamError, match="shape"):
        Params(params.layout, tensors)


def test_load_rejects_truncated_file(tmp_path: Path) -> None:
    arch = create_architecture("ecg-cnn-s")
    params = Params.initial(arch, seed=0)
    (tmp_path / "p.bin").write_bytes(params.to_flat().tobytes()[:-4])
    with pytest.raises(ParamError, match="bytes"):
        Params.load(params.layout, tmp_path / "p.bin")


def test_difference_is_an_update() -> None:
    arch = create_architecture("ecg-cnn-s")
    a, b = Params.initial(arch, seed=0), Params.initial(arch, seed=1)
    assert np.allclose((b - a).to_flat(), b.to_flat() - a.to_flat())
