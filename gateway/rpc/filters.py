"""Parsing and validating the ``EventFilter`` of search requests (sidecar and collector share it)."""

from __future__ import annotations

from typing import Any

from agentaudit.v1 import operator_pb2
from gateway.errors import FieldViolation, InvalidRequestError
from gateway.journal.query import is_trace_id

MAX_FILTER_BYTES = 256
_FILTER_TEXTS = (
    "run_id",
    "tenant_id",
    "agent_id",
    "action",
    "decision",
    "reason",
    "policy_layer",
    "policy_rule",
    "actor",
    "kind",
    "origin",
)
INT64 = (-(2**63), 2**63 - 1)


def parse_event_filter(f: operator_pb2.EventFilter) -> tuple[dict[str, Any], str | None]:
    """The :class:`~gateway.journal.query.EventFilter` fields of a request's filter, and its ``origin``.

    Raises:
        InvalidRequestError: a text longer than 256 bytes or holding a control character, or ``since`` not
            earlier than ``until``.
    """
    violations = []
    for name in _FILTER_TEXTS:
        value = getattr(f, name)
        if len(value.encode()) > MAX_FILTER_BYTES or not value.isprintable():
            violations.append(FieldViolation(f"filter.{name}", "must be printable text of at most 256 bytes"))
    since = _clamp(f.since.ToNanoseconds()) if f.HasField("since") else None
    until = _clamp(f.until.ToNanoseconds()) if f.HasField("until") else None
    if f.trace_id and not is_trace_id(f.trace_id):
        violations.append(FieldViolation("filter.trace_id", "must be a W3C trace id: 32 lower-case hex digits"))
    if since is not None and until is not None and since >= until:
        violations.append(FieldViolation("filter.since", "must be earlier than filter.until"))
    if violations:
        raise InvalidRequestError(violations)
    fields = {
        "run_id": f.run_id or None,
        "tenant_id": f.tenant_id or None,
        "agent_id": f.agent_id or None,
        "action": f.action or None,
        "decision": f.decision or None,
        "reason": f.reason or None,
        "kind": f.kind or None,
        "since_ns": since,
        "until_ns": until,
        "policy_layer": f.policy_layer or None,
        "policy_rule": f.policy_rule or None,
        "actor": f.actor or None,
        "trace_id": f.trace_id or None,
    }
    return fields, f.origin or None


def _clamp(nanos: int) -> int:
    return max(INT64[0], min(INT64[1], nanos))
