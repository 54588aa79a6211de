"""MIT-BIH records: AAMI beat counts, the inter-patient split, lead choice, broken input, the
``fedbeat data`` commands, and properties of the causal features, filter and resampling.

The expected counts are the data bundle's README table (``README.md`` beside ``mitdb/``), which
matches the published figures; counting them from the ``.atr`` files checks the AAMI mapping.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedbeat.device.ecg.mitdb import (
    ALL_RECORDS,
    DS1,
    DS2,
    PACED,
    lead_preference,
    patient_of,
    read_record_beats,
)
from fedbeat.device.ecg.records import (
    RecordError,
    list_records,
    read_beat_annotations,
    read_header,
    read_lead,
    resample,
)
from fedbeat.device.ecg.rr import rr_features
from fedbeat.device.ecg.windows import causal_bandpass
from fedbeat.models.spec import CLASSES, RR_FEATURES, SAMPLE_RATE_HZ
from fedbeat.tools.cli import cli
from fedbeat.tools.data_records import unreachable

# Per record: leads (channel 0/channel 1), then beats N, S, V, F, Q and the total.
README_RECORDS: dict[str, tuple[str, int, int, int, int, int, int]] = {
    "100": ("MLII/V5", 2239, 33, 1, 0, 0, 2273), "101": ("MLII/V1", 1860, 3, 0, 0, 2, 1865),
    "102": ("V5/V2", 99, 0, 4, 0, 2084, 2187), "103": ("MLII/V2", 2082, 2, 0, 0, 0, 2084),
    "104": ("V5/V2", 163, 0, 2, 0, 2064, 2229), "105": ("MLII/V1", 2526, 0, 41, 0, 5, 2572),
    "106": ("MLII/V1", 1507, 0, 520, 0, 0, 2027), "107": ("MLII/V1", 0, 0, 59, 0, 2078, 2137),
    "108": ("MLII/V1", 1740, 4, 17, 2, 0, 1763), "109": ("MLII/V1", 2492, 0, 38, 2, 0, 2532),
    "111": ("MLII/V1", 2123, 0, 1, 0, 0, 2124), "112": ("MLII/V1", 2537, 2, 0, 0, 0, 2539),
    "113": ("MLII/V1", 1789, 6, 0, 0, 0, 1795), "114": ("V5/MLII", 1820, 12, 43, 4, 0, 1879),
    "115": ("MLII/V1", 1953, 0, 0, 0, 0, 1953), "116": ("MLII/V1", 2302, 1, 109, 0, 0, 2412),
    "117": ("MLII/V2", 1534, 1, 0, 0, 0, 1535), "118": ("MLII/V1", 2166, 96, 16, 0, 0, 2278),
    "119": ("MLII/V1", 1543, 0, 444, 0, 0, 1987), "121": ("MLII/V1", 1861, 1, 1, 0, 0, 1863),
    "122": ("MLII/V1", 2476, 0, 0, 0, 0, 2476), "123": ("MLII/V5", 1515, 0, 3, 0, 0, 1518),
    "124": ("MLII/V4", 1536, 31, 47, 5, 0, 1619), "200": ("MLII/V1", 1743, 30, 826, 2, 0, 2601),
    "201": ("MLII/V1", 1635, 128, 198, 2, 0, 1963), "202": ("MLII/V1", 2061, 55, 19, 1, 0, 2136),
    "203": ("MLII/V1", 2529, 2, 444, 1, 4, 2980), "205": ("MLII/V1", 2571, 3, 71, 11, 0, 2656),
    "207": ("MLII/V1", 1543, 107, 210, 0, 0, 1860),
    "208": ("MLII/V1", 1586, 2, 992, 373, 2, 2955),
    "209": ("MLII/V1", 2621, 383, 1, 0, 0, 3005), "210": ("MLII/V1", 2423, 22, 195, 10, 0, 2650),
    "212": ("MLII/V1", 2748, 0, 0, 0, 0, 2748), "213": ("MLII/V1", 2641, 28, 220, 362, 0, 3251),
    "214": ("MLII/V1", 2003, 0, 256, 1, 2, 2262), "215": ("MLII/V1", 3195, 3, 164, 1, 0, 3363),
    "217": ("MLII/V1", 244, 0, 162, 0, 1802, 2208), "219": ("MLII/V1", 2082, 7, 64, 1, 0, 2154),
    "220": ("MLII/V1", 1954, 94, 0, 0, 0, 2048), "221": ("MLII/V1", 2031, 0, 396, 0, 0, 2427),
    "222": ("MLII/V1", 2274, 209, 0, 0, 0, 2483), "223": ("MLII/V1", 2045, 73, 473, 14, 0, 2605),
    "228": ("MLII/V1", 1688, 3, 362, 0, 0, 2053), "230": ("MLII/V1", 2255, 0, 1, 0, 0, 2256),
    "231": ("MLII/V1", 1568, 1, 2, 0, 0, 1571), "232": ("MLII/V1", 398, 1382, 0, 0, 0, 1780),
    "233": ("MLII/V1", 2230, 7, 831, 11, 0, 3079), "234": ("MLII/V1", 2700, 50, 3, 0, 0, 2753),
}

# Subset rows of the README: N, S, V, F, Q, total.
README_SUBSETS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "all": (ALL_RECORDS, (90_631, 2_781, 7_236, 803, 8_043, 109_494)),
    "not paced": (DS1 + DS2, (90_125, 2_781, 7_009, 803, 15, 100_733)),
    "DS1": (DS1, (45_866, 944, 3_788, 415, 8, 51_021)),
    "DS2": (DS2, (44_259, 1_837, 3_221, 388, 7, 49_712)),
}

HEADER_LINE = b"100 2 360 650000"


def expected_counts(record: str) -> dict[str, int]:
    return dict(zip(CLASSES, README_RECORDS[record][1:6], strict=True))


def copy_record(source: Path, record: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for ext in ("hea", "dat", "atr"):
        shutil.copy(source / f"{record}.{ext}", dest / f"{record}.{ext}")
    return dest


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# --- beat counts and splits -------------------------------------------------------------------


def test_readme_table_is_self_consistent() -> None:
    assert tuple(sorted(README_RECORDS)) == ALL_RECORDS
    for row in README_RECORDS.values():
        assert sum(row[1:6]) == row[6]


@pytest.mark.mitdb
def test_the_directory_holds_exactly_the_48_records(mitdb_dir: Path) -> None:
    assert tuple(list_records(mitdb_dir)) == ALL_RECORDS


@pytest.mark.mitdb
@pytest.mark.parametrize("record", sorted(README_RECORDS))
def test_aami_beat_counts_and_leads_match_the_readme(mitdb_dir: Path, record: str) -> None:
    annotations = read_beat_annotations(mitdb_dir, record)
    assert annotations.counts() == expected_counts(record)
    assert len(annotations.symbols) == README_RECORDS[record][6]
    assert "/".join(read_header(mitdb_dir, record).leads) == README_RECORDS[record][0]


@pytest.mark.mitdb
@pytest.mark.parametrize("subset", sorted(README_SUBSETS))
def test_subset_totals_match_the_readme(mitdb_dir: Path, subset: str) -> None:
    records, expected = README_SUBSETS[subset]
    totals = np.sum([list(read_beat_annotations(mitdb_dir, r).counts().values())
                     for r in records], axis=0)
    assert (*totals.tolist(), int(totals.sum())) == expected


def test_inter_patient_split_membership() -> None:
    assert len(DS1) == len(DS2) == 22
    assert not set(DS1) & set(DS2)
    assert not set(PACED) & (set(DS1) | set(DS2))
    assert set(DS1) | set(DS2) | set(PACED) == set(ALL_RECORDS)
    assert len(ALL_RECORDS) == 48
    assert "201" in DS1
    assert "202" in DS2
    assert patient_of("201") == patient_of("202")
    assert len({patient_of(r) for r in ALL_RECORDS}) == 47          # 48 records, 47 subjects


def test_published_split_keeps_201_and_202_apart_as_de_chazal_did() -> None:
    """DS1/DS2 is used as published (comparable with the literature); the one patient with two
    records straddles it, and ``patient_of`` lets device grouping treat them as one."""
    assert "201" in DS1
    assert "202" in DS2
    assert patient_of("201") == patient_of("202")
    assert {patient_of(r) for r in DS1} & {patient_of(r) for r in DS2} == {"201"}


# --- lead handling ----------------------------------------------------------------------------


@pytest.mark.mitdb
@pytest.mark.parametrize(("record", "lead"), [("100", "MLII"), ("102", "V5"), ("104", "V5"),
                                              ("114", "MLII")])
def test_default_lead_is_mlii_else_v5(mitdb_dir: Path, record: str, lead: str) -> None:
    beats = read_record_beats(mitdb_dir, record)
    assert beats.lead == lead
    assert len(beats.labels) == README_RECORDS[record][6] - 2      # first and last lack an RR


@pytest.mark.mitdb
def test_record_114_reads_mlii_from_its_second_channel(mitdb_dir: Path) -> None:
    import wfdb

    signal = read_lead(mitdb_dir, "114", lead_preference()).signal
    second, _ = wfdb.rdsamp(str(mitdb_dir / "114"), channels=[1])
    np.testing.assert_array_equal(signal, second[:, 0])


@pytest.mark.mitdb
def test_another_lead_can_be_chosen(mitdb_dir: Path) -> None:
    v1 = read_record_beats(mitdb_dir, "101", lead="V1")
    mlii = read_record_beats(mitdb_dir, "101")
    assert (v1.lead, mlii.lead) == ("V1", "MLII")
    np.testing.assert_array_equal(v1.labels, mlii.labels)
    assert not np.allclose(v1.windows, mlii.windows)


@pytest.mark.mitdb
@pytest.mark.parametrize(("record", "lead", "available"), [("101", "V9", "MLII, V1"),
                                                           ("102", "MLII", "V5, V2")])
def test_an_unknown_lead_lists_the_available_ones(mitdb_dir: Path, record: str, lead: str,
                                                  available: str) -> None:
    with pytest.raises(RecordError, match=f"record {record} has no lead {lead}.*{available}"):
        read_record_beats(mitdb_dir, record, lead=lead)


# --- broken input -----------------------------------------------------------------------------


@pytest.fixture
def record_100(mitdb_dir: Path, tmp_path: Path) -> Path:
    """A private copy of record 100 to break."""
    return copy_record(mitdb_dir, "100", tmp_path / "db")


@pytest.mark.mitdb
@pytest.mark.parametrize("ext", ["hea", "dat", "atr"])
def test_a_missing_file_is_named(record_100: Path, ext: str) -> None:
    (record_100 / f"100.{ext}").unlink()
    with pytest.raises(RecordError, match=rf"100\.{ext} is missing"):
        read_record_beats(record_100, "100")


@pytest.mark.mitdb
@pytest.mark.parametrize("keep", [0.5, 1_949_999 / 1_950_000])
def test_a_truncated_signal_file_is_reported(record_100: Path, keep: float) -> None:
    data = (record_100 / "100.dat").read_bytes()
    (record_100 / "100.dat").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(RecordError, match="truncated"):
        read_record_beats(record_100, "100")
    with pytest.raises(RecordError, match="truncated"):
        read_header(record_100, "100")                       # `data info` sees it too


@pytest.mark.mitdb
def test_a_short_read_by_wfdb_is_reported(record_100: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Older wfdb versions return fewer samples for a short file instead of raising."""
    import wfdb

    rdsamp = wfdb.rdsamp
    monkeypatch.setattr(wfdb, "rdsamp", lambda *a, **k: (rdsamp(*a, **k)[0][:-5], {}))
    with pytest.raises(RecordError, match=r"holds 649,995 samples.*promises 650,000"):
        read_record_beats(record_100, "100")


