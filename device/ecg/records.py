"""Beat-annotated WFDB records (mitdb, incartdb, svdb, ...) as one checked lead and labelled beats.

A WFDB record is a header (``.hea``), one or more signal files (``.dat``) and reference
annotations (``.atr``). Reading goes through ``wfdb`` (the optional ``data`` extra), which has no
exception type of its own and reads some broken files without complaint (an impossible sampling
rate in a header silently becomes 250 Hz). Every way a record can be unusable here -- a missing
or truncated file, a sampling rate that is not positive, an unknown lead, a signal that is NaN
or a flat line -- becomes one :class:`RecordError` whose message names the record and says what
to do about it.

Leads are chosen by name from an ordered preference, never by position: channel order differs
between records (MIT-BIH record 114 has MLII second).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import numpy as np

from fedbeat.device.ecg.aami import CLASS_INDEX, SYMBOL_TO_CLASS
from fedbeat.device.ecg.errors import RecordError
from fedbeat.device.ecg.stream import BeatStream, KnownPeaks
from fedbeat.models.spec import CLASSES, SAMPLE_RATE_HZ

REFERENCE_ANNOTATOR: Final = "atr"
"""Extension of the reference beat annotations in PhysioNet databases."""

DECODE_ERRORS: Final = (OSError, ValueError, IndexError, KeyError, EOFError, TypeError)
"""What ``wfdb`` raises on files it cannot parse (it reports broken files with builtin errors)."""

BITS_PER_SAMPLE: Final[dict[str, float]] = {
    "8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12,
    "310": 32 / 3, "311": 32 / 3,
}
"""Storage per sample of the uncompressed WFDB signal formats (212 packs two samples in three
bytes, 310 and 311 three in four). Compressed formats (508, 516, 524) have no fixed size."""

_HEADER_HINT = "its first line reads 'RECORD NSIG FS NSAMP', e.g. '100 2 360 650000'"


@dataclass(frozen=True)
class RecordBeats:
    """Beats of one record: windows (n, W), rr (n, 8), labels (n,) as AAMI class indices.

    ``lead`` names the ECG lead the windows were cut from (empty for synthetic patients).
    """

    record: str
    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    lead: str = ""


@dataclass(frozen=True)
class RecordHeader:
    """What a record's header promises, after checking that its signal files back it up."""

    record: str
    leads: tuple[str, ...]
    rate_hz: float
    samples: int | None
    """Samples per lead, or None when the header does not say."""

    @property
    def duration_s(self) -> float | None:
        """Length of the recording in seconds, if the header gives the sample count."""
        return None if self.samples is None else self.samples / self.rate_hz


@dataclass(frozen=True)
class LeadSignal:
    """One lead of a record in physical units (mV for ECG), checked to be finite and not flat."""

    record: str
    lead: str
    rate_hz: float
    signal: np.ndarray


