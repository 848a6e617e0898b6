"""The error tree of agentaudit and its single translation to gRPC status.

::

    AgentAuditError
    ├── ConfigError                 bad configuration or policy file (CLI exit 2)
    │   └── SigningKeyError         key file unreadable, malformed or too permissive
    ├── InvalidRequestError         a request field is invalid   → INVALID_ARGUMENT + BadRequest
    ├── UnauthenticatedError        no valid operator credential → UNAUTHENTICATED
    ├── PermissionDeniedError       credential lacks the role    → PERMISSION_DENIED
    ├── NotFoundError               an id is unknown             → NOT_FOUND
    ├── FailedPreconditionError     request not allowed in state → FAILED_PRECONDITION (+ ErrorInfo)
    │   └── ViolationError          result reported for an action that was not allowed
    ├── OverloadedError             retry later                  → RESOURCE_EXHAUSTED
    ├── ServiceUnavailableError     a dependency is down         → UNAVAILABLE
    └── JournalError
        ├── JournalUnavailableError the journal cannot be written (Decide fails closed)
        ├── JournalUnreadableError  a file is not a readable journal (verify: nothing could be checked)
        └── MalformedEntryError     stored bytes are not a journal entry

A deny is not an error: ``stop`` and ``approval_required`` are ``Decision`` values. The mapping to gRPC status
is :func:`gateway.rpc.status.to_status`, the one place it happens, so this module (and offline ``verify``) loads no
gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentAuditError(Exception):
    """Base of every error raised on purpose by agentaudit."""


class ConfigError(AgentAuditError):
    """Configuration, policy or key material is invalid; the message says where and why."""


class SigningKeyError(ConfigError):
    """A key file cannot be read or parsed, or its permissions are unsafe."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: its path (``action.args``) and what is wrong."""

    field: str
    description: str


class InvalidRequestError(AgentAuditError):
    """The request is malformed; ``violations`` names each bad field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


class UnauthenticatedError(AgentAuditError):
    """The caller presented no valid operator credential."""


class PermissionDeniedError(AgentAuditError):
    """The authenticated operator may not do this (role, approver list, own run)."""


class NotFoundError(AgentAuditError):
    """An id in the request names nothing known."""


class FailedPreconditionError(AgentAuditError):
    """The request is well-formed but not allowed in the current state.

    ``reason`` is a stable snake_case code a program can act on (the collector's rejection codes: ``rollback``,
    ``fork``, ``bad_signature``, ...); it travels as a ``google.rpc.ErrorInfo`` detail, never inside the message.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ViolationError(FailedPreconditionError):
    """Execution was reported for an action that was stopped or not approved (journaled as a violation)."""


class OverloadedError(AgentAuditError):
    """The service is saturated; the client should retry later (after ``retry_after_s`` if given)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(AgentAuditError):
    """A dependency (such as the collector's database) is unreachable; the client should retry."""


class JournalError(AgentAuditError):
    """Base of journal failures."""


class JournalUnavailableError(JournalError):
    """The journal could not durably record an entry."""


class JournalUnreadableError(JournalError):
    """The file is not a readable agentaudit journal (missing, not SQLite, no journal table, unknown schema).

    Distinct from tamper evidence: nothing could be checked. The CLI exits 2 on it.
    """


class MalformedEntryError(JournalError):
    """Bytes do not decode as a journal entry."""