@pytest.mark.mitdb
def test_a_signal_file_wfdb_cannot_decode_is_reported(record_100: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import wfdb

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("could not broadcast input array from shape (1,) into shape (2,)")

    monkeypatch.setattr(wfdb, "rdsamp", broken)
    with pytest.raises(RecordError, match="does not decode"):
        read_record_beats(record_100, "100")


@pytest.mark.mitdb
@pytest.mark.parametrize(("rate", "message"), [(b"0", "0 Hz .* must be positive"),
                                               (b"-360", "-360 Hz .* must be positive"),
                                               (b"fast", "'fast' .* is not a number")])
def test_a_bad_sampling_rate_in_the_header_is_reported(record_100: Path, rate: bytes,
                                                       message: str) -> None:
    header = record_100 / "100.hea"
    header.write_bytes(header.read_bytes().replace(HEADER_LINE, b"100 2 " + rate + b" 650000"))
    with pytest.raises(RecordError, match=message):
        read_record_beats(record_100, "100")


@pytest.mark.mitdb
def test_a_corrupt_annotation_file_is_reported(record_100: Path) -> None:
    annotations = record_100 / "100.atr"
    annotations.write_bytes(annotations.read_bytes()[:101])
    with pytest.raises(RecordError, match=r"cannot parse .*100\.atr"):
        read_record_beats(record_100, "100")


def write_record(directory: Path, mlii: np.ndarray) -> Path:
    """A 10 s synthetic record: MLII as given, V1 a clean sine, a beat annotation every second."""
    import wfdb

    v1 = np.sin(np.arange(mlii.size) / 10)
    wfdb.wrsamp("900", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"],
                p_signal=np.stack([mlii, v1], axis=1), fmt=["16", "16"], write_dir=str(directory))
    beats = np.arange(180, mlii.size - 180, 360)
    wfdb.wrann("900", "atr", beats, ["N"] * beats.size, write_dir=str(directory))
    return directory


def test_a_flat_line_lead_is_reported(tmp_path: Path) -> None:
    directory = write_record(tmp_path, np.full(3600, 0.1))
    with pytest.raises(RecordError, match="record 900 lead MLII is a flat line"):
        read_record_beats(directory, "900")
    assert read_record_beats(directory, "900", lead="V1").lead == "V1"   # the other lead is fine


def test_a_nan_lead_is_reported(tmp_path: Path) -> None:
    mlii = np.sin(np.arange(3600) / 7)
    mlii[1000:1020] = np.nan
    directory = write_record(tmp_path, mlii)
    with pytest.raises(RecordError, match=r"20 of 3,600 samples are missing \(NaN\).*1,000"):
        read_record_beats(directory, "900")


# --- the data CLI -----------------------------------------------------------------------------


@pytest.fixture
def three_records(mitdb_dir: Path, tmp_path: Path) -> Path:
    """Copies of 100 (MLII first), 102 (no MLII) and 114 (MLII second)."""
    for record in ("100", "102", "114"):
        copy_record(mitdb_dir, record, tmp_path / "db")
    return tmp_path / "db"


@pytest.mark.mitdb
def test_data_info_json(three_records: Path) -> None:
    code, out, _ = run("data", "info", str(three_records), "--json")
    assert code == 0
    report = json.loads(out)
    rows = {row["record"]: row for row in report["records"]}
    assert list(rows) == ["100", "102", "114"]
    for record, row in rows.items():
        assert row["beats"] == expected_counts(record)
        assert row["total"] == README_RECORDS[record][6]
        assert "/".join(row["leads"]) == README_RECORDS[record][0]
        assert (row["fs"], row["samples"]) == (360.0, 650_000)
        assert row["duration_s"] == pytest.approx(1805.56, abs=0.01)
    assert [rows[r]["lead"] for r in rows] == ["MLII", "V5", "MLII"]
    assert report["totals"]["beats"] == {c: sum(r["beats"][c] for r in rows.values())
                                         for c in CLASSES}
    assert report["totals"]["total"] == 2273 + 2187 + 1879
    assert report["errors"] == []


@pytest.mark.mitdb
def test_data_info_table_and_parent_directory(three_records: Path) -> None:
    parent = three_records.parent
    three_records.rename(parent / "mitdb")
    code, out, _ = run("data", "info", str(parent))
    assert code == 0
    assert "V5/MLII" in out
    assert "6,339" in out                                       # total beats of the three


@pytest.mark.mitdb
def test_data_info_lists_broken_records_and_fails(three_records: Path) -> None:
    (three_records / "114.atr").unlink()
    data = (three_records / "102.dat").read_bytes()
    (three_records / "102.dat").write_bytes(data[:1000])
    code, out, _ = run("data", "info", str(three_records), "--json")
    report = json.loads(out)
    assert code == 1
    assert [row["record"] for row in report["records"]] == ["100"]
    errors = {e["record"]: e["error"] for e in report["errors"]}
    assert "114.atr is missing" in errors["114"]
    assert "truncated" in errors["102"]


def test_data_info_on_a_directory_without_records(tmp_path: Path) -> None:
    code, _, err = run("data", "info", str(tmp_path))
    assert code == 1
    assert "holds no WFDB records" in err
    assert "Traceback" not in err


def assert_offline_error(code: int, err: str, seconds: float, limit_s: float) -> None:
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "--data DIR" in err
    assert "$FEDBEAT_DATA" in err
    assert seconds < limit_s


def test_data_download_offline_fails_fast_with_advice(tmp_path: Path) -> None:
    from wfdb.io import download

    if unreachable(f"{download.PN_CONTENT_URL}mitdb/", 3.0) is None:
        pytest.skip("PhysioNet is reachable here; not downloading 100 MB in a test")
    started = time.perf_counter()
    code, _, err = run("data", "download", "mitdb", "--dir", str(tmp_path / "dl"),
                       "--timeout", "3")
    assert_offline_error(code, err, time.perf_counter() - started, 6.0)
    assert not (tmp_path / "dl").exists()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local HTTP address that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/content/"


def test_data_download_gives_up_after_the_timeout(tmp_path: Path, silent_server: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from wfdb.io import download

    monkeypatch.setattr(download, "PN_CONTENT_URL", silent_server)
    started = time.perf_counter()
    code, _, err = run("data", "download", "mitdb", "--dir", str(tmp_path / "dl"),
                       "--timeout", "0.5")
    assert_offline_error(code, err, time.perf_counter() - started, 2.5)
    assert "timed out" in err or "no answer within 0.5 s" in err


# --- properties: RR features, causal filter, resampling -----------------------------------------

intervals = st.lists(st.floats(0.2, 3.0), min_size=0, max_size=60)


def times_of(rr: list[float]) -> np.ndarray:
    return np.concatenate([[5.0], 5.0 + np.cumsum(rr)]) if rr else np.zeros(0)


@settings(max_examples=60, deadline=None)
@given(intervals)
def test_rr_features_shape_and_finiteness(rr: list[float]) -> None:
    times = times_of(rr)
    features = rr_features(times)
    assert features.shape == (max(times.size - 2, 0), len(RR_FEATURES))
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))
    assert np.all(features > 0)


