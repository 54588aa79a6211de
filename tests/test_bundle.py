"""``fedbeat bundle``: offline install bundles for devices (docs/flashing.md).

Fast tests build bundles around a stand-in wheel (downloads replaced) and check what a bundle
holds: modes, config, rendered install.sh and unit, refusals. Slow tests download real wheels
from the package index once per session (skipped when it is unreachable) and check that

* a bundle for this machine installs into a fresh directory with no index and no network, the
  installed ``fedbeat`` runs, the keys are 0600, a second run is harmless;
* the installed daemon, started exactly as the systemd unit starts it, completes a federated
  round through Mosquitto with a real aggregator;
* an aarch64 bundle (with the TFLite interpreter) resolves every requirement from its own
  wheels, all of them aarch64 or pure Python.

``FEDBEAT_BUNDLE_WHEEL=path/to/fedbeat.whl`` bundles that wheel instead of building one from
the checkout.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner
from mqtt_testing import build_fleet

from fedbeat.tools import bundle as bundle_mod
from fedbeat.tools.bundle import (
    TARGETS,
    BundleError,
    BundleReport,
    BundleSpec,
    WheelDownloadError,
    build_bundle,
    build_fedbeat_wheel,
    offline_pip_env,
    parse_wheel_name,
    required_glibc,
    wheel_fits,
)
from fedbeat.tools.cli import cli

REPO = Path(__file__).resolve().parent.parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
NATIVE_TARGET = f"linux-{platform.machine()}"
DEVICE = "dev-0"
REVOKED = "dev-gone"


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fleet(tmp_path_factory.mktemp("bundle-fleet") / "keys",
                       devices=(DEVICE, "dev-1", REVOKED), revoked=(REVOKED,))


@pytest.fixture(scope="module")
def model_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["ecg-cnn-s"]


def _fake_wheel(directory: Path) -> Path:
    """A stand-in fedbeat wheel whose METADATA has the real tflite extra requirement."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    litert = next(r for r in pyproject["project"]["optional-dependencies"]["tflite"]
                  if r.startswith("ai-edge-litert"))
    path = directory / "fedbeat-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fedbeat-0.1.0.dist-info/METADATA",
                    "Metadata-Version: 2.4\nName: fedbeat\nVersion: 0.1.0\n"
                    "Requires-Dist: numpy>=1.24\n"
                    f'Requires-Dist: {litert}; extra == "tflite"\n')
    return path


@pytest.fixture
def seen() -> dict[str, list[str]]:
    """What the stand-in download was asked for."""
    return {}


@pytest.fixture
def offline_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fleet: Path,
                  model_dir: Path, seen: dict[str, list[str]]) -> BundleSpec:
    """A spec whose wheel set is just the stand-in wheel (no download, no resolution)."""

    def download(requirements: list[str], dest: Path, **_: object) -> None:
        seen["requirements"] = list(requirements)
        dest.mkdir(parents=True, exist_ok=True)

    def resolve(requirements: list[str], wheelhouse: Path, **_: object) -> list[Path]:
        return [Path(requirements[0])]

    monkeypatch.setattr(bundle_mod, "download_wheels", download)
    monkeypatch.setattr(bundle_mod, "resolve_offline", resolve)
    return BundleSpec(device_id=DEVICE, keys_dir=fleet, model_dir=model_dir,
                      broker_url="mqtts://mqtt.ward7.example:8883", target="linux-aarch64",
                      out=tmp_path / "out" / f"{DEVICE}.tar.gz",
                      fedbeat_wheel=_fake_wheel(tmp_path))


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(path: Path, name: str) -> str:
    with tarfile.open(path) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read().decode()


def _extract(bundle: Path, into: Path) -> Path:
    """Extract with the system tar, as on a device."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(bundle), "-C", str(into)], check=True)
    (top,) = into.iterdir()
    return top


def _offline_env() -> dict[str, str]:
    """No pip configuration, no index, and proxies that go nowhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9")
    return env


# --- wheel tags -------------------------------------------------------------------------------

def test_aarch64_platform_tags_include_manylinux_2_27_and_2_28() -> None:
    tags = TARGETS["linux-aarch64"].platform_tags((2, 28))
    assert tags[:2] == ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64"]
    assert "manylinux2014_aarch64" in tags
    assert not any("x86_64" in t for t in tags)


