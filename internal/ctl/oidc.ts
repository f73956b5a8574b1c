/*
 * OIDC logins for ctl: the device authorization grant (RFC 8628) at the identity provider the
 * server names, and the ID token kept fresh with the refresh token.
 *
 *   login --oidc:  GetAuthConfig ──► issuer, client id, scopes ──► discovery
 *        ──► device authorization: a URL and a code, shown on stderr
 *        ──► poll the token endpoint (the provider's interval) until the user signs in elsewhere,
 *            the code expires, or Ctrl-C ──► ID token (+ refresh token)
 *
 *   every call:    ID token's exp more than REFRESH_MARGIN_MS away ──► sent as the bearer
 *                  else refresh grant ──► new ID token (and refresh token) saved to the context
 *                       └── refused or no refresh token ──► "log in again: hypervisor-ctl login --oidc"
 *
 * The provider's http is allowed only on loopback (as the server's rule); https uses the system
 * trust store (NODE_EXTRA_CA_CERTS adds a private CA).
 */
import * as client from "openid-client";
import { issuerProblem } from "../../pkg/validation/index.js";
import { readConfig, writeConfig, type OidcCredentials } from "./config-file.js";
import { CliError, ExitCode } from "./errors.js";

/** An ID token this close to its expiry is refreshed before it is sent. */
export const REFRESH_MARGIN_MS = 30_000;

/** Where a connection's OIDC login came from, and where its refreshed tokens go. */
export interface OidcSource {
  credentials: OidcCredentials;
  /** The context it belongs to (its tokens are saved back there). */
  context: string;
  /** The configuration file it was read from; undefined: nothing to save into. */
  configPath: string | undefined;
}

/** The provider's metadata, as openid-client needs it for this public client. */
export async function discoverIssuer(issuer: string, clientId: string): Promise<client.Configuration> {
  const bad = issuerProblem(issuer);
  if (bad) throw new CliError(`OIDC issuer ${JSON.stringify(issuer)} ${bad}`, ExitCode.Api);
  const url = new URL(issuer);
  try {
    return await client.discovery(url, clientId, undefined, client.None(), {
      timeout: 30,
      ...(url.protocol === "http:" ? { execute: [client.allowInsecureRequests] } : {}),
    });
  } catch (e) {
    throw new CliError(`cannot reach the OIDC issuer ${issuer}: ${reason(e)}`, ExitCode.Unavailable);
  }
}

/** The claims' exp of an ID token from a token response, in ms. */
function expiryOf(tokens: client.TokenEndpointResponse & client.TokenEndpointResponseHelpers): number {
  const exp = tokens.claims()?.exp;
  if (typeof exp !== "number") throw new CliError("the OIDC provider's ID token has no exp", ExitCode.Api);
  return exp * 1000;
}

export interface DeviceLoginOptions {
  issuer: string;
  clientId: string;
  scopes: string[];
  /** Where the prompt goes (stderr). */
  prompt: (text: string) => void;
  signal: AbortSignal;
  /** Names the server in the prompt. */
  server: string;
}

/** Runs the device authorization grant to its end: the tokens, or a CliError saying why not. */
export async function deviceLogin(o: DeviceLoginOptions): Promise<OidcCredentials> {
  const config = await discoverIssuer(o.issuer, o.clientId);
  if (!config.serverMetadata().device_authorization_endpoint)
    throw new CliError(
      `the OIDC issuer ${o.issuer} offers no device authorization endpoint, which hypervisor-ctl login --oidc needs; ` +
        "enable the device flow for the client there, or log in with an API token (hypervisor-ctl login)",
      ExitCode.Api,
    );
  let started: client.DeviceAuthorizationResponse;
  try {
    started = await client.initiateDeviceAuthorization(config, { scope: o.scopes.join(" ") });
  } catch (e) {
    throw new CliError(`the OIDC issuer ${o.issuer} refused to start a device login: ${reason(e)}`, ExitCode.Api);
  }
  const minutes = Math.max(1, Math.round(started.expires_in / 60));
  o.prompt(
    (started.verification_uri_complete
      ? `To log in to ${o.server}, open ${started.verification_uri_complete} in a browser and check it shows the code ${started.user_code}\n` +
        `(or open ${started.verification_uri} and enter the code).`
      : `To log in to ${o.server}, open ${started.verification_uri} in a browser and enter the code ${started.user_code}.`) +
      ` Waiting (the code expires in ${minutes} min; Ctrl-C stops)...\n`,
  );
  const expired = AbortSignal.timeout(started.expires_in * 1000);
  let tokens: Awaited<ReturnType<typeof client.pollDeviceAuthorizationGrant>>;
  try {
    tokens = await client.pollDeviceAuthorizationGrant(config, started, undefined, { signal: AbortSignal.any([o.signal, expired]) });
  } catch (e) {
    if (o.signal.aborted) throw new CliError("interrupted", ExitCode.Interrupted);
    if (expired.aborted || (e instanceof client.ResponseBodyError && e.error === "expired_token"))
      throw new CliError(
        `the code ${started.user_code} expired before the login finished; run hypervisor-ctl login --oidc again`,
        ExitCode.Timeout,
      );
    if (e instanceof client.ResponseBodyError && e.error === "access_denied")
      throw new CliError(`the login was refused at the OIDC provider ${o.issuer}: ${e.error_description ?? e.error}`, ExitCode.Api);
    throw new CliError(`the device login at ${o.issuer} failed: ${reason(e)}`, ExitCode.Api);
  }
  if (!tokens.id_token) throw new CliError(`the OIDC provider ${o.issuer} gave no ID token (is "openid" among the scopes?)`, ExitCode.Api);
  return {
    issuer: o.issuer,
    clientId: o.clientId,
    idToken: tokens.id_token,
    ...(tokens.refresh_token ? { refreshToken: tokens.refresh_token } : {}),
    expiresAt: expiryOf(tokens),
  };
}

