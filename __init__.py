"""fedbeat: privacy-preserving federated learning for ECG arrhythmia detection.

The distribution installs one package, ``fedbeat``, whose subpackages are the project's roles:
``fedbeat.models`` (architectures, ONNX graph builder, TFLite export), ``fedbeat.device`` (the
on-device runtime), ``fedbeat.broker`` (the MQTT contract), ``fedbeat.aggregator`` (the server)
and ``fedbeat.tools`` (the ``fedbeat`` command line). See ``docs/architecture.md``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedbeat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
