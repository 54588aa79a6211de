"""Fleet partitioners: which beats each simulated device holds (numpy only).

Every partitioner returns one index array per device that together exactly partition
``range(n)``: disjoint, complete, and no device empty. Each array is sorted, so a device sees
its beats in the order they were given (time order, for beats concatenated record by record).
Random partitioners take a ``seed`` and return the same partition for the same seed.

Patients are given per beat as ``groups`` (e.g. record names: ``np.repeat(names, sizes)``) and
mapped to patients by ``patient_of``: for MIT-BIH pass
:func:`fedbeat.device.ecg.mitdb.patient_of`, since records 201 and 202 come from one patient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Partition = list[np.ndarray]
"""One sorted int64 index array per device."""

PatientOf = Callable[[str], str]
"""Maps a group (record) name to its patient's name."""

def same_record(group: str) -> str:
    """The default ``patient_of``: every group is its own patient."""
    return group


def patient_codes(groups: np.ndarray | Sequence[str],
                  patient_of: PatientOf = same_record) -> tuple[np.ndarray, int]:
    """Per example, the index of its patient (numbered by first appearance); and their count."""
    names = np.asarray(groups).astype(str)
    if names.ndim != 1:
        raise ValueError(f"groups must be one name per example, got shape {names.shape}")
    records, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    codes: dict[str, int] = {}
    record_code = np.empty(records.size, dtype=np.int64)
    for r in np.argsort(first):
        record_code[r] = codes.setdefault(patient_of(str(records[r])), len(codes))
    return record_code[inverse.ravel()], len(codes)


def per_patient(groups: np.ndarray | Sequence[str], *,
                patient_of: PatientOf = same_record) -> Partition:
    """One device per patient, in order of the patients' first appearance."""
    codes, n_patients = patient_codes(groups, patient_of)
    return _by_owner(codes, n_patients)


def split_patients(groups: np.ndarray | Sequence[str], n_devices: int, *,
                   patient_of: PatientOf = same_record) -> Partition:
    """Each patient's beats split in time over one or more devices, ``n_devices`` in all.

    Every patient gets a device; each further device goes to the patient with the most beats
    per device, so devices hold as even a share as the patients allow. A patient's devices
    take consecutive runs of its beats (a device records a stretch of time).
    """
    codes, n_patients = patient_codes(groups, patient_of)
    _check_devices(n_devices, codes.size)
    if n_devices < n_patients:
        raise ValueError(f"{n_patients} patients need at least as many devices, got {n_devices}")
    members = _by_owner(codes, n_patients)
    shares = _devices_per_patient(np.array([m.size for m in members]), n_devices)
    return [run for m, k in zip(members, shares, strict=True) for run in np.array_split(m, k)]


def _devices_per_patient(sizes: np.ndarray, n_devices: int) -> np.ndarray:
    """Devices per patient: one each, then greedily to the highest beats-per-device ratio.

    While devices remain, some patient has more beats than devices, so none gets an empty one.
    """
    shares = np.ones(sizes.size, dtype=np.int64)
    for _ in range(n_devices - sizes.size):
        shares[np.argmax(sizes / shares)] += 1
    return shares


def iid(n_examples: int, n_devices: int, *, seed: int) -> Partition:
    """Examples dealt uniformly at random; device sizes differ by at most one."""
    _check_devices(n_devices, n_examples)
    owner = np.random.default_rng(seed).permutation(np.arange(n_examples) % n_devices)
    return _by_owner(owner, n_devices)


def dirichlet(labels: np.ndarray, n_devices: int, alpha: float, *, seed: int,
              min_size: int = 10, max_tries: int = 1000) -> Partition:
    """Label skew: each class's examples shared over devices in proportions ~ Dir(alpha).

    Small ``alpha`` gives each device few classes; large ``alpha`` approaches :func:`iid` in
    label mix. This is the per-class form of Hsu et al. 2019's Dirichlet skew used by
    Yurochkin et al. 2019 and Li et al. 2022 (NIID-Bench). Whole draws are repeated until every
    device has at least ``min_size`` examples (and never none).

    Parameters
    ----------
    labels
        Class of each example (any integers).
    n_devices
        Number of devices.
    alpha
        Dirichlet concentration, > 0.
    seed
        Seed of the draws; the same seed gives the same partition.
    min_size
        Fewest examples a device may get.
    max_tries
        Draws to try before giving up.

    Raises
    ------
    ValueError
        For bad arguments, or if ``max_tries`` draws never satisfied ``min_size``.
    """
    labels = np.asarray(labels)
    _check_dirichlet(labels, n_devices, alpha, min_size)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts = _dirichlet_draw(labels, n_devices, alpha, rng)
        if min(p.size for p in parts) >= max(min_size, 1):
            return parts
    raise ValueError(f"no Dirichlet draw in {max_tries} gave every one of {n_devices} devices "
                     f"{min_size} examples; raise alpha, lower min_size or use fewer devices")


def _check_dirichlet(labels: np.ndarray, n_devices: int, alpha: float, min_size: int) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} array of "
                         f"shape {labels.shape}")
    _check_devices(n_devices, labels.size)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    if min_size < 0 or min_size * n_devices > labels.size:
        raise ValueError(f"{labels.size} examples cannot give {n_devices} devices {min_size} "
                         "each")


def _dirichlet_draw(labels: np.ndarray, n_devices: int, alpha: float,
                    rng: np.random.Generator) -> Partition:
    owner = np.empty(labels.size, dtype=np.int64)
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        proportions = rng.dirichlet(np.full(n_devices, alpha))
        cuts = np.minimum(np.cumsum(proportions)[:-1] * members.size, members.size)
        cuts = cuts.astype(np.int64)
        counts = np.diff(np.concatenate(([0], cuts, [members.size])))
        owner[members] = np.repeat(np.arange(n_devices), counts)
    return _by_owner(owner, n_devices)


def _by_owner(owner: np.ndarray, n_devices: int) -> Partition:
    """Indices grouped by ``owner[i]`` (the device of example i), ascending within a device."""
    order = np.argsort(owner, kind="stable")
    sizes = np.bincount(owner, minlength=n_devices)
    return list(np.split(order.astype(np.int64), np.cumsum(sizes)[:-1]))


def _check_devices(n_devices: int, n_examples: int) -> None:
    if not 1 <= n_devices <= n_examples:
        raise ValueError(f"n_devices must be between 1 and the {n_examples} examples, "
                         f"got {n_devices}")
