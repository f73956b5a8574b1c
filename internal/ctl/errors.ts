/*
 * Exit codes and the one place errors become a line on stderr. Scripts branch on the exit code,
 * so each class of failure gets its own and docs/cli.md lists them; the text is for people.
 */
import { Code, ConnectError } from "@connectrpc/connect";

export const ExitCode = {
  Ok: 0,
  /** The server answered with an error (NotFound, InvalidArgument, FailedPrecondition, ...). */
  Api: 1,
  /** Bad flags, arguments or spec file: nothing was sent. */
  Usage: 2,
  /** The server could not be reached (retrying later may help). */
  Unavailable: 3,
  /** A --wait or --timeout ran out before the instance reached the wanted state. */
  Timeout: 4,
  /** The instance being waited for went to Failed. */
  Failed: 5,
  /** Interrupted (Ctrl-C) before the command finished; 128 + SIGINT as shells report it. */
  Interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** A failure the CLI itself detected, with the exit code it maps to. */
export class CliError extends Error {
  override readonly name = "CliError";
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
  }
}

export function usageError(message: string): CliError {
  return new CliError(message, ExitCode.Usage);
}

// Node's network errors surface as ConnectError(Unavailable) with the system error as the cause;
// these codes mean "nothing is listening there", worth naming the URL for.
const UNREACHABLE = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "ECONNRESET", "ETIMEDOUT", "EAI_AGAIN"]);

function systemCode(e: unknown): string | undefined {
  for (let cur: unknown = e, depth = 0; cur instanceof Error && depth < 5; cur = cur.cause, depth++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string" && UNREACHABLE.has(code)) return code;
  }
  return undefined;
}

/** The stderr line (without "error: ") and exit code for anything a command threw. */
export function describeError(e: unknown, server: string): { message: string; exitCode: ExitCode } {
  if (e instanceof CliError) return { message: e.message, exitCode: e.exitCode };
  if (e instanceof ConnectError || e instanceof Error) {
    const err = ConnectError.from(e);
    const sys = systemCode(e);
    // An Unavailable that the server itself sent (it answered, with headers) is about something
    // behind it (a node's agent, the store), not about reaching the server.
    const answered = err.metadata.has("content-type");
    if (sys !== undefined || (err.code === Code.Unavailable && !answered)) {
      return { message: `cannot reach server at ${server}: ${sys ?? err.rawMessage}`, exitCode: ExitCode.Unavailable };
    }
    if (err.code === Code.DeadlineExceeded) return { message: `${codeName(err.code)}: ${err.rawMessage}`, exitCode: ExitCode.Timeout };
    return { message: `${codeName(err.code)}: ${err.rawMessage}`, exitCode: ExitCode.Api };
  }
  return { message: String(e), exitCode: ExitCode.Api };
}

/** Connect's wire name for a code ("not_found"), which is also what the docs and curl show. */
export function codeName(code: Code): string {
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}
