"""A support agent's steps, played against a running ``agentaudit dev`` sidecar.

Start the sidecar in one terminal, then run this in another, from the same directory::

    agentaudit dev
    python examples/support_agent.py

It shows the three answers of the example policy: a looping agent that floods the CRM is stopped by its
tenant's rate limit, a large refund needs a human approval, and a customer lookup is allowed, executed and its
result reported. Then it prints what the sidecar journaled for the run (``agentaudit events``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentaudit_client import (
    ActionStopped,
    ApprovalRequired,
    DecideResult,
    GatewayClient,
    GatewayError,
    UnavailableError,
)

AGENT = "support-agent"
MAX_FLOOD = 100
ACTOR = ("user", "u_1")


def lookup_customer(customer_id: str, phone: str) -> dict[str, Any]:
    """Stands in for the CRM call the agent makes once the sidecar allows it."""
    return {"customer_id": customer_id, "name": "Ann", "phone": phone, "open_orders": 1}


def search_crm(query: str) -> dict[str, Any]:
    """Stands in for the CRM search the looping agent repeats."""
    return {"query": query, "hits": 1}


def show(step: str, result: DecideResult, note: str = "") -> None:
    print(f"{step:<26} → {result.decision:<17} reason={result.reason:<20} event={result.event_id} {note}")


def play(client: GatewayClient, run_id: str, flood_run_id: str) -> None:
    # (a) An agent stuck in a loop floods the CRM: the tenant's rate limit (10/s, burst 20) stops it.
    # Every allowed search runs inside guard, so its result is reported too: a step decided but never reported
    # is what `agentaudit trace` flags as missing_result. The stop is the ActionStopped's result, with retry_after.
    flood = client.run(flood_run_id, tenant_id="t_flood", agent_id=AGENT, actor=ACTOR)
    allowed = 0
    stopped: DecideResult | None = None
    for _ in range(MAX_FLOOD):
        try:
            with flood.guard("crm.search", {"query": "ann"}) as search:
                search.output = search_crm("ann")
        except ActionStopped as denied:
            stopped = denied.result
            break
        allowed += 1
        stopped = search.decision  # the last answer, should the limit never stop the loop
    assert stopped is not None  # MAX_FLOOD > 0
    retry = f"retry_after={stopped.retry_after:.3f}s" if stopped.retry_after is not None else ""
    show(f"crm.search #{allowed + 1} (t_flood)", stopped, f"after {allowed} allowed {retry}".rstrip())

    run = client.run(run_id, tenant_id="t_42", agent_id=AGENT, actor=ACTOR)

    # (b) A refund needs a human: the guarded function never runs, ApprovalRequired says which approval.
    @run.guarded("refund.create")
    def create_refund(order_id: str, amount: int, customer: dict[str, str]) -> dict[str, Any]:
        raise AssertionError("a refund ran without approval")

    try:
        create_refund(order_id="o_1", amount=250, customer={"email": "ann@example.com"})
    except ApprovalRequired as pending:
        show("refund.create (t_42)", pending.result, f"approval={pending.approval_id}")
    except ActionStopped as denied:  # e.g. a kill switch engaged for t_42 (the README's drill)
        show("refund.create (t_42)", denied.result, "(stopped)")

    # (c) A lookup is allowed: the block runs and its output and duration are reported.
    args = {"customer_id": "c_7", "phone": "+15551234567"}
    try:
        with run.guard("crm.lookup", args) as step:
            step.output = lookup_customer(**args)
    except ActionStopped as denied:  # a kill switch, or a policy changed to stop lookups
        show("crm.lookup (t_42)", denied.result, "(stopped)")
    else:
        reported = f"reported={step.report.event_id}" if step.report else ""
        show("crm.lookup (t_42)", step.decision, reported)


def print_events(journal: Path, run_id: str) -> None:
    cli = shutil.which("agentaudit") or shutil.which("agentaudit", path=str(Path(sys.executable).parent))
    command = [cli or "agentaudit", "events", str(journal), "--run-id", run_id]
    print(f"\n$ agentaudit {' '.join(command[1:])}")
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)
    except subprocess.CalledProcessError as exc:
        print(f"(could not list the journal's events: {exc.stderr.strip() or exc})")
        return
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"(could not list the journal's events: {exc})")
        return
    print(completed.stdout.rstrip() or "(no events)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--target",
        default="unix://" + os.path.abspath(".agentaudit/gateway.sock"),
        help="sidecar address: unix:///abs/path.sock, unix:relative/path.sock or HOST:PORT (default: %(default)s)",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        default=Path(".agentaudit/journal.db"),
        help="journal to list the run's events from (default: %(default)s)",
    )
    parser.add_argument("--no-events", action="store_true", help="do not list the journaled events")
    options = parser.parse_args(argv)

    run_id, flood_run_id = f"run_{secrets.token_hex(6)}", f"run_{secrets.token_hex(6)}"
    print(f"run {run_id} (tenant t_42), run {flood_run_id} (tenant t_flood), sidecar {options.target}\n")
    try:
        with GatewayClient(options.target) as client:
            play(client, run_id, flood_run_id)
    except UnavailableError as exc:
        print(f"cannot reach the sidecar at {options.target} ({exc}); is `agentaudit dev` running?")
        return 1
    except GatewayError as exc:  # any other refusal: one line, never a traceback
        print(f"the sidecar refused a call: {exc}")
        return 1

    if not options.no_events:
        print_events(options.journal, run_id)  # the flood run's ~41 events are left out for brevity
    return 0


if __name__ == "__main__":
    sys.exit(main())
