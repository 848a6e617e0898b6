"""Readers for configuration values: each checks one raw YAML or environment value and names the key if it is bad.

Every section parser in this package is built from these, so a wrong type or an out-of-range value reads the same
everywhere: ``KEY.PATH: expected WHAT, got VALUE`` or ``KEY.PATH: VALUE is outside LOW..HIGH``. Two families:

- :func:`coerce` converts by a dataclass field's annotation and accepts strings for numbers and booleans, because
  environment variables (``AGENTAUDIT_<SECTION>_<KEY>``) are strings; the flat sidecar sections use it.
- :func:`integer`, :func:`number`, :func:`strings` take YAML types only; the structured sections (alerts, the
  collector) have no environment overrides for these keys, so a quoted number there is a mistake worth refusing.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

_HOST_PORT = r"([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):\d{1,5}"
HOST_PORT_RE = re.compile(rf"^{_HOST_PORT}$")
"""``HOST:PORT`` (a name, an IPv4 address or a bracketed IPv6 address)."""
LISTEN_RE = re.compile(rf"^(unix://.+|{_HOST_PORT})$")
"""A gRPC listen address: ``unix:///path`` or ``HOST:PORT``."""
SHA256_RE = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 digest as 64 lower-case hex digits (how bearer tokens are stored); use with ``fullmatch``."""

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def mapping(key: str, raw: Any) -> dict[str, Any]:
    """``raw`` if it is a mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(raw).__name__}")
    return raw


def refuse_unknown(key: str, raw: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuses keys of ``raw`` outside ``known``, listing the known ones."""
    names = set(known)
    unknown = sorted(str(k) for k in set(raw) - names)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The keys a section dataclass accepts."""
    return tuple(f.name for f in dataclasses.fields(cls))


def resolve_path(value: str, base: Path) -> Path:
    """``value`` as a path, ``~`` expanded, relative to ``base`` unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def coerce(key: str, value: Any, annotation: Any, base: Path) -> Any:
    """Converts a YAML or environment value to the field's type (bool, int, float, str, Path, tuple of str)."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return resolve_path(value, base)
    if typing.get_origin(annotation) is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(items)
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - a programming error


def integer(key: str, value: Any, low: int, high: int) -> int:
    """A YAML integer in ``low..high`` (a boolean is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    in_range(key, value, low, high)
    return value


def number(key: str, value: Any, low: float, high: float) -> float:
    """A YAML number in ``(low, high]``: ``low`` itself is refused (a zero timeout or interval means nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not low < value <= high:
        raise ConfigError(f"{key}: {value} is outside ({low}, {high}]")
    return float(value)


def in_range(key: str, value: float, low: float, high: float) -> None:
    """Refuses ``value`` outside ``low..high`` (both included)."""
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value} is outside {low}..{high}")


def strings(key: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A non-empty YAML list of non-empty strings, each in ``allowed`` when given."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of non-empty strings, got {value!r}")
    if not value:
        raise ConfigError(f"{key}: must not be empty (omit the key to match everything)")
    if allowed is not None:
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ConfigError(f"{key}: {', '.join(bad)} not one of {', '.join(allowed)}")
    return tuple(value)


def listen_addresses(key: str, listen: Iterable[str], base: Path) -> tuple[str, ...]:
    """Checks listen addresses: ``HOST:PORT`` or a unix socket in any form the clients accept.

    Unix sockets go through the clients' one address parser (``unix:///abs``, ``unix:rel``, ``unix://./rel``, a bare
    path), relative paths resolving against ``base``, so that the server binds exactly where a client typing the
    same text connects.
    """
    # Imported here: the client package loads gRPC, and loading the configuration must not (the offline tools
    # read it too); only a configuration with listeners gets this far.
    from agentaudit_client.address import AddressError, grpc_target, unix_path  # noqa: PLC0415

    out = []
    for address in listen:
        try:
            socket = unix_path(address, base)
        except AddressError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if socket is not None:
            out.append(grpc_target(str(socket)))
        elif HOST_PORT_RE.match(address):
            out.append(address)
        else:
            raise ConfigError(f"{key}: {address!r} is not unix:///path or HOST:PORT (unix:relative/path also works)")
    return tuple(out)
