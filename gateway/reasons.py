"""Stable reason codes. Scripts, dashboards and alert rules match on these strings: never rename one.

Documented in docs/reasons.md. Policy rules may name their own snake_case reasons as well.
"""

from __future__ import annotations

import re

ALLOWED = "allowed"
"""No rule stopped the action."""
STOPPED_BY_RULE = "stopped_by_rule"
"""A policy rule stopped the action without naming a more specific reason."""
APPROVAL_REQUIRED = "approval_required"
"""A human must approve the action before it runs."""
RATE_LIMITED_TENANT = "rate_limited_tenant"
"""The tenant exceeded a rate limit; ``retry_after`` says when to try again."""
KILL_SWITCH_ENGAGED = "kill_switch_engaged"
"""A kill switch covering the request (global, tenant, agent or run) is engaged."""
ACCESS_DENIED = "access_denied"
"""No access binding grants this action to this agent in this tenant (RBAC default deny)."""
RATE_LIMITED_AGENT = "rate_limited_agent"
"""The agent exceeded a rate limit; ``retry_after`` says when to try again."""
RATE_LIMITED_ACTION = "rate_limited_action"
"""The action exceeded a rate limit; ``retry_after`` says when to try again."""
RATE_LIMITED_RUN = "rate_limited_run"
"""The run exceeded a rate limit; ``retry_after`` says when to try again."""
RATE_LIMITED = "rate_limited"
"""A rate limit keyed by several dimensions was exceeded."""
STEP_BUDGET_EXCEEDED = "step_budget_exceeded"
"""The run proposed more steps than its budget allows."""
BUDGET_EXCEEDED = "budget_exceeded"
"""A count or sum budget for the current window is used up; ``retry_after`` is the window's end."""
APPROVAL_PENDING = "approval_pending"
"""The agent resumed with an approval that nobody has resolved yet; the same approval_id is returned."""
APPROVAL_DENIED = "approval_denied"
"""The agent resumed with an approval an operator denied."""
APPROVAL_EXPIRED = "approval_expired"
"""The agent resumed with an approval that expired before it was granted."""
APPROVAL_USED = "approval_used"
"""The agent resumed with an approval that was already used (approvals are single use)."""
APPROVAL_MISMATCH = "approval_mismatch"
"""The resuming request differs from the approved one (args, run or tenant): approvals bind to the action key."""
APPROVAL_NOT_FOUND = "approval_not_found"
"""The agent resumed with an approval id this sidecar does not know (or that is closed)."""
JOURNAL_RECOVERY_REQUIRED = "journal_recovery_required"
"""The collector holds more (or other) entries than this journal: it was truncated, restored or rewritten.
Decide refuses until an operator acknowledges (``on_rollback: stop``)."""
AUDIT_UNAVAILABLE = "audit_unavailable"
"""The decision could not be recorded durably, so the sidecar fails closed."""
POLICY_ERROR = "policy_error"
"""Policy evaluation failed; the sidecar fails closed."""
EXECUTED_AFTER_STOP = "executed_after_stop"
"""Violation: a result was reported for an action the sidecar answered ``stop``."""
EXECUTED_WITHOUT_APPROVAL = "executed_without_approval"
"""Violation: a result was reported for an action still awaiting approval."""

REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
