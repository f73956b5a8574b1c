/*
 * Where ctl connects and with what: each setting from the first layer that has it,
 *
 *   flag (--server, --ca-file, --client-cert/--client-key, --context)
 *     ──► environment (HYPERVISOR_SERVER, HYPERVISOR_CA_FILE, HYPERVISOR_CLIENT_CERT/_KEY,
 *                      HYPERVISOR_TOKEN, HYPERVISOR_CONTEXT)
 *       ──► the configuration file's context (--context, else HYPERVISOR_CONTEXT, else current-context)
 *         ──► the default: http://127.0.0.1:7070, no TLS settings
 *
 * Each value remembers where it came from, so an error names the flag, variable or context key
 * at fault. A client certificate and its key are one setting: the layer that gives one must give
 * both. A context's token (or OIDC login) goes only to that context's own server: a --server or
 * HYPERVISOR_SERVER pointing elsewhere must not receive it. HYPERVISOR_TOKEN wins over both.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { checkServerUrl, checkToken, ConfigFileError, type ContextEntry, type CtlConfig, resolveFrom } from "./config-file.js";
import { usageError } from "./errors.js";
import type { OidcSource } from "./oidc.js";

export const DEFAULT_SERVER = "http://127.0.0.1:7070";

/** The global flags as given on the command line. */
export interface ConnectionFlags {
  server?: string;
  caFile?: string;
  clientCert?: string;
  clientKey?: string;
  context?: string;
}

/** PEM material: a file to read, or the text itself (a context's *-data). */
export type PemSource = { file: string; from: string } | { pem: string; from: string };

export interface Connection {
  /** The context whose settings were used, if any. */
  context?: string;
  server: string;
  /** Where `server` came from: "--server", "HYPERVISOR_SERVER", "context prod", "default". */
  serverFrom: string;
  ca?: PemSource;
  clientCert?: PemSource;
  clientKey?: PemSource;
  token?: { value: string; from: string };
  /** The context's OIDC login, when it is the bearer (no token wins over it). */
  oidc?: OidcSource & { from: string };
  /** Things worth a warning line on stderr (a dropped token). */
  warnings: string[];
}

export interface ConnectionInputs {
  flags: ConnectionFlags;
  env: Readonly<Record<string, string | undefined>>;
  config: CtlConfig;
  /** The configuration file read, for messages and for relative paths in it. */
  configPath: string | undefined;
}

const set = (v: string | undefined): v is string => v !== undefined && v !== "";

/** The context selected by --context, HYPERVISOR_CONTEXT or current-context; none if none is. */
export function selectContext(inputs: ConnectionInputs): ContextEntry | undefined {
  const { flags, env, config, configPath } = inputs;
  const [name, from] = set(flags.context)
    ? [flags.context, "--context"]
    : set(env["HYPERVISOR_CONTEXT"])
      ? [env["HYPERVISOR_CONTEXT"], "HYPERVISOR_CONTEXT"]
      : [config.currentContext, "current-context"];
  if (name === undefined) return undefined;
  const found = config.contexts.find((c) => c.name === name);
  if (found) return found;
  const known = config.contexts.map((c) => c.name);
  const file = configPath ?? "(no configuration file)";
  throw new ConfigFileError(
    `${from} names context ${JSON.stringify(name)}, which ${file} does not have` +
      (known.length > 0 ? ` (contexts: ${known.join(", ")})` : " (it has no contexts)"),
    from,
  );
}

