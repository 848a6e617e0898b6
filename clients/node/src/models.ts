/** Plain values the client returns and accepts, independent of the generated protobuf types. */

export type DecisionName = "allow" | "stop" | "approval_required";
export type ActorTypeName = "user" | "service" | "agent";
export type ScopeName = "user" | "tenant" | "global";
export type ResultStatusName = "succeeded" | "failed" | "cancelled" | "timed_out";
export type ApprovalStateName = "pending" | "granted" | "denied" | "expired" | "abandoned";

/** Who initiated a run. */
export interface Actor {
  /** Kind of principal: "user", "service" or "agent". */
  type: ActorTypeName;
  /** Stable identifier of the principal, for example a user id. */
  id: string;
}

/** An `Actor`, or a `[type, id]` pair such as `["user", "u_1"]`. */
export type ActorLike = Actor | readonly [ActorTypeName, string];

/** JSON-like values accepted as action arguments and outputs (sent as `google.protobuf.Struct`). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue | undefined };
export type JsonObject = { [key: string]: JsonValue | undefined };

/** The sidecar's answer to a proposed action. A stop is a value here, not an exception. */
export interface DecideResult {
  /** "allow", "stop" or "approval_required". */
  readonly decision: DecisionName;
  /** Stable snake_case reason code, for example "rate_limited_tenant". */
  readonly reason: string;
  /** Policy layer that decided. */
  readonly policyLayer: string;
  /** Policy rule that decided (empty when the default decided). */
  readonly policyRule: string;
  /** Hash of the policy document that decided. */
  readonly policyVersion: string;
  /** Id of the journaled pre-event; pass it to `reportResult`. */
  readonly eventId: string;
  /** Stable key of the action name and canonical arguments. */
  readonly actionKey: string;
  /** Set when the decision is "approval_required". */
  readonly approvalId: string;
  /** Seconds to wait before retrying (rate limits), or null. */
  readonly retryAfter: number | null;
  /** True when the action may be executed. */
  readonly allowed: boolean;
}

/** Acknowledgement of a reported execution result. */
export interface ReportResult {
  /** Id of the journaled post-event. */
  readonly eventId: string;
  /** True when the pre-event already had a result; `eventId` names the post-event recorded first. */
  readonly duplicate: boolean;
}

/** State of an approval after waiting for it. */
export interface ApprovalOutcome {
  /**
   * "pending" (still unresolved when the wait ended), "granted", "denied", "expired" (nobody answered in time) or
   * "abandoned" (granted, but not used within its use-by time).
   */
  readonly state: ApprovalStateName;
  /** Empty on the agent port, which returns the state only (the approver is for operators, via ListApprovals). */
  readonly resolvedBy: string;
  /** Empty on the agent port, like `resolvedBy`. */
  readonly comment: string;
  /** True when the approval was granted. */
  readonly granted: boolean;
}
