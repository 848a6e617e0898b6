/** The client against a real sidecar (`agentaudit dev`), over a unix socket. No fakes. */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  ActionStopped,
  ApprovalRequired,
  FailedPreconditionError,
  GatewayClient,
  GrpcStatus,
  InvalidRequestError,
  NotFoundError,
  UnavailableError,
  MAX_ERROR_BYTES,
  type ActorLike,
  type DecideResult,
} from "../src/index";
import { ApprovalState } from "../src/gen/agentaudit/v1/gateway";
import type { Approval, SearchedEvent } from "../src/gen/agentaudit/v1/operator";
import { ListApprovalsRequest, OperatorServiceClient, SearchEventsRequest } from "../src/gen/agentaudit/v1/operator";
import { Sidecar } from "./sidecar";

const AGENT = "support-agent";
const ACTOR: ActorLike = ["user", "u_1"];

function newRunId(): string {
  return `run_${randomBytes(6).toString("hex")}`;
}

let sidecar: Sidecar;
let client: GatewayClient;
let operator: OperatorServiceClient;

before(async () => {
  sidecar = await Sidecar.start();
  client = new GatewayClient(sidecar.target, { timeoutMs: 10_000 });
  operator = sidecar.operatorClient();
});

after(async () => {
  client?.close();
  operator?.close();
  const code = await sidecar?.stop("SIGTERM");
  assert.equal(code, 0, `the sidecar did not stop cleanly on SIGTERM:\n${sidecar?.log()}`);
});

// --- operator API helpers (approve like `agentaudit approve`) ------------------------------------------

function grant(approvalId: string, comment = "ok"): Promise<Approval> {
  return new Promise((resolve, reject) => {
    operator.grantApproval({ approvalId, comment }, sidecar.operatorMetadata(), (error, response) =>
      error ? reject(error) : resolve(response.approval!),
    );
  });
}

function deny(approvalId: string, comment = "no"): Promise<Approval> {
  return new Promise((resolve, reject) => {
    operator.denyApproval({ approvalId, comment }, sidecar.operatorMetadata(), (error, response) =>
      error ? reject(error) : resolve(response.approval!),
    );
  });
}

function pendingApprovals(tenantId: string): Promise<Approval[]> {
  return new Promise((resolve, reject) => {
    operator.listApprovals(
      ListApprovalsRequest.fromPartial({ state: ApprovalState.APPROVAL_STATE_PENDING, tenantId, limit: 100 }),
      sidecar.operatorMetadata(),
      (error, response) => (error ? reject(error) : resolve(response.approvals)),
    );
  });
}

/** The run's journal events of one kind, oldest first (bodies as plain objects). */
function events(runId: string, kind: string): Promise<SearchedEvent[]> {
  return new Promise((resolve, reject) => {
    operator.searchEvents(
      SearchEventsRequest.fromPartial({ filter: { runId, kind }, pageSize: 1000 }),
      sidecar.operatorMetadata(),
      (error, response) => (error ? reject(error) : resolve(response.events)),
    );
  });
}

async function waitForPending(tenantId: string, runId: string): Promise<Approval> {
  for (let i = 0; i < 200; i++) {
    const found = (await pendingApprovals(tenantId)).find((a) => a.runId === runId);
    if (found) {
      return found;
    }
    await sleep(25);
  }
  throw new Error(`no pending approval for run ${runId}`);
}

// --- decide and report ----------------------------------------------------------------------------------

