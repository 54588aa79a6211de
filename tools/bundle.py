"""One offline install bundle per device: wheels for its platform, config, keys, model, service.

``fedbeat bundle`` writes ``<id>.tar.gz`` holding one directory, ``fedbeat-<id>/``::

    install.sh                  POSIX sh: checks, venv, `pip install --no-index`, systemd unit
    bundle.json                 what was bundled: device, fleet, target, Python, wheels, model
    requirements.txt            every wheel pinned with its SHA-256 (`pip --require-hashes`)
    wheels/*.whl                fedbeat and its device dependencies for the target platform
    config/device.toml          the daemon's configuration (`fedbeat device init-config` form)
    keys/                       the device's key directory (0700, every file 0600)
    model/                      the built model directory (graphs and manifest)
    systemd/fedbeat-device.service

Wheels for another platform come from ``pip download --only-binary=:all: --platform ...``; the
platform tags are the target's manylinux tags from ``--glibc`` down to ``manylinux2014``
(aarch64 wheels of numpy, scipy and onnxruntime carry ``manylinux_2_27``/``_2_28`` tags). The
wheel set is then chosen and checked by pip itself: an offline ``pip install --dry-run
--report`` for the target platform resolves fedbeat against the downloaded files only, so a
bundle is written only when every requirement is satisfied by a wheel whose tags the target
accepts. See ``docs/flashing.md``.

This module runs on the machine that builds bundles, never on the device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedbeat import __version__
from fedbeat.broker.identity import DEVICE_CA_CERT, DeviceIdentity, KeyFileError, KeyLayout

FORMAT_VERSION = 1
SERVICE_NAME = "fedbeat-device"
DEFAULT_PYTHON = "3.11"
DEFAULT_GLIBC = "2.28"
TIERS = ("pi", "wearable")
# The TFLite interpreter is taken from fedbeat's own `tflite` extra (its version bound lives in
# pyproject.toml); the extra's other members write .tflite files and stay off the device.
TFLITE_RUNTIME = "ai-edge-litert"
_OLDEST_MANYLINUX_MINOR = 17  # manylinux2014 = manylinux_2_17
_URL = re.compile(r"^(mqtts|wss|mqtt|ws)://[^\s/]+(:\d+)?(/\S*)?$")


class BundleError(Exception):
    """A bundle cannot be built as asked; the message says what to do instead."""


class WheelDownloadError(BundleError):
    """``pip download`` failed: no wheel for the target, or the package index is unreachable."""


@dataclass(frozen=True)
class Target:
    """A device platform: ``linux-aarch64`` or ``linux-x86_64``."""

    name: str
    arch: str

    def platform_tags(self, glibc: tuple[int, int]) -> list[str]:
        """The wheel platform tags a device with this glibc accepts, most specific first."""
        major, minor = glibc
        tags = [f"manylinux_{major}_{m}_{self.arch}"
                for m in range(minor, _OLDEST_MANYLINUX_MINOR - 1, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags


TARGETS: dict[str, Target] = {
    "linux-aarch64": Target("linux-aarch64", "aarch64"),
    "linux-x86_64": Target("linux-x86_64", "x86_64"),
}


@dataclass(frozen=True)
class BundleSpec:
    """What to bundle for one device.

    Parameters
    ----------
    device_id
        The device, as registered with ``fedbeat keys add-device``.
    keys_dir
        The fleet key directory; only ``devices/<device_id>/`` is bundled.
    model_dir
        A built model directory (``fedbeat model build --out DIR``).
    broker_url
        The broker as the device reaches it (``mqtts://host:8883`` or ``wss://host:443/mqtt``).
    target
        A key of :data:`TARGETS`.
    python
        The device's Python, ``"3.11"``; wheels are chosen for CPython of that version.
    out
        The ``.tar.gz`` to write (mode 0600: it holds private keys).
    tier
        ``"pi"`` or ``"wearable"`` (wearable implies the TFLite interpreter).
    tflite
        Bundle the TFLite interpreter (``ai-edge-litert``) for a ``pi`` tier device too.
    glibc
        The oldest glibc the device may have, ``"2.28"``: newer wheels are not chosen.
    config_overrides
        ``section.key`` → value for the device configuration (e.g. ``data.source``).
    fedbeat_wheel
        A built fedbeat wheel; by default one is built from the source checkout.
    wheel_cache
        A directory downloaded wheels are kept in and reused from (one per target).
    """

    device_id: str
    keys_dir: Path
    model_dir: Path
    broker_url: str
    target: str
    out: Path
    python: str = DEFAULT_PYTHON
    tier: str = "pi"
    tflite: bool = False
    glibc: str = DEFAULT_GLIBC
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    fedbeat_wheel: Path | None = None
    wheel_cache: Path | None = None


@dataclass(frozen=True)
class WheelInfo:
    """One bundled wheel."""

    file: str
    name: str
    version: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class BundleReport:
    """What :func:`build_bundle` wrote."""

    path: Path
    size_bytes: int
    device_id: str
    fleet: str
    target: str
    python: str
    glibc_min: str
    wheels: tuple[WheelInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "size_bytes": self.size_bytes, "device_id": self.device_id,
            "fleet": self.fleet, "target": self.target, "python": self.python,
            "glibc_min": self.glibc_min,
            "wheels": [{"file": w.file, "name": w.name, "version": w.version,
                        "sha256": w.sha256, "size_bytes": w.size_bytes} for w in self.wheels],
        }


# --- wheel file names (PEP 427 / PEP 425) -----------------------------------------------------

@dataclass(frozen=True)
class WheelTags:
    """The parts of a wheel file name; compressed tag sets are split."""

    name: str
    version: str
    pythons: frozenset[str]
    abis: frozenset[str]
    platforms: frozenset[str]


def parse_wheel_name(filename: str) -> WheelTags:
    """Split ``name-version[-build]-python-abi-platform.whl``.

    Raises
    ------
    BundleError
        If ``filename`` is not a wheel file name.
    """
    if not filename.endswith(".whl"):
        raise BundleError(f"{filename} is not a wheel")
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        raise BundleError(f"{filename} is not a valid wheel file name")
    py, abi, plat = parts[-3:]
    return WheelTags(name=normalize_name(parts[0]), version=parts[1],
                     pythons=frozenset(py.split(".")), abis=frozenset(abi.split(".")),
                     platforms=frozenset(plat.split(".")))


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_fits(tags: WheelTags, *, target: Target, python: str,
               glibc: tuple[int, int]) -> bool:
    """Whether CPython ``python`` on ``target`` with ``glibc`` can install this wheel."""
    major, minor = (int(x) for x in python.split("."))
    interpreters = {f"py{major}", f"py{major}{minor}", f"cp{major}{minor}"}
    interpreters |= {f"cp{major}{m}" for m in range(2, minor + 1)} if "abi3" in tags.abis else set()
    abis = {"none", "abi3", f"cp{major}{minor}"}
    platforms = {"any", *target.platform_tags(glibc)}
    return bool(tags.pythons & interpreters and tags.abis & abis and tags.platforms & platforms)


def required_glibc(tags: WheelTags) -> tuple[int, int] | None:
    """The oldest glibc that one of the wheel's platform tags accepts (None: pure Python)."""
    best: tuple[int, int] | None = None
    for plat in tags.platforms:
        match = re.match(r"manylinux_(\d+)_(\d+)_", plat)
        legacy = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
        if match:
            version = (int(match.group(1)), int(match.group(2)))
        elif plat.split("_")[0] in legacy:
            version = legacy[plat.split("_")[0]]
        else:
            continue
        best = version if best is None else min(best, version)
    return best


def _parse_version_pair(text: str, what: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", text)
    if not match:
        raise BundleError(f"{what} must look like 3.11 (major.minor), got {text!r}")
    return int(match.group(1)), int(match.group(2))


# --- the fedbeat wheel and its requirements ---------------------------------------------------

def source_tree() -> Path | None:
    """The fedbeat checkout this process runs from, or None for an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return None
    return root if name == "fedbeat" else None


_SKIP_IN_COPY = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                       ".*_cache", ".venv", "runs", "tests", "*.onnx", "*.tflite")


def build_fedbeat_wheel(out_dir: Path, source: Path | None = None) -> Path:
    """Build fedbeat's wheel from ``source`` or, by default, the checkout fedbeat runs from (in
    a copy, so the checkout is untouched).

    Raises
    ------
    BundleError
        If fedbeat does not run from a checkout or the build fails.
    """
    root = source or source_tree()
    if root is None:
        raise BundleError("fedbeat is not running from a source checkout; pass the fedbeat "
                          "wheel to bundle with --wheel")
    with tempfile.TemporaryDirectory(prefix="fedbeat-src-") as tmp:
        src = Path(tmp) / "fedbeat"
        shutil.copytree(root, src, ignore=_SKIP_IN_COPY)
        result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                       "--wheel-dir", str(out_dir), str(src)])
        if result.returncode != 0:
            raise BundleError(f"building the fedbeat wheel failed:\n{_tail(result.stderr)}")
    wheels = sorted(out_dir.glob("fedbeat-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"expected one fedbeat wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def wheel_requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            meta = next((n for n in zf.namelist()
                         if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if meta is None:
                raise BundleError(f"{wheel} has no METADATA")
            text = zf.read(meta).decode("utf-8")
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{wheel} is not a readable wheel: {exc}") from None
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def extra_requirement(requirements: Iterable[str], *, extra: str, name: str) -> str:
    """The requirement for project ``name`` from ``extra``, without its marker.

    ``ai-edge-litert>=1.0; extra == "tflite"`` → ``ai-edge-litert>=1.0``.
    """
    for req in requirements:
        spec, _, marker = req.partition(";")
        if not re.search(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""", marker):
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match and normalize_name(match.group(1)) == normalize_name(name):
            return spec.strip()
    raise BundleError(f"fedbeat's [{extra}] extra names no {name} requirement")


