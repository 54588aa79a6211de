"""MIT-BIH Arrhythmia Database records as labelled beats (Moody & Mark 2001, PhysioNet).

The reference annotations give the R peaks here; live devices use the QRS detector instead, in
the same streaming pipeline (:mod:`fedbeat.device.ecg.stream`).
Inter-patient split of de Chazal et al. 2004: train on DS1, test on DS2, paced records
(102, 104, 107, 217) excluded. Records 201 and 202 come from the same patient
(:func:`patient_of`). Reading and checking records is generic WFDB work, in
:mod:`fedbeat.device.ecg.records`; this module holds what is specific to MIT-BIH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fedbeat.device.ecg.errors import RecordError
from fedbeat.device.ecg.records import RecordBeats, read_beats

__all__ = [
    "ALL_RECORDS", "DS1", "DS2", "FALLBACK_LEAD", "PACED", "PREFERRED_LEAD", "SAME_PATIENT",
    "RecordBeats", "RecordError", "lead_preference", "patient_of", "read_record_beats",
]

DS1: Final = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
              "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230")
DS2: Final = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
              "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234")
PACED: Final = ("102", "104", "107", "217")
ALL_RECORDS: Final = tuple(sorted(DS1 + DS2 + PACED))
"""All 48 records: DS1 and DS2 (22 each) and the four paced records, which neither includes."""

PREFERRED_LEAD: Final = "MLII"
"""Modified limb lead II, channel 0 of every record but 102, 104 (which lack it) and 114."""

FALLBACK_LEAD: Final = "V5"
"""Lead read when a record has no MLII (records 102 and 104 hold V5 and V2). In a normal heart
V5, like MLII, shows a dominant upright R wave, while V2 shows a deep S wave. Both records are
paced and outside DS1/DS2, so no inter-patient result depends on this choice."""

SAME_PATIENT: Final[dict[str, str]] = {"202": "201"}
"""Records that repeat an earlier record's patient, mapped to that record."""


def patient_of(record: str) -> str:
    """Identity of the patient a record comes from: the name of the patient's first record.

    MIT-BIH has 48 records from 47 subjects; 201 and 202 are the same person, so any split by
    patient (train/test, federated clients) must keep them together.
    """
    return SAME_PATIENT.get(record, record)


def lead_preference(lead: str | None = None) -> tuple[str, ...]:
    """Leads to try in order: ``lead`` alone if given, else MLII, then V5 where MLII is missing."""
    return (lead,) if lead else (PREFERRED_LEAD, FALLBACK_LEAD)


def read_record_beats(directory: Path, record: str, lead: str | None = None) -> RecordBeats:
    """Read a record with ``wfdb`` and extract labelled beats as the device pipeline does.

    The lead runs through :class:`~fedbeat.device.ecg.stream.BeatStream` at its native rate
    with the reference annotations as R peaks, so training features equal device features.

    Parameters
    ----------
    directory
        Directory holding ``<record>.hea``, ``.dat`` and ``.atr``.
    record
        Record name, e.g. ``"100"``.
    lead
        Lead to read, by name. By default MLII, or V5 for the records without MLII; the lead
        used is in the result's ``lead``. Selection is by name, so record 114 (MLII second)
        needs nothing special.

    Raises
    ------
    RecordError
        The record is missing, truncated, malformed, lacks the lead (the message lists those
        it has), or its lead is NaN or flat.
    """
    return read_beats(directory, record, lead_preference(lead))
