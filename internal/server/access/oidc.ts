/*
 * OIDC logins: an ID token from the cluster's identity provider, sent as the bearer, becomes a
 * user and groups (as Kubernetes' --oidc-* flags do). Roles come from role bindings on
 * "user:<name>" and "group:<name>", not from here.
 *
 *   first verify() ──► discovery (openid-client): <issuer>/.well-known/openid-configuration
 *        │ fails ──► unavailable with the reason; the next attempt no sooner than retryMs later
 *        ▼
 *   issuer, jwks_uri, signing algorithms ──► remote key set (jose: cached, refetched for an unknown kid)
 *        ▼
 *   jwtVerify: signature by a key of the issuer, alg in ALGORITHMS (no "none", no HMAC: the
 *   client id is public, a shared secret would be too), iss, aud = client id, exp, nbf, iat
 *   (CLOCK_TOLERANCE_S each way), no older than MAX_TOKEN_AGE_S
 *        ▼
 *   user = username-prefix + the username claim; groups = groups-prefix + each of the groups claim
 *
 * Every refusal is unauthenticated and says why (expired, wrong issuer, wrong audience, bad
 * signature, missing claim), never echoing the token.
 */
import { readFile } from "node:fs/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { createRemoteJWKSet, customFetch, decodeJwt, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from "jose";
import * as client from "openid-client";
import { fetchWithCa } from "../../../pkg/httpclient/index.js";
import { isLoopbackHost, issuerProblem } from "../../../pkg/validation/index.js";

export interface OidcSettings {
  /** The issuer URL exactly as its tokens name it: https, or http on loopback only. */
  issuer: string;
  /** The audience ID tokens must carry: the public client the UI and ctl log in with. */
  clientId: string;
  usernameClaim: string;
  groupsClaim: string;
  usernamePrefix: string;
  groupsPrefix: string;
  /** What clients ask for (GetAuthConfig); the verifier itself needs none of them. */
  scopes: string[];
  /** PEM file of the CA the issuer's certificate chains to, instead of the system's. */
  caFile?: string;
}

export interface OidcIdentity {
  /** usernamePrefix + the username claim. */
  user: string;
  /** groupsPrefix + each group, in the token's order. */
  groups: string[];
  /** When the token expires, in milliseconds since the epoch: the caller should not trust it past that. */
  expiresAt: number;
}

export interface OidcVerifierOptions {
  /** Milliseconds since the epoch; Date.now by default. */
  now?: () => number;
  /** Least time between two discovery attempts after one failed, in ms (default 10 s). */
  retryMs?: number;
  /** Seconds a discovery or key-set request may take (default 10). */
  timeoutSeconds?: number;
}

/** Asymmetric JWS algorithms only. */
export const ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"] as const;
/** Clock skew allowed between the provider and this server, each way. */
export const CLOCK_TOLERANCE_S = 30;
/** An ID token older than this is refused whatever its exp says (providers issue them for an hour or less). */
export const MAX_TOKEN_AGE_S = 24 * 3600;
/** Longer than any sane ID token; more is refused before any parsing. */
export const MAX_TOKEN_BYTES = 16 * 1024;
export const MAX_NAME_BYTES = 256;
export const MAX_GROUPS = 256;
const DEFAULT_RETRY_MS = 10_000;

const JWT_SHAPE = /^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Whether a bearer is shaped as a JWT (three base64url parts, a JSON header) rather than one of our API tokens (hvt_...). */
export function isOidcToken(bearer: string): boolean {
  return !bearer.startsWith("hvt_") && bearer.length <= MAX_TOKEN_BYTES && JWT_SHAPE.test(bearer);
}

const unauthenticated = (why: string) => new ConnectError(`OIDC ID token: ${why}`, Code.Unauthenticated);
/** A value from a token, for a message: quoted, escaped, short. */
const shown = (v: unknown) => {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
};
// C0, DEL and C1 controls: a name is printed in logs, audit lines and tables.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
export const hasControl = (s: string): boolean => CONTROL.test(s);

/** Why a user or group name from a claim is unusable, or undefined. */
function nameProblem(v: unknown): string | undefined {
  if (typeof v !== "string") return `is not a string (${typeof v})`;
  if (v === "") return "is empty";
  if (Buffer.byteLength(v) > MAX_NAME_BYTES) return `is longer than ${MAX_NAME_BYTES} bytes`;
  if (hasControl(v)) return "has control characters";
  return undefined;
}

interface Discovered {
  issuer: string;
  keys: JWTVerifyGetKey;
  algorithms: string[];
}

export class OidcVerifier {
  private discovered?: Discovered;
  private discovering?: Promise<Discovered>;
  private failure?: { at: number; reason: string };
  private readonly now: () => number;
  private readonly retryMs: number;
  private readonly timeoutSeconds: number;

