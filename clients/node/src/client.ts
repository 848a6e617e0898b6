/** `GatewayClient` and its `Run` helper. */

import {
  credentials,
  Metadata,
  type CallOptions,
  type ChannelOptions,
  type ClientUnaryCall,
  type ServiceError,
} from "@grpc/grpc-js";

import {
  approvalOutcome,
  actorMessage,
  decideResult,
  failure,
  resultStatusValue,
  scopeValue,
  toDuration,
  toStruct,
} from "./convert";
import { DeadlineExceededError, fromServiceError, throwForDecision } from "./errors";
import { grpcTarget } from "./address";
import {
  GatewayServiceClient,
  type DecideRequest,
  type DecideResponse,
  type ReportResultRequest,
  type ReportResultResponse,
  type WaitApprovalRequest,
  type WaitApprovalResponse,
} from "./gen/agentaudit/v1/gateway";
import type {
  ActorLike,
  ApprovalOutcome,
  DecideResult,
  JsonObject,
  ReportResult,
  ResultStatusName,
  ScopeName,
} from "./models";

/** Options of `new GatewayClient(target, options)`. */
export interface GatewayClientOptions {
  /** Deadline of each call in milliseconds (default 10000; null: none). `waitApproval` has its own. */
  timeoutMs?: number | null;
  /** gRPC metadata sent with every call. */
  metadata?: Record<string, string>;
  /** grpc-js channel options, for example `{"grpc.keepalive_time_ms": 30000}`. */
  channelOptions?: ChannelOptions;
}

/** What a run shares between its steps. */
export interface RunOptions {
  /** Tenant the run acts for. Required. */
  tenantId: string;
  /** Which agent proposes the actions. */
  agentId?: string;
  /** Who initiated the run: `{type: "user", id: "u_1"}` or `["user", "u_1"]`. */
  actor?: ActorLike;
  /** Scope the actions affect: "user", "tenant" or "global". */
  scope?: ScopeName;
  /** W3C trace context. */
  traceparent?: string;
  /** Free-form string labels. */
  labels?: Record<string, string>;
}

/** A proposed action: the arguments of `decide` and `guard`. */
export interface DecideOptions extends RunOptions {
  /** Identifies the agent run. Required. */
  runId: string;
  /** Action name, for example "refund.create". Required. */
  action: string;
  /** JSON-like arguments; the sidecar redacts and digests them before anything is stored. */
  args?: JsonObject;
  /** Step number, monotonic within the run. */
  stepId?: number;
  /** Set when resuming after an approval. */
  approvalId?: string;
}

/** Options of `reportResult`. */
export interface ReportOptions {
  /** "succeeded" (default), "failed", "cancelled" or "timed_out". */
  status?: ResultStatusName;
  /** Error message when the execution failed (at most 4096 bytes). */
  error?: string;
  /** JSON-like output of the action. */
  output?: JsonObject;
  /** How long the execution took, in milliseconds. */
  durationMs?: number;
}

/** Options of `guard` besides the action. */
export interface GuardOptions {
  /**
   * On "approval_required", wait for the approval (true: until resolved or expired; or at most `timeoutMs`),
   * then decide again with the approval id: the function runs if that decision allows it. A denied or
   * expired approval then throws `ActionStopped` (reason approval_denied / approval_expired); one still
   * pending when the wait ends throws `ApprovalRequired` with `outcome.state === "pending"`.
   */
  waitForApproval?: boolean | { timeoutMs?: number };
}

/** One guarded action, passed to the guarded function. */
export class Step {
  /** Set it to a JSON-like object to report it as the action's output (else a plain-object return value is). */
  output: JsonObject | undefined = undefined;
  /** The acknowledged result, once the function has finished and been reported. */
  report: ReportResult | undefined = undefined;

  constructor(
    /** The allow decision that let the function run. */
    readonly decision: DecideResult,
  ) {}

  /** Id of the pre-event the result is reported against. */
  get eventId(): string {
    return this.decision.eventId;
  }
}

