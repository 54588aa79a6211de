"""What a secure-aggregation round's announcement means for encoding, in one place.

The device and the aggregator must derive the same ring, vector length, DDG parameters and
rotation from the signed announcement, or the sum decodes to noise; both call
:func:`secure_round`. The participation seed, fresh every round, keys the rotation and the
neighbour graph, so neither can be chosen by a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbeat.broker.rounds import Announcement
from fedbeat.broker.secagg.params import GraphParams, RoundContext
from fedbeat.device.privacy.ddg import DdgEncoder, DdgParams
from fedbeat.models.params import ParamLayout


@dataclass(frozen=True)
class SecureRound:
    """A round's ring and vector shape (``context``), DDG parameters and encoder, neighbour
    graph parameters, and the public seed of its rotation and graph."""

    context: RoundContext
    params: DdgParams
    encoder: DdgEncoder
    graph: GraphParams
    seed: bytes


def ddg_params(announcement: Announcement, layout: ParamLayout) -> DdgParams:
    """The round's DDG parameters; ``ValueError`` if the announcement's numbers cannot work.

    Without ``dp_mode = "ddg"`` updates are still clipped and quantised (the ring needs a
    bound), but no noise is added.
    """
    a, t = announcement, announcement.training
    return DdgParams(
        dim=layout.size, clip_norm=t.clip_norm,
        noise_multiplier=t.noise_multiplier if t.dp_mode == "ddg" else 0.0,
        min_devices=max(2, a.min_participants), max_devices=max(2, a.target_participants),
        bits=a.secagg.bits)


def secure_round(announcement: Announcement, fleet: str, layout: ParamLayout) -> SecureRound:
    """Everything both ends derive from the announcement; ``ValueError`` as above."""
    a = announcement
    params = ddg_params(a, layout)
    seed = f"{a.participation_seed}/{a.round}".encode()
    return SecureRound(RoundContext(fleet, a.round, params.padded_dim, params.bits), params,
                       DdgEncoder(params, seed),
                       GraphParams(dropout_tolerance=a.secagg.dropout_tolerance), seed)


def flatten(tensors: Mapping[str, np.ndarray], layout: ParamLayout) -> np.ndarray:
    """The update as one float64 vector in layout order; tensors it does not carry are zero
    (a wearable's head-only update adds nothing to the body's coordinates of the sum)."""
    vector = np.zeros(layout.size)
    for name, shape, where in layout.slices():
        if name in tensors:
            vector[where] = np.asarray(tensors[name], dtype=np.float64).reshape(shape).ravel()
    return vector