# --- downloading and resolving ----------------------------------------------------------------

def _run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _platform_args(target: Target, python: str, glibc: tuple[int, int]) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "--abi", "cp" + python.replace(".", "")]
    for tag in target.platform_tags(glibc):
        args += ["--platform", tag]
    return args


def offline_pip_env() -> dict[str, str]:
    """An environment in which pip reads no configuration file and no ``PIP_*`` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def download_wheels(requirements: Sequence[str], dest: Path, *, target: Target, python: str,
                    glibc: tuple[int, int]) -> None:
    """``pip download`` the requirements and their dependencies for the target platform.

    Uses the building machine's pip configuration (index, proxy, certificates).

    Raises
    ------
    WheelDownloadError
        If a requirement has no wheel for the target, or the index cannot be reached.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
           "--progress-bar", "off", "--dest", str(dest), *_platform_args(target, python, glibc),
           *requirements]
    result = _run(cmd)
    if result.returncode != 0:
        raise WheelDownloadError(f"downloading wheels for {target.name}, Python {python} "
                                 "failed (is the package index reachable?):\n"
                                 f"{_tail(result.stderr)}")


def resolve_offline(requirements: Sequence[str], wheelhouse: Path, *, target: Target,
                    python: str, glibc: tuple[int, int]) -> list[Path]:
    """The wheels pip would install on the target from ``wheelhouse`` alone.

    Runs ``pip install --dry-run --report`` with ``--no-index``, the target's platform tags and
    no pip configuration: it succeeds only if every requirement, transitively, is satisfied by a
    wheel in ``wheelhouse`` that the target accepts.

    Raises
    ------
    BundleError
        If resolution fails (the message is pip's).
    """
    with tempfile.TemporaryDirectory(prefix="fedbeat-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run",
               "--ignore-installed", "--no-index", "--find-links", str(wheelhouse),
               "--target", str(Path(tmp) / "target"), "--report", str(report), "--quiet",
               *_platform_args(target, python, glibc), *requirements]
        result = _run(cmd, env=offline_pip_env())
        if result.returncode != 0:
            raise BundleError(f"the wheels for {target.name}, Python {python} do not resolve "
                              f"offline:\n{_tail(result.stderr)}")
        try:
            items = json.loads(report.read_text())["install"]
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"pip wrote no usable --report ({exc}); pip >= 22.2 is "
                              "needed to build bundles") from None
    files = []
    for item in items:
        url = item["download_info"]["url"]
        if not url.startswith("file://"):
            raise BundleError(f"pip resolved {url}, not a local wheel")
        files.append(Path(url[len("file://"):]))
    return files


