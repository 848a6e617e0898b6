"""What the MCP proxy lists: who asks (the identity), a tool definition's digest for pinning, and the access-layer
filter that hides tools the policy can never allow for that identity (docs/mcp.md, "What tools/list shows")."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import mcp_types as types

from gateway.canonical import canonical_json
from gateway.policy.document import PolicyDocument, parse_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who acts: fixed for a proxy, or per request from verified JWT claims (HTTP)."""

    tenant_id: str
    agent_id: str = ""
    actor_type: str = "agent"
    actor_id: str = ""


def tool_digest(tool: types.Tool) -> str:
    """SHA-256 of the canonical JSON of a tool's name, description and input schema."""
    return hashlib.sha256(
        canonical_json({"name": tool.name, "description": tool.description or "", "inputSchema": tool.input_schema})
    ).hexdigest()


def may_ever_allow(document: PolicyDocument, action: str, identity: Identity) -> bool:
    """False only when the access layer denies ``action`` to this identity whatever the arguments.

    A binding with a ``when`` condition might grant it for some request, so it counts as a possible allow; a
    shadow policy never stops anything. Later layers (limits, approvals, rules) never hide a tool.
    """
    if document.shadow or document.access.default_allow:
        return True
    return any(
        b.actions.match(action)
        and b.tenants.match(identity.tenant_id)
        and b.agents.match(identity.agent_id)
        and (b.actor_types is None or identity.actor_type in b.actor_types)
        for b in document.access.bindings
    )


class ListingPolicy:
    """The policy file the sidecar runs, re-read when it changes, for filtering ``tools/list``."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._mtime = -1.0
        self._document: PolicyDocument | None = None

    def document(self) -> PolicyDocument | None:
        if self._path is None:
            return None
        try:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                self._document = parse_policy(self._path.read_text(), str(self._path))
                self._mtime = mtime
        except Exception as exc:  # a broken file hides nothing: the sidecar still decides every call
            log.warning("cannot read policy %s for tools/list filtering: %s", self._path, exc)
        return self._document