  constructor(
    readonly settings: OidcSettings,
    opts: OidcVerifierOptions = {},
  ) {
    const bad = issuerProblem(settings.issuer);
    if (bad) throw new Error(`oidc-issuer ${JSON.stringify(settings.issuer)} ${bad}`);
    if (!settings.clientId) throw new Error("oidc-client-id is required with oidc-issuer");
    this.now = opts.now ?? Date.now;
    this.retryMs = opts.retryMs ?? DEFAULT_RETRY_MS;
    this.timeoutSeconds = opts.timeoutSeconds ?? 10;
  }

  /** A verifier whose discovery has succeeded: for callers that would rather fail at start. */
  static async discover(settings: OidcSettings, opts?: OidcVerifierOptions): Promise<OidcVerifier> {
    const v = new OidcVerifier(settings, opts);
    await v.ready();
    return v;
  }

  /** The issuer's metadata and keys, discovering them once; a failed attempt is retried no sooner than retryMs later. */
  async ready(): Promise<void> {
    await this.metadata();
  }

  private async metadata(): Promise<Discovered> {
    if (this.discovered) return this.discovered;
    if (this.discovering) return this.discovering;
    const since = this.failure ? this.now() - this.failure.at : Infinity;
    if (this.failure && since < this.retryMs)
      throw new ConnectError(
        `OIDC issuer ${this.settings.issuer} unavailable: ${this.failure.reason} (next attempt in ${Math.ceil((this.retryMs - since) / 1000)} s)`,
        Code.Unavailable,
      );
    this.discovering = this.discoverOnce().then(
      (d) => {
        this.discovered = d;
        this.failure = undefined;
        return d;
      },
      (e: unknown) => {
        const reason = oneLine(e);
        this.failure = { at: this.now(), reason };
        throw new ConnectError(`OIDC issuer ${this.settings.issuer} unavailable: ${reason}`, Code.Unavailable);
      },
    );
    try {
      return await this.discovering;
    } finally {
      this.discovering = undefined;
    }
  }

