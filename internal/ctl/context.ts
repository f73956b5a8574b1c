/*
 * What every command gets: where to write, the cancellation signal, the clock, and the global
 * flags resolved (connection, output format). Passed in rather than read from `process` so tests
 * run the whole CLI in-process.
 */
import type { Clients } from "./client.js";
import type { ConfigLocation } from "./config-file.js";
import type { ConnectionFlags } from "./connection.js";
import type { Format } from "./output.js";

export interface Writer {
  write(chunk: string): unknown;
}

/** The process surface `run` needs; `main.ts` passes the real one, tests pass buffers. */
export interface Io {
  readonly stdout: Writer;
  readonly stderr: Writer;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** For interactive commands (instance console); absent in tests that do not need it. */
  readonly stdin?: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?(raw: boolean): unknown };
  /** Aborted on Ctrl-C; every blocking call listens to it. */
  readonly signal?: AbortSignal;
  /** For ages in tables; tests fix it so output is deterministic. */
  readonly now?: () => Date;
}

export interface Context {
  readonly io: Io;
  readonly signal: AbortSignal;
  now(): Date;
  /** The global --output, resolved once options are parsed. */
  format(): Format;
  /** Clients for the resolved connection (flags, environment, context, default), built on first use. */
  clients(): Clients;
  /** Where the ctl configuration file is (--config-file, HYPERVISOR_CONFIG, or the default). */
  configLocation(): ConfigLocation;
  /** The connection flags as given on the command line, before any resolution. */
  flags(): ConnectionFlags;
  /**
   * The project commands act in: --project, else HYPERVISOR_PROJECT, else the context's project,
   * else "default".
   */
  project(): string;
  /** --project as given on the command line only (scopes of tokens and bindings: never implied). */
  projectFlag(): string | undefined;
  /** Writes to stdout. Commands write once, after success, so a failure leaves stdout empty. */
  out(text: string): void;
}
