"""A real sidecar's approvals reach the fleet tables through its forwarder, with the fields its recorder writes:
``agentaudit dev`` forwarding to its embedded collector, read back with FleetControl on the collector's database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentaudit_client import ApprovalRequired, GatewayClient
from gateway.collector.fleet import FleetApproval, FleetControl
from gateway.collector.fleet_sqlite import SqliteFleetDb
from gateway.errors import NotFoundError
from tests.conftest import RunningGateway, run_cli, start_gateway
from tests.fleet_helpers import CONTROL


def fleet_view(gw: RunningGateway, approval_id: str, until: Callable[[FleetApproval], bool]) -> FleetApproval:
    """Polls the embedded collector's fleet tables until the approval satisfies ``until`` (30 s deadline)."""

    async def read() -> FleetApproval | None:
        fleet = FleetControl(SqliteFleetDb(gw.dir / "collector.db"), CONTROL, replica="reader")
        await fleet.start()
        try:
            return await fleet.get_approval(approval_id)
        except NotFoundError:
            return None
        finally:
            await fleet.aclose()

    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        last = asyncio.run(read())
        if last is not None and until(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"the fleet tables show {last} for {approval_id} after 30 s")


@pytest.fixture
def forwarding_sidecar(tmp_path_factory: pytest.TempPathFactory) -> RunningGateway:
    gw = start_gateway(Path(tmp_path_factory.mktemp("fleet")), forward=True)
    yield gw  # type: ignore[misc]
    gw.stop()


def test_a_real_sidecars_approval_is_mirrored_opened_granted_and_used(forwarding_sidecar: RunningGateway) -> None:
    gw = forwarding_sidecar
    with GatewayClient(gw.tcp_target) as client:
        run = client.run("run_fleet", tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
        args = {"order_id": "o_1", "amount": 250, "customer": {"email": "a@b.c"}}
        with pytest.raises(ApprovalRequired) as pending, run.guard("refund.create", args):
            raise AssertionError("a refund ran without approval")
        approval_id = pending.value.approval_id

        opened = fleet_view(gw, approval_id, lambda a: a.state == "pending")
        assert (opened.tenant_id, opened.agent_id, opened.run_id, opened.actor_id) == (
            "t_42", "support-agent", "run_fleet", "u_1",
        )  # fmt: skip
        assert opened.action == "refund.create" and opened.args["order_id"] == "o_1"
        assert opened.redacted_paths == ("args.customer.email",) and "a@b.c" not in repr(opened)
        assert opened.origin.startswith("agentaudit-dev/") and opened.policy_version and opened.policy_rule
        assert opened.expires_ms is None or opened.expires_ms > opened.created_ms
        assert opened.approvals_required == 1 and opened.event_seq > 0

        done = run_cli(
            "approve", approval_id, "--comment", "checked", "--operator", gw.operator_target,
            "--token-file", str(gw.dir / "operator.token"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        granted = fleet_view(gw, approval_id, lambda a: a.state == "granted")
        assert (granted.resolved_by, granted.comment) == ("dev-operator", "checked")
        assert [(v.approver, v.grant) for v in granted.votes] == [("dev-operator", True)]

        assert run.decide("refund.create", args, approval_id=approval_id).decision == "allow"
        fleet_view(gw, approval_id, lambda a: a.state == "used")
