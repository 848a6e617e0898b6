/** Conversions between the client's plain values and the generated protobuf messages. */

import { ApprovalState, type DecideResponse, type WaitApprovalResponse } from "./gen/agentaudit/v1/gateway";
import { ActorType, Decision, ResultStatus, Scope, type Actor as ActorMessage } from "./gen/agentaudit/v1/types";
import type { Duration } from "./gen/google/protobuf/duration";
import type {
  ActorLike,
  ActorTypeName,
  ApprovalOutcome,
  ApprovalStateName,
  DecideResult,
  DecisionName,
  JsonObject,
  ResultStatusName,
  ScopeName,
} from "./models";

/** The server rejects longer error messages; ours are cut so a report never fails because of its length. */
export const MAX_ERROR_BYTES = 4096;

const ACTOR_TYPES: Record<ActorTypeName, ActorType> = {
  user: ActorType.ACTOR_TYPE_USER,
  service: ActorType.ACTOR_TYPE_SERVICE,
  agent: ActorType.ACTOR_TYPE_AGENT,
};
const SCOPES: Record<ScopeName, Scope> = {
  user: Scope.SCOPE_USER,
  tenant: Scope.SCOPE_TENANT,
  global: Scope.SCOPE_GLOBAL,
};
const RESULT_STATUSES: Record<ResultStatusName, ResultStatus> = {
  succeeded: ResultStatus.RESULT_STATUS_SUCCEEDED,
  failed: ResultStatus.RESULT_STATUS_FAILED,
  cancelled: ResultStatus.RESULT_STATUS_CANCELLED,
  timed_out: ResultStatus.RESULT_STATUS_TIMED_OUT,
};
const DECISIONS: Partial<Record<Decision, DecisionName>> = {
  [Decision.DECISION_ALLOW]: "allow",
  [Decision.DECISION_STOP]: "stop",
  [Decision.DECISION_APPROVAL_REQUIRED]: "approval_required",
};
const APPROVAL_STATES: Partial<Record<ApprovalState, ApprovalStateName>> = {
  [ApprovalState.APPROVAL_STATE_PENDING]: "pending",
  [ApprovalState.APPROVAL_STATE_GRANTED]: "granted",
  [ApprovalState.APPROVAL_STATE_DENIED]: "denied",
  [ApprovalState.APPROVAL_STATE_EXPIRED]: "expired",
  [ApprovalState.APPROVAL_STATE_ABANDONED]: "abandoned",
};

function lookup<K extends string, V>(table: Record<K, V>, key: string, what: string): V {
  if (!Object.prototype.hasOwnProperty.call(table, key)) {
    throw new RangeError(`unknown ${what} ${JSON.stringify(key)}; expected one of ${Object.keys(table).join(", ")}`);
  }
  return table[key as K];
}

export function actorMessage(actor: ActorLike | undefined): ActorMessage | undefined {
  if (actor === undefined) {
    return undefined;
  }
  const [type, id] = Array.isArray(actor) ? actor : [(actor as { type: string }).type, (actor as { id: string }).id];
  return { type: lookup(ACTOR_TYPES, type, "actor type"), id };
}

export function scopeValue(scope: ScopeName | undefined): Scope {
  return scope === undefined ? Scope.SCOPE_UNSPECIFIED : lookup(SCOPES, scope, "scope");
}

export function resultStatusValue(status: ResultStatusName): ResultStatus {
  return lookup(RESULT_STATUSES, status, "result status");
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function jsonValue(value: unknown, path: string): unknown {
  if (value === null || typeof value === "string" || typeof value === "boolean") {
    return value;
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) {
      throw new TypeError(`${path} must be a finite number, got ${value}`);
    }
    return value;
  }
  if (Array.isArray(value)) {
    return value.map((item, i) => jsonValue(item === undefined ? null : item, `${path}[${i}]`));
  }
  if (isPlainObject(value)) {
    return jsonObject(value, path);
  }
  const kind = typeof value === "object" ? (value.constructor?.name ?? "object") : typeof value;
  throw new TypeError(
    `${path} must be JSON-like (plain object, array, string, finite number, boolean, null), got ${kind}`,
  );
}

function jsonObject(value: Record<string, unknown>, path: string): Record<string, unknown> {
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    if (item !== undefined) {
      copy[key] = jsonValue(item, `${path}.${key}`); // undefined properties are left out, as JSON does
    }
  }
  return copy;
}

/**
 * Checks and copies a JSON-like object for a `google.protobuf.Struct` field (undefined stays unset).
 *
 * @throws TypeError for values a Struct cannot hold (functions, bigint, NaN, Date, class instances, ...).
 */
export function toStruct(values: JsonObject | undefined, what: string): Record<string, unknown> | undefined {
  if (values === undefined) {
    return undefined;
  }
  if (!isPlainObject(values)) {
    throw new TypeError(`${what} must be a plain object`);
  }
  return jsonObject(values, what);
}

/** Converts milliseconds to a Duration. */
export function toDuration(ms: number): Duration {
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`a duration must be a finite, non-negative number of milliseconds, got ${ms}`);
  }
  const totalNanos = Math.round(ms * 1e6);
  return { seconds: Math.floor(totalNanos / 1e9), nanos: totalNanos % 1e9 };
}

export function decideResult(response: DecideResponse): DecideResult {
  // Fail closed: a decision this client does not know must never run the action.
  const decision = DECISIONS[response.decision] ?? "stop";
  const retry = response.retryAfter;
  return {
    decision,
    reason: response.reason,
    policyLayer: response.policyLayer,
    policyRule: response.policyRule,
    policyVersion: response.policyVersion,
    eventId: response.eventId,
    actionKey: response.actionKey,
    approvalId: response.approvalId,
    retryAfter: retry ? retry.seconds + retry.nanos / 1e9 : null,
    allowed: decision === "allow",
  };
}

export function approvalOutcome(response: WaitApprovalResponse): ApprovalOutcome {
  // An unknown state counts as pending: it is not a grant.
  const state = APPROVAL_STATES[response.state] ?? "pending";
  return { state, resolvedBy: response.resolvedBy, comment: response.comment, granted: state === "granted" };
}

/** Cuts `text` to at most `maxBytes` bytes of UTF-8 without splitting a character. */
export function truncateUtf8(text: string, maxBytes: number = MAX_ERROR_BYTES): string {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= maxBytes) {
    return text;
  }
  let end = maxBytes;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) {
    end -= 1; // back off a continuation byte: the character starting before it does not fit
  }
  return bytes.subarray(0, end).toString("utf8");
}

/**
 * The status and error message to report for an error thrown by a guarded function: "failed" with
 * "Name: message" (at most MAX_ERROR_BYTES), or "cancelled" for an `AbortError` (the function was interrupted).
 */
export function failure(error: unknown): { status: ResultStatusName; error: string } {
  let name: string;
  let message: string;
  if (error instanceof Error) {
    name = error.name || error.constructor?.name || "Error";
    message = error.message;
  } else {
    name = typeof error;
    message = String(error);
  }
  const status: ResultStatusName = name === "AbortError" ? "cancelled" : "failed";
  return { status, error: truncateUtf8(message ? `${name}: ${message}` : name) };
}
