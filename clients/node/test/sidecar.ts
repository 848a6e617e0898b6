/**
 * A real sidecar for the tests: `agentaudit dev --dir TMP` in a subprocess, on unix sockets in TMP (and a
 * loopback TCP port).
 *
 * The binary is $AGENTAUDIT_BIN, else ../../.venv/bin/agentaudit relative to clients/node (`make install`).
 */

import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type AddressInfo } from "node:net";
import { mkdtempSync, openSync, readFileSync, closeSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { BinaryReader } from "@bufbuild/protobuf/wire";
import { credentials, makeGenericClientConstructor, Metadata, type ServiceError } from "@grpc/grpc-js";

import { OperatorServiceClient } from "../src/gen/agentaudit/v1/operator";

export const PACKAGE_ROOT = path.resolve(__dirname, "..", "..");
export const AGENTAUDIT_BIN = process.env.AGENTAUDIT_BIN || path.resolve(PACKAGE_ROOT, "../../.venv/bin/agentaudit");

const SERVING = 1;
const HealthClient = makeGenericClientConstructor(
  {
    check: {
      path: "/grpc.health.v1.Health/Check",
      requestStream: false,
      responseStream: false,
      requestSerialize: () => Buffer.alloc(0), // HealthCheckRequest{service: ""}: the server as a whole
      requestDeserialize: () => ({}),
      responseSerialize: () => Buffer.alloc(0),
      responseDeserialize: (bytes: Buffer): number => {
        // HealthCheckResponse{status = 1 (enum)}
        const reader = new BinaryReader(bytes);
        let status = 0;
        while (reader.pos < reader.len) {
          const [field, wireType] = reader.tag();
          if (field === 1) {
            status = reader.int32();
          } else {
            reader.skip(wireType);
          }
        }
        return status;
      },
    },
  },
  "grpc.health.v1.Health",
);

/** One health check; resolves with the serving status number, rejects with the gRPC error. */
function healthCheck(target: string): Promise<number> {
  const client = new HealthClient(target, credentials.createInsecure());
  return new Promise<number>((resolve, reject) => {
    const check = (client as unknown as Record<string, Function>).check!;
    check.call(client, {}, new Metadata(), { deadline: Date.now() + 1000 }, (error: ServiceError | null, status: number) => {
      client.close();
      if (error) {
        reject(error);
      } else {
        resolve(status);
      }
    });
  });
}

/** A loopback TCP port that was free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export class Sidecar {
  private constructor(
    readonly dir: string,
    readonly target: string,
    readonly tcpTarget: string,
    readonly operatorTarget: string,
    readonly process: ChildProcess,
    readonly logPath: string,
  ) {}

  /** Starts `agentaudit dev` in a new temporary directory and waits until its health check says SERVING. */
  static async start(deadlineMs = 30_000): Promise<Sidecar> {
    // Short path: unix socket paths are limited to 107 bytes.
    const dir = mkdtempSync(path.join(tmpdir(), "aa-node-"));
    const target = `unix://${path.join(dir, "gateway.sock")}`;
    const tcpTarget = `127.0.0.1:${await freePort()}`;
    const operatorTarget = `unix://${path.join(dir, "operator.sock")}`;
    const logPath = path.join(dir, "sidecar.log");
    const log = openSync(logPath, "a");
    const child = spawn(
      AGENTAUDIT_BIN,
      ["dev", "--dir", dir, "--listen", target, "--listen", tcpTarget, "--operator-listen", operatorTarget],
      {
        stdio: ["ignore", log, log],
        // No forwarding to the embedded collector: nothing here needs it, and it keeps the sidecar quiet.
        env: { ...process.env, AGENTAUDIT_FORWARD_TARGET: "" },
      },
    );
    closeSync(log);
    const sidecar = new Sidecar(dir, target, tcpTarget, operatorTarget, child, logPath);
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
    const deadline = Date.now() + deadlineMs;
    let last: unknown;
    while (Date.now() < deadline) {
      const failed = await Promise.race([
        exited.then(() => "exited"),
        spawnError.then((e) => `could not start ${AGENTAUDIT_BIN}: ${e.message}`),
        sleep(50).then(() => ""),
      ]);
      if (failed) {
        throw new Error(`sidecar ${failed} before serving:\n${sidecar.log()}`);
      }
      try {
        if ((await healthCheck(target)) === SERVING) {
          return sidecar;
        }
      } catch (error) {
        last = error;
      }
    }
    await sidecar.stop("SIGKILL");
    throw new Error(`sidecar at ${target} not serving after ${deadlineMs}ms: ${String(last)}\n${sidecar.log()}`);
  }

  /** The dev operator's bearer token (roles admin, approver, auditor). */
  get operatorToken(): string {
    return readFileSync(path.join(this.dir, "operator.token"), "utf8").trim();
  }

  log(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /** A client of the operator API, with the dev operator's token in the metadata of `operatorMetadata()`. */
  operatorClient(): OperatorServiceClient {
    return new OperatorServiceClient(this.operatorTarget, credentials.createInsecure());
  }

  operatorMetadata(): Metadata {
    const metadata = new Metadata();
    metadata.set("authorization", `Bearer ${this.operatorToken}`);
    return metadata;
  }

  /** Stops the process (SIGTERM by default, SIGKILL after 15 s), removes the directory, returns the exit code. */
  async stop(signal: NodeJS.Signals = "SIGTERM", removeDir = true): Promise<number | null> {
    const child = this.process;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill(signal);
      const killed = await Promise.race([exited.then(() => false), sleep(15_000, undefined, { ref: false }).then(() => true)]);
      if (killed) {
        child.kill("SIGKILL");
        await exited;
      }
    }
    if (removeDir) {
      rmSync(this.dir, { recursive: true, force: true });
    }
    return child.exitCode;
  }
}
