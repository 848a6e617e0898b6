"""Who acts: the authenticated operator behind an operator call (a primitive shared by the sidecar and rpc/)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operator:
    """An authenticated operator: identity and roles."""

    identity: str
    roles: frozenset[str]
