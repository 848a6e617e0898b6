"""The action key is no oracle for redacted values, and approvals still bind to the exact raw arguments.

The attack (issue 14): a journaled pre-event holds ``action_key`` and a redacted ``phone``. An agent of another
tenant, with no rights at all (every answer stop/access_denied), asks Decide for each guess of the redacted part
and compares the returned key with the journaled one. Before, the key was an HMAC over the *raw* args, so the
sidecar computed the guess's key for the attacker and a 4-digit suffix fell in a few hundred calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import struct_pb2

from agentaudit.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from gateway.journal.store import iter_bodies
from tests.conftest import RunningGateway
from tests.gateway_helpers import decide_request, stub
from tests.operator_helpers import auth, operator_stub

GUESSES = 10_000
PHONE = "+1555123{:04d}"
SECRET_SUFFIX = 4567


def _args(suffix: int) -> dict[str, Any]:
    return {"customer_id": "c_7", "phone": PHONE.format(suffix)}


def test_an_unprivileged_tenant_cannot_recover_a_redacted_value_in_10000_guesses(
    gateway_server: RunningGateway,
) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        victim = gw.Decide(decide_request(run_id="run_victim", args=_args(SECRET_SUFFIX)), timeout=10)
    assert victim.decision == types_pb2.DECISION_ALLOW
    journaled = next(b for _, b in iter_bodies(gateway_server.journal_path) if b.get("run_id") == "run_victim")
    assert journaled["action_key"] == victim.action_key and "args.phone" in journaled["redacted_paths"]

    async def attack() -> tuple[set[str], set[str]]:
        keys: set[str] = set()
        reasons: set[str] = set()
        async with grpc.aio.insecure_channel(gateway_server.unix_target) as aio_channel:
            attacker = gateway_pb2_grpc.GatewayServiceStub(aio_channel)
            queue = iter(range(GUESSES))

            async def worker() -> None:
                for suffix in queue:
                    answer: gateway_pb2.DecideResponse = await attacker.Decide(
                        decide_request(
                            run_id="run_attack",
                            tenant_id="t_evil",
                            agent_id="intruder",
                            actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_AGENT, id="intruder"),
                            step_id=suffix + 1,
                            args=_args(suffix),
                        ),
                        timeout=30,
                    )
                    keys.add(answer.action_key)
                    reasons.add(answer.reason)

            await asyncio.gather(*(worker() for _ in range(16)))
        return keys, reasons

    keys, reasons = asyncio.run(attack())
    assert reasons == {"access_denied"}, "the attacker has no rights: every guess was refused"
    assert victim.action_key not in keys, "no guess reproduces the victim's key"
    assert len(keys) == 1, "every guess gets the same key: the answer carries no information about the value"


def test_the_same_tenant_cannot_tell_guesses_apart_either(gateway_server: RunningGateway) -> None:
    channel, gw = stub(gateway_server.unix_target)
    with channel:
        keys = {
            gw.Decide(decide_request(run_id="run_same", step_id=i + 1, args=_args(i)), timeout=10).action_key
            for i in range(50)
        }
    assert len(keys) == 1, "the key is computed over the redacted args"


def _refund(email: str) -> struct_pb2.Struct:
    args = struct_pb2.Struct()
    args.update({"order_id": "o_1", "amount": 250, "customer": {"email": email}})
    return args


def test_an_approval_is_bound_to_the_raw_args_even_where_the_action_key_cannot_tell_them_apart(
    gateway_server: RunningGateway,
) -> None:
    """The refund approved for ann@ cannot be spent on bob@, though both have the same (redacted) action key."""
    channel, gw = stub(gateway_server.unix_target)
    with channel:

        def ask(email: str, step: int, approval_id: str = "") -> gateway_pb2.DecideResponse:
            request = decide_request(run_id="run_bind", step_id=step, action="refund.create", approval_id=approval_id)
            request.action.args.CopyFrom(_refund(email))
            return gw.Decide(request, timeout=10)

        pending = ask("ann@example.com", 1)
        assert pending.decision == types_pb2.DECISION_APPROVAL_REQUIRED
        op_channel, op = operator_stub(gateway_server.operator_target)
        with op_channel:
            from agentaudit.v1 import operator_pb2  # noqa: PLC0415

            op.GrantApproval(
                operator_pb2.GrantApprovalRequest(approval_id=pending.approval_id, comment="ok"),
                metadata=auth(gateway_server.operator_token),
                timeout=10,
            )
        other = ask("bob@example.com", 2, pending.approval_id)
        assert other.action_key == pending.action_key, "the redacted email does not enter the action key"
        assert (other.decision, other.reason) == (types_pb2.DECISION_STOP, "approval_mismatch")
        same = ask("ann@example.com", 3, pending.approval_id)
        assert same.decision == types_pb2.DECISION_ALLOW
    bodies = [b for _, b in iter_bodies(gateway_server.journal_path) if b.get("run_id") == "run_bind"]
    asked = next(b for b in bodies if b.get("decision") == "approval_required")
    assert asked["approval_binding"].startswith("ab_"), "the binding is journaled with the request"
    assert all(b.get("approval_binding") != pending.action_key for b in bodies)
