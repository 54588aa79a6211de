"""Beat sources that hand over beats already cut: synthetic patients and beats files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedbeat.device.config import SourceError
from fedbeat.device.runtime.sources import beats_file_source, synthetic_source
from fedbeat.models.spec import RR_FEATURES, WINDOW_SAMPLES


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"windows": rng.standard_normal((n, WINDOW_SAMPLES)).astype(np.float32),
            "rr": rng.uniform(0.5, 1.5, (n, len(RR_FEATURES))).astype(np.float32),
            "labels": rng.integers(0, 5, n)}


def test_a_beats_file_is_replayed_in_order_then_ends(tmp_path: Path) -> None:
    arrays = _arrays(40)
    path = tmp_path / "dev.npz"
    np.savez(path, **arrays)
    source = beats_file_source(path, speed=0)
    got = source.poll()
    assert got is not None
    assert got.labels is not None
    np.testing.assert_array_equal(got.windows, arrays["windows"])
    np.testing.assert_array_equal(got.rr, arrays["rr"])
    np.testing.assert_array_equal(got.labels, arrays["labels"])
    assert source.poll() is None


def test_paced_beats_arrive_like_a_heartbeat() -> None:
    now = [0.0]
    source = synthetic_source(3, speed=1.0, clock=lambda: now[0])
    first = source.poll()
    assert first is not None
    assert len(first) == 0
    now[0] = 8.0                                    # 8 s at 0.8 s a beat
    second = source.poll()
    assert second is not None
    assert len(second) == 10
    assert source.name.startswith("SYNTHETIC")


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": np.full(40, 7)}, "AAMI class codes"),
    ({"windows": np.zeros((40, 64), np.float32)}, "windows must be"),
    ({"rr": np.full((40, len(RR_FEATURES)), np.nan, np.float32)}, "finite"),
    ({"labels": np.zeros((40, 2), np.int64)}, "one integer per beat"),
])
def test_a_bad_beats_file_is_refused_with_what_is_wrong(tmp_path: Path, change: dict[str, object],
                                                        message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **{**_arrays(40), **change})
    with pytest.raises(SourceError, match=message):
        beats_file_source(path)


def test_an_unreadable_or_incomplete_beats_file_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(SourceError, match="cannot read"):
        beats_file_source(text)
    with pytest.raises(SourceError, match="cannot read"):
        beats_file_source(tmp_path / "missing.npz")
    partial = tmp_path / "partial.npz"
    arrays = _arrays(5)
    np.savez(partial, windows=arrays["windows"], labels=arrays["labels"])
    with pytest.raises(SourceError, match="no array rr;"):
        beats_file_source(partial)
