"""Fuzz the manifest and layout decoders: any JSON gives a valid manifest or ModelFileError.

Global models will arrive over MQTT with their manifest, so these decoders read untrusted
bytes: they must never raise anything else (a crash of the device daemon) or accept nonsense.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbeat.models.manifest import ModelFileError, ModelManifest
from fedbeat.models.params import ParamError, ParamLayout

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
@settings(max_examples=300)
def test_layout_decoder_accepts_only_valid_layouts(data: Any) -> None:
    try:
        layout = ParamLayout.from_json(data)
    except ParamError:
        return
    assert layout.size > 0
    assert all(all(d > 0 for d in shape) for _, shape in layout.entries)


@given(json_values)
@settings(max_examples=300)
def test_manifest_decoder_never_crashes_on_arbitrary_json(data: Any) -> None:
    with contextlib.suppress(ModelFileError):
        ModelManifest.from_json(data)


def _mutations() -> st.SearchStrategy[tuple[str, Any]]:
    keys = st.sampled_from(["format_version", "model", "layout", "layout_sha256", "inputs",
                            "files", "optimizers", "opset", "ir_version", "seed", "dropout",
                            "fedbeat_version"])
    return st.tuples(keys, json_values)


@given(mutation=_mutations())
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_real_manifest_is_valid_or_refused(model_dirs: dict[str, Path],
                                                   mutation: tuple[str, Any]) -> None:
    data = json.loads((model_dirs["ecg-cnn-s"] / "manifest.json").read_text())
    key, value = mutation
    data[key] = value
    try:
        manifest = ModelManifest.from_json(data)
    except ModelFileError:
        return
    # Whatever was accepted is internally consistent and names only plain files.
    assert manifest.layout.digest() == data["layout_sha256"]
    assert all(Path(name).name == name for name, _ in manifest.files.values())
