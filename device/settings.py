"""TOML settings files made of documented dataclass sections (device and aggregator alike).

A section is a frozen dataclass whose fields carry their documentation in ``metadata["doc"]``
(made with :func:`setting`). :func:`load_sections` reads a TOML file strictly — unknown sections
or keys and wrong types are errors naming what to fix, because a typo must never fall back to a
default silently — and :func:`example_text` renders the complete commented example that the
``init-config`` commands write, so documentation and defaults cannot drift apart. Standard
library only: this is on the device path.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


class ConfigError(Exception):
    """A settings file is missing, not TOML, or has an unknown or invalid setting."""


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed ``(ok, message)``."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def parses(parse: Callable[[str], object], text: str) -> bool:
    """Whether ``parse(text)`` succeeds (raises no ``ValueError``): for :func:`require`."""
    try:
        parse(text)
    except ValueError:
        return False
    return True


def setting(default: Any, doc: str) -> Any:
    """A dataclass field with its default and the one line that explains it."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def _section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{name}]: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    for key, value in values.items():
        kind = hints[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[key], ok = float(value), True
        if not ok:
            raise ConfigError(f"[{name}] {key} must be {kind.__name__}, got {value!r}")
    return cls(**values)


def load_sections(path: Path, sections: Mapping[str, type], *,
                  init_command: str) -> dict[str, Any]:
    """Each section of ``path`` as its dataclass (defaults for absent ones)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (write one with `{init_command}`)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: not a valid TOML file ({exc})") from None
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sections)})")
    return {name: _section(name, cls, dict(data.get(name, {})))
            for name, cls in sections.items()}


def load_config_file(path: Path, factory: Callable[..., T], sections: Mapping[str, type], *,
                     init_command: str) -> T:
    """``factory(**sections, base_dir=<the file's directory>)``, validated: the one way both
    services read their settings file (relative paths are relative to the file)."""
    loaded = load_sections(path, sections, init_command=init_command)
    config = factory(**loaded, base_dir=Path(path).resolve().parent)
    config.validate()  # type: ignore[attr-defined]
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def example_text(title: str, sections: Mapping[str, type], overrides: Mapping[str, Any]) -> str:
    """A complete, commented TOML file with every default (``section.key`` overrides)."""
    lines = [f"# {title}. Every setting is optional; shown are the", "# defaults. Relative "
             "paths are relative to this file.", ""]
    for name, cls in sections.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            value = overrides.get(f"{name}.{f.name}", f.default)
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
