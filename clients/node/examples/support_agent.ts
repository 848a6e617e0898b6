/**
 * A support agent's steps, played against a running `agentaudit dev` sidecar (the Node twin of
 * examples/support_agent.py).
 *
 * Start the sidecar in one terminal, then run this in another, from the same directory:
 *
 *     agentaudit dev
 *     node clients/node/dist/examples/support_agent.js
 *
 * It shows the three answers of the example policy: a looping agent that floods the CRM is stopped by its
 * tenant's rate limit, a large refund needs a human approval, and a customer lookup is allowed, executed and
 * its result reported. With --json it prints one JSON object with what each scenario got instead.
 */

import { randomBytes } from "node:crypto";
import path from "node:path";
import { parseArgs } from "node:util";

import {
  ActionStopped,
  ApprovalRequired,
  GatewayClient,
  GatewayError,
  UnavailableError,
  type ActorLike,
  type Step,
  type DecideResult,
  type JsonObject,
} from "../src/index";

const AGENT = "support-agent";
const MAX_FLOOD = 100;
const ACTOR: ActorLike = ["user", "u_1"];

/** Stands in for the CRM call the agent makes once the sidecar allows it. */
function lookupCustomer(customerId: string, phone: string): JsonObject {
  return { customer_id: customerId, name: "Ann", phone, open_orders: 1 };
}

/** A decision as JSON, with the proto field names (what tests/test_cross_client.py compares). */
function decisionJson(result: DecideResult): JsonObject {
  return {
    decision: result.decision,
    reason: result.reason,
    policy_layer: result.policyLayer,
    policy_rule: result.policyRule,
    policy_version: result.policyVersion,
    event_id: result.eventId,
    action_key: result.actionKey,
    approval_id: result.approvalId,
    retry_after: result.retryAfter,
  };
}

/** Stands in for the CRM search the looping agent repeats. */
function searchCrm(query: string): JsonObject {
  return { query, hits: 1 };
}

type Show = (step: string, result: DecideResult, note?: string) => void;

export async function play(client: GatewayClient, runId: string, floodRunId: string, show: Show): Promise<JsonObject> {
  // (a) An agent stuck in a loop floods the CRM: the tenant's rate limit (10/s, burst 20) stops it.
  // Every allowed search runs inside guard, so its result is reported too: a step decided but never reported
  // is what `agentaudit trace` flags as missing_result. The stop is the ActionStopped's result, with retryAfter.
  const flood = client.run(floodRunId, { tenantId: "t_flood", agentId: AGENT, actor: ACTOR });
  let allowed = 0;
  let stopped: DecideResult | undefined;
  for (let i = 0; i < MAX_FLOOD; i++) {
    try {
      await flood.guard("crm.search", { query: "ann" }, (search) => {
        search.output = searchCrm("ann");
        stopped = search.decision; // the last answer, should the limit never stop the loop
      });
    } catch (error) {
      if (!(error instanceof ActionStopped)) {
        throw error;
      }
      stopped = error.result;
      break;
    }
    allowed += 1;
  }
  const retry = stopped!.retryAfter !== null ? `retry_after=${stopped!.retryAfter.toFixed(3)}s` : "";
  show(`crm.search #${allowed + 1} (t_flood)`, stopped!, `after ${allowed} allowed ${retry}`.trimEnd());

  const run = client.run(runId, { tenantId: "t_42", agentId: AGENT, actor: ACTOR });

  // (b) A refund needs a human: the guarded function never runs, ApprovalRequired says which approval.
  let refundRan = false;
  const createRefund = run.guarded(
    "refund.create",
    (_args: { order_id: string; amount: number; customer: { email: string } }): JsonObject => {
      refundRan = true;
      throw new Error("a refund ran without approval");
    },
  );
  let refund: DecideResult | undefined;
  try {
    await createRefund({ order_id: "o_1", amount: 250, customer: { email: "ann@example.com" } });
  } catch (error) {
    if (error instanceof ApprovalRequired) {
      refund = error.result;
      show("refund.create (t_42)", refund, `approval=${error.approvalId}`);
    } else if (error instanceof ActionStopped) {
      // e.g. a kill switch engaged for t_42 (the README's drill)
      refund = error.result;
      show("refund.create (t_42)", refund, "(stopped)");
    } else {
      throw error;
    }
  }

  // (c) A lookup is allowed: the function runs and its output and duration are reported.
  const args = { customer_id: "c_7", phone: "+15551234567" };
  let lookup: Step | undefined;
  let lookupResult: DecideResult | undefined;
  try {
    await run.guard("crm.lookup", args, (step) => {
      lookup = step;
      step.output = lookupCustomer(args.customer_id, args.phone);
    });
    lookupResult = lookup!.decision;
    show("crm.lookup (t_42)", lookupResult, lookup!.report ? `reported=${lookup!.report.eventId}` : "");
  } catch (error) {
    if (!(error instanceof ActionStopped)) {
      throw error;
    }
    lookupResult = error.result;
    show("crm.lookup (t_42)", error.result, "(stopped)");
  }
  const report = lookup?.report ? { event_id: lookup.report.eventId, duplicate: lookup.report.duplicate } : null;

  return {
    run_id: runId,
    flood_run_id: floodRunId,
    flood: { allowed, ...decisionJson(stopped!) },
    refund: refund ? { ran: refundRan, ...decisionJson(refund) } : { ran: refundRan },
    lookup: { ...decisionJson(lookupResult!), output: lookup?.output ?? null, report },
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: `unix://${path.resolve(".agentaudit/gateway.sock")}` },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log("usage: support_agent [--target unix:///abs/path.sock | HOST:PORT] [--json]");
    return 0;
  }
  const target = values.target!;
  const runId = `run_${randomBytes(6).toString("hex")}`;
  const floodRunId = `run_${randomBytes(6).toString("hex")}`;
  const show: Show = values.json
    ? () => undefined
    : (step, result, note = "") =>
        console.log(
          `${step.padEnd(26)} → ${result.decision.padEnd(17)} reason=${result.reason.padEnd(20)} event=${result.eventId} ${note}`,
        );
  if (!values.json) {
    console.log(`run ${runId} (tenant t_42), run ${floodRunId} (tenant t_flood), sidecar ${target}\n`);
  }
  const client = new GatewayClient(target);
  try {
    const results = await play(client, runId, floodRunId, show);
    if (values.json) {
      console.log(JSON.stringify(results));
    } else {
      console.log(`\nthe run's journaled events: agentaudit events .agentaudit/journal.db --run-id ${runId}`);
    }
    return 0;
  } catch (error) {
    if (error instanceof UnavailableError) {
      console.error(`cannot reach the sidecar at ${target} (${error.message}); is \`agentaudit dev\` running?`);
      return 1;
    }
    if (error instanceof GatewayError) {
      // any other refusal: one line, never a stack trace
      console.error(`the sidecar refused a call: ${error.message}`);
      return 1;
    }
    throw error;
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      console.error(error);
      process.exitCode = 2;
    },
  );
}
