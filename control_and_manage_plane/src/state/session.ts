/*
 * Who is signed in to this tab, and what they may do. The app shows its pages only while someone
 * is; any call refused as Unauthenticated (the token expired or was revoked) signs the tab out and
 * the sign-in page shows the server's message.
 *
 *   page load ──stored token?──no──► signed out ◄──────────── logout / Unauthenticated anywhere
 *                  │yes                  │ paste a token          ▲       / an OIDC ID token's expiry
 *                  └──► WhoAmI ──ok──► signed in (user, groups, rights) ──► projects.ts: the project, the stream
 *                                        ▲
 *   "Sign in with <issuer>" ──► provider ──► /auth/callback (router guard: finishOidcSignIn)
 *
 * The rights come from WhoAmI (the server's own reading of the token's roles and the user's
 * bindings): at cluster scope, and per project. A right holds in project P when it is held at
 * cluster scope or in P, the server's own rule, so what the UI hides or disables is what the server
 * would refuse; the server still decides every call.
 */
import { reactive } from "vue";
import {
  completeOidcSignIn,
  forgetToken,
  idTokenExpiry,
  isOidcCallback,
  onUnauthenticated,
  signInWith,
  storedToken,
  whoAmI,
  type Identity,
} from "../auth/index.js";
import { errorText, transport } from "../api/index.js";

export const session = reactive({
  /** Empty while signed out. */
  user: "",
  roles: [] as string[],
  rights: [] as string[],
  /** The user's groups (an OIDC sign-in). */
  groups: [] as string[],
  /** Roles and rights held in single projects. */
  projectRights: [] as Identity["projectRights"],
  /** Checking the stored token at page load: show neither the pages nor the sign-in form yet. */
  resuming: true,
  /** Why the tab was signed out (the server's message), for the sign-in page. */
  reason: "",
});

let expiry: ReturnType<typeof setTimeout> | undefined;

function signedIn(me: Identity): void {
  session.user = me.user;
  session.roles = me.roles;
  session.rights = me.rights;
  session.groups = me.groups;
  session.projectRights = me.projectRights;
  session.reason = "";
  // An ID token ends at its exp; a stream opened before goes on, so sign out then rather than at
  // the next call. (setTimeout takes at most 2^31-1 ms; a later expiry is left to the server.)
  const exp = idTokenExpiry(storedToken());
  clearTimeout(expiry);
  if (exp !== undefined && exp - Date.now() < 2 ** 31 - 1)
    expiry = setTimeout(
      () => signedOut(`your sign-in expired at ${new Date(exp).toLocaleTimeString()}: sign in again`),
      Math.max(0, exp - Date.now()),
    );
}

function signedOut(reason: string): void {
  clearTimeout(expiry);
  expiry = undefined;
  forgetToken();
  session.user = "";
  session.roles = [];
  session.rights = [];
  session.groups = [];
  session.projectRights = [];
  session.reason = reason;
}

onUnauthenticated((message) => {
  if (session.user || session.resuming) signedOut(message);
});

/** At page load: the tab's stored token, if it still works. */
export async function resumeSession(): Promise<void> {
  // Back from the OIDC provider: the callback route's guard signs in (finishOidcSignIn).
  if (isOidcCallback(window.location.pathname)) return;
  try {
    const me = await whoAmI(transport);
    if (me) signedIn(me);
  } catch (e) {
    // Unauthenticated has signed the tab out already (the token is forgotten). Anything else (the
    // server unreachable) says nothing about the token: it is kept for a reload, and the sign-in
    // page says what went wrong.
    session.reason = errorText(e);
  } finally {
    session.resuming = false;
  }
}

/** Checks a pasted token with WhoAmI and keeps it; throws the server's refusal. */
export async function signIn(token: string): Promise<void> {
  signedIn(await signInWith(transport, token));
}

/**
 * The end of an OIDC sign-in, at /auth/callback: exchanges the code, checks the ID token with
 * WhoAmI and keeps it. Returns the path to go on to: the page the sign-in started from, or the
 * dashboard with the reason on the sign-in page when it failed.
 */
export async function finishOidcSignIn(callbackUrl: string): Promise<string> {
  session.resuming = true;
  try {
    const { idToken, returnTo } = await completeOidcSignIn(callbackUrl);
    signedIn(await signInWith(transport, idToken, "oidc"));
    return returnTo;
  } catch (e) {
    signedOut(errorText(e));
    return "/";
  } finally {
    session.resuming = false;
  }
}

export function signOut(): void {
  signedOut("");
}

/** Whether the user holds `right` at cluster scope (nodes, images: what no project owns). */
export function can(right: string): boolean {
  return session.rights.includes(right);
}

/** Whether the user holds `right` in `project` ("" is "default"): at cluster scope or there. */
export function canIn(right: string, project: string): boolean {
  const p = project || "default";
  return can(right) || (session.projectRights.find((x) => x.project === p)?.rights.includes(right) ?? false);
}

/** The user's roles for people, as the server words them: "viewer; in web: operator". */
export function rolesText(): string {
  const parts = [session.roles.join(", ")].filter(Boolean);
  for (const p of session.projectRights) parts.push(`in ${p.project}: ${p.roles.join(", ")}`);
  return parts.join("; ") || "none";
}

/** Why an action needing `right` at cluster scope is not offered, or "": "needs nodes:cordon (your roles: viewer)". */
export function needs(right: string): string {
  return can(right) ? "" : `needs ${right} (your roles: ${rolesText()})`;
}

/** Why an action needing `right` in `project` is not offered, or "": "needs instances:delete in ci (your roles: in web: operator)". */
export function needsIn(right: string, project: string): string {
  return canIn(right, project) ? "" : `needs ${right} in ${project || "default"} (your roles: ${rolesText()})`;
}
