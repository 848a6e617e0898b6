"""Who acts: the authenticated operator behind an operator call (a primitive shared by the sidecar and rpc/)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


def normalise_identity(identity: str) -> str:
    """The form two spellings of one identity share: Unicode NFKC, case-folded, surrounding space stripped.

    Identities come from different places (an operator token's configured name, a certificate CN, the actor an
    agent names in Decide), so ``Alice``, ``alice`` and a full-width ``alice`` must compare equal wherever a
    rule depends on who someone is, such as "nobody approves their own run".
    """
    return unicodedata.normalize("NFKC", identity).casefold().strip()


@dataclass(frozen=True)
class Operator:
    """An authenticated operator: identity and roles."""

    identity: str
    roles: frozenset[str]
