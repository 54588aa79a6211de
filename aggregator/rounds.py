"""When a round closes, extends or aborts: a pure decision on counts and the clock.

A round closes as soon as ``target`` updates are accepted, or as soon as ``target`` devices
have answered — accepted, or refused for a reason the device cannot fix within the round (an
update over the norm bound, bad tensors: waiting for it would only run out the clock) — with
at least ``min`` accepted; or at its deadline with at least ``min``. At a deadline with fewer,
it is extended (up to ``max_extensions`` times, each by the original duration) and then
aborted; the retained announcement tells devices which, with a reason they can show.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedbeat.broker.errors import RejectReason

FINAL_REFUSALS = frozenset({RejectReason.NORM_EXCEEDED, RejectReason.BAD_TENSOR,
                            RejectReason.MALFORMED, RejectReason.WRONG_MODEL_VERSION})
"""Refusals that answer a round for a proven device: its daemon does not resend a refused
update, and waiting would only hold the round until its deadline."""


class Decision(StrEnum):
    WAIT = "wait"
    CLOSE = "close"
    EXTEND = "extend"
    ABORT = "abort"


@dataclass(frozen=True)
class RoundPolicy:
    min_participants: int
    target_participants: int
    deadline_s: float
    max_extensions: int


def decide(policy: RoundPolicy, *, accepted: int, now: float, deadline: float,
           extensions: int, refused: int = 0) -> Decision:
    """What to do with an open round now; ``refused`` counts devices whose update for this
    round was refused for good (and that have none accepted)."""
    if accepted >= policy.target_participants:
        return Decision.CLOSE
    if accepted + refused >= policy.target_participants and \
            accepted >= policy.min_participants:
        return Decision.CLOSE
    if now < deadline:
        return Decision.WAIT
    if accepted >= policy.min_participants:
        return Decision.CLOSE
    if extensions < policy.max_extensions:
        return Decision.EXTEND
    return Decision.ABORT


def abort_reason(policy: RoundPolicy, accepted: int, extensions: int) -> str:
    return (f"only {accepted} of the minimum {policy.min_participants} updates arrived after "
            f"{extensions} deadline extension(s)")
