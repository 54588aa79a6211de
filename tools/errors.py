"""Errors a person can act on, and how the CLI shows them.

Each domain keeps its own exception type (``ModelFileError``, ``InvalidBeatsError``, …); the
CLI turns exactly these into a one-line message and exit status 1, never a traceback.
"""

from __future__ import annotations

from fedbeat.aggregator.config import ConfigError, EvaluationDataError
from fedbeat.aggregator.model_store import ModelStoreError
from fedbeat.broker.client import BrokerConnectionError
from fedbeat.broker.identity import KeyFileError
from fedbeat.broker.launch import BrokerError
from fedbeat.device.beats import InvalidBeatsError
from fedbeat.device.config import SourceError
from fedbeat.device.ecg.errors import RecordError
from fedbeat.device.privacy.ledger import LedgerError
from fedbeat.models.manifest import ModelFileError
from fedbeat.models.params import ParamError
from fedbeat.models.zoo import UnknownModelError
from fedbeat.tools.pki import KeyExistsError, UnknownDeviceError


class UsageError(Exception):
    """A command was asked for something it cannot do; the message says what to do instead."""


USER_ERRORS: tuple[type[Exception], ...] = (
    UsageError, ModelFileError, InvalidBeatsError, ParamError, UnknownModelError, RecordError,
    KeyFileError, KeyExistsError, UnknownDeviceError, BrokerError, BrokerConnectionError,
    ConfigError, ModelStoreError, EvaluationDataError, SourceError, LedgerError,
)