# --- the bundle -------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _template(name: str) -> str:
    return resources.files("fedbeat.tools").joinpath("bundle_templates", name).read_text()


def _render(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@([A-Z_]+)@", text)) - {"STATE_DIR"})
    if left:
        raise BundleError(f"template placeholders left unfilled: {', '.join(left)}")
    return text


def device_config_text(*, broker_url: str, tier: str, overrides: Mapping[str, Any]) -> str:
    """The device's ``device.toml``: keys, model and state paths fixed for the install layout.

    ``keys`` and ``model`` sit beside the file (relative paths are relative to it);
    ``@STATE_DIR@`` is filled in by ``install.sh`` once it knows where state lives.
    """
    fixed = {"device.keys": "keys", "device.state_dir": "@STATE_DIR@", "device.tier": tier,
             "model.dir": "model", "broker.url": broker_url}
    clash = sorted(set(overrides) & set(fixed))
    if clash:
        raise BundleError(f"{', '.join(clash)} are set by the bundle and cannot be overridden")
    values = {**fixed, **overrides}
    try:
        from fedbeat.device.config import SECTIONS, example_device_config
    except ImportError:  # before the device daemon existed: the minimal form
        return _minimal_config(values)
    known = {f"{section}.{f.name}" for section, cls in SECTIONS.items()
             for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BundleError(f"unknown device setting(s): {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    return example_device_config(**values)


def _minimal_config(values: Mapping[str, Any]) -> str:
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    lines = ["# fedbeat device configuration (minimal form written by `fedbeat bundle`;",
             "# `fedbeat device init-config` writes the complete, commented one).", ""]
    for section, entries in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in entries.items()]
        lines.append("")
    return "\n".join(lines)


def _check_keys(keys_dir: Path, device_id: str) -> tuple[Path, DeviceIdentity]:
    layout = KeyLayout(Path(keys_dir))
    try:
        device_dir = layout.device_dir(device_id)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    if not device_dir.is_dir():
        raise BundleError(f"{device_dir} does not exist: run `fedbeat keys add-device "
                          f"{device_id} --dir {keys_dir}` first")
    identity = DeviceIdentity.load(device_dir)  # KeyFileError names the file and the fix
    if identity.device_id != device_id:
        raise BundleError(f"{device_dir} holds the keys of {identity.device_id}")
    if not (device_dir / DEVICE_CA_CERT).is_file():
        raise KeyFileError(f"missing CA certificate {device_dir / DEVICE_CA_CERT}")
    from fedbeat.tools.pki import list_devices

    _, records = list_devices(layout.root)
    record = next((r for r in records if r.device_id == device_id), None)
    if record is None:
        raise BundleError(f"device {device_id} is not in {layout.registry}")
    if record.revoked_at:
        raise BundleError(f"device {device_id} is revoked; add a new device id instead")
    return device_dir, identity


def _check_model(model_dir: Path, *, tier: str) -> str:
    from fedbeat.models.manifest import load_model_dir

    loaded = load_model_dir(Path(model_dir))  # ModelFileError: missing or altered files
    if tier == "wearable" and not (Path(model_dir) / "model.tflite").is_file():
        raise BundleError(f"a wearable device runs model.tflite, which {model_dir} lacks: "
                          "rebuild it with `fedbeat model build --tflite`")
    return loaded.manifest.model


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner root, and modes by role: keys owner-only, install.sh executable."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    parts = Path(info.name).parts
    secret = len(parts) >= 2 and parts[1] == "keys"
    if info.isdir():
        info.mode = 0o700 if secret or len(parts) == 1 else 0o755
    elif secret:
        info.mode = 0o600
    elif parts[-1] == "install.sh":
        info.mode = 0o755
    else:
        info.mode = 0o644
    return info


def _write_tar(staging: Path, top: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(staging, arcname=top, filter=_tar_filter)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _copy_private_dir(src: Path, dest: Path) -> None:
    dest.mkdir(mode=0o700)
    for item in sorted(src.iterdir()):
        if item.is_file():
            target = dest / item.name
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                fh.write(item.read_bytes())


def build_bundle(spec: BundleSpec) -> BundleReport:
    """Write the device's install bundle to ``spec.out``.

    Raises
    ------
    BundleError
        Bad arguments, wheels missing for the target, or an index that cannot be reached.
    KeyFileError
        The device's keys are missing, corrupt or readable by others.
    ModelFileError
        The model directory is missing files or was altered.
    """
    if spec.target not in TARGETS:
        raise BundleError(f"unknown target {spec.target!r}; choose {', '.join(TARGETS)}")
    target = TARGETS[spec.target]
    py_major, _ = _parse_version_pair(spec.python, "--python")
    if py_major != 3:
        raise BundleError(f"--python must be a Python 3 version, got {spec.python}")
    glibc = _parse_version_pair(spec.glibc, "--glibc")
    if glibc < (2, _OLDEST_MANYLINUX_MINOR):
        raise BundleError(f"--glibc must be at least 2.{_OLDEST_MANYLINUX_MINOR}")
    if spec.tier not in TIERS:
        raise BundleError(f"unknown tier {spec.tier!r}; choose {', '.join(TIERS)}")
    if not _URL.match(spec.broker_url):
        raise BundleError(f"broker URL {spec.broker_url!r} must look like "
                          "mqtts://host:8883 or wss://host:443/mqtt")
    device_dir, identity = _check_keys(spec.keys_dir, spec.device_id)
    model_name = _check_model(spec.model_dir, tier=spec.tier)
    config_text = device_config_text(broker_url=spec.broker_url, tier=spec.tier,
                                     overrides=spec.config_overrides)

    top = f"fedbeat-{spec.device_id}"
    with tempfile.TemporaryDirectory(prefix="fedbeat-bundle-") as tmp:
        staging = Path(tmp) / top
        wheels_dir = staging / "wheels"
        wheels_dir.mkdir(parents=True)
        built = Path(tmp) / "built"
        built.mkdir()
        own = spec.fedbeat_wheel or build_fedbeat_wheel(built)
        if not own.is_file() or parse_wheel_name(own.name).name != "fedbeat":
            raise BundleError(f"{own} is not a fedbeat wheel")
        own_local = built / own.name
        if own.resolve() != own_local.resolve():
            shutil.copy2(own, own_local)
        requirements = [str(own_local)]
        if spec.tflite or spec.tier == "wearable":
            requirements.append(extra_requirement(wheel_requirements(own_local), extra="tflite",
                                                  name=TFLITE_RUNTIME))

        cache = (spec.wheel_cache / f"{target.name}-cp{spec.python.replace('.', '')}-glibc"
                 f"{glibc[0]}.{glibc[1]}") if spec.wheel_cache else Path(tmp) / "download"
        download_wheels(requirements, cache, target=target, python=spec.python, glibc=glibc)
        resolved = resolve_offline(requirements, cache, target=target, python=spec.python,
                                   glibc=glibc)

        wheels: list[WheelInfo] = []
        oldest_glibc = (2, _OLDEST_MANYLINUX_MINOR)
        for path in resolved:
            tags = parse_wheel_name(path.name)
            if not wheel_fits(tags, target=target, python=spec.python, glibc=glibc):
                raise BundleError(f"{path.name} does not fit {target.name}, Python {spec.python}")
            oldest_glibc = max(oldest_glibc, required_glibc(tags) or oldest_glibc)
            shutil.copy2(path, wheels_dir / path.name)
            wheels.append(WheelInfo(path.name, tags.name, tags.version, _sha256(path),
                                    path.stat().st_size))
        wheels.sort(key=lambda w: w.name)
        fedbeat_version = next(w.version for w in wheels if w.name == "fedbeat")

        (staging / "requirements.txt").write_text(
            "# Every wheel in wheels/, pinned with its SHA-256 (pip install --require-hashes).\n"
            + "".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels))
        (staging / "config").mkdir()
        (staging / "config" / "device.toml").write_text(config_text)
        _copy_private_dir(device_dir, staging / "keys")
        shutil.copytree(spec.model_dir, staging / "model",
                        ignore=shutil.ignore_patterns("__pycache__", ".*"))
        values = {"DEVICE_ID": spec.device_id, "TARGET": target.name, "MACHINE": target.arch,
                  "PYTHON_VERSION": spec.python,
                  "GLIBC_MIN": f"{oldest_glibc[0]}.{oldest_glibc[1]}",
                  "FEDBEAT_VERSION": fedbeat_version}
        (staging / "systemd").mkdir()
        (staging / "systemd" / f"{SERVICE_NAME}.service").write_text(
            _render(_template(f"{SERVICE_NAME}.service"), values))
        (staging / "install.sh").write_text(_render(_template("install.sh"), values))
        manifest = {
            "format_version": FORMAT_VERSION, "device_id": spec.device_id,
            "fleet": identity.fleet, "target": target.name, "python": spec.python,
            "glibc_min": values["GLIBC_MIN"], "tier": spec.tier,
            "tflite_runtime": spec.tflite or spec.tier == "wearable",
            "broker_url": spec.broker_url, "model": model_name,
            "fedbeat_version": fedbeat_version, "built_by": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "service": f"{SERVICE_NAME}.service",
            "wheels": [{"file": w.file, "sha256": w.sha256, "size_bytes": w.size_bytes}
                       for w in wheels],
        }
        (staging / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _write_tar(staging, top, spec.out)

    return BundleReport(path=spec.out, size_bytes=spec.out.stat().st_size,
                        device_id=spec.device_id, fleet=identity.fleet, target=target.name,
                        python=spec.python, glibc_min=values["GLIBC_MIN"], wheels=tuple(wheels))


def read_bundle_manifest(bundle: Path) -> dict[str, Any]:
    """``bundle.json`` of a bundle ``.tar.gz``, without extracting it."""
    with tarfile.open(bundle, "r:gz") as tar:
        for member in tar:
            if member.isfile() and Path(member.name).name == "bundle.json" \
                    and len(Path(member.name).parts) == 2:
                fh = tar.extractfile(member)
                if fh is not None:
                    data: dict[str, Any] = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
                    return data
    raise BundleError(f"{bundle} holds no bundle.json")