/**
 * The bearer of a connection with an OIDC login: the ID token, refreshed first when it expires
 * within REFRESH_MARGIN_MS, the new tokens saved to the context. One refresh at a time.
 */
export class OidcBearer {
  private credentials: OidcCredentials;
  private refreshing?: Promise<string>;

  constructor(
    private readonly source: OidcSource,
    private readonly now: () => number = Date.now,
  ) {
    this.credentials = source.credentials;
  }

  /** The ID token as it stands (for a header that must be set synchronously); `bearer()` refreshes. */
  get current(): string {
    return this.credentials.idToken;
  }

  async bearer(): Promise<string> {
    if (this.credentials.expiresAt - REFRESH_MARGIN_MS > this.now()) return this.credentials.idToken;
    this.refreshing ??= this.refresh().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private again(why: string): CliError {
    const ctx = this.source.context;
    return new CliError(
      `the OIDC login of context ${ctx} ${why}: log in again: hypervisor-ctl --context ${ctx} login --oidc`,
      ExitCode.Api,
    );
  }

  private async refresh(): Promise<string> {
    // Another command may have refreshed it meanwhile (and the provider rotated the refresh token).
    const saved = this.stored();
    if (saved && saved.expiresAt - REFRESH_MARGIN_MS > this.now()) return (this.credentials = saved).idToken;
    const c = saved ?? this.credentials;
    const when = new Date(c.expiresAt).toISOString();
    if (c.refreshToken === undefined) throw this.again(`expired at ${when} and has no refresh token`);
    const config = await discoverIssuer(c.issuer, c.clientId);
    let tokens: Awaited<ReturnType<typeof client.refreshTokenGrant>>;
    try {
      tokens = await client.refreshTokenGrant(config, c.refreshToken);
    } catch (e) {
      // A command that refreshed at the same moment may have won with the same refresh token.
      const won = this.stored();
      if (won && won.idToken !== c.idToken && won.expiresAt - REFRESH_MARGIN_MS > this.now()) return (this.credentials = won).idToken;
      if (e instanceof client.ResponseBodyError) throw this.again(`expired at ${when} and the provider refused to refresh it (${e.error})`);
      throw new CliError(
        `cannot refresh the OIDC login of context ${this.source.context} at ${c.issuer}: ${reason(e)}`,
        ExitCode.Unavailable,
      );
    }
    if (!tokens.id_token) throw this.again(`expired at ${when} and the provider's refresh gave no ID token`);
    const next: OidcCredentials = {
      ...c,
      idToken: tokens.id_token,
      ...(tokens.refresh_token ? { refreshToken: tokens.refresh_token } : {}),
      expiresAt: expiryOf(tokens),
    };
    this.credentials = next;
    this.save(next);
    return next.idToken;
  }

  /** The login as the file has it now, if it is still this one (same issuer and client); undefined otherwise. */
  private stored(): OidcCredentials | undefined {
    const path = this.source.configPath;
    if (path === undefined) return undefined;
    let found: OidcCredentials | undefined;
    try {
      found = readConfig({ path, explicit: true }).config.contexts.find((c) => c.name === this.source.context)?.credentials?.oidc;
    } catch {
      return undefined; // the file as read at start is what this command goes on with
    }
    return found && found.issuer === this.credentials.issuer && found.clientId === this.credentials.clientId ? found : undefined;
  }

  /** Into the context it came from, if that context still holds the same login (a concurrent login or logout wins). */
  private save(next: OidcCredentials): void {
    const path = this.source.configPath;
    if (path === undefined) return;
    const { config } = readConfig({ path, explicit: true });
    const entry = config.contexts.find((c) => c.name === this.source.context);
    const stored = entry?.credentials?.oidc;
    if (!entry || !stored || stored.issuer !== next.issuer || stored.clientId !== next.clientId) return;
    writeConfig(path, {
      ...config,
      contexts: config.contexts.map((c) => (c === entry ? { ...entry, credentials: { ...entry.credentials, oidc: next } } : c)),
    });
  }
}

/** An error as one line: its message and its causes' (fetch hides the useful part there). */
function reason(e: unknown): string {
  const parts: string[] = [];
  for (let cur: unknown = e, depth = 0; cur instanceof Error && depth < 4; cur = cur.cause, depth++) {
    const msg =
      cur instanceof client.ResponseBodyError ? `${cur.error}${cur.error_description ? `: ${cur.error_description}` : ""}` : cur.message;
    if (msg && !parts.some((p) => p.includes(msg))) parts.push(msg);
  }
  return parts.join(": ") || String(e);
}
