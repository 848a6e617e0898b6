"""Decision values and the engine interface. A deny is a value, never an exception."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.policy.document import Limit
    from gateway.policy.limits import SharedAnswer


class Verdict(enum.StrEnum):
    """What the agent is told to do."""

    ALLOW = "allow"
    STOP = "stop"
    APPROVAL_REQUIRED = "approval_required"


@dataclass(frozen=True)
class ShadowOutcome:
    """What enforcement would have decided where a shadow rule (or a shadow policy) matched."""

    verdict: Verdict
    reason: str
    layer: str
    rule: str


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one proposed action, naming the layer and rule that decided."""

    verdict: Verdict
    reason: str
    layer: str
    rule: str
    policy_version: str
    retry_after_s: float | None = None
    shadow: ShadowOutcome | None = None
    approvers: tuple[str, ...] = ()
    approval_expires_s: int | None = None  # how long the ask waits for an answer (None: the default hour)
    approval_parks: bool = False  # the rule says ``expires_in: never``: the ask waits until someone answers it
    approval_use_within_s: int | None = None  # how long a grant stays usable (None: as long as the ask waited)
    approvals_required: int = 1  # four-eyes: how many distinct approvers must grant the approval


@dataclass(frozen=True)
class ActionRequest:
    """A validated Decide request, as policy sees it (args are the raw, unredacted values)."""

    run_id: str
    step_id: int
    tenant_id: str
    actor_type: str
    actor_id: str
    agent_id: str
    action: str
    args: Mapping[str, Any]
    scope: str
    approval_id: str = ""
    traceparent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # True when args are JCS-normalised (see gateway.canonical.encode_normalised): a hot-path shortcut.
    args_normalised: bool = False
    # True when the request resumes with a granted, matching approval: approval requirements are satisfied.
    approved: bool = False


class PolicyEngine(Protocol):
    """Evaluates requests against one loaded policy document. Must be pure and fast (no I/O)."""

    @property
    def version(self) -> str:
        """Hash of the canonical policy document (``policy_version`` in every decision)."""
        ...

    def evaluate(self, request: ActionRequest, shared: SharedAnswer | None = None) -> Decision:
        """Returns the decision for ``request`` (``shared``: the shared limit store's answer, if one is used)."""
        ...

    def limits_for(self, request: ActionRequest) -> tuple[Limit, ...]:
        """The limits ``request`` is subject to, in evaluation order (what a shared store must check)."""
        ...

    @property
    def counts_steps(self) -> bool:
        """Whether the policy has a steps budget, so every Decide counts a step of its run."""
        ...

    @property
    def shadow(self) -> bool:
        """Whether the whole policy runs in shadow mode (nothing it decides is enforced)."""
        ...
