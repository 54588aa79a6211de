"""When a round closes, extends or aborts: a pure decision on counts and the clock.

A round closes as soon as ``target`` updates are accepted, or at its deadline with at least
``min`` of them. At a deadline with fewer, it is extended (up to ``max_extensions`` times,
each by the original duration) and then aborted; the retained announcement tells devices which,
with a reason they can show.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
           extensions: int) -> Decision:
    """What to do with an open round now."""
    if accepted >= policy.target_participants:
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