@settings(max_examples=60, deadline=None)
@given(intervals.filter(lambda rr: len(rr) >= 2))
def test_rr_ratio_columns_follow_the_raw_columns(rr: list[float]) -> None:
    f = rr_features(times_of(rr)).astype(np.float64)
    pre, post, local, patient = f[:, 0], f[:, 1], f[:, 2], f[:, 3]
    ratios = np.stack([pre / patient, post / patient, local / patient, pre / post], axis=1)
    np.testing.assert_allclose(f[:, 4:], ratios, rtol=1e-5)
    np.testing.assert_allclose(pre, rr[:-1], rtol=1e-5)
    np.testing.assert_allclose(post, rr[1:], rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rr_features_of_a_beat_ignore_beats_after_the_next(data: st.DataObject) -> None:
    rr = data.draw(st.lists(st.floats(0.2, 3.0), min_size=3, max_size=60))
    changed = data.draw(st.integers(2, len(rr)))       # first beat whose time changes
    tail = data.draw(st.lists(st.floats(0.2, 3.0), min_size=len(rr) - changed + 1,
                              max_size=len(rr) - changed + 1))
    base = rr_features(times_of(rr))
    altered = rr_features(times_of(rr[: changed - 1] + tail))
    # rows are beats 1 .. n-2; beat i uses times up to i + 1, so beats 1 .. changed-2 stay
    np.testing.assert_array_equal(base[: changed - 2], altered[: changed - 2])


def test_rr_features_refuse_times_that_do_not_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        rr_features(np.array([0.0, 1.0, 1.0, 2.0]))


signals = arrays(np.float64, st.integers(1, 400), elements=st.floats(-5, 5))


@settings(max_examples=60, deadline=None)
@given(signals, signals, st.sampled_from([125.0, 180.0, 250.0, 360.0]))
def test_causal_bandpass_prefix_ignores_appended_samples(head: np.ndarray, more: np.ndarray,
                                                        rate: float) -> None:
    whole = causal_bandpass(np.concatenate([head, more]), rate)
    np.testing.assert_array_equal(causal_bandpass(head, rate), whole[: head.size])


rates = st.one_of(st.integers(50, 2000).map(float), st.integers(500, 20_000).map(lambda v: v / 10))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), rates)
def test_resampling_keeps_the_duration_within_one_sample(samples: int, rate: float) -> None:
    out = resample(np.ones(samples), rate)
    assert abs(out.size - samples * SAMPLE_RATE_HZ / rate) <= 1
