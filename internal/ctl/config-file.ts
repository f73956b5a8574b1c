/*
 * The ctl configuration file, kubeconfig-like: named contexts, each a server URL, the CA that
 * server's certificate must chain to, and the credentials to present; one of them current.
 *
 *   current-context: prod
 *   contexts:
 *     - name: prod
 *       server: https://10.0.0.5:7070
 *       ca-file: ca.crt                   # or ca-data: | PEM    (relative: to this file's dir)
 *       project: web                      # the project commands act in (--project overrides it)
 *       credentials:
 *         client-cert-file: me.crt        # or client-cert-data: | PEM
 *         client-key-file: me.key         # or client-key-data: | PEM
 *         token: hvt_...                  # an API token (hypervisor-ctl login puts it here)
 *         oidc:                           # or an OIDC login (hypervisor-ctl login --oidc puts it here)
 *           issuer: https://idp.example.com
 *           client-id: hypervisor
 *           id-token: eyJ...              # sent as the bearer
 *           refresh-token: ...            # gets the next ID token when this one expires
 *           expires-at: 2026-12-04T23:40:00.000Z
 *
 * Found at --config-file, else $HYPERVISOR_CONFIG, else $XDG_CONFIG_HOME/hypervisor/config.yaml,
 * else $HOME/.config/hypervisor/config.yaml. Validated strictly (unknown keys are errors naming
 * the key, as in configs/*.yaml) and written 0600 through a temp file and a rename, so a reader
 * never sees half a file and the secrets in it are the owner's only. Comments are not kept across
 * a write (as kubectl's).
 */
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { parseDocument, stringify } from "yaml";
import { checkName } from "../../pkg/validation/index.js";
import { CliError, ExitCode } from "./errors.js";

export interface Credentials {
  clientCertFile?: string;
  clientCertData?: string;
  clientKeyFile?: string;
  clientKeyData?: string;
  /** An API token (hvt_...), sent as `Authorization: Bearer` to this context's server only. */
  token?: string;
  /** An OIDC login: its ID token is sent as the bearer, to this context's server only. */
  oidc?: OidcCredentials;
}

/** What `login --oidc` stores: the provider and client the server named, and the tokens. */
export interface OidcCredentials {
  issuer: string;
  clientId: string;
  idToken: string;
  /** Absent when the provider gave none (no offline_access): the login then ends with the ID token. */
  refreshToken?: string;
  /** The ID token's exp, in milliseconds since the epoch. */
  expiresAt: number;
}

export interface ContextEntry {
  name: string;
  server: string;
  caFile?: string;
  caData?: string;
  /** The project commands act in unless --project or HYPERVISOR_PROJECT says otherwise. */
  project?: string;
  credentials?: Credentials;
}

export interface CtlConfig {
  currentContext?: string;
  contexts: ContextEntry[];
}

/** A bad configuration file or entry; `key` is the path of the offending key ("contexts[1].server"). */
export class ConfigFileError extends CliError {
  override readonly name = "ConfigFileError";
  constructor(
    message: string,
    readonly key?: string,
  ) {
    super(message, ExitCode.Usage);
  }
}

/** Where the file is, and whether someone named it (then a missing file is an error to read). */
export interface ConfigLocation {
  path: string | undefined;
  explicit: boolean;
}

/** --config-file, else HYPERVISOR_CONFIG, else the XDG default; none when there is no home. */
export function configLocation(flag: string | undefined, env: Readonly<Record<string, string | undefined>>): ConfigLocation {
  if (flag !== undefined && flag !== "") return { path: resolve(flag), explicit: true };
  const named = env["HYPERVISOR_CONFIG"];
  if (named !== undefined && named !== "") return { path: resolve(named), explicit: true };
  // Only the environment passed in is consulted (not os.homedir()), so an in-process run with a
  // bare environment, as the tests make, never picks up the user's own file.
  const xdg = env["XDG_CONFIG_HOME"];
  if (xdg !== undefined && isAbsolute(xdg)) return { path: join(xdg, "hypervisor", "config.yaml"), explicit: false };
  const home = env["HOME"];
  if (home !== undefined && home !== "") return { path: join(home, ".config", "hypervisor", "config.yaml"), explicit: false };
  return { path: undefined, explicit: false };
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._@:-]{0,252}$/;
// Visible ASCII: what an HTTP header value carries unchanged, and no whitespace to trim by mistake.
const TOKEN = /^[\x21-\x7e]+$/;