type Invoke<Res> = (
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

function isPlainObject(value: unknown): value is JsonObject {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return false;
  }
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Client of the sidecar's GatewayService.
 *
 * ```ts
 * const client = new GatewayClient("unix:///srv/app/.agentaudit/gateway.sock");
 * const run = client.run("run_1", { tenantId: "t_42", agentId: "support-agent", actor: ["user", "u_1"] });
 * const customer = await run.guard("crm.lookup", { customer_id: "c_7" }, () => crm.lookup("c_7"));
 * client.close();
 * ```
 */
export class GatewayClient {
  private readonly stub: GatewayServiceClient;
  private readonly timeoutMs: number | null;
  private readonly metadata: Record<string, string>;

  /**
   * @param target `unix:///abs/path.sock`, `unix:relative.sock`, `unix://./relative.sock` or `HOST:PORT`
   *   (plaintext, as the sidecar listens locally); a malformed one throws `AddressError`.
   */
  constructor(
    readonly target: string,
    options: GatewayClientOptions = {},
  ) {
    this.stub = new GatewayServiceClient(grpcTarget(target), credentials.createInsecure(), options.channelOptions);
    this.timeoutMs = options.timeoutMs === undefined ? 10_000 : options.timeoutMs;
    this.metadata = { ...(options.metadata ?? {}) };
  }

  /** Closes the channel; calls in flight are cancelled. */
  close(): void {
    this.stub.close();
  }

  /** Closes the channel (for `using client = new GatewayClient(...)`). */
  [Symbol.dispose](): void {
    this.close();
  }

  private call<Res>(invoke: Invoke<Res>, timeoutMs: number | null): Promise<Res> {
    const metadata = new Metadata();
    for (const [key, value] of Object.entries(this.metadata)) {
      metadata.set(key, value);
    }
    const options: Partial<CallOptions> = timeoutMs === null ? {} : { deadline: Date.now() + timeoutMs };
    return new Promise((resolve, reject) => {
      invoke(metadata, options, (error, response) => {
        if (error) {
          reject(fromServiceError(error));
        } else {
          resolve(response);
        }
      });
    });
  }

  /**
   * Asks whether an action may run; the sidecar journals the decision before answering.
   *
   * @returns The decision. "stop" and "approval_required" are returned, not thrown.
   * @throws GatewayError when the call fails (for example `InvalidRequestError`, `UnavailableError`).
   */
  async decide(options: DecideOptions): Promise<DecideResult> {
    const request: DecideRequest = {
      runId: options.runId,
      stepId: options.stepId ?? 0,
      tenantId: options.tenantId,
      actor: actorMessage(options.actor),
      agentId: options.agentId ?? "",
      action: { name: options.action, args: toStruct(options.args, "args") },
      scope: scopeValue(options.scope),
      approvalId: options.approvalId ?? "",
      traceparent: options.traceparent ?? "",
      labels: { ...(options.labels ?? {}) },
    };
    const response = await this.call<DecideResponse>(
      (metadata, callOptions, callback) => this.stub.decide(request, metadata, callOptions, callback),
      this.timeoutMs,
    );
    return decideResult(response);
  }

  /**
   * Reports what happened when an allowed action ran. Idempotent per pre-event.
   *
   * @throws NotFoundError `eventId` is unknown.
   * @throws FailedPreconditionError the action was not allowed (the attempt is journaled as a violation).
   */
  async reportResult(eventId: string, options: ReportOptions = {}): Promise<ReportResult> {
    const request: ReportResultRequest = {
      eventId,
      status: resultStatusValue(options.status ?? "succeeded"),
      error: options.error ?? "",
      output: toStruct(options.output, "output"),
      duration: options.durationMs === undefined ? undefined : toDuration(options.durationMs),
    };
    const response = await this.call<ReportResultResponse>(
      (metadata, callOptions, callback) => this.stub.reportResult(request, metadata, callOptions, callback),
      this.timeoutMs,
    );
    return { eventId: response.eventId, duplicate: response.duplicate };
  }

  /**
   * Waits until an approval is resolved or expires.
   *
   * @param timeoutMs Milliseconds to wait at most (default: until resolved or expired).
   * @returns The outcome; its state is "pending" when `timeoutMs` passed first.
   */
  async waitApproval(approvalId: string, options: { timeoutMs?: number } = {}): Promise<ApprovalOutcome> {
    const request: WaitApprovalRequest = { approvalId };
    try {
      const response = await this.call<WaitApprovalResponse>(
        (metadata, callOptions, callback) => this.stub.waitApproval(request, metadata, callOptions, callback),
        options.timeoutMs ?? null,
      );
      return approvalOutcome(response);
    } catch (error) {
      if (error instanceof DeadlineExceededError) {
        return { state: "pending", resolvedBy: "", comment: "", granted: false };
      }
      throw error;
    }
  }

  /**
   * Decides, runs `fn` only if allowed, reports how it went, and returns `fn`'s value.
   *
   * On allow `fn(step)` runs and is reported "succeeded" with its duration and output (`step.output`, else
   * its return value if that is a plain object). If it throws (or its promise rejects), it is reported
   * "failed" with "Name: message" (or "cancelled" for an `AbortError`) and the error is rethrown.
   *
   * @throws ActionStopped the decision was "stop"; `fn` did not run.
   * @throws ApprovalRequired the decision was "approval_required"; `fn` did not run.
   * @throws GatewayError deciding failed (`fn` did not run), or reporting a successful `fn` did.
   */
  async guard<T>(options: DecideOptions & GuardOptions, fn: (step: Step) => T | Promise<T>): Promise<Awaited<T>> {
    return this.guardWith(options, () => options.stepId, fn);
  }

  /** `guard` with a step allocator for the resuming decision (used by `Run.guard`; prefer `guard`). */
  async guardWith<T>(
    options: DecideOptions & GuardOptions,
    nextStep: () => number | undefined,
    fn: (step: Step) => T | Promise<T>,
  ): Promise<Awaited<T>> {
    let result = await this.decide(options);
    if (result.decision === "approval_required" && options.waitForApproval) {
      const wait = options.waitForApproval === true ? {} : options.waitForApproval;
      const outcome = await this.waitApproval(result.approvalId, wait);
      if (outcome.state === "pending") {
        throwForDecision(result, outcome);
      }
      // Resolved either way: ask again with the approval, so the sidecar journals the resume and names the
      // precise reason if it is refused (approval_denied, approval_expired, or a later layer's stop).
      result = await this.decide({ ...options, approvalId: result.approvalId, stepId: nextStep() });
    }
    throwForDecision(result);
    const step = new Step(result);
    const started = performance.now();
    let value: Awaited<T>;
    try {
      value = await fn(step);
    } catch (error) {
      await this.reportFailure(step, error, performance.now() - started);
      throw error;
    }
    const output = step.output ?? (isPlainObject(value) ? value : undefined);
    step.report = await this.reportResult(step.eventId, {
      status: "succeeded",
      output,
      durationMs: performance.now() - started,
    });
    return value;
  }

  private async reportFailure(step: Step, error: unknown, elapsedMs: number): Promise<void> {
    const { status, error: message } = failure(error);
    try {
      step.report = await this.reportResult(step.eventId, { status, error: message, durationMs: elapsedMs });
    } catch (reportError) {
      // The function's own error is what the caller must see; the lost report rides along on it.
      if (error instanceof Error) {
        (error as Error & { agentauditReportError?: unknown }).agentauditReportError = reportError;
      }
    }
  }

  /** Starts a `Run`: decisions sharing these fields, with step ids numbered from 1. */
  run(runId: string, options: RunOptions): Run {
    return new Run(this, runId, options);
  }
}

/** Options of `Run.decide` and `Run.guard` that may differ per step. */
export interface StepOptions {
  scope?: ScopeName;
  approvalId?: string;
  labels?: Record<string, string>;
}

/** The steps of one agent run, numbered automatically (1, 2, 3, ...). Create it with `GatewayClient.run`. */
export class Run {
  private step = 0;

  constructor(
    private readonly client: GatewayClient,
    readonly runId: string,
    private readonly options: RunOptions,
  ) {}

  /** Allocates the next step id. */
  nextStep(): number {
    this.step += 1;
    return this.step;
  }

  private decideOptions(action: string, args: JsonObject | undefined, step: StepOptions): DecideOptions {
    return {
      ...this.options,
      runId: this.runId,
      action,
      args,
      stepId: this.nextStep(),
      scope: step.scope ?? this.options.scope,
      approvalId: step.approvalId ?? "",
      labels: step.labels ?? this.options.labels,
    };
  }

  /** `GatewayClient.decide` for the next step of this run. */
  decide(action: string, args?: JsonObject, options: StepOptions = {}): Promise<DecideResult> {
    return this.client.decide(this.decideOptions(action, args, options));
  }

  /** `GatewayClient.guard` for the next step of this run (a resume after approval is a step of its own). */
  guard<T>(
    action: string,
    args: JsonObject | undefined,
    fn: (step: Step) => T | Promise<T>,
    options: StepOptions & GuardOptions = {},
  ): Promise<Awaited<T>> {
    const decide = { ...this.decideOptions(action, args, options), waitForApproval: options.waitForApproval };
    return this.client.guardWith(decide, () => this.nextStep(), fn);
  }

  /**
   * Wraps a function of one arguments object so each call is a guarded step of this run: the object is the
   * action's args, the function runs only on allow, and its return value, if a plain object, is the output.
   */
  guarded<A extends JsonObject, R>(
    action: string,
    fn: (args: A) => R | Promise<R>,
    options: StepOptions & GuardOptions = {},
  ): (args: A) => Promise<Awaited<R>> {
    return (args: A) => this.guard(action, args, () => fn(args), options);
  }
}
