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
AUDIT_UNAVAILABLE = "audit_unavailable"
"""The decision could not be recorded durably, so the sidecar fails closed."""
POLICY_ERROR = "policy_error"
"""Policy evaluation failed; the sidecar fails closed."""
EXECUTED_AFTER_STOP = "executed_after_stop"
"""Violation: a result was reported for an action the sidecar answered ``stop``."""
EXECUTED_WITHOUT_APPROVAL = "executed_without_approval"
"""Violation: a result was reported for an action still awaiting approval."""

REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