/** Checks a context name; the message names where it came from. */
export function checkContextName(name: string, where: string): void {
  if (!NAME.test(name))
    throw new ConfigFileError(`${where}: invalid context name ${JSON.stringify(name)}: letters, digits and . _ @ : - (at most 253)`, where);
}

/** Checks a server URL: http(s), no user or password in it (those go in credentials), no query. */
export function checkServerUrl(value: string, where: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigFileError(`${where} must be an http(s) URL, got ${JSON.stringify(value)}`, where);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new ConfigFileError(`${where} must be an http(s) URL, got ${JSON.stringify(value)}`, where);
  if (url.username !== "" || url.password !== "")
    throw new ConfigFileError(`${where}: a URL must not carry a user or password; put credentials in the context's credentials`, where);
  if (url.search !== "" || url.hash !== "")
    throw new ConfigFileError(`${where}: a server URL takes no query or fragment, got ${JSON.stringify(value)}`, where);
  return value.replace(/\/+$/, "");
}

export function checkToken(value: string, where: string): void {
  if (!TOKEN.test(value)) throw new ConfigFileError(`${where}: a token is visible ASCII characters without spaces`, where);
}

function checkPem(value: string, where: string): void {
  if (!value.includes("-----BEGIN "))
    throw new ConfigFileError(`${where}: expected PEM text (-----BEGIN ...), not a file name or base64`, where);
}

type Raw = Record<string, unknown>;

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** The keys of a mapping, refusing any not in `allowed`. */
function mapping(v: unknown, where: string, allowed: readonly string[]): Raw {
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    if (where === "") throw new ConfigFileError(`expected a mapping (current-context, contexts) at the top level, got ${show(v)}`);
    throw new ConfigFileError(`${where}: expected a mapping, got ${show(v)}`, where);
  }
  for (const k of Object.keys(v)) {
    const key = where === "" ? k : `${where}.${k}`;
    if (!allowed.includes(k)) throw new ConfigFileError(`unknown key ${key} (known: ${allowed.join(", ")})`, key);
  }
  return v as Raw;
}

function str(m: Raw, k: string, where: string): string | undefined {
  const v = m[k];
  const key = where === "" ? k : `${where}.${k}`;
  if (v === undefined) return undefined;
  if (typeof v !== "string" || v === "") throw new ConfigFileError(`${key}: expected a non-empty string, got ${show(v)}`, key);
  return v;
}

function oneOf(m: Raw, file: string, data: string, where: string): void {
  if (m[file] !== undefined && m[data] !== undefined)
    throw new ConfigFileError(`${where}: ${file} and ${data} exclude each other; give one`, `${where}.${file}`);
}