@pytest.mark.parametrize(("name", "fits"), [
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", True),
    ("cryptography-50.0.2-cp311-abi3-manylinux_2_28_aarch64.whl", True),
    ("protobuf-7.36.2-cp310-abi3-manylinux2014_aarch64.whl", True),
    ("click-8.5.1-py3-none-any.whl", True),
    ("cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl", False),   # glibc too new
    ("numpy-2.4.6-cp312-cp312-manylinux_2_27_aarch64.whl", False),           # other Python
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl", False),            # other machine
    ("numpy-2.4.6-cp311-cp311-musllinux_1_2_aarch64.whl", False),
])
def test_wheel_fits_the_target(name: str, fits: bool) -> None:
    tags = parse_wheel_name(name)
    assert wheel_fits(tags, target=TARGETS["linux-aarch64"], python="3.11",
                      glibc=(2, 28)) is fits


def test_required_glibc_is_the_most_lenient_tag() -> None:
    both = parse_wheel_name("scipy-1.17.1-cp311-cp311-"
                            "manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl")
    assert required_glibc(both) == (2, 27)
    assert required_glibc(parse_wheel_name("cffi-2.1.1-cp311-cp311-"
                                           "manylinux2014_aarch64.whl")) == (2, 17)
    assert required_glibc(parse_wheel_name("click-8.5.1-py3-none-any.whl")) is None


# --- what a bundle holds (no downloads) ------------------------------------------------------

def test_bundle_layout_modes_and_config(offline_build: BundleSpec) -> None:
    report = build_bundle(offline_build)
    out = offline_build.out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600          # it holds private keys
    members = _members(out)
    top = f"fedbeat-{DEVICE}"
    assert stat.S_IMODE(members[top].mode) == 0o700
    keys = [m for n, m in members.items() if n.startswith(f"{top}/keys/")]
    assert {Path(m.name).name for m in keys} >= {"client.key", "signing.key", "ca.crt",
                                                  "client.crt", "device.json"}
    assert all(stat.S_IMODE(m.mode) == 0o600 for m in keys)
    assert stat.S_IMODE(members[f"{top}/keys"].mode) == 0o700
    assert stat.S_IMODE(members[f"{top}/install.sh"].mode) == 0o755
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert not any(m.mode & 0o007 and "/keys" in m.name for m in members.values())
    for name in ("bundle.json", "requirements.txt", "config/device.toml", "model/manifest.json",
                 "systemd/fedbeat-device.service", "wheels/fedbeat-0.1.0-py3-none-any.whl"):
        assert f"{top}/{name}" in members, name

    manifest = json.loads(_read(out, f"{top}/bundle.json"))
    assert manifest["device_id"] == DEVICE
    assert manifest["fleet"] == report.fleet == "ward-7"
    assert manifest["target"] == "linux-aarch64"
    assert manifest["tflite_runtime"] is False
    requirements = _read(out, f"{top}/requirements.txt")
    assert re.search(r"^fedbeat==0\.1\.0 --hash=sha256:[0-9a-f]{64}$", requirements, re.M)

    # The config is the daemon's own format; install.sh fills in the state directory.
    from fedbeat.device.config import load_device_config
    config = _read(out, f"{top}/config/device.toml")
    path = offline_build.out.parent / "device.toml"
    path.write_text(config.replace("@STATE_DIR@", "/var/lib/fedbeat"))
    loaded = load_device_config(path)
    assert loaded.broker.url == "mqtts://mqtt.ward7.example:8883"
    assert loaded.path(loaded.device.keys) == path.parent / "keys"
    assert loaded.path(loaded.model.dir) == path.parent / "model"
    assert loaded.device.state_dir == "/var/lib/fedbeat"

    unit = _read(out, f"{top}/systemd/fedbeat-device.service")
    for line in ("Restart=on-failure", "User=fedbeat", "ProtectSystem=strict",
                 "StateDirectory=fedbeat", "StandardOutput=journal",
                 "ExecStart=/opt/fedbeat/venv/bin/fedbeat device run --config "
                 "/etc/fedbeat/device.toml"):
        assert line in unit
    assert re.search(r"^MemoryMax=\d+M$", unit, re.M)
    script = _read(out, f"{top}/install.sh")
    assert "@" not in re.sub(r"@STATE_DIR@|\$@|\"\$@\"", "", script)
    assert "MACHINE='aarch64'" in script
    assert f"DEVICE_ID='{DEVICE}'" in script


