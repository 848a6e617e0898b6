/**
 * Node/TypeScript client of the agentaudit sidecar: ask before an agent acts, report what happened.
 *
 * ```ts
 * import { ActionStopped, ApprovalRequired, GatewayClient } from "@agentaudit/client";
 *
 * const client = new GatewayClient("unix:///abs/path/.agentaudit/gateway.sock");
 * const run = client.run("run_1", { tenantId: "t_42", agentId: "support-agent", actor: ["user", "u_1"] });
 * const decision = await run.decide("crm.search", { query: "ann" }); // a deny is a value
 * const customer = await run.guard("crm.lookup", { customer_id: "c_7" }, () => lookup("c_7")); // reported
 * client.close();
 * ```
 */

export { GatewayClient, Run, Step } from "./client";
export type { DecideOptions, GatewayClientOptions, GuardOptions, ReportOptions, RunOptions, StepOptions } from "./client";
export { MAX_ERROR_BYTES } from "./convert";
export {
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
  fromServiceError,
} from "./errors";
export type { FieldViolation } from "./errors";
export { AddressError, grpcTarget, unixPath } from "./address";
export type {
  Actor,
  ActorLike,
  ActorTypeName,
  ApprovalOutcome,
  ApprovalStateName,
  DecideResult,
  DecisionName,
  JsonObject,
  JsonValue,
  ReportResult,
  ResultStatusName,
  ScopeName,
} from "./models";
export { status as GrpcStatus } from "@grpc/grpc-js";