/** Validates one context; shared by the parser and `config set-context`. */
export function checkContext(c: ContextEntry, where: string): void {
  checkContextName(c.name, `${where}.name`);
  const server = checkServerUrl(c.server, `${where}.server`);
  if (c.caFile !== undefined && c.caData !== undefined)
    throw new ConfigFileError(`${where}: ca-file and ca-data exclude each other; give one`, `${where}.ca-file`);
  if (c.caData !== undefined) checkPem(c.caData, `${where}.ca-data`);
  const cr = c.credentials;
  const tls = c.caFile !== undefined || c.caData !== undefined;
  const cert = cr !== undefined && (cr.clientCertFile !== undefined || cr.clientCertData !== undefined);
  const key = cr !== undefined && (cr.clientKeyFile !== undefined || cr.clientKeyData !== undefined);
  if (cr) {
    const w = `${where}.credentials`;
    if (cr.clientCertFile !== undefined && cr.clientCertData !== undefined)
      throw new ConfigFileError(`${w}: client-cert-file and client-cert-data exclude each other; give one`, `${w}.client-cert-file`);
    if (cr.clientKeyFile !== undefined && cr.clientKeyData !== undefined)
      throw new ConfigFileError(`${w}: client-key-file and client-key-data exclude each other; give one`, `${w}.client-key-file`);
    if (cert !== key)
      throw new ConfigFileError(
        `${w}: a client certificate needs its key and a key its certificate; give both`,
        cert ? `${w}.client-key-file` : `${w}.client-cert-file`,
      );
    if (cr.clientCertData !== undefined) checkPem(cr.clientCertData, `${w}.client-cert-data`);
    if (cr.clientKeyData !== undefined) checkPem(cr.clientKeyData, `${w}.client-key-data`);
    if (cr.token !== undefined) checkToken(cr.token, `${w}.token`);
    if (cr.token !== undefined && cr.oidc !== undefined)
      throw new ConfigFileError(`${w}: token and oidc exclude each other (either would be the bearer); give one`, `${w}.oidc`);
    if (cr.oidc !== undefined) checkOidc(cr.oidc, `${w}.oidc`);
  }
  // TLS settings on a plaintext URL would be silently unused: the user meant https.
  if ((tls || cert) && server.startsWith("http:"))
    throw new ConfigFileError(`${where}: has a CA or client certificate but server ${server} is not https`, `${where}.server`);
}

function checkOidc(o: OidcCredentials, where: string): void {
  let url: URL | undefined;
  try {
    url = new URL(o.issuer);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "https:" && url.protocol !== "http:"))
    throw new ConfigFileError(`${where}.issuer must be an http(s) URL, got ${show(o.issuer)}`, `${where}.issuer`);
  if (o.clientId === "") throw new ConfigFileError(`${where}.client-id: required`, `${where}.client-id`);
  checkToken(o.idToken, `${where}.id-token`);
  if (o.refreshToken !== undefined) checkToken(o.refreshToken, `${where}.refresh-token`);
  if (!Number.isFinite(o.expiresAt)) throw new ConfigFileError(`${where}.expires-at: expected a time (ISO 8601)`, `${where}.expires-at`);
}

const TOP = ["current-context", "contexts"] as const;
const CONTEXT = ["name", "server", "ca-file", "ca-data", "project", "credentials"] as const;
const CREDENTIALS = ["client-cert-file", "client-cert-data", "client-key-file", "client-key-data", "token", "oidc"] as const;
const OIDC = ["issuer", "client-id", "id-token", "refresh-token", "expires-at"] as const;