def test_wearable_bundles_the_tflite_interpreter_from_the_extra(
        offline_build: BundleSpec, seen: dict[str, list[str]], tmp_path: Path,
        model_dir: Path) -> None:
    with_tflite = tmp_path / "with-tflite"
    shutil.copytree(model_dir, with_tflite)
    (with_tflite / "model.tflite").write_bytes(b"stand-in")
    spec = BundleSpec(**{**offline_build.__dict__, "tier": "wearable", "model_dir": with_tflite})
    build_bundle(spec)
    requirements = seen["requirements"]
    assert len(requirements) == 2
    assert requirements[1].startswith("ai-edge-litert")
    manifest = json.loads(_read(spec.out, f"fedbeat-{DEVICE}/bundle.json"))
    assert manifest["tier"] == "wearable"
    assert manifest["tflite_runtime"] is True


@pytest.mark.parametrize(("change", "message"), [
    ({"device_id": REVOKED}, "revoked"),
    ({"device_id": "dev-unknown"}, "keys add-device"),
    ({"broker_url": "localhost:8883"}, "must look like"),
    ({"tier": "wearable"}, "model.tflite"),
    ({"python": "3"}, "major.minor"),
    ({"config_overrides": {"data.sauce": "csv"}}, "unknown device setting"),
    ({"config_overrides": {"device.keys": "/etc/other"}}, "set by the bundle"),
])
def test_bad_requests_are_refused_before_anything_is_written(
        offline_build: BundleSpec, change: dict[str, object], message: str) -> None:
    spec = BundleSpec(**{**offline_build.__dict__, **change})
    with pytest.raises(BundleError, match=message):
        build_bundle(spec)
    assert not spec.out.exists()


def test_a_world_readable_device_key_is_refused(offline_build: BundleSpec,
                                                 tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(offline_build.keys_dir, keys)
    (keys / "devices" / DEVICE / "signing.key").chmod(0o644)
    (keys / "devices" / DEVICE / "client.key").chmod(0o644)
    result = CliRunner().invoke(cli, [
        "bundle", "--device-id", DEVICE, "--target", "linux-x86_64", "--out",
        str(tmp_path / "x.tar.gz"), "--keys", str(keys), "--model",
        str(offline_build.model_dir), "--broker", "mqtts://localhost:8883"])
    assert result.exit_code == 1
    assert "chmod 600" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.tar.gz").exists()


def test_install_script_is_posix_and_checks_the_machine_first(offline_build: BundleSpec,
                                                              tmp_path: Path) -> None:
    build_bundle(offline_build)          # an aarch64 bundle
    top = _extract(offline_build.out, tmp_path / "x")
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(top / "install.sh")], check=True)
    result = subprocess.run(["sh", str(top / "install.sh"), "--prefix", str(tmp_path / "p"),
                             "--no-systemd"], capture_output=True, text=True, check=False)
    if platform.machine() != "aarch64":
        assert result.returncode == 1
        assert "this bundle is for linux-aarch64" in result.stderr
        assert not (tmp_path / "p").exists()
    help_ = subprocess.run(["sh", str(top / "install.sh"), "--help"], capture_output=True,
                           text=True, check=True)
    assert "--prefix DIR" in help_.stdout
    assert "--no-systemd" in help_.stdout
    wrong = subprocess.run(["sh", str(top / "install.sh"), "--prefix", str(tmp_path / "p")],
                           capture_output=True, text=True, check=False)
    assert wrong.returncode == 1


# --- real wheels (slow, need the package index) -----------------------------------------------

@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheel-cache")


@pytest.fixture(scope="session")
def fedbeat_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("FEDBEAT_BUNDLE_WHEEL")
    if given:
        return Path(given)
    try:
        # The checkout these tests belong to: CI runs them against a non-editable install.
        checkout = Path(__file__).resolve().parents[1]
        return build_fedbeat_wheel(tmp_path_factory.mktemp("fedbeat-wheel"), checkout)
    except BundleError as exc:
        if "index" in str(exc).lower() or "connection" in str(exc).lower():
            pytest.skip(f"cannot build the fedbeat wheel without the package index: {exc}")
        raise


