"""The fleet keys as a session fixture for the wire-format tests."""

from __future__ import annotations

import pytest
from wire.fleet_keys import Fleet, make_fleet


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    return make_fleet()