/** Parses and validates the file's text; `file` names it in messages. Empty text: no contexts. */
export function parseConfig(text: string, file: string): CtlConfig {
  const doc = parseDocument(text, { uniqueKeys: true });
  const fail = (e: unknown): never => {
    const m = e instanceof ConfigFileError ? e : undefined;
    throw new ConfigFileError(`config file ${file}: ${m ? m.message : String(e)}`, m?.key);
  };
  if (doc.errors.length > 0) fail(doc.errors[0]!.message.split("\n")[0]!);
  const data: unknown = doc.toJS();
  if (data === null || data === undefined) return { contexts: [] };
  try {
    const top = mapping(data, "", TOP);
    const out: CtlConfig = { contexts: [] };
    const current = str(top, "current-context", "");
    if (current !== undefined) out.currentContext = current;
    const list = top["contexts"];
    if (list !== undefined && list !== null) {
      if (!Array.isArray(list)) throw new ConfigFileError(`contexts: expected a list of contexts, got ${show(list)}`, "contexts");
      const seen = new Set<string>();
      list.forEach((item: unknown, i) => {
        const where = `contexts[${i}]`;
        const m = mapping(item, where, CONTEXT);
        const name = str(m, "name", where);
        const server = str(m, "server", where);
        if (name === undefined) throw new ConfigFileError(`${where}.name: required`, `${where}.name`);
        if (server === undefined) throw new ConfigFileError(`${where}.server: required`, `${where}.server`);
        if (seen.has(name)) throw new ConfigFileError(`${where}.name: context ${JSON.stringify(name)} is defined twice`, `${where}.name`);
        seen.add(name);
        const c: ContextEntry = { name, server: checkServerUrl(server, `${where}.server`) };
        oneOf(m, "ca-file", "ca-data", where);
        const caFile = str(m, "ca-file", where);
        const caData = str(m, "ca-data", where);
        if (caFile !== undefined) c.caFile = caFile;
        if (caData !== undefined) c.caData = caData;
        const project = str(m, "project", where);
        if (project !== undefined) {
          const bad = checkName(`${where}.project`, project);
          if (bad) throw new ConfigFileError(bad, `${where}.project`);
          c.project = project;
        }
        if (m["credentials"] !== undefined) {
          const w = `${where}.credentials`;
          const cm = mapping(m["credentials"], w, CREDENTIALS);
          const cr: Credentials = {};
          for (const [k, prop] of [
            ["client-cert-file", "clientCertFile"],
            ["client-cert-data", "clientCertData"],
            ["client-key-file", "clientKeyFile"],
            ["client-key-data", "clientKeyData"],
            ["token", "token"],
          ] as const) {
            const v = str(cm, k, w);
            if (v !== undefined) cr[prop] = v;
          }
          if (cm["oidc"] !== undefined) cr.oidc = parseOidc(cm["oidc"], `${w}.oidc`);
          c.credentials = cr;
        }
        checkContext(c, where);
        out.contexts.push(c);
      });
    }
    return out;
  } catch (e) {
    return fail(e);
  }
}

function parseOidc(v: unknown, where: string): OidcCredentials {
  const m = mapping(v, where, OIDC);
  const need = (k: string) => {
    const s = str(m, k, where);
    if (s === undefined) throw new ConfigFileError(`${where}.${k}: required`, `${where}.${k}`);
    return s;
  };
  // YAML reads an unquoted timestamp as a Date.
  const at = m["expires-at"];
  const expiresAt = at instanceof Date ? at.getTime() : typeof at === "string" ? Date.parse(at) : NaN;
  if (at === undefined) throw new ConfigFileError(`${where}.expires-at: required`, `${where}.expires-at`);
  const o: OidcCredentials = { issuer: need("issuer"), clientId: need("client-id"), idToken: need("id-token"), expiresAt };
  const refresh = str(m, "refresh-token", where);
  if (refresh !== undefined) o.refreshToken = refresh;
  return o;
}

/** The YAML text of a configuration, keys in the documented order, nothing empty written. */
export function formatConfig(cfg: CtlConfig): string {
  return stringify(toYamlObject(cfg), { lineWidth: 0 });
}