def _real_bundle(spec: BundleSpec) -> BundleReport:
    try:
        return build_bundle(spec)
    except WheelDownloadError as exc:
        pytest.skip(f"package index unreachable or missing wheels: {exc}")


@pytest.fixture(scope="module")
def broker_port() -> int:
    from fedbeat.broker.launch import free_port
    return free_port()


@pytest.fixture(scope="module")
def native_bundle(tmp_path_factory: pytest.TempPathFactory, fleet: Path, model_dir: Path,
                  wheel_cache: Path, fedbeat_wheel: Path, broker_port: int) -> BundleReport:
    if NATIVE_TARGET not in TARGETS:
        pytest.skip(f"no bundle target for this machine ({platform.machine()})")
    out = tmp_path_factory.mktemp("native-bundle") / f"{DEVICE}.tar.gz"
    # A synthetic patient replayed as fast as possible, so that a round needs no ECG hardware.
    overrides = {"data.source": "synthetic", "data.speed": 0.0,
                 "training.min_labelled_beats": 100, "service.retry_min_s": 1.0}
    return _real_bundle(BundleSpec(
        device_id=DEVICE, keys_dir=fleet, model_dir=model_dir,
        broker_url=f"mqtts://localhost:{broker_port}", target=NATIVE_TARGET, out=out,
        python=PYTHON, config_overrides=overrides, fedbeat_wheel=fedbeat_wheel,
        wheel_cache=wheel_cache))


class Installed(NamedTuple):
    prefix: Path
    install_sh: Path


def _install(install_sh: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(install_sh), "--prefix", str(prefix), "--no-systemd",
                           "--python", sys.executable],
                          capture_output=True, text=True, env=_offline_env(), check=False)


@pytest.fixture(scope="module")
def installed(native_bundle: BundleReport,
              tmp_path_factory: pytest.TempPathFactory) -> Installed:
    top = _extract(native_bundle.path, tmp_path_factory.mktemp("extracted"))
    prefix = tmp_path_factory.mktemp("device") / "fedbeat"
    result = _install(top / "install.sh", prefix)
    assert result.returncode == 0, result.stderr
    return Installed(prefix, top / "install.sh")