@dataclass(frozen=True)
class BeatAnnotations:
    """Reference beat annotations: positions (samples at the record's rate) and beat symbols.

    Non-beat annotations (rhythm changes, noise, comments) are already removed.
    """

    samples: np.ndarray
    symbols: tuple[str, ...]

    @property
    def labels(self) -> np.ndarray:
        """AAMI class index of every beat."""
        return np.array([CLASS_INDEX[SYMBOL_TO_CLASS[s]] for s in self.symbols], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Number of beats per AAMI class, in class order (N, S, V, F, Q)."""
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {name: int(n) for name, n in zip(CLASSES, counts, strict=True)}


def list_records(directory: Path) -> list[str]:
    """Names of the records in ``directory``: every file stem with a header or annotations.

    A stem with annotations but no header is listed too, so that reading it reports the
    missing header instead of the record silently vanishing.
    """
    stems = {p.stem for pattern in ("*.hea", f"*.{REFERENCE_ANNOTATOR}")
             for p in directory.glob(pattern) if p.is_file()}
    return sorted(stems)


def read_header(directory: Path, record: str) -> RecordHeader:
    """Read and check a record's header and the signal files it names (not their samples).

    Raises
    ------
    RecordError
        The header is missing or unreadable, its sampling rate is not positive, it is a
        multi-segment record, it names no signals, or a signal file is missing or shorter
        than the header's sample count requires.
    """
    wfdb = _wfdb()
    path = _require_file(directory, record, f"{record}.hea", "header")
    rate = _header_rate(path, record)
    try:
        header = wfdb.rdheader(str(directory / record))
    except DECODE_ERRORS as exc:
        raise RecordError(f"record {record}: cannot parse {path} ({exc}); {_HEADER_HINT}") from None
    if isinstance(header, wfdb.MultiRecord):
        raise RecordError(f"record {record} is a multi-segment record, which is not supported; "
                          "read its segments as records of their own")
    leads = tuple(str(name) for name in header.sig_name or ())
    if not leads:
        raise RecordError(f"record {record}: {path} names no signals")
    samples = None if header.sig_len is None else int(header.sig_len)
    _check_signal_files(directory, record, header)
    return RecordHeader(record, leads, float(header.fs) if rate is None else rate, samples)


def choose_lead(header: RecordHeader, preference: Sequence[str]) -> str:
    """The first lead of ``preference`` the record has.

    Raises
    ------
    RecordError
        None of them; the message lists the leads the record does have.
    """
    for lead in preference:
        if lead in header.leads:
            return lead
    raise RecordError(f"record {header.record} has no lead {' or '.join(preference)}; "
                      f"available leads: {', '.join(header.leads)} (ask for one of these)")


def read_lead(directory: Path, record: str, preference: Sequence[str]) -> LeadSignal:
    """Read the first available lead of ``preference`` and check its samples.

    Raises
    ------
    RecordError
        Any header problem (see :func:`read_header`), no such lead, a signal file that does not
        decode or yields fewer samples than the header promises, NaN samples, or a flat line.
    """
    header = read_header(directory, record)
    lead = choose_lead(header, preference)
    try:
        signals, _ = _wfdb().rdsamp(str(directory / record), channels=[header.leads.index(lead)])
    except DECODE_ERRORS as exc:
        raise RecordError(f"record {record}: its signal file does not decode ({exc}); it is "
                          "probably truncated or corrupt: copy the record again") from None
    ecg = np.asarray(signals, dtype=np.float64).reshape(-1)
    _check_length(header, ecg.size)
    _check_values(record, lead, ecg)
    return LeadSignal(record, lead, header.rate_hz, ecg)


def read_beat_annotations(directory: Path, record: str,
                          annotator: str = REFERENCE_ANNOTATOR) -> BeatAnnotations:
    """Read a record's reference annotations, keeping only beats (AAMI-mapped symbols).

    Raises
    ------
    RecordError
        The annotation file is missing or does not parse.
    """
    path = _require_file(directory, record, f"{record}.{annotator}", "annotation")
    try:
        annotation = _wfdb().rdann(str(directory / record), annotator)
    except DECODE_ERRORS as exc:
        raise RecordError(f"record {record}: cannot parse {path} ({exc}); the annotation file "
                          "is probably truncated or corrupt: copy it again") from None
    symbols = [str(s) for s in annotation.symbol or ()]
    is_beat = np.array([s in SYMBOL_TO_CLASS for s in symbols], dtype=bool)
    samples = np.asarray(annotation.sample, dtype=np.int64).reshape(-1)[is_beat]
    return BeatAnnotations(samples, tuple(s for s in symbols if s in SYMBOL_TO_CLASS))


def lead_beats(lead: LeadSignal, annotations: BeatAnnotations) -> RecordBeats:
    """Labelled beats of a lead, computed exactly as a device computes them on a live signal.

    The whole lead goes through the device's streaming pipeline
    (:class:`~fedbeat.device.ecg.stream.BeatStream`) at its own sampling rate, with the
    annotated beats as R peaks: causal band-pass, windows read on the canonical 180 Hz grid,
    running amplitude normalisation and RR features. The first and last annotated beats lack
    a pre- or post-RR interval and are dropped, as are beats too close to either end of the
    recording for a full window.
    """
    try:
        peaks = KnownPeaks(annotations.samples, annotations.labels)
        beats = BeatStream(lead.rate_hz, peaks=peaks).push(lead.signal)
    except ValueError as exc:
        raise RecordError(f"record {lead.record} lead {lead.lead} cannot be cut into beats "
                          f"({exc}); check its header and annotation files") from None
    if len(beats) == 0 or beats.labels is None:
        raise RecordError(f"record {lead.record} has no complete beats (it has "
                          f"{annotations.samples.size} beat annotations); it cannot be used for "
                          "training")
    return RecordBeats(lead.record, beats.windows, beats.rr, beats.labels, lead.lead)


def read_beats(directory: Path, record: str, preference: Sequence[str]) -> RecordBeats:
    """Labelled beats of a record, from the first available lead of ``preference``."""
    lead = read_lead(directory, record, preference)
    return lead_beats(lead, read_beat_annotations(directory, record))


def resample(ecg: np.ndarray, rate_hz: float, target_hz: float = SAMPLE_RATE_HZ) -> np.ndarray:
    """Polyphase resampling from ``rate_hz`` to ``target_hz``; the duration is kept.

    Beats do not go through this: :func:`lead_beats` reads each window on the canonical grid
    from the lead at its own rate, as the device does.

    The rate ratio is approximated by a fraction with a denominator of at most 1000, exact for
    the integer and 0.1 Hz rates of real recorders.
    """
    from scipy.signal import resample_poly

    ratio = Fraction(target_hz).limit_denominator(1000) / Fraction(rate_hz).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(ecg, dtype=np.float64)
    return np.asarray(resample_poly(ecg, ratio.numerator, ratio.denominator), dtype=np.float64)


def _wfdb() -> Any:
    try:
        import wfdb  # optional dependency (extra "data"); imported here to keep devices lean
    except ImportError:
        raise RecordError("reading WFDB records needs the wfdb package: "
                          "pip install 'fedbeat[data]'") from None
    return wfdb


def _require_file(directory: Path, record: str, name: str, role: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise RecordError(f"record {record}: {role} file {path} is missing; a record needs its "
                          f"header, signal and annotation files ({record}.hea, .dat, .atr) side "
                          "by side: copy the missing file from the original database")
    return path


def _header_rate(path: Path, record: str) -> float | None:
    """The sampling rate on a header's record line, or None if absent (WFDB's default applies).

    ``wfdb`` silently replaces a rate it cannot parse (such as a negative one) by 250 Hz, so
    the record line is read here first.
    """
    lines = path.read_text(encoding="latin-1").splitlines()
    line = next((x for x in lines if x.strip() and not x.lstrip().startswith("#")), "")
    fields = line.split()
    if len(fields) < 3:
        return None
    text = fields[2].split("/")[0].split("(")[0]
    try:
        rate = float(text)
    except ValueError:
        raise RecordError(f"record {record}: sampling rate {text!r} in {path} is not a number; "
                          f"{_HEADER_HINT}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise RecordError(f"record {record}: sampling rate {rate:g} Hz in {path} must be "
                          f"positive; fix the header ({_HEADER_HINT})")
    return rate


def _check_signal_files(directory: Path, record: str, header: Any) -> None:
    """Every signal file exists and is at least as long as the header's sample count needs."""
    for name, needed in _signal_file_sizes(header).items():
        path = _require_file(directory, record, name, "signal")
        size = path.stat().st_size
        if needed is not None and size < needed:
            raise RecordError(f"record {record}: signal file {path} is truncated ({size:,} "
                              f"bytes; the header's {header.sig_len:,} samples per lead need "
                              f"{needed:,}): copy the record again")


