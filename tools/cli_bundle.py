"""``fedbeat bundle``: one offline install bundle for one device (see docs/flashing.md)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from fedbeat.tools.bundle import (
    DEFAULT_GLIBC,
    DEFAULT_PYTHON,
    TARGETS,
    TIERS,
    BundleError,
    BundleSpec,
    build_bundle,
)
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``section.key=value`` pairs; values are TOML (``1.5``, ``true``) or else plain strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key.count(".") != 1:
            raise UsageError(f"--set {pair!r}: use section.key=value, e.g. data.source=serial")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


@click.command()
@click.option("--device-id", required=True, help="The device (from `fedbeat keys add-device`).")
@click.option("--target", required=True, type=click.Choice(sorted(TARGETS)),
              help="The device's platform.")
@click.option("--python", "python", default=DEFAULT_PYTHON, show_default=True,
              help="The device's Python (major.minor); wheels are chosen for it.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle to write, e.g. dev-001.tar.gz (mode 0600: it holds keys).")
@click.option("--keys", "keys_dir", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The fleet key directory (`fedbeat keys init`).")
@click.option("--model", "model_dir", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A built model directory (`fedbeat model build --out DIR`).")
@click.option("--broker", "broker_url", required=True,
              help="The broker as the device reaches it: mqtts://host:8883 or "
                   "wss://host:443/mqtt.")
@click.option("--tier", default="pi", show_default=True, type=click.Choice(TIERS),
              help="pi: ONNX Runtime, trains the whole model; wearable: TFLite inference, "
                   "trains the head only (bundles the TFLite interpreter).")
@click.option("--tflite/--no-tflite", default=False, show_default=True,
              help="Also bundle the TFLite interpreter (ai-edge-litert) for a pi-tier device.")
@click.option("--glibc", default=DEFAULT_GLIBC, show_default=True,
              help="The oldest glibc the device may have; newer wheels are not used.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="A device setting (repeatable), e.g. --set data.source=serial "
                   "--set data.path=/dev/ttyUSB0.")
@click.option("--wheel", "fedbeat_wheel", type=click.Path(dir_okay=False, exists=True,
                                                          path_type=Path),
              help="The fedbeat wheel to bundle (default: build one from this checkout).")
@click.option("--wheel-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Keep downloaded wheels here and reuse them for later bundles.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bundle(device_id: str, target: str, python: str, out: Path, keys_dir: Path,
           model_dir: Path, broker_url: str, tier: str, tflite: bool, glibc: str,
           sets: tuple[str, ...], fedbeat_wheel: Path | None, wheel_cache: Path | None,
           as_json: bool) -> None:
    """Write one device's offline install bundle: wheels, config, keys, model, service.

    \b
    fedbeat bundle --device-id dev-001 --target linux-aarch64 --python 3.11 \\
        --keys keys --model models/ecg-cnn-s --broker mqtts://mqtt.ward7.example:8883 \\
        --out dev-001.tar.gz
    scp dev-001.tar.gz pi@dev-001: && ssh pi@dev-001 \\
        'tar xzf dev-001.tar.gz && sudo sh fedbeat-dev-001/install.sh'

    Downloads the target's wheels from the package index (this machine needs it; the device
    does not) and checks offline that they resolve for the target before writing anything.
    """
    spec = BundleSpec(device_id=device_id, keys_dir=keys_dir, model_dir=model_dir,
                      broker_url=broker_url, target=target, out=out, python=python, tier=tier,
                      tflite=tflite, glibc=glibc, config_overrides=_parse_sets(sets),
                      fedbeat_wheel=fedbeat_wheel, wheel_cache=wheel_cache)
    if not as_json:
        stderr.print(f"bundling [bold]{device_id}[/] for {target}, Python {python} "
                     "(downloading wheels)…")
    try:
        report = build_bundle(spec)
    except BundleError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        emit_json(report.to_json())
        return
    stderr.print(f"[green]wrote[/] {report.path} ({report.size_bytes / 1e6:.1f} MB, "
                 f"{len(report.wheels)} wheels, needs glibc >= {report.glibc_min}); on the "
                 f"device: tar xzf {report.path.name} && sudo sh fedbeat-{device_id}/install.sh")