@pytest.mark.slow
def test_native_bundle_installs_offline_into_a_fresh_directory(installed: Installed) -> None:
    prefix = installed.prefix
    fedbeat = prefix / "venv" / "bin" / "fedbeat"
    version = subprocess.run([str(fedbeat), "--version"], capture_output=True, text=True,
                             check=True)
    assert "fedbeat, version" in version.stdout
    device_help = subprocess.run([str(fedbeat), "device", "--help"], capture_output=True,
                                 text=True, check=True)
    assert "run" in device_help.stdout
    keys = prefix / "etc" / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys.iterdir())
    assert stat.S_IMODE((prefix / "state").stat().st_mode) == 0o700
    config = (prefix / "etc" / "device.toml").read_text()
    assert f'state_dir = "{prefix / "state"}"' in config
    # The installed venv never needed onnx, torch or TensorFlow.
    probe = subprocess.run([str(prefix / "venv" / "bin" / "python"), "-c",
                            "import importlib.util as u; print([m for m in "
                            "('onnx', 'torch', 'tensorflow', 'wfdb', 'amqtt') if u.find_spec(m)])"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"


@pytest.mark.slow
def test_installing_the_same_bundle_again_is_harmless(installed: Installed) -> None:
    etc = installed.prefix / "etc"
    before = (etc / "device.toml").read_text()
    result = _install(installed.install_sh, installed.prefix)
    assert result.returncode == 0, result.stderr
    assert (etc / "device.toml").read_text() == before
    assert not (etc / "device.toml.previous").exists()
    assert not list(etc.glob("*.new")) + list(etc.glob("*.old"))


@pytest.mark.slow
def test_installed_device_completes_a_round_against_mosquitto(
        installed: Installed, fleet: Path, model_dir: Path, broker_port: int,
        tmp_path: Path) -> None:
    from aggregator_harness import AggregatorProcess, write_config
    from mqtt_testing import require_mosquitto

    from fedbeat.broker.mosquitto import MosquittoBroker, MosquittoConfig
    from fedbeat.device.runtime.outbox import Outbox

    require_mosquitto()
    config = MosquittoConfig(keys_dir=fleet, data_dir=tmp_path / "mosq", port=broker_port,
                             bind="127.0.0.1")
    with MosquittoBroker(config) as broker:
        aggregator = AggregatorProcess(
            write_config(tmp_path / "aggregator.toml", keys=fleet, broker=broker.tls_url,
                         model_dir=model_dir, state_dir=tmp_path / "aggregator-state",
                         rounds__rounds=1, rounds__min_participants=1,
                         rounds__target_participants=1),
            tmp_path / "aggregator.log").start()
        log = tmp_path / "device.log"
        # Exactly what the systemd unit runs, from the installed venv and the bundle's config.
        with log.open("wb") as out:
            device = subprocess.Popen(
                [str(installed.prefix / "venv" / "bin" / "fedbeat"), "device", "run",
                 "--config", str(installed.prefix / "etc" / "device.toml"), "--rounds", "1"],
                stdout=out, stderr=out, env=_offline_env())
        try:
            assert aggregator.wait(240) == 0, aggregator.output()
            assert device.wait(60) == 0, log.read_text()
        finally:
            if device.poll() is None:
                device.kill()
            aggregator.stop()
    outbox = Outbox(installed.prefix / "state" / "outbox.sqlite", retry_min_s=1, retry_max_s=2)
    try:
        assert outbox.rounds_answered() == {1}
    finally:
        outbox.close()


@pytest.fixture(scope="module")
def aarch64_bundle(tmp_path_factory: pytest.TempPathFactory, fleet: Path, model_dir: Path,
                   wheel_cache: Path, fedbeat_wheel: Path) -> BundleReport:
    out = tmp_path_factory.mktemp("aarch64-bundle") / f"{DEVICE}.tar.gz"
    return _real_bundle(BundleSpec(
        device_id=DEVICE, keys_dir=fleet, model_dir=model_dir,
        broker_url="mqtts://mqtt.ward7.example:8883", target="linux-aarch64", out=out,
        python="3.11", tflite=True, fedbeat_wheel=fedbeat_wheel, wheel_cache=wheel_cache))


@pytest.mark.slow
def test_aarch64_bundle_resolves_every_wheel(aarch64_bundle: BundleReport,
                                             tmp_path: Path) -> None:
    top = _extract(aarch64_bundle.path, tmp_path / "x")
    wheels = sorted((top / "wheels").glob("*.whl"))
    for wheel in wheels:
        platforms = parse_wheel_name(wheel.name).platforms
        assert all(p == "any" or p.endswith("_aarch64") for p in platforms), wheel.name
        assert wheel_fits(parse_wheel_name(wheel.name), target=TARGETS["linux-aarch64"],
                          python="3.11", glibc=(2, 28)), wheel.name
    names = {parse_wheel_name(w.name).name for w in wheels}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-")
              for r in pyproject["project"]["dependencies"]}
    assert wanted | {"fedbeat", "ai-edge-litert", "onnxruntime"} <= names
    assert not names & {"onnx", "torch", "tensorflow", "wfdb", "amqtt"}
    manifest = json.loads((top / "bundle.json").read_text())
    assert manifest["glibc_min"] in {"2.27", "2.28"}

    # pip, offline and for the device's platform, installs exactly the bundled wheels from
    # requirements.txt, every hash checked and every dependency satisfied.
    report = tmp_path / "report.json"
    tags = [a for t in TARGETS["linux-aarch64"].platform_tags((2, 28)) for a in ("--platform", t)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
         "--no-index", "--find-links", str(top / "wheels"), "--only-binary=:all:",
         "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311", *tags,
         "--target", str(tmp_path / "t"), "--require-hashes", "-r", str(top / "requirements.txt"),
         "--report", str(report), "--quiet"],
        capture_output=True, text=True, env=offline_pip_env(), check=False)
    assert result.returncode == 0, result.stderr
    resolved = {Path(i["download_info"]["url"]).name
                for i in json.loads(report.read_text())["install"]}
    assert resolved == {w.name for w in wheels}
    print(f"aarch64 bundle: {aarch64_bundle.size_bytes / 1e6:.1f} MB, {len(wheels)} wheels")