/** The YAML-shaped object (kebab-case keys) of a configuration; also what `config view` prints. */
export function toYamlObject(cfg: CtlConfig): Raw {
  const out: Raw = {};
  if (cfg.currentContext !== undefined) out["current-context"] = cfg.currentContext;
  out["contexts"] = cfg.contexts.map((c) => {
    const o: Raw = { name: c.name, server: c.server };
    if (c.caFile !== undefined) o["ca-file"] = c.caFile;
    if (c.caData !== undefined) o["ca-data"] = c.caData;
    if (c.project !== undefined) o["project"] = c.project;
    const cr = c.credentials;
    if (cr) {
      const co: Raw = {};
      if (cr.clientCertFile !== undefined) co["client-cert-file"] = cr.clientCertFile;
      if (cr.clientCertData !== undefined) co["client-cert-data"] = cr.clientCertData;
      if (cr.clientKeyFile !== undefined) co["client-key-file"] = cr.clientKeyFile;
      if (cr.clientKeyData !== undefined) co["client-key-data"] = cr.clientKeyData;
      if (cr.token !== undefined) co["token"] = cr.token;
      if (cr.oidc !== undefined)
        co["oidc"] = {
          issuer: cr.oidc.issuer,
          "client-id": cr.oidc.clientId,
          "id-token": cr.oidc.idToken,
          ...(cr.oidc.refreshToken !== undefined ? { "refresh-token": cr.oidc.refreshToken } : {}),
          "expires-at": new Date(cr.oidc.expiresAt).toISOString(),
        };
      if (Object.keys(co).length > 0) o["credentials"] = co;
    }
    return o;
  });
  return out;
}

export interface LoadedConfig {
  config: CtlConfig;
  /** The file read; undefined when there is none (no home, or the default file is absent). */
  path: string | undefined;
  /** Group or others may read the file and it holds a secret (a key or a token). */
  exposed: boolean;
}

/**
 * Reads the configuration at `loc`. A missing default file is an empty configuration; a missing
 * file someone named (--config-file, HYPERVISOR_CONFIG) is an error, as a typo must not silently
 * connect somewhere else.
 */
export function readConfig(loc: ConfigLocation): LoadedConfig {
  if (loc.path === undefined) return { config: { contexts: [] }, path: undefined, exposed: false };
  let text: string;
  let mode: number;
  try {
    text = readFileSync(loc.path, "utf8");
    mode = statSync(loc.path).mode;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !loc.explicit) return { config: { contexts: [] }, path: undefined, exposed: false };
    throw new ConfigFileError(`config file ${loc.path}: ${code === "ENOENT" ? "no such file" : (e as Error).message}`);
  }
  const config = parseConfig(text, loc.path);
  const secret = config.contexts.some(
    (c) => c.credentials?.clientKeyData !== undefined || c.credentials?.token !== undefined || c.credentials?.oidc !== undefined,
  );
  return { config, path: loc.path, exposed: secret && (mode & 0o077) !== 0 };
}

/**
 * Writes the configuration: a temp file (0600, exclusive) in the same directory, fsync, rename
 * over the old one. The directory is made 0700 if absent.
 */
export function writeConfig(path: string, cfg: CtlConfig): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.config.yaml.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeSync(fd, formatConfig(cfg));
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** A file path in the configuration, relative ones taken from the file's directory (as kubeconfig). */
export function resolveFrom(configPath: string | undefined, p: string): string {
  return isAbsolute(p) || configPath === undefined ? resolve(p) : resolve(dirname(configPath), p);
}

/** Adds or replaces the context of that name; the first context added becomes current. */
export function putContext(cfg: CtlConfig, entry: ContextEntry): CtlConfig {
  const i = cfg.contexts.findIndex((c) => c.name === entry.name);
  const contexts = i < 0 ? [...cfg.contexts, entry] : cfg.contexts.map((c, j) => (j === i ? entry : c));
  return { ...cfg, contexts, ...(cfg.currentContext === undefined ? { currentContext: entry.name } : {}) };
}

/**
 * Adds or replaces a context in the file at `path` and makes it current: what a setup step (such
 * as a dev server writing its own credentials) calls. Validates before writing.
 */
export function saveContext(path: string, entry: ContextEntry, opts: { makeCurrent: boolean }): void {
  checkContext(entry, `context ${entry.name}`);
  const { config } = readConfig({ path, explicit: false });
  const next = putContext(config, entry);
  writeConfig(path, opts.makeCurrent ? { ...next, currentContext: entry.name } : next);
}
