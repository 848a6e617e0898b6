/**
 * Errors thrown by the client, and the one translation from gRPC errors.
 *
 * ```
 * AgentAuditError
 * ├── DecisionError              the sidecar answered something other than allow (thrown by guard)
 * │   ├── ActionStopped          decision "stop"
 * │   └── ApprovalRequired       decision "approval_required"
 * └── GatewayError               the call failed (carries the gRPC status code)
 *     ├── InvalidRequestError    INVALID_ARGUMENT, with the BadRequest field violations
 *     ├── NotFoundError          NOT_FOUND (for example an unknown event id)
 *     ├── FailedPreconditionError  FAILED_PRECONDITION (for example reporting a stopped action)
 *     ├── ResourceExhaustedError   RESOURCE_EXHAUSTED: overloaded, retry later
 *     ├── UnavailableError       UNAVAILABLE: the sidecar cannot be reached
 *     └── DeadlineExceededError  DEADLINE_EXCEEDED: no answer within the timeout
 * ```
 *
 * `decide` itself never throws a `DecisionError`: a deny is a value (`DecideResult`). Only `guard` turns it
 * into an exception, because the guarded function must not run.
 */

import { Metadata, status as Status, type ServiceError } from "@grpc/grpc-js";

import { BadRequest, RetryInfo } from "./gen/google/rpc/error_details";
import { Status as RpcStatus } from "./gen/google/rpc/status";
import type { ApprovalOutcome, DecideResult } from "./models";

/** Trailing metadata key carrying a serialized google.rpc.Status (the "rich error model"). */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest";
const RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo";

/** Base class of every error thrown by this client. */
export class AgentAuditError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The sidecar did not allow the action. Carries the full decision in `result`. */
export class DecisionError extends AgentAuditError {
  constructor(readonly result: DecideResult) {
    super(`${result.decision}: ${result.reason}`);
  }

  /** Stable snake_case reason code, for example "rate_limited_tenant". */
  get reason(): string {
    return this.result.reason;
  }

  /** Id of the journaled pre-event. */
  get eventId(): string {
    return this.result.eventId;
  }

  /** Approval to wait for (set for `ApprovalRequired`). */
  get approvalId(): string {
    return this.result.approvalId;
  }

  /** Stable key of the action name and canonical arguments. */
  get actionKey(): string {
    return this.result.actionKey;
  }

  /** Policy layer that decided. */
  get policyLayer(): string {
    return this.result.policyLayer;
  }

  /** Policy rule that decided. */
  get policyRule(): string {
    return this.result.policyRule;
  }

  /** Seconds to wait before retrying (rate limits), or null. */
  get retryAfter(): number | null {
    return this.result.retryAfter;
  }
}

/** The sidecar answered "stop": the action must not be executed. */
export class ActionStopped extends DecisionError {}

/**
 * The sidecar answered "approval_required": wait for `approvalId` and decide again with it.
 *
 * `outcome` is set when `guard` already waited (option `waitForApproval`) and the approval was still pending.
 */
export class ApprovalRequired extends DecisionError {
  constructor(
    result: DecideResult,
    readonly outcome?: ApprovalOutcome,
  ) {
    super(result);
  }
}

/** A call to the sidecar failed. `code` is the gRPC status code, `details` the server's message. */
export class GatewayError extends AgentAuditError {
  constructor(
    readonly code: Status,
    readonly details: string,
    options?: ErrorOptions,
  ) {
    super(details ? `${Status[code]}: ${details}` : `${Status[code]}`, options);
  }

  /** The status code's name, for example "INVALID_ARGUMENT". */
  get codeName(): string {
    return Status[this.code] ?? String(this.code);
  }
}

/** One rejected request field, from the server's `google.rpc.BadRequest`. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** The request was malformed (INVALID_ARGUMENT); `violations` lists the rejected fields. */
export class InvalidRequestError extends GatewayError {
  constructor(
    code: Status,
    details: string,
    readonly violations: FieldViolation[],
    options?: ErrorOptions,
  ) {
    super(code, details, options);
  }

