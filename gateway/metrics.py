"""Prometheus metrics (names are constants; exposition over HTTP comes with the operations work)."""

from __future__ import annotations

from prometheus_client import Counter

DECISIONS = Counter(
    "agentaudit_decisions_total",
    "Decide answers by decision, reason and layer.",
    ["decision", "reason", "layer"],
)
FAIL_CLOSED = Counter(
    "agentaudit_fail_closed_total", "Decide answers of stop/audit_unavailable because the journal failed."
)
VIOLATIONS = Counter("agentaudit_violations_total", "Results reported for actions that were not allowed.")
INVALID_REQUESTS = Counter("agentaudit_invalid_requests_total", "Requests refused as INVALID_ARGUMENT.", ["method"])
