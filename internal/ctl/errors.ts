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
  /** The server could not be reached (retrying later may help), or its TLS identity not verified. */
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
  override readonly name: string = "CliError";
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

// TLS failures, as node's tls module and OpenSSL name them: why the connection was not trusted,
// in words that say what to fix. They are not transient, but like an unreachable server they
// mean no request was answered, so they share its exit code.
const TLS_UNTRUSTED = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "UNABLE_TO_GET_ISSUER_CERT", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN", "DEPTH_ZERO_SELF_SIGNED_CERT", "CERT_SIGNATURE_FAILURE",
]); // prettier-ignore
const TLS_CLIENT_REFUSED = new Set([
  "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED", "ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE", "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA",
  "ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED", "ERR_SSL_TLSV1_ALERT_ACCESS_DENIED", "ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE",
]); // prettier-ignore

function errorCodes(e: unknown): string[] {
  const out: string[] = [];
  for (let cur: unknown = e, depth = 0; cur instanceof Error && depth < 5; cur = cur.cause, depth++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string") out.push(code);
  }
  return out;
}

/** Why a TLS connection failed, or undefined when `e` is not a TLS failure. */
function tlsFailure(e: unknown, server: string, caFrom: string | undefined): string | undefined {
  const codes = errorCodes(e);
  const at = `cannot verify server at ${server}`;
  for (const code of codes) {
    if (TLS_UNTRUSTED.has(code))
      return caFrom !== undefined
        ? `${at}: its certificate is not signed by the CA of ${caFrom} (${code})`
        : `${at}: its certificate is not signed by a CA this system trusts; give the cluster's CA (--ca-file, HYPERVISOR_CA_FILE or the context's ca-file) (${code})`;
    if (code === "CERT_HAS_EXPIRED") return `${at}: its certificate has expired (${code})`;
    if (code === "CERT_NOT_YET_VALID") return `${at}: its certificate is not yet valid; check the clocks (${code})`;
    if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return `${at}: its certificate does not name ${new URL(server).hostname} (${code})`;
    if (TLS_CLIENT_REFUSED.has(code))
      return `server at ${server} refused the TLS handshake: it requires a client certificate it accepts (--client-cert/--client-key or the context's credentials) (${code})`;
    if (code === "ERR_SSL_WRONG_VERSION_NUMBER" || code === "ERR_SSL_PACKET_LENGTH_TOO_LONG")
      return `cannot reach server at ${server}: it does not speak TLS; is its URL http:// ? (${code})`;
  }
  return undefined;
}

/**
 * The stderr line (without "error: ") and exit code for anything a command threw. `caFrom` names
 * the CA in use (a file, a context) for a server certificate that it does not verify.
 */
export function describeError(e: unknown, server: string, caFrom?: string): { message: string; exitCode: ExitCode } {
  if (e instanceof CliError) return { message: e.message, exitCode: e.exitCode };
  // Thrown inside a call (an OIDC login that could not be refreshed): the client wraps it.
  if (e instanceof ConnectError && e.cause instanceof CliError) return { message: e.cause.message, exitCode: e.cause.exitCode };
  if (e instanceof ConnectError || e instanceof Error) {
    const err = ConnectError.from(e);
    const tls = tlsFailure(e, server, caFrom);
    if (tls !== undefined) return { message: tls, exitCode: ExitCode.Unavailable };
    const sys = systemCode(e);
    // An Unavailable that the server itself sent (it answered, with headers) is about something
    // behind it (a node's agent, the store), not about reaching the server.
    const answered = err.metadata.has("content-type");
    if (sys !== undefined || (err.code === Code.Unavailable && !answered)) {
      // TLS 1.3 finishes the client's handshake before the server checks the client certificate,
      // so a server refusing one often shows only as a reset.
      const hint =
        sys === "ECONNRESET" && server.startsWith("https:")
          ? " (a TLS server also closes like this when it refuses the client certificate, or wants one)"
          : "";
      return { message: `cannot reach server at ${server}: ${sys ?? err.rawMessage}${hint}`, exitCode: ExitCode.Unavailable };
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
