/** The address table shared with the Python client (clients/testdata/addresses.json). */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { AddressError, grpcTarget } from "../src/address";

const vectors = JSON.parse(
  readFileSync(path.join(__dirname, "..", "..", "..", "testdata", "addresses.json"), "utf8"),
) as { base: string; accepted: [string, string][]; refused: string[] };

test("every accepted form becomes the target the Python client computes", () => {
  for (const [typed, target] of vectors.accepted) {
    assert.equal(grpcTarget(typed, vectors.base), target, typed);
  }
});

test("malformed addresses are refused with the forms that work", () => {
  for (const typed of vectors.refused) {
    assert.throws(() => grpcTarget(typed, vectors.base), AddressError, JSON.stringify(typed));
  }
});