/** Resolves every setting through the layers; reads no file. */
export function resolveConnection(inputs: ConnectionInputs): Connection {
  const { flags, env, configPath } = inputs;
  const ctx = selectContext(inputs);
  const inCtx = ctx ? `context ${ctx.name}` : "";
  const warnings: string[] = [];
  const conn: Connection = { server: DEFAULT_SERVER, serverFrom: "default", warnings };
  if (ctx) conn.context = ctx.name;

  if (set(flags.server)) [conn.server, conn.serverFrom] = [checkServerUrl(flags.server, "--server"), "--server"];
  else if (set(env["HYPERVISOR_SERVER"]))
    [conn.server, conn.serverFrom] = [checkServerUrl(env["HYPERVISOR_SERVER"], "HYPERVISOR_SERVER"), "HYPERVISOR_SERVER"];
  else if (ctx) [conn.server, conn.serverFrom] = [ctx.server, `${inCtx} (server)`];

  const file = (p: string, from: string): PemSource => ({ file: resolveFrom(undefined, p), from });
  const fromCtx = (f: string | undefined, d: string | undefined, key: string): PemSource | undefined =>
    f !== undefined
      ? { file: resolveFrom(configPath, f), from: `${inCtx} (${key}-file)` }
      : d !== undefined
        ? { pem: d, from: `${inCtx} (${key}-data)` }
        : undefined;

  if (set(flags.caFile)) conn.ca = file(flags.caFile, "--ca-file");
  else if (set(env["HYPERVISOR_CA_FILE"])) conn.ca = file(env["HYPERVISOR_CA_FILE"], "HYPERVISOR_CA_FILE");
  else if (ctx) {
    const ca = fromCtx(ctx.caFile, ctx.caData, "ca");
    if (ca) conn.ca = ca;
  }

  // The pair comes from one layer: the first that names either half must name both.
  if (set(flags.clientCert) || set(flags.clientKey)) {
    if (!set(flags.clientCert) || !set(flags.clientKey)) throw usageError("--client-cert and --client-key go together: give both");
    conn.clientCert = file(flags.clientCert, "--client-cert");
    conn.clientKey = file(flags.clientKey, "--client-key");
  } else if (set(env["HYPERVISOR_CLIENT_CERT"]) || set(env["HYPERVISOR_CLIENT_KEY"])) {
    if (!set(env["HYPERVISOR_CLIENT_CERT"]) || !set(env["HYPERVISOR_CLIENT_KEY"]))
      throw usageError("HYPERVISOR_CLIENT_CERT and HYPERVISOR_CLIENT_KEY go together: set both");
    conn.clientCert = file(env["HYPERVISOR_CLIENT_CERT"], "HYPERVISOR_CLIENT_CERT");
    conn.clientKey = file(env["HYPERVISOR_CLIENT_KEY"], "HYPERVISOR_CLIENT_KEY");
  } else if (ctx?.credentials) {
    const cr = ctx.credentials;
    const cert = fromCtx(cr.clientCertFile, cr.clientCertData, "client-cert");
    const key = fromCtx(cr.clientKeyFile, cr.clientKeyData, "client-key");
    if (cert && key) [conn.clientCert, conn.clientKey] = [cert, key];
  }

  if (set(env["HYPERVISOR_TOKEN"])) {
    checkToken(env["HYPERVISOR_TOKEN"], "HYPERVISOR_TOKEN");
    conn.token = { value: env["HYPERVISOR_TOKEN"], from: "HYPERVISOR_TOKEN" };
  } else if (ctx?.credentials?.token !== undefined) {
    if (conn.server === ctx.server) conn.token = { value: ctx.credentials.token, from: `${inCtx} (token)` };
    else warnings.push(`not sending the token of ${inCtx} to ${conn.server} (from ${conn.serverFrom}): it is not that context's server`);
  } else if (ctx?.credentials?.oidc !== undefined) {
    if (conn.server === ctx.server)
      conn.oidc = { credentials: ctx.credentials.oidc, context: ctx.name, configPath, from: `${inCtx} (oidc)` };
    else
      warnings.push(`not sending the OIDC login of ${inCtx} to ${conn.server} (from ${conn.serverFrom}): it is not that context's server`);
  }

  const tlsFrom = [conn.ca, conn.clientCert].filter((s) => s !== undefined && !s.from.startsWith("context"));
  if (conn.server.startsWith("http:")) {
    // A CA or certificate the user gave for this run on a plaintext URL would be silently unused.
    if (tlsFrom.length > 0)
      throw usageError(`${tlsFrom[0]!.from} is given but the server ${conn.server} (from ${conn.serverFrom}) is not https`);
    // From a context whose server was overridden by an http one: they belong to the other server.
    delete conn.ca;
    delete conn.clientCert;
    delete conn.clientKey;
    const bearer = conn.token ?? conn.oidc;
    if (bearer && !isLoopback(conn.server))
      throw usageError(`refusing to send the token (from ${bearer.from}) in plaintext to ${conn.server}: use an https server`);
  }
  return conn;
}

/** localhost, 127.0.0.0/8 and ::1: plaintext to them does not leave the machine. */
export function isLoopback(server: string): boolean {
  const host = new URL(server).hostname.replace(/^\[|\]$/g, "");
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1" || host.toLowerCase() === "::ffff:127.0.0.1";
}

/** The stderr warning for a plaintext URL off this machine, or undefined. */
export function plaintextWarning(server: string): string | undefined {
  if (!server.startsWith("http:") || isLoopback(server)) return undefined;
  return `warning: ${server} is not https: requests (and anything they carry) cross the network in plaintext`;
}

/** PEM material read and checked, ready for node's TLS options. */
export interface TlsMaterial {
  ca?: string;
  cert?: string;
  key?: string;
  /** Where the CA came from, for messages about a server certificate it does not verify. */
  caFrom?: string;
}

function readPem(src: PemSource): string {
  if ("pem" in src) return src.pem;
  try {
    return readFileSync(src.file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw usageError(`${src.from}: cannot read ${src.file}: ${code === "ENOENT" ? "no such file" : (code ?? (e as Error).message)}`);
  }
}

const where = (src: PemSource) => ("file" in src ? `${src.from} ${src.file}` : src.from);

function certificates(pem: string, src: PemSource): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw usageError(`${where(src)}: no PEM certificate in it`);
  return blocks.map((b) => {
    try {
      return new X509Certificate(b);
    } catch (e) {
      throw usageError(`${where(src)}: not a valid certificate: ${(e as Error).message}`);
    }
  });
}

/**
 * Reads the CA and client certificate and key, checking them here so that a wrong file is a
 * usage error naming it rather than a TLS failure: the CA parses as certificates, the key is a
 * private key, it belongs to the certificate, and the certificate is within its validity.
 */
export function loadTls(conn: Connection, now: Date): TlsMaterial {
  const out: TlsMaterial = {};
  if (conn.ca) {
    out.ca = readPem(conn.ca);
    certificates(out.ca, conn.ca);
    out.caFrom = where(conn.ca);
  }
  if (conn.clientCert && conn.clientKey) {
    const certPem = readPem(conn.clientCert);
    const keyPem = readPem(conn.clientKey);
    const [leaf] = certificates(certPem, conn.clientCert);
    let key: KeyObject;
    try {
      key = createPrivateKey(keyPem);
    } catch (e) {
      throw usageError(`${where(conn.clientKey)}: not a private key: ${(e as Error).message}`);
    }
    if (!leaf!.checkPrivateKey(key))
      throw usageError(`${where(conn.clientKey)} is not the key of the certificate ${where(conn.clientCert)}`);
    if (new Date(leaf!.validTo).getTime() < now.getTime())
      throw usageError(`${where(conn.clientCert)}: the certificate expired on ${new Date(leaf!.validTo).toISOString()}`);
    out.cert = certPem;
    out.key = keyPem;
  }
  return out;
}