  private async discoverOnce(): Promise<Discovered> {
    const { issuer, clientId, caFile } = this.settings;
    const url = new URL(issuer);
    let fetch: ((url: string, init: RequestInit) => Promise<Response>) | undefined;
    if (caFile) {
      let ca: string;
      try {
        ca = await readFile(caFile, "utf8");
      } catch (e) {
        throw new Error(`oidc-ca-file ${caFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      const f = fetchWithCa(ca);
      fetch = (u, init) =>
        f(u, {
          method: init.method ?? "GET",
          headers: init.headers as Record<string, string>,
          body: init.body as string,
          signal: init.signal ?? null,
        });
    }
    const config = await client.discovery(url, clientId, undefined, client.None(), {
      timeout: this.timeoutSeconds,
      ...(url.protocol === "http:" ? { execute: [client.allowInsecureRequests] } : {}),
      ...(fetch ? { [client.customFetch]: fetch } : {}),
    });
    const meta = config.serverMetadata();
    if (!meta.jwks_uri) throw new Error("its discovery document names no jwks_uri");
    const offered = meta.id_token_signing_alg_values_supported;
    const algorithms = (ALGORITHMS as readonly string[]).filter((a) => !offered || offered.includes(a));
    if (algorithms.length === 0)
      throw new Error(`it signs ID tokens with ${offered!.join(", ")}, none of which is accepted (${ALGORITHMS.join(", ")})`);
    const jwksUri = new URL(meta.jwks_uri);
    if (jwksUri.protocol !== "https:" && !(jwksUri.protocol === "http:" && isLoopbackHost(jwksUri.hostname)))
      throw new Error(`its jwks_uri ${jwksUri.href} is not https`);
    const keys = createRemoteJWKSet(jwksUri, {
      timeoutDuration: this.timeoutSeconds * 1000,
      ...(fetch ? { [customFetch]: fetch } : {}),
    });
    return { issuer: meta.issuer, keys, algorithms };
  }

  /** The user and groups an ID token names, or ConnectError unauthenticated (bad token) / unavailable (issuer unreachable). */
  async verify(token: string, signal?: AbortSignal): Promise<OidcIdentity> {
    signal?.throwIfAborted();
    if (token.length > MAX_TOKEN_BYTES) throw unauthenticated(`longer than ${MAX_TOKEN_BYTES} bytes`);
    if (!isOidcToken(token)) throw unauthenticated("malformed (expected a JWT: three base64url parts)");
    const { issuer, keys, algorithms } = await this.metadata();
    signal?.throwIfAborted();
    // Another issuer's token would fail on its key id; saying whose it is helps more.
    let claimed: unknown;
    try {
      claimed = decodeJwt(token).iss;
    } catch {
      throw unauthenticated("malformed (its payload is not a JSON object)");
    }
    if (claimed !== issuer) throw unauthenticated(`wrong issuer: issued by ${shown(claimed)}, not by this cluster's issuer ${issuer}`);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, keys, {
        issuer,
        audience: this.settings.clientId,
        algorithms,
        clockTolerance: CLOCK_TOLERANCE_S,
        maxTokenAge: MAX_TOKEN_AGE_S,
        requiredClaims: ["exp", "iat"],
        currentDate: new Date(this.now()),
      }));
    } catch (e) {
      throw this.refusal(e, issuer);
    }
    return this.identity(payload);
  }

  private refusal(e: unknown, issuer: string): ConnectError {
    if (e instanceof errors.JWTExpired) {
      if (e.claim === "iat") return unauthenticated(`issued more than ${MAX_TOKEN_AGE_S / 3600} h ago`);
      const exp = typeof e.payload.exp === "number" ? ` at ${new Date(e.payload.exp * 1000).toISOString()}` : "";
      return unauthenticated(`expired${exp}`);
    }
    if (e instanceof errors.JWTClaimValidationFailed) {
      const p = e.payload;
      switch (e.claim) {
        case "iss":
          return unauthenticated(`wrong issuer: issued by ${shown(p.iss)}, not by this cluster's issuer ${issuer}`);
        case "aud":
          return unauthenticated(`wrong audience: for ${shown(p.aud)}, not for this cluster's client ${shown(this.settings.clientId)}`);
        case "nbf":
          return unauthenticated("not valid yet (nbf is in the future)");
        case "iat":
          return unauthenticated("issued in the future (iat); check the clocks");
        default:
          return unauthenticated(`${e.claim} claim: ${e.reason === "missing" ? "missing" : e.message}`);
      }
    }
    if (e instanceof errors.JWSSignatureVerificationFailed) return unauthenticated(`bad signature: not signed by a key of ${issuer}`);
    if (e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWKSMultipleMatchingKeys)
      return unauthenticated(`bad signature: no key of ${issuer} matches the token's key id and algorithm`);
    if (e instanceof errors.JOSEAlgNotAllowed || e instanceof errors.JOSENotSupported)
      return unauthenticated(`algorithm not accepted (accepted: ${ALGORITHMS.join(", ")})`);
    if (e instanceof errors.JWKSTimeout)
      return new ConnectError(`OIDC issuer ${issuer} unavailable: its key set did not answer in time`, Code.Unavailable);
    if (e instanceof errors.JWSInvalid || e instanceof errors.JWTInvalid) return unauthenticated(`malformed: ${e.message}`);
    if (e instanceof errors.JOSEError) return unauthenticated(e.message);
    // Anything else is the key set's fetch failing: the issuer, not the token.
    return new ConnectError(`OIDC issuer ${issuer} unavailable: cannot fetch its keys: ${oneLine(e)}`, Code.Unavailable);
  }

  private identity(payload: JWTPayload): OidcIdentity {
    const { usernameClaim, groupsClaim, usernamePrefix, groupsPrefix } = this.settings;
    const name = payload[usernameClaim];
    if (name === undefined) throw unauthenticated(`missing username claim ${shown(usernameClaim)}`);
    const bad = nameProblem(name);
    if (bad) throw unauthenticated(`username claim ${shown(usernameClaim)} ${bad}`);
    // As Kubernetes: an email is a name only when the provider has verified it.
    if (usernameClaim === "email" && payload["email_verified"] !== undefined && payload["email_verified"] !== true)
      throw unauthenticated('username claim "email": the provider has not verified the address (email_verified is not true)');
    const raw = payload[groupsClaim];
    // A single string is one group (as Kubernetes reads it); absent is none.
    const list: unknown[] = raw === undefined ? [] : typeof raw === "string" ? [raw] : Array.isArray(raw) ? raw : [raw];
    if (raw !== undefined && typeof raw !== "string" && !Array.isArray(raw))
      throw unauthenticated(`groups claim ${shown(groupsClaim)} is not a list of strings`);
    if (list.length > MAX_GROUPS)
      throw unauthenticated(`groups claim ${shown(groupsClaim)} has ${list.length} groups (at most ${MAX_GROUPS})`);
    const groups = list.map((g, i) => {
      const why = nameProblem(g);
      if (why) throw unauthenticated(`groups claim ${shown(groupsClaim)}: group ${i} ${why}`);
      return groupsPrefix + (g as string);
    });
    return { user: usernamePrefix + (name as string), groups, expiresAt: (payload.exp ?? 0) * 1000 };
  }
}

/** An error as one line: its message and its causes' (network errors hide the useful part there; an HTTP answer shows its status). */
function oneLine(e: unknown): string {
  const parts: string[] = [];
  for (let cur: unknown = e, depth = 0; cur !== undefined && cur !== null && depth < 4; cur = (cur as { cause?: unknown }).cause, depth++) {
    const msg = cur instanceof Response ? `HTTP ${cur.status}` : cur instanceof Error ? cur.message : typeof cur === "string" ? cur : "";
    if (msg && !parts.some((p) => p.includes(msg))) parts.push(msg);
    if (!(cur instanceof Error)) break;
  }
  return parts.join(": ") || "unknown error";
}
