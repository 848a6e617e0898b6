"""Sidecar addresses: the one parser of the forms people type, shared by the clients, the CLI and the server.

gRPC's own parser accepts ``unix:PATH`` and ``unix:///ABSOLUTE`` but aborts on ``unix://./relative`` (it reads
``.`` as an authority: "authority-based URIs not supported"). People copy what the docs and the dev banner print,
so every form below is accepted and turned into one that gRPC takes, with relative paths resolved against
``base`` (the current directory by default) so the result does not depend on where the process runs later.

=============================  =====================================
typed                           passed to gRPC
=============================  =====================================
``unix:///abs/gw.sock``         ``unix:///abs/gw.sock``
``unix:/abs/gw.sock``           ``unix:///abs/gw.sock``
``unix:rel/gw.sock``            ``unix:///BASE/rel/gw.sock``
``unix://./rel/gw.sock``        ``unix:///BASE/rel/gw.sock``
``unix://rel/gw.sock``          ``unix:///BASE/rel/gw.sock``
``/abs/gw.sock``, ``./gw.sock`` ``unix:///…`` (a path is a unix socket)
``127.0.0.1:7419``, ``[::1]:7419``, ``dns:///host:7419``, ``unix-abstract:name``: unchanged
=============================  =====================================

The test vectors are ``clients/testdata/addresses.json``; the Node client implements the same table.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

UNIX_PREFIX = "unix://"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")
_PASS_THROUGH = ("dns:", "ipv4:", "ipv6:", "unix-abstract:", "vsock:")


class AddressError(ValueError):
    """An address that is none of the accepted forms; the message says which forms are."""


def grpc_target(address: str, base: str | os.PathLike[str] | None = None) -> str:
    """The gRPC target for an address in any accepted form (see the module docstring).

    Raises:
        AddressError: empty, or neither a unix socket path nor ``HOST:PORT`` nor a gRPC URI.
    """
    text = address.strip()
    if not text:
        raise AddressError("the address is empty (expected unix:///path/to/gateway.sock or HOST:PORT)")
    path = unix_socket_path(text, base)
    if path is not None:
        return UNIX_PREFIX + path
    if text.startswith(_PASS_THROUGH) or _HOST_PORT.match(text):
        return text
    raise AddressError(
        f"{address!r} is not an address: use unix:///abs/path.sock, unix:relative/path.sock or HOST:PORT"
    )


def unix_path(address: str, base: str | os.PathLike[str] | None = None) -> Path | None:
    """The absolute socket path of a unix-socket address, or None when the address is not one."""
    path = unix_socket_path(address, base)
    if path is None:
        return None
    from pathlib import Path  # noqa: PLC0415 - a coding-agent hook resolves its socket without pathlib

    return Path(path)


def unix_socket_path(address: str, base: str | os.PathLike[str] | None = None) -> str | None:
    """:func:`unix_path` as a string, with ``os.path`` (pathlib and its urllib/ipaddress imports are ~5 ms of a
    hook process)."""
    text = address.strip()
    if text.startswith(UNIX_PREFIX):
        raw = text[len(UNIX_PREFIX) :]  # unix:///abs is absolute; unix://./x and unix://x are relative paths
    elif text.startswith("unix:"):
        raw = text[len("unix:") :]
    elif text.startswith(("/", "./", "../")):
        raw = text
    else:
        return None
    if not raw or raw in {".", "/"}:
        raise AddressError(f"{address!r} names no socket file")
    path = raw if os.path.isabs(raw) else os.path.join(os.fspath(base) if base is not None else os.getcwd(), raw)
    return os.path.normpath(path)
