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
ALERT_DELIVERIES = Counter("agentaudit_alert_deliveries_total", "Alerts a webhook accepted (2xx).", ["webhook_format"])
ALERT_FAILURES = Counter(
    "agentaudit_alert_failures_total",
    "Alerts given up on: attempts exhausted or a non-retryable answer (4xx other than 429).",
    ["webhook_format"],
)
ALERT_RETRIES = Counter(
    "agentaudit_alert_retries_total", "Alert delivery attempts that failed and were retried.", ["webhook_format"]
)
ALERTS_DROPPED = Counter(
    "agentaudit_alerts_dropped_total",
    "Alerts dropped undelivered: a webhook's queue was full, or shutdown came first.",
    ["webhook_format"],
)
