"""Python client of the agentaudit sidecar: ask before an agent acts, report what happened.

Usage::

    from agentaudit_client import ActionStopped, ApprovalRequired, GatewayClient

    with GatewayClient("unix:///abs/path/.agentaudit/gateway.sock") as client:
        run = client.run("run_1", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))

        decision = run.decide("crm.search", {"query": "ann"})  # a deny is a value
        if decision.allowed:
            ...

        try:
            with run.guard("crm.lookup", {"customer_id": "c_7"}) as step:  # reports the result
                step.output = lookup("c_7")
        except (ActionStopped, ApprovalRequired) as denied:
            print(denied.reason, denied.event_id)

        @run.guarded("refund.create")  # the call's arguments become the action's args
        def create_refund(order_id: str, amount: int) -> dict[str, str]: ...

``AsyncGatewayClient`` offers the same API for asyncio (``await``, ``async with``).

``instrument()`` governs agents built with LangChain, Pydantic AI and the other supported frameworks with no
change to their code (``agentaudit_client.integrations``; docs/integrations.md).
"""

from typing import TYPE_CHECKING, Any

from .models import Actor, ApprovalOutcome, DecideResult, ReportResult

if TYPE_CHECKING:
    from ._guard import Step
    from .address import AddressError, grpc_target
    from .aio import AsyncGatewayClient, AsyncRun
    from .client import GatewayClient, Run
    from .errors import (
        ActionStopped,
        AgentAuditError,
        ApprovalRequired,
        DeadlineExceededError,
        DecisionError,
        FailedPreconditionError,
        GatewayError,
        InvalidRequestError,
        NotFoundError,
        ResourceExhaustedError,
        UnavailableError,
        from_rpc_error,
    )
    from .integrations import instrument

# Everything that imports gRPC or protobuf is loaded on first use: a short-lived process such as a coding-agent
# hook (`agentaudit hook`) imports this package for its models and its hook runtime, and must not pay ~60 ms of
# gRPC imports before it knows it has a call to make (or that the sidecar is not there at all).
_ERRORS = (
    "ActionStopped AgentAuditError ApprovalRequired DeadlineExceededError DecisionError FailedPreconditionError "
    "GatewayError InvalidRequestError NotFoundError ResourceExhaustedError UnavailableError from_rpc_error"
)
_LAZY = {
    "AsyncGatewayClient": ".aio",
    "AsyncRun": ".aio",
    "GatewayClient": ".client",
    "Run": ".client",
    "Step": "._guard",
    "AddressError": ".address",
    "grpc_target": ".address",
    "instrument": ".integrations",
    **dict.fromkeys(_ERRORS.split(), ".errors"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ActionStopped",
    "Actor",
    "AddressError",
    "AgentAuditError",
    "ApprovalOutcome",
    "ApprovalRequired",
    "AsyncGatewayClient",
    "AsyncRun",
    "DeadlineExceededError",
    "DecideResult",
    "DecisionError",
    "FailedPreconditionError",
    "GatewayClient",
    "GatewayError",
    "InvalidRequestError",
    "NotFoundError",
    "ReportResult",
    "ResourceExhaustedError",
    "Run",
    "Step",
    "UnavailableError",
    "from_rpc_error",
    "grpc_target",
    "instrument",
]
