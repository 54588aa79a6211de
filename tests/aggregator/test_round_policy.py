"""When a round closes, extends or aborts (the pure decision)."""

from __future__ import annotations

import pytest

from fedbeat.aggregator.rounds import Decision, RoundPolicy, decide

POLICY = RoundPolicy(min_participants=2, target_participants=5, deadline_s=60.0,
                     max_extensions=1)


@pytest.mark.parametrize(("accepted", "refused", "now", "extensions", "expected"), [
    (5, 0, 0.0, 0, Decision.CLOSE),      # the target is in
    (4, 0, 0.0, 0, Decision.WAIT),       # before the deadline, one missing
    (4, 1, 0.0, 0, Decision.CLOSE),      # ... who answered with a refused update: no wait
    (1, 4, 0.0, 0, Decision.WAIT),       # everyone answered but below the minimum: wait
    (1, 4, 61.0, 0, Decision.EXTEND),    # ... and at the deadline, extend
    (1, 4, 61.0, 1, Decision.ABORT),     # ... out of extensions: abort
    (2, 0, 61.0, 0, Decision.CLOSE),     # at the deadline with the minimum
])
def test_refused_devices_count_as_answers_but_never_as_participants(
        accepted: int, refused: int, now: float, extensions: int, expected: Decision) -> None:
    assert decide(POLICY, accepted=accepted, refused=refused, now=now, deadline=60.0,
                  extensions=extensions) is expected
