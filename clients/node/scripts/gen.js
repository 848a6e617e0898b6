#!/usr/bin/env node
// Regenerates src/gen/ from ../../proto (and proto-vendor/) with buf and the local ts-proto plugin.
// buf comes from $BUF, else the repository's virtualenv (../../.venv/bin/buf, installed by `make install`).
"use strict";
const { spawnSync } = require("node:child_process");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const buf = process.env.BUF || path.resolve(root, "../../.venv/bin/buf");
const result = spawnSync(buf, ["generate", "--template", "buf.gen.yaml"], { cwd: root, stdio: "inherit" });
if (result.error) {
  console.error(`cannot run buf (${buf}): ${result.error.message}; set BUF or run \`make install\``);
  process.exit(1);
}
process.exit(result.status ?? 1);