def _signal_file_sizes(header: Any) -> dict[str, int | None]:
    """Minimum byte size of each signal file, or None where it cannot be known."""
    names = list(header.file_name)
    frames = header.samps_per_frame or [1] * len(names)
    offsets = header.byte_offset or [0] * len(names)
    per_frame = dict.fromkeys(names, 0)            # samples of one frame stored in each file
    for name, count in zip(names, frames, strict=True):
        per_frame[name] += int(count or 1)
    sizes: dict[str, int | None] = {}
    for name, fmt, offset in zip(names, header.fmt, offsets, strict=True):
        bits = BITS_PER_SAMPLE.get(str(fmt))
        sizes[name] = None if bits is None or header.sig_len is None else (
            int(offset or 0) + math.floor(int(header.sig_len) * per_frame[name] * bits / 8))
    return sizes


def _check_length(header: RecordHeader, read: int) -> None:
    if header.samples is not None and read < header.samples:
        raise RecordError(f"record {header.record}: its signal file holds {read:,} samples per "
                          f"lead but the header promises {header.samples:,}; the file is "
                          "truncated: copy the record again")


def _check_values(record: str, lead: str, ecg: np.ndarray) -> None:
    missing = int(np.count_nonzero(~np.isfinite(ecg)))
    if missing:
        first = int(np.flatnonzero(~np.isfinite(ecg))[0])
        raise RecordError(f"record {record} lead {lead}: {missing:,} of {ecg.size:,} samples are "
                          f"missing (NaN), the first at sample {first:,}; choose another lead "
                          "or leave the record out")
    if ecg.size == 0 or float(np.ptp(ecg)) == 0.0:
        value = f" at {ecg[0]:g}" if ecg.size else ""
        raise RecordError(f"record {record} lead {lead} is a flat line{value} (no variation: "
                          "an electrode off or an empty recording); choose another lead or "
                          "leave the record out")
