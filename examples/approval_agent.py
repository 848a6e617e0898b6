"""The seed's approval scenario end to end: a refund waits for a human, then runs exactly once.

Start the sidecar in one terminal, run this in a second, and approve from a third::

    agentaudit dev
    python examples/approval_agent.py              # prints the approval id and waits
    agentaudit approvals                           # the pending refund, with its amount
    agentaudit approve apr_… --comment "checked the order"

The journal then shows ``approval_required`` → ``approval_granted`` (by you) → ``allow`` → the result.
Deny it instead (``agentaudit deny apr_… --comment …``) and the refund never runs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from agentaudit_client import ActionStopped, ApprovalRequired, GatewayClient, UnavailableError

DEFAULT_TARGET = "unix:.agentaudit/gateway.sock"


def create_refund(order_id: str, amount: int) -> dict[str, Any]:
    """Stands in for the payment call; runs only once a human approved it."""
    return {"refund_id": "r_" + secrets.token_hex(4), "order_id": order_id, "amount": amount}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.environ.get("AGENTAUDIT_TARGET", DEFAULT_TARGET))
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for a human (default 300)")
    args = parser.parse_args()
    run_id = "run_" + secrets.token_hex(6)
    refund = {"order_id": "o_1", "amount": 250, "customer": {"email": "ann@example.com"}}
    try:
        with GatewayClient(args.target, timeout=args.wait + 30) as client:
            run = client.run(run_id, tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
            print(f"run {run_id}: asking to refund 250 on o_1; approve it with `agentaudit approve` …", flush=True)
            with run.guard("refund.create", refund, wait_for_approval=timedelta(seconds=args.wait)) as step:
                step.output = create_refund("o_1", 250)
    except UnavailableError:
        print(f"cannot reach the sidecar at {args.target}: is `agentaudit dev` running?", file=sys.stderr)
        return 1
    except ApprovalRequired as pending:
        print(f"nobody answered within {args.wait:.0f}s; approval {pending.approval_id} is still pending")
        return 2
    except ActionStopped as stopped:
        print(f"refund not made: {stopped.reason} (event {stopped.event_id})")
        return 0
    reported = step.report.event_id if step.report else ""
    print(f"refund made: {step.output} (allowed by event {step.event_id}, reported {reported})")
    print(f"see it: agentaudit trace {run_id} --public-key {Path('.agentaudit/signing.pub')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
