"""Round announcements: what devices train with, parsed strictly (and fuzzed)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbeat.broker import cbor
from fedbeat.broker.errors import Rejected
from fedbeat.broker.rounds import Announcement, TrainingConfig

GOOD = Announcement(3, 2, "ab" * 32, 1_700_000_000_000, 2, 5, 1.0, "seed",
                    TrainingConfig(compression="topk:0.25", class_weight=(0.3, 8.6, 3.4, 10.0,
                                                                          10.0)),
                    "open", "")


def _wire(announcement: Announcement) -> Any:
    return cbor.decode(cbor.encode(announcement.to_body()), "round")


def test_compression_and_class_weights_survive_the_wire() -> None:
    parsed = Announcement.from_body(_wire(GOOD))
    assert parsed == GOOD
    plain = Announcement.from_body(_wire(Announcement(
        1, 1, "cd" * 32, 0, 1, 1, 1.0, "s", TrainingConfig(), "open", "")))
    assert plain.training.class_weight == ()
    assert plain.training.compression == "f32"


@pytest.mark.parametrize(("key", "value"), [
    ("class_weight", ["1", 2.0]), ("class_weight", [1.0] * 17), ("class_weight", [-1.0, 2.0]),
    ("class_weight", [0.0, 0.0]), ("class_weight", 1.0), ("class_weight", [True]),
    ("class_weight", [math.inf]), ("compression", "zip"), ("compression", 3),
])
def test_bad_training_fields_are_refused_as_malformed(key: str, value: Any) -> None:
    body = _wire(GOOD)
    body["training"][key] = value
    with pytest.raises(Rejected):
        Announcement.from_body(body)


values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                      | st.text(max_size=20) | st.binary(max_size=20),
                      lambda inner: st.lists(inner, max_size=20)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=30)


@given(st.sampled_from(sorted(GOOD.to_body())), st.sampled_from(sorted(
    TrainingConfig.__dataclass_fields__)), values, st.booleans())
def test_any_field_replaced_by_anything_parses_or_is_refused(
        key: str, training_key: str, value: Any, in_training: bool) -> None:
    body = _wire(GOOD)
    if in_training:
        body["training"][training_key] = value
    else:
        body[key] = value
    try:
        parsed = Announcement.from_body(body)
    except Rejected:
        return
    parsed.validate()                                     # what parses is a valid round