describe("decide", () => {
  test("allow, then reportResult journals a post-event (idempotent)", async () => {
    const runId = newRunId();
    const result = await client.decide({
      runId,
      tenantId: "t_allow",
      action: "crm.lookup",
      args: { customer_id: "c_7", tags: ["vip", 1, true, null], nested: { deep: { x: 1.5 } } },
      stepId: 1,
      actor: ACTOR,
      agentId: AGENT,
      scope: "tenant",
      labels: { env: "test" },
    });
    assert.equal(result.decision, "allow");
    assert.equal(result.reason, "allowed");
    assert.equal(result.allowed, true);
    assert.ok(result.eventId.startsWith("evt_") || result.eventId.length > 0);
    assert.ok(result.actionKey);
    assert.ok(result.policyVersion);
    assert.equal(result.approvalId, "");
    assert.equal(result.retryAfter, null);

    const report = await client.reportResult(result.eventId, { output: { name: "Ann" }, durationMs: 42 });
    assert.ok(report.eventId);
    assert.notEqual(report.eventId, result.eventId);
    assert.equal(report.duplicate, false);

    const again = await client.reportResult(result.eventId, { output: { name: "Ann" }, durationMs: 42 });
    assert.deepEqual(again, { eventId: report.eventId, duplicate: true });

    const [post] = await events(runId, "post_exec");
    assert.ok(post, "no post_exec event journaled");
    const body = post.body as Record<string, unknown>;
    assert.equal(body.pre_event_id, result.eventId);
    assert.equal(body.status, "succeeded");
    assert.equal(body.duration_ns, 42_000_000);
  });

  test("a HOST:PORT target works like a unix socket", async () => {
    const tcp = new GatewayClient(sidecar.tcpTarget, { timeoutMs: 5000 });
    try {
      const result = await tcp.decide({ runId: newRunId(), tenantId: "t_tcp", action: "crm.lookup", agentId: AGENT });
      assert.equal(result.decision, "allow");
      assert.equal((await tcp.reportResult(result.eventId)).duplicate, false);
    } finally {
      tcp.close();
    }
  });

  test("the same action and args give the same action key", async () => {
    const ask = (args: Record<string, unknown>) =>
      client.decide({ runId: newRunId(), tenantId: "t_key", action: "kb.read", args: args as never, agentId: AGENT });
    const a = await ask({ b: 1, a: [1, "x"] });
    const b = await ask({ a: [1, "x"], b: 1 });
    const c = await ask({ a: [1, "y"], b: 1 });
    assert.equal(a.actionKey, b.actionKey);
    assert.notEqual(a.actionKey, c.actionKey);
  });

  test("stop is a value with its reason, layer and rule", async () => {
    const result = await client.decide({
      runId: newRunId(),
      tenantId: "t_frozen",
      action: "crm.search",
      stepId: 1,
      actor: ACTOR,
      agentId: AGENT,
    });
    assert.deepEqual(
      [result.decision, result.reason, result.policyLayer, result.policyRule, result.allowed],
      ["stop", "kill_switch_engaged", "kill_switch", "frozen_tenant", false],
    );
    assert.ok(result.eventId, "a stop is journaled too");
  });

  test("a rate-limit stop carries retryAfter", async () => {
    const run = client.run(newRunId(), { tenantId: "t_rate", agentId: AGENT, actor: ACTOR });
    let result: DecideResult | undefined;
    for (let i = 0; i < 100; i++) {
      result = await run.decide("crm.search", { query: "ann" });
      if (!result.allowed) {
        break;
      }
    }
    assert.equal(result?.decision, "stop");
    assert.equal(result?.reason, "rate_limited_tenant");
    assert.equal(result?.policyLayer, "limits");
    assert.equal(result?.policyRule, "crm_per_tenant");
    assert.ok(result?.retryAfter !== null && result!.retryAfter > 0 && result!.retryAfter <= 1, `${result?.retryAfter}`);
  });

  test("approval_required is a value with an approval id", async () => {
    const result = await client.decide({
      runId: newRunId(),
      tenantId: "t_42",
      action: "refund.create",
      args: { order_id: "o_1", amount: 250 },
      stepId: 1,
      actor: ACTOR,
      agentId: AGENT,
    });
    assert.equal(result.decision, "approval_required");
    assert.equal(result.reason, "approval_required");
    assert.equal(result.policyLayer, "approval");
    assert.equal(result.policyRule, "refunds_need_approval");
    assert.ok(result.approvalId.startsWith("apr_"), result.approvalId);
  });
});

// --- errors ---------------------------------------------------------------------------------------------

