/*
 * Test support for the CLI: run it in-process with captured output, and serve a hand-written
 * API implementation over real HTTP (Connect on connect-node) so requests and errors cross the
 * same wire the real server uses. Not exported from index.ts.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { run } from "./cli.js";

export interface Captured {
  code: number;
  stdout: string;
  stderr: string;
}

export const FIXED_NOW = new Date("2025-01-02T03:04:05Z");

export async function runCli(
  argv: readonly string[],
  opts: {
    server?: string;
    env?: Record<string, string>;
    signal?: AbortSignal;
    onStdout?: (all: string) => void;
    /** Called with everything written to stderr so far, after each write (a prompt to act on). */
    onStderr?: (all: string) => void;
    /** What standard input carries (a pipe that ends after it); none when absent. */
    stdin?: string;
    /** The clock for ages and time left; FIXED_NOW when absent. */
    now?: Date;
  } = {},
): Promise<Captured> {
  let stdout = "";
  let stderr = "";
  const env = { ...opts.env, ...(opts.server !== undefined ? { HYPERVISOR_SERVER: opts.server } : {}) };
  const code = await run(argv, {
    stdout: {
      write: (s: string) => {
        stdout += s;
        opts.onStdout?.(stdout);
      },
    },
    stderr: {
      write: (s: string) => {
        stderr += s;
        opts.onStderr?.(stderr);
      },
    },
    env,
    signal: opts.signal,
    ...(opts.stdin !== undefined ? { stdin: Readable.from([opts.stdin]) } : {}),
    now: () => opts.now ?? FIXED_NOW,
  });
  return { code, stdout, stderr };
}

export interface TestApi {
  readonly url: string;
  close(): Promise<void>;
}

export async function startApi(routes: (router: ConnectRouter) => void): Promise<TestApi> {
  const server = createServer(connectNodeAdapter({ routes }));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((e) => (e ? reject(e) : resolve()));
      }),
  };
}
