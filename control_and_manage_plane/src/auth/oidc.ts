/*
 * Signing in at the cluster's OIDC provider: the authorization code flow with PKCE, the browser
 * being the public client the server names (GetAuthConfig). openid-client (loaded only when used)
 * does the protocol; the ID token it gets is kept as this tab's token (token.ts) and sent as the
 * bearer like an API token.
 *
 *   "Sign in with <host>" ──► discovery ──► verifier, state, nonce kept in sessionStorage
 *        ──► the provider's sign-in page ──► <origin>/auth/callback?code=&state=
 *        ──► code + verifier ──► token endpoint ──► ID token (state and nonce checked)
 *        ──► the page the sign-in started from
 *
 * No refresh token is asked for or kept: when the ID token expires the tab is signed out and the
 * sign-in page says so (one click signs in again while the provider's session lasts).
 */
import { createClient, type Transport } from "@connectrpc/connect";
import { decodeJwt } from "jose";
import { AccessService } from "../../../api/gen/hypervisor/v1/access_pb.js";
import { issuerProblem } from "../../../pkg/validation/index.js";

export const CALLBACK_PATH = "/auth/callback";

/** What the server says about OIDC (GetAuthConfig), when it is on. */
export interface OidcConfig {
  issuer: string;
  clientId: string;
  scopes: string[];
}

interface Pending {
  issuer: string;
  clientId: string;
  verifier: string;
  state: string;
  nonce: string;
  returnTo: string;
}

const PENDING = "hypervisor.oidc-pending";

/** The server's OIDC settings, or undefined when it takes no OIDC logins (or is too old to say). */
export async function authConfig(transport: Transport): Promise<OidcConfig | undefined> {
  const c = await createClient(AccessService, transport).getAuthConfig({});
  return c.oidcIssuer ? { issuer: c.oidcIssuer, clientId: c.oidcClientId, scopes: [...c.oidcScopes] } : undefined;
}

const redirectUri = () => `${window.location.origin}${CALLBACK_PATH}`;

/** A path of this app to return to (never another origin: a crafted returnTo must not send the user away). */
const samePath = (p: string) => (p.startsWith("/") && !p.startsWith("//") && !p.startsWith(CALLBACK_PATH) ? p : "/");

async function discover(issuer: string, clientId: string) {
  const bad = issuerProblem(issuer);
  if (bad) throw new Error(`the server's OIDC issuer ${issuer} ${bad}`);
  const client = await import("openid-client");
  const url = new URL(issuer);
  try {
    const config = await client.discovery(url, clientId, undefined, client.None(), {
      ...(url.protocol === "http:" ? { execute: [client.allowInsecureRequests] } : {}),
    });
    return { client, config };
  } catch (e) {
    throw new Error(
      `cannot reach the sign-in service at ${issuer} (${e instanceof Error ? e.message : String(e)}); ` +
        "it must allow this page's origin (CORS)",
    );
  }
}

/** The host a "Sign in with" button names. */
export function issuerHost(issuer: string): string {
  try {
    return new URL(issuer).host;
  } catch {
    return issuer;
  }
}

/** Leaves for the provider's sign-in page; back at CALLBACK_PATH, then `returnTo`. */
export async function beginOidcSignIn(oidc: OidcConfig, returnTo: string): Promise<void> {
  const { client, config } = await discover(oidc.issuer, oidc.clientId);
  const pending: Pending = {
    issuer: oidc.issuer,
    clientId: oidc.clientId,
    verifier: client.randomPKCECodeVerifier(),
    state: client.randomState(),
    nonce: client.randomNonce(),
    returnTo: samePath(returnTo),
  };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri(),
    // The browser keeps no refresh token, so it does not ask for one.
    scope: oidc.scopes.filter((s) => s !== "offline_access").join(" ") || "openid",
    code_challenge: await client.calculatePKCECodeChallenge(pending.verifier),
    code_challenge_method: "S256",
    state: pending.state,
    nonce: pending.nonce,
  });
  window.location.assign(url.href);
}

/** Exchanges the code in `callbackUrl` for the ID token; throws why not (in words for the sign-in page). */
export async function completeOidcSignIn(callbackUrl: string): Promise<{ idToken: string; returnTo: string }> {
  const raw = sessionStorage.getItem(PENDING);
  sessionStorage.removeItem(PENDING);
  const url = new URL(callbackUrl, window.location.origin);
  const refused = url.searchParams.get("error");
  if (refused) throw new Error(`the sign-in service refused: ${url.searchParams.get("error_description") ?? refused}`);
  if (!raw) throw new Error("this sign-in was not started in this tab (or was already completed); sign in again");
  const pending = JSON.parse(raw) as Pending;
  const { client, config } = await discover(pending.issuer, pending.clientId);
  let idToken: string | undefined;
  try {
    const tokens = await client.authorizationCodeGrant(config, url, {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
      expectedNonce: pending.nonce,
      idTokenExpected: true,
    });
    idToken = tokens.id_token;
  } catch (e) {
    throw new Error(`the sign-in could not be completed: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!idToken) throw new Error("the sign-in service gave no ID token");
  return { idToken, returnTo: pending.returnTo };
}

export function isOidcCallback(path: string): boolean {
  return path === CALLBACK_PATH || path.startsWith(`${CALLBACK_PATH}?`);
}

/** When an ID token expires (ms since the epoch), or undefined for a token that is not one (an API token). */
export function idTokenExpiry(token: string): number | undefined {
  if (token.startsWith("hvt_")) return undefined;
  try {
    const exp = decodeJwt(token).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
