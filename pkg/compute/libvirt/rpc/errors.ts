/*
 * The two ways a call fails: the daemon answered with a remote_error (LibvirtError, carrying
 * libvirt's own code so callers branch on numbers, not message text), or the connection went away
 * before an answer came (ConnectionClosedError, for every call still waiting).
 */
import { readDomain, writeDomain, type Domain, UUID_LENGTH } from "./domain.js";
import { XdrReader, XdrWriter } from "./xdr.js";

/** virErrorNumber values callers are likely to branch on. */
export const ErrorCode = {
  OK: 0,
  INTERNAL_ERROR: 1,
  NO_SUPPORT: 3,
  NO_CONNECT: 5,
  INVALID_ARG: 8,
  OPERATION_FAILED: 9,
  XML_ERROR: 27,
  DOM_EXIST: 28,
  OPERATION_DENIED: 29,
  /** The XML did not parse (libxml2's message, with the line). */
  XML_DETAIL: 35,
  SYSTEM_ERROR: 38,
  RPC: 39,
  NO_DOMAIN: 42,
  AUTH_FAILED: 45,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  OPERATION_TIMEOUT: 68,
  NO_DOMAIN_SNAPSHOT: 72,
  INVALID_STREAM: 73,
  ARGUMENT_UNSUPPORTED: 74,
  OPERATION_ABORTED: 78,
  AUTH_CANCELLED: 79,
  MIGRATE_UNSAFE: 81,
  OPERATION_UNSUPPORTED: 84,
  AGENT_UNRESPONSIVE: 86,
  AUTH_UNAVAILABLE: 94,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** virErrorDomain (VIR_FROM_*): which part of libvirt raised the error. */
export const ErrorDomain = { NONE: 0, XML: 5, DOM: 6, RPC: 7, CONF: 9, QEMU: 10, REMOTE: 13, DOMAIN: 20 } as const;
export type ErrorDomain = (typeof ErrorDomain)[keyof typeof ErrorDomain];

export const ErrorLevel = { NONE: 0, WARNING: 1, ERROR: 2 } as const;
export type ErrorLevel = (typeof ErrorLevel)[keyof typeof ErrorLevel];

/** remote_nonnull_network, only ever seen inside remote_error. */
export interface RemoteNetwork {
  name: string;
  uuid: Buffer;
}

/** remote_error (= virNetMessageError), field for field; absent pointers are undefined. */
export interface RemoteError {
  code: number;
  domain: number;
  message?: string;
  level: number;
  dom?: Domain;
  str1?: string;
  str2?: string;
  str3?: string;
  int1: number;
  int2: number;
  net?: RemoteNetwork;
}

export function decodeRemoteError(payload: Buffer): RemoteError {
  const r = new XdrReader(payload);
  const str = (x: XdrReader) => x.string();
  const e: RemoteError = {
    code: r.i32(),
    domain: r.i32(),
    message: r.optional(str),
    level: r.i32(),
    dom: r.optional(readDomain),
    str1: r.optional(str),
    str2: r.optional(str),
    str3: r.optional(str),
    int1: r.i32(),
    int2: r.i32(),
    net: r.optional((x) => ({ name: x.string(), uuid: x.fixedOpaque(UUID_LENGTH) })),
  };
  r.end();
  return e;
}

/** The daemon's side; the client never sends errors, but tests and fake servers do. */
export function encodeRemoteError(e: RemoteError): Buffer {
  const w = new XdrWriter();
  const str = (x: XdrWriter, s: string) => void x.string(s);
  w.i32(e.code).i32(e.domain).optional(e.message, str).i32(e.level);
  w.optional(e.dom, writeDomain).optional(e.str1, str).optional(e.str2, str).optional(e.str3, str);
  w.i32(e.int1).i32(e.int2);
  w.optional(e.net, (x, n) => void x.string(n.name).fixedOpaque(n.uuid, UUID_LENGTH));
  return w.finish();
}

const codeNames = new Map<number, string>(Object.entries(ErrorCode).map(([k, v]) => [v, k]));

/** The daemon refused a call. `code`, `domain` and `level` are libvirt's numbers. */
export class LibvirtError extends Error {
  override readonly name = "LibvirtError";
  readonly code: number;
  readonly domain: number;
  readonly level: number;
  /** libvirt's own text, e.g. "Domain not found: no domain with matching name 'x'". */
  readonly libvirtMessage: string;

  constructor(
    readonly remote: RemoteError,
    /** The procedure number that failed, when known. */
    readonly proc?: number,
  ) {
    const text = remote.message ?? "(no message)";
    const code = codeNames.get(remote.code) ?? String(remote.code);
    super(`libvirt: ${text} (code ${code}${proc === undefined ? "" : `, procedure ${proc}`})`);
    this.code = remote.code;
    this.domain = remote.domain;
    this.level = remote.level;
    this.libvirtMessage = text;
  }
}

/** The socket closed or failed, or the client was closed: no reply will come. */
export class ConnectionClosedError extends Error {
  override readonly name = "ConnectionClosedError";
  constructor(message = "libvirt connection closed", options?: ErrorOptions) {
    super(message, options);
  }
}

/** The daemon wants an authentication this client does not speak (SASL); only none and polkit are. */
export class AuthUnsupportedError extends Error {
  override readonly name = "AuthUnsupportedError";
  constructor(
    readonly socketPath: string,
    /** AuthType values the daemon listed. */
    readonly authTypes: number[],
  ) {
    super(
      `libvirt at ${socketPath} requires authentication types [${authTypes.join(", ")}]; this client speaks none (0) and polkit (2) only`,
    );
  }
}

const hasCode = (e: unknown, code: number): e is LibvirtError => e instanceof LibvirtError && e.code === code;

export const isNoDomain = (e: unknown): e is LibvirtError => hasCode(e, ErrorCode.NO_DOMAIN);
/** Wrong state for the operation, e.g. "domain is not running". */
export const isOperationInvalid = (e: unknown): e is LibvirtError => hasCode(e, ErrorCode.OPERATION_INVALID);
/** Define/create of a name or UUID that is taken. */
export const isDomainExists = (e: unknown): e is LibvirtError => hasCode(e, ErrorCode.DOM_EXIST);
export const isInvalidArg = (e: unknown): e is LibvirtError => hasCode(e, ErrorCode.INVALID_ARG);
export const isNoSupport = (e: unknown): e is LibvirtError => hasCode(e, ErrorCode.NO_SUPPORT);
export const isOperationTimeout = (e: unknown): e is LibvirtError => hasCode(e, ErrorCode.OPERATION_TIMEOUT);
/** The daemon does not know the procedure (an older libvirt): fall back or report unsupported. */
export const isUnknownProcedure = (e: unknown): e is LibvirtError =>
  e instanceof LibvirtError && /unknown procedure/i.test(e.libvirtMessage);
export const isConnectionClosed = (e: unknown): e is ConnectionClosedError => e instanceof ConnectionClosedError;
