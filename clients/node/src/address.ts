/**
 * Sidecar addresses: the same table as the Python client's `agentaudit_client.address` (test vectors shared in
 * `clients/testdata/addresses.json`). gRPC aborts on `unix://./relative`, which people copy from the docs, so
 * every form is turned into one it takes, relative paths resolved against `base` (the current directory).
 */

import * as path from "node:path";

const UNIX_PREFIX = "unix://";
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$/;
const PASS_THROUGH = ["dns:", "ipv4:", "ipv6:", "unix-abstract:", "vsock:"];

/** An address that is none of the accepted forms; the message says which forms are. */
export class AddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AddressError";
  }
}

/** The absolute socket path of a unix-socket address, or undefined when the address is not one. */
export function unixPath(address: string, base: string = process.cwd()): string | undefined {
  const text = address.trim();
  let raw: string;
  if (text.startsWith(UNIX_PREFIX)) {
    raw = text.slice(UNIX_PREFIX.length); // unix:///abs is absolute; unix://./x and unix://x are relative
  } else if (text.startsWith("unix:")) {
    raw = text.slice("unix:".length);
  } else if (text.startsWith("/") || text.startsWith("./") || text.startsWith("../")) {
    raw = text;
  } else {
    return undefined;
  }
  if (raw === "" || raw === "." || raw === "/") {
    throw new AddressError(`${JSON.stringify(address)} names no socket file`);
  }
  return path.normalize(path.isAbsolute(raw) ? raw : path.join(base, raw));
}

/** The gRPC target for an address in any accepted form. Throws AddressError for anything else. */
export function grpcTarget(address: string, base: string = process.cwd()): string {
  const text = address.trim();
  if (text === "") {
    throw new AddressError("the address is empty (expected unix:///path/to/gateway.sock or HOST:PORT)");
  }
  const socket = unixPath(text, base);
  if (socket !== undefined) {
    return UNIX_PREFIX + socket;
  }
  if (PASS_THROUGH.some((prefix) => text.startsWith(prefix)) || HOST_PORT.test(text)) {
    return text;
  }
  throw new AddressError(
    `${JSON.stringify(address)} is not an address: use unix:///abs/path.sock, unix:relative/path.sock or HOST:PORT`,
  );
}