describe("errors", () => {
  test("INVALID_ARGUMENT maps to InvalidRequestError with the BadRequest field violations", async () => {
    const error = await client
      .decide({ runId: "", tenantId: "", action: "crm.lookup" })
      .then(() => assert.fail("an invalid request was answered"), (e: unknown) => e);
    assert.ok(error instanceof InvalidRequestError, String(error));
    assert.equal(error.code, GrpcStatus.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.ok(error.fields.includes("run_id"), JSON.stringify(error.violations));
    assert.ok(error.fields.includes("tenant_id"), JSON.stringify(error.violations));
    assert.ok(error.violations.every((v) => v.description.length > 0));
  });

  test("an unknown event id maps to NotFoundError", async () => {
    await assert.rejects(client.reportResult("evt_does_not_exist_000000000000"), NotFoundError);
  });

  test("reporting a stopped action maps to FailedPreconditionError (journaled as a violation)", async () => {
    const runId = newRunId();
    const stopped = await client.decide({ runId, tenantId: "t_frozen", action: "crm.search", agentId: AGENT });
    assert.equal(stopped.decision, "stop");
    await assert.rejects(client.reportResult(stopped.eventId), FailedPreconditionError);
    assert.equal((await events(runId, "violation")).length, 1);
  });

  test("an unreachable sidecar maps to UnavailableError, and guard runs nothing", async () => {
    const nowhere = new GatewayClient(`unix://${sidecar.dir}/nothing-listens-here.sock`, { timeoutMs: 5000 });
    try {
      await assert.rejects(nowhere.decide({ runId: "run_x", tenantId: "t_42", action: "crm.lookup" }), (e: unknown) => {
        assert.ok(e instanceof UnavailableError, String(e));
        assert.equal(e.code, GrpcStatus.UNAVAILABLE);
        return true;
      });
      let ran = false;
      await assert.rejects(
        nowhere.guard({ runId: "run_x", tenantId: "t_42", action: "crm.lookup" }, () => {
          ran = true;
        }),
        UnavailableError,
      );
      assert.equal(ran, false);
    } finally {
      nowhere.close();
    }
  });

  test("args that are not JSON-like are refused before anything is sent", async () => {
    for (const bad of [{ when: new Date() }, { n: NaN }, { f: () => 1 }, { big: 1n }]) {
      await assert.rejects(
        client.decide({ runId: newRunId(), tenantId: "t_42", action: "crm.lookup", args: bad as never }),
        TypeError,
      );
    }
  });
});

// --- guard ----------------------------------------------------------------------------------------------

describe("guard", () => {
  test("on allow runs the function, reports its output and returns its value", async () => {
    const runId = newRunId();
    const run = client.run(runId, { tenantId: "t_guard", agentId: AGENT, actor: ACTOR });
    let seen: string | undefined;
    const value = await run.guard("crm.lookup", { customer_id: "c_7" }, async (step) => {
      seen = step.eventId;
      await sleep(20);
      return { customer_id: "c_7", name: "Ann" };
    });
    assert.deepEqual(value, { customer_id: "c_7", name: "Ann" });
    const [pre] = await events(runId, "pre_exec");
    const [post] = await events(runId, "post_exec");
    assert.equal(seen, (pre!.body as Record<string, unknown>).event_id);
    const body = post!.body as Record<string, unknown>;
    assert.equal(body.status, "succeeded");
    assert.equal(body.step_id, 1);
    assert.deepEqual(body.output, { customer_id: "c_7", name: "Ann" });
    assert.ok((body.duration_ns as number) >= 15_000_000, `duration ${body.duration_ns}`);
  });

  test("on stop throws ActionStopped with the decision and runs nothing", async () => {
    let ran = false;
    const error = await client
      .guard({ runId: newRunId(), tenantId: "t_frozen", action: "crm.search", agentId: AGENT }, () => {
        ran = true;
      })
      .then(() => assert.fail("guard did not throw"), (e: unknown) => e);
    assert.ok(error instanceof ActionStopped, String(error));
    assert.equal(ran, false);
    assert.equal(error.reason, "kill_switch_engaged");
    assert.equal(error.policyLayer, "kill_switch");
    assert.equal(error.result.decision, "stop");
    assert.ok(error.eventId);
  });

  test("on approval_required throws ApprovalRequired with the approval id and runs nothing", async () => {
    const run = client.run(newRunId(), { tenantId: "t_42", agentId: AGENT, actor: ACTOR });
    const createRefund = run.guarded("refund.create", (_args: { order_id: string; amount: number }) => {
      throw new Error("a refund ran without approval");
    });
    const error = await createRefund({ order_id: "o_1", amount: 250 }).then(
      () => assert.fail("guard did not throw"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof ApprovalRequired, String(error));
    assert.equal(error.reason, "approval_required");
    assert.ok(error.approvalId.startsWith("apr_"));
    assert.equal(error.outcome, undefined);
  });

  test("a function that throws is reported failed with its message, and the error propagates", async () => {
    const runId = newRunId();
    const run = client.run(runId, { tenantId: "t_fail", agentId: AGENT, actor: ACTOR });
    const boom = new TypeError("crm is down");
    await assert.rejects(
      run.guard("crm.lookup", { customer_id: "c_7" }, async () => {
        throw boom;
      }),
      (e: unknown) => e === boom,
    );
    // A message longer than the server accepts is cut to MAX_ERROR_BYTES, not a failed report.
    const long = "é".repeat(MAX_ERROR_BYTES); // 2 bytes each
    await assert.rejects(
      run.guard("crm.lookup", { customer_id: "c_8" }, () => {
        throw new Error(long);
      }),
      (e: unknown) => e instanceof Error && (e as { agentauditReportError?: unknown }).agentauditReportError === undefined,
    );
    const posts = (await events(runId, "post_exec")).map((e) => e.body as Record<string, unknown>);
    assert.equal(posts.length, 2);
    assert.deepEqual([posts[0]!.status, posts[0]!.error], ["failed", "TypeError: crm is down"]);
    assert.equal(posts[1]!.status, "failed");
    const error = posts[1]!.error as string;
    assert.ok(error.startsWith("Error: éé"));
    assert.ok(Buffer.byteLength(error) <= MAX_ERROR_BYTES && Buffer.byteLength(error) >= MAX_ERROR_BYTES - 1);
  });

  test("an AbortError is reported cancelled", async () => {
    const runId = newRunId();
    const run = client.run(runId, { tenantId: "t_fail", agentId: AGENT });
    await assert.rejects(
      run.guard("kb.read", {}, () => {
        throw new DOMException("user hung up", "AbortError");
      }),
      { name: "AbortError" },
    );
    const [post] = await events(runId, "post_exec");
    assert.equal((post!.body as Record<string, unknown>).status, "cancelled");
  });
});

// --- approvals ------------------------------------------------------------------------------------------

describe("approvals", () => {
  test("granted through the operator API: waitApproval sees it, and deciding again with it allows", async () => {
    const runId = newRunId();
    const args = { order_id: "o_2", amount: 300 };
    const asked = await client.decide({ runId, tenantId: "t_42", action: "refund.create", args, stepId: 1, agentId: AGENT, actor: ACTOR });
    assert.equal(asked.decision, "approval_required");

    const early = await client.waitApproval(asked.approvalId, { timeoutMs: 500 });
    assert.deepEqual(early, { state: "pending", resolvedBy: "", comment: "", granted: false });

    const waiting = client.waitApproval(asked.approvalId, { timeoutMs: 20_000 });
    await sleep(100);
    const approval = await grant(asked.approvalId, "refund ok");
    assert.equal(approval.state, ApprovalState.APPROVAL_STATE_GRANTED);
    const outcome = await waiting;
    // The agent port returns the state only: who resolved it and why are for operators (ListApprovals).
    assert.deepEqual(outcome, { state: "granted", resolvedBy: "", comment: "", granted: true });

    const resumed = await client.decide({
      runId,
      tenantId: "t_42",
      action: "refund.create",
      args,
      stepId: 2,
      agentId: AGENT,
      actor: ACTOR,
      approvalId: asked.approvalId,
    });
    assert.equal(resumed.decision, "allow");
    assert.equal(resumed.actionKey, asked.actionKey);

    // The approval is bound to its args and used once.
    const other = await client.decide({ runId, tenantId: "t_42", action: "refund.create", args: { ...args, amount: 301 }, approvalId: asked.approvalId, agentId: AGENT });
    assert.equal(other.decision, "stop");
  });

  test("guard with waitForApproval runs the function once an operator grants", async () => {
    const runId = newRunId();
    const run = client.run(runId, { tenantId: "t_wait", agentId: AGENT, actor: ACTOR });
    let ran = 0;
    const guarded = run.guard(
      "refund.create",
      { order_id: "o_3", amount: 500 },
      () => {
        ran += 1;
        return { refund_id: "r_1" };
      },
      { waitForApproval: { timeoutMs: 20_000 } },
    );
    const pending = await waitForPending("t_wait", runId);
    assert.equal(ran, 0, "the function ran before the approval");
    await grant(pending.approvalId);
    assert.deepEqual(await guarded, { refund_id: "r_1" });
    assert.equal(ran, 1);
    const pres = (await events(runId, "pre_exec")).map((e) => e.body as Record<string, unknown>);
    assert.deepEqual(
      pres.map((b) => [b.step_id, b.decision, b.approval_id, b.resumed_approval_id]),
      [
        [1, "approval_required", pending.approvalId, ""],
        [2, "allow", "", pending.approvalId],
      ],
    );
    const [post] = await events(runId, "post_exec");
    assert.equal((post!.body as Record<string, unknown>).pre_event_id, pres[1]!.event_id);
  });

  test("guard with waitForApproval: a denial throws ActionStopped(approval_denied), a timeout ApprovalRequired", async () => {
    const runId = newRunId();
    const run = client.run(runId, { tenantId: "t_deny", agentId: AGENT, actor: ACTOR });
    let ran = false;
    const fn = () => {
      ran = true;
    };
    const denied = run.guard("refund.create", { order_id: "o_4", amount: 900 }, fn, { waitForApproval: true });
    await deny((await waitForPending("t_deny", runId)).approvalId);
    const error = await denied.then(() => assert.fail("guard did not throw"), (e: unknown) => e);
    assert.ok(error instanceof ActionStopped, String(error));
    assert.equal(error.reason, "approval_denied");

    const timedOut = await run
      .guard("refund.create", { order_id: "o_5", amount: 900 }, fn, { waitForApproval: { timeoutMs: 400 } })
      .then(() => assert.fail("guard did not throw"), (e: unknown) => e);
    assert.ok(timedOut instanceof ApprovalRequired, String(timedOut));
    assert.equal(timedOut.outcome?.state, "pending");
    assert.equal(ran, false);
  });
});