  /** Names of the fields that were rejected (proto field names, for example "run_id"). */
  get fields(): string[] {
    return this.violations.map((v) => v.field);
  }
}

/** An id named in the request is unknown (NOT_FOUND). */
export class NotFoundError extends GatewayError {}

/** The request is not valid in the current state (FAILED_PRECONDITION). */
export class FailedPreconditionError extends GatewayError {}

/** The sidecar is overloaded (RESOURCE_EXHAUSTED); `retryAfter` in seconds when the server sent RetryInfo. */
export class ResourceExhaustedError extends GatewayError {
  constructor(
    code: Status,
    details: string,
    readonly retryAfter: number | null,
    options?: ErrorOptions,
  ) {
    super(code, details, options);
  }
}

/** The sidecar cannot be reached (UNAVAILABLE): not running, wrong target, or shutting down. */
export class UnavailableError extends GatewayError {}

/** The sidecar did not answer within the timeout (DEADLINE_EXCEEDED). */
export class DeadlineExceededError extends GatewayError {}

const SIMPLE_ERRORS: Partial<Record<Status, new (code: Status, details: string, options?: ErrorOptions) => GatewayError>> =
  {
    [Status.NOT_FOUND]: NotFoundError,
    [Status.FAILED_PRECONDITION]: FailedPreconditionError,
    [Status.UNAVAILABLE]: UnavailableError,
    [Status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  };

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number";
}

/** Translates an error of a grpc-js call to the matching `GatewayError` (the original is its `cause`). */
export function fromServiceError(error: unknown): GatewayError {
  if (!isServiceError(error)) {
    return new GatewayError(Status.UNKNOWN, String(error), { cause: error });
  }
  const code = error.code;
  const details = error.details ?? "";
  const options = { cause: error };
  if (code === Status.INVALID_ARGUMENT) {
    return new InvalidRequestError(code, details, fieldViolations(error.metadata), options);
  }
  if (code === Status.RESOURCE_EXHAUSTED) {
    return new ResourceExhaustedError(code, details, retryDelay(error.metadata), options);
  }
  const ErrorClass = SIMPLE_ERRORS[code] ?? GatewayError;
  return new ErrorClass(code, details, options);
}

/** Throws `ActionStopped` or `ApprovalRequired` unless the decision is allow. */
export function throwForDecision(result: DecideResult, outcome?: ApprovalOutcome): void {
  if (result.decision === "approval_required") {
    throw new ApprovalRequired(result, outcome);
  }
  if (result.decision !== "allow") {
    throw new ActionStopped(result);
  }
}

function richStatus(metadata: Metadata | undefined): RpcStatus | undefined {
  const value = metadata?.get(STATUS_DETAILS_KEY)[0];
  if (!(value instanceof Buffer)) {
    return undefined;
  }
  try {
    return RpcStatus.decode(value);
  } catch {
    return undefined; // a malformed detail must not hide the error itself
  }
}

function fieldViolations(metadata: Metadata | undefined): FieldViolation[] {
  const violations: FieldViolation[] = [];
  for (const detail of richStatus(metadata)?.details ?? []) {
    if (detail.typeUrl === BAD_REQUEST_TYPE) {
      for (const v of BadRequest.decode(detail.value).fieldViolations) {
        violations.push({ field: v.field, description: v.description });
      }
    }
  }
  return violations;
}

function retryDelay(metadata: Metadata | undefined): number | null {
  for (const detail of richStatus(metadata)?.details ?? []) {
    if (detail.typeUrl === RETRY_INFO_TYPE) {
      const delay = RetryInfo.decode(detail.value).retryDelay;
      return delay ? delay.seconds + delay.nanos / 1e9 : null;
    }
  }
  return null;
}
