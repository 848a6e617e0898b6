/** Conversions that need no sidecar: error messages, durations, JSON checks. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { approvalOutcome, failure, MAX_ERROR_BYTES, toDuration, toStruct, truncateUtf8 } from "../src/convert";
import { ApprovalState } from "../src/gen/agentaudit/v1/gateway";

test("truncateUtf8 cuts at a character boundary", () => {
  assert.equal(truncateUtf8("abc", 3), "abc");
  assert.equal(truncateUtf8("abcd", 3), "abc");
  assert.equal(truncateUtf8("aé", 2), "a"); // é is 2 bytes: it does not fit
  assert.equal(truncateUtf8("a😀b", 4), "a");
  assert.equal(truncateUtf8("a😀b", 5), "a😀");
  const long = truncateUtf8("€".repeat(5000));
  assert.ok(Buffer.byteLength(long) <= MAX_ERROR_BYTES);
  assert.equal(long, "€".repeat(Math.floor(MAX_ERROR_BYTES / 3)));
});

test("failure names the error like the Python client (Type: message)", () => {
  assert.deepEqual(failure(new RangeError("too big")), { status: "failed", error: "RangeError: too big" });
  assert.deepEqual(failure(new Error("")), { status: "failed", error: "Error" });
  assert.deepEqual(failure("plain string"), { status: "failed", error: "string: plain string" });
  assert.equal(failure(new DOMException("stop", "AbortError")).status, "cancelled");
});

test("toDuration converts milliseconds", () => {
  assert.deepEqual(toDuration(0), { seconds: 0, nanos: 0 });
  assert.deepEqual(toDuration(1500.25), { seconds: 1, nanos: 500_250_000 });
  assert.throws(() => toDuration(-1), RangeError);
});

test("toStruct accepts JSON-like objects and drops undefined properties", () => {
  assert.deepEqual(toStruct({ a: 1, b: undefined, c: [undefined, null, "x"] } as never, "args"), { a: 1, c: [null, null, "x"] });
  assert.equal(toStruct(undefined, "args"), undefined);
  assert.throws(() => toStruct({ d: new Date() } as never, "args"), /args\.d must be JSON-like/);
  assert.throws(() => toStruct({ n: Infinity }, "args"), /finite/);
});

test("approvalOutcome names every approval state; only granted is a grant", () => {
  const names = [
    [ApprovalState.APPROVAL_STATE_PENDING, "pending"],
    [ApprovalState.APPROVAL_STATE_GRANTED, "granted"],
    [ApprovalState.APPROVAL_STATE_DENIED, "denied"],
    [ApprovalState.APPROVAL_STATE_EXPIRED, "expired"],
    [ApprovalState.APPROVAL_STATE_ABANDONED, "abandoned"],
  ] as const;
  for (const [state, name] of names) {
    const outcome = approvalOutcome({ state, resolvedBy: "", comment: "" });
    assert.deepEqual([outcome.state, outcome.granted], [name, name === "granted"]);
  }
});
