/*
 * A real OpenID provider (panva's oidc-provider, the certified one) in this process, for tests of
 * OIDC logins: the verifier, ctl's device login, the UI's code flow. Plain http on 127.0.0.1 (a
 * random port): loopback is the one place our clients accept an http issuer. With `tls` it serves
 * https instead, for tests of a private CA.
 *
 *   one public client (no secret, PKCE required): authorization_code, device_code, refresh_token
 *   accounts: sub ──► claims (preferred_username, email, groups, anything the test gives)
 *   ID tokens: RS256, a key made at start; TTLs short and configurable
 *
 *   authorization code:  GET /auth ─303─► /interaction/<uid> (login form) ─POST─► /auth/<uid>
 *                          ─303─► /interaction/<uid> (consent) ─POST─► ... ─303─► redirect_uri?code=
 *   device code:         POST /device/auth ──► user_code; the user: GET /device (code form) ─POST─►
 *                          confirm ─POST─► login, consent ──► "signed in"; the device polls /token
 *
 * The helpers act as the user without a browser: fetch with a cookie jar, submitting the forms
 * the pages show. `mintIdToken` makes the deliberately bad tokens refusal tests need (expired,
 * signed by another key, another issuer or audience); every good token comes from a real flow.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT, type JWK } from "jose";
import Provider, { type KoaContext } from "oidc-provider";
import * as client from "openid-client";
import type { OidcSettings } from "../../internal/server/access/oidc.js";

export const DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

export interface OidcProviderOptions {
  /** sub ──► the account's claims (preferred_username, email, groups, or any other). */
  accounts: Record<string, Record<string, unknown>>;
  /**
   * Where the client may be sent back with a code (the UI's origin + /auth/callback). The
   * provider wants at least one for a client with authorization_code; a device-only test gets
   * http://127.0.0.1/callback, which nothing uses.
   */
  redirectUris?: string[];
  clientId?: string;
  /** Seconds. */
  idTokenTtl?: number;
  accessTokenTtl?: number;
  refreshTokenTtl?: number;
  deviceCodeTtl?: number;
  /**
   * The polling interval the device authorization response names (seconds). Real providers say
   * 5; tests wait less.
   */
  deviceInterval?: number;
  /** Which claims each scope releases; default: openid sub, profile preferred_username and name, email, groups. */
  scopeClaims?: Record<string, string[]>;
  /** Listen on this port of 127.0.0.1 (default: any free one). */
  port?: number;
  /** Serve https with this certificate (PEM) instead of http. */
  tls?: { cert: string; key: string };
}

export interface MintOptions {
  sub?: string;
  /** More claims, or a claim's value to replace. */
  claims?: Record<string, unknown>;
  /** Seconds from now; negative: already expired. Default 300. */
  expiresIn?: number;
  /** "provider": the key the provider publishes; "other": a new key under the same kid. */
  key?: "provider" | "other";
  issuer?: string;
  audience?: string;
}

export interface TestOidcProvider {
  /** The issuer URL (http://127.0.0.1:<port>, no trailing slash). */
  readonly issuer: string;
  readonly clientId: string;
  /** The grant type of every token the token endpoint issued, in order (device_code, refresh_token...). */
  readonly grants: readonly string[];
  /** The grant type of every request to the token endpoint, answered or refused (device polls included). */
  readonly tokenRequests: readonly string[];
  /**
   * Logs `account` in through the pages the authorization URL leads to (an authorization request
   * the caller built, with its PKCE challenge and state) and returns the URL the provider sends the
   * browser back to: the redirect URI with `code` and `state`.
   */
  authorizationCodeLogin(authorizationUrl: string | URL, account: string): Promise<URL>;
  /**
   * As the user at another device: opens the verification page, types `userCode`, confirms, logs
   * `account` in and consents. Resolves when the provider shows its success page; the device's
   * next poll then gets the tokens.
   */
  deviceLogin(userCode: string, account: string): Promise<void>;
  /**
   * The server's OIDC settings for this provider (the defaults of the oidc-* keys: user
   * "oidc:" + sub, groups from "groups"), with `more` over them: what a server under test, or an
   * OidcVerifier, is configured with.
   */
  settings(more?: Partial<OidcSettings>): OidcSettings;
  /** A deliberately bad ID token (see MintOptions), for refusal tests. */
  mintIdToken(opts?: MintOptions): Promise<string>;
  close(): Promise<void>;
}

type Stored = { payload: Record<string, unknown>; expiresAt: number };

/** oidc-provider's storage contract, in a Map of this provider's own (nothing shared between tests). */
function memoryAdapter(): new (model: string) => object {
  const store = new Map<string, Stored>();
  const live = (key: string) => {
    const s = store.get(key);
    if (s && s.expiresAt <= Date.now()) store.delete(key);
    return store.get(key)?.payload;
  };
  return class Adapter {
    constructor(private readonly model: string) {}
    private key(id: string) {
      return `${this.model}:${id}`;
    }
    async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number) {
      store.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
    }
    async find(id: string) {
      return live(this.key(id));
    }
    async findByUid(uid: string) {
      for (const [k, s] of store) if (k.startsWith(`${this.model}:`) && s.payload["uid"] === uid) return live(k);
      return undefined;
    }
    async findByUserCode(userCode: string) {
      for (const [k, s] of store) if (k.startsWith(`${this.model}:`) && s.payload["userCode"] === userCode) return live(k);
      return undefined;
    }
    async consume(id: string) {
      const p = live(this.key(id));
      if (p) p["consumed"] = Math.floor(Date.now() / 1000);
    }
    async destroy(id: string) {
      store.delete(this.key(id));
    }
    async revokeByGrantId(grantId: string) {
      for (const [k, s] of store) if (s.payload["grantId"] === grantId) store.delete(k);
    }
  };
}

const page = (title: string, body: string) =>
  `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function formBody(req: IncomingMessage): Promise<URLSearchParams> {
  let text = "";
  for await (const chunk of req) text += String(chunk);
  return new URLSearchParams(text);
}

export async function startOidcProvider(opts: OidcProviderOptions): Promise<TestOidcProvider> {
  const clientId = opts.clientId ?? "hypervisor";
  const { privateKey } = await generateKeyPair("RS256", { extractable: true });
  const kid = randomUUID();
  const signingJwk: JWK = { ...(await exportJWK(privateKey)), kid, alg: "RS256", use: "sig" };

  let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => res.writeHead(503).end();
  const listener = (req: IncomingMessage, res: ServerResponse) => handler(req, res);
  const server: Server = opts.tls ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, listener) : createHttpServer(listener);
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, "127.0.0.1", resolve));
  const issuer = `${opts.tls ? "https" : "http"}://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const accounts = opts.accounts;
  const provider = new Provider(issuer, {
    adapter: memoryAdapter(),
    clients: [
      {
        client_id: clientId,
        client_name: "hypervisor",
        token_endpoint_auth_method: "none",
        application_type: "web",
        grant_types: ["authorization_code", DEVICE_CODE_GRANT, "refresh_token"],
        response_types: ["code"],
        redirect_uris: opts.redirectUris?.length ? opts.redirectUris : ["http://127.0.0.1/callback"],
      },
    ],
    jwks: { keys: [signingJwk] },
    cookies: { keys: [randomBytes(32).toString("base64url")] },
    pkce: { required: () => true },
    scopes: ["openid", "offline_access", "profile", "email", "groups"],
    claims: opts.scopeClaims ?? {
      openid: ["sub"],
      profile: ["preferred_username", "name"],
      email: ["email", "email_verified"],
      groups: ["groups"],
    },
    // The ID token carries the scopes' claims even when an access token is issued too: what
    // Kubernetes-style verifiers read, and what Dex and Keycloak do.
    conformIdTokenClaims: false,
    findAccount: (_ctx: unknown, sub: string) => {
      const claims = accounts[sub];
      return claims ? { accountId: sub, claims: () => ({ ...claims, sub }) } : undefined;
    },
    interactions: { url: (_ctx: unknown, interaction: { uid: string }) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        userCodeInputSource: async (ctx: KoaContext, form: string, _out: unknown, err?: Error) => {
          ctx.body = page("Enter the code", (err ? `<p class="error">${esc(err.message)}</p>` : "") + form + "<button>Continue</button>");
        },
        userCodeConfirmSource: async (ctx: KoaContext, form: string, _client: unknown, _info: unknown, code: string) => {
          ctx.body = page(
            "Confirm",
            `<p>Code <code>${esc(code)}</code></p>${form}<button type="submit" form="op.deviceConfirmForm">Continue</button>`,
          );
        },
        successSource: async (ctx: KoaContext) => {
          ctx.body = page("Signed in", '<p id="signed-in">You may close this page.</p>');
        },
      },
      revocation: { enabled: true },
    },
    clientBasedCORS: () => true,
    renderError: async (ctx: KoaContext, out: Record<string, string>) => {
      ctx.type = "html";
      ctx.body = page("Error", `<pre id="error">${esc(JSON.stringify(out))}</pre>`);
    },
    ttl: {
      AccessToken: opts.accessTokenTtl ?? 600,
      AuthorizationCode: 60,
      DeviceCode: opts.deviceCodeTtl ?? 600,
      Grant: 3600,
      IdToken: opts.idTokenTtl ?? 600,
      Interaction: 600,
      RefreshToken: opts.refreshTokenTtl ?? 3600,
      Session: 3600,
    },
  });
  // oidc-provider leaves `interval` out of the device authorization response (clients then
  // wait 5 s); a test's device polls sooner.
  const interval = opts.deviceInterval ?? 1;
  const tokenRequests: string[] = [];
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === "token") tokenRequests.push(String((ctx.oidc as { params?: { grant_type?: unknown } }).params?.grant_type));
    if (ctx.oidc?.route === "device_authorization" && ctx.body && typeof ctx.body === "object")
      (ctx.body as Record<string, unknown>)["interval"] = interval;
  });

  const grants: string[] = [];
  provider.on("grant.success", (ctx) =>
    grants.push(String((ctx as { oidc: { params: { grant_type?: unknown } } }).oidc.params.grant_type)),
  );

  const oidc = provider.callback();
  handler = (req, res) => {
    const m = /^\/interaction\/([^/?]+)(\/login|\/confirm)?(?:\?|$)/.exec(req.url ?? "");
    if (!m) return oidc(req, res);
    interaction(req, res, m[2]).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/html" });
      res.end(page("Error", `<pre id="error">${esc(String(e))}</pre>`));
    });
  };

  /** Our login and consent pages: the app side of oidc-provider's interactions. */
  async function interaction(req: IncomingMessage, res: ServerResponse, action: string | undefined): Promise<void> {
    const details = await provider.interactionDetails(req, res);
    const html = (body: string): void => void res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(body);
    if (req.method === "GET") {
      if (details.prompt.name === "login")
        return html(
          page(
            "Sign in",
            `<form method="post" action="/interaction/${details.uid}/login"><input name="login" autofocus><button>Sign in</button></form>`,
          ),
        );
      return html(page("Authorize", `<form method="post" action="/interaction/${details.uid}/confirm"><button>Allow</button></form>`));
    }
    const body = await formBody(req);
    if (action === "/login") {
      const login = body.get("login") ?? "";
      if (!accounts[login])
        return html(
          page(
            "Sign in",
            `<p class="error">no account ${esc(login)}</p><form method="post" action="/interaction/${details.uid}/login"><input name="login"><button>Sign in</button></form>`,
          ),
        );
      return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    }
    // Consent: grant what the client asked for.
    const { accountId } = details.session!;
    const grant = details.grantId
      ? (await provider.Grant.find(details.grantId))!
      : new provider.Grant({ accountId, clientId: String(details.params.client_id) });
    const d = details.prompt.details as {
      missingOIDCScope?: string[];
      missingOIDCClaims?: string[];
      missingResourceScopes?: Record<string, string[]>;
    };
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(" "));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(" "));
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, details.grantId ? {} : { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  const otherKey = (await generateKeyPair("RS256")).privateKey;
  const providerKey = privateKey;

  return {
    issuer,
    clientId,
    grants,
    tokenRequests,
    async authorizationCodeLogin(authorizationUrl, account) {
      const browser = new FormBrowser(issuer, account);
      const redirects = opts.redirectUris ?? [];
      const end = await browser.run(new URL(authorizationUrl), (u) => redirects.some((r) => u.href.startsWith(r)));
      if (!(end instanceof URL)) throw new Error(`the login did not return to a redirect URI; it ended at a page: ${end}`);
      return end;
    },
    async deviceLogin(userCode, account) {
      const browser = new FormBrowser(issuer, account, { user_code: userCode });
      const end = await browser.run(new URL("/device", issuer), () => false);
      if (typeof end !== "string" || !end.includes('id="signed-in"')) throw new Error(`the device login did not succeed: ${String(end)}`);
    },
    settings: (more = {}) => ({
      issuer,
      clientId,
      usernameClaim: "sub",
      groupsClaim: "groups",
      usernamePrefix: "oidc:",
      groupsPrefix: "",
      scopes: ["openid", "offline_access", "profile", "email", "groups"],
      ...more,
    }),
    async mintIdToken(m = {}) {
      const now = Math.floor(Date.now() / 1000);
      const expiresIn = m.expiresIn ?? 300;
      return new SignJWT({ ...m.claims })
        .setProtectedHeader({ alg: "RS256", kid, typ: "JWT" })
        .setIssuer(m.issuer ?? issuer)
        .setAudience(m.audience ?? clientId)
        .setSubject(m.sub ?? Object.keys(accounts)[0] ?? "nobody")
        .setIssuedAt(Math.min(now, now + expiresIn - 60))
        .setExpirationTime(now + expiresIn)
        .sign(m.key === "other" ? otherKey : providerKey);
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((e) => (e ? reject(e) : resolve()));
      }),
  };
}

/**
 * Just enough of a browser for the provider's pages: follows redirects, keeps cookies (by name;
 * one origin), and submits the first form of each page with its hidden inputs, `login` set to
 * the account and any field named in `fill`. Ends at a redirect `stop` accepts (the URL) or at a
 * page without a form (its HTML).
 */
class FormBrowser {
  private readonly cookies = new Map<string, string>();
  constructor(
    private readonly origin: string,
    private readonly account: string,
    private readonly fill: Record<string, string> = {},
  ) {}

  async run(start: URL, stop: (u: URL) => boolean): Promise<URL | string> {
    let url = start;
    let init: { method: string; body?: string } = { method: "GET" };
    for (let step = 0; step < 30; step++) {
      const res = await fetch(url, {
        ...init,
        redirect: "manual",
        headers: {
          ...(init.body !== undefined ? { "content-type": "application/x-www-form-urlencoded" } : {}),
          ...(this.cookies.size > 0 ? { cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ") } : {}),
        },
      });
      for (const c of res.headers.getSetCookie()) {
        const [pair = "", ...attrs] = c.split(";");
        const eq = pair.indexOf("=");
        const [name, value] = [pair.slice(0, eq).trim(), pair.slice(eq + 1).trim()];
        const gone = value === "" || attrs.some((a) => /^\s*expires=Thu, 01 Jan 1970/i.test(a) || /^\s*max-age=0\b/i.test(a));
        if (gone) this.cookies.delete(name);
        else this.cookies.set(name, value);
      }
      if (res.status >= 300 && res.status < 400) {
        await res.body?.cancel();
        const next = new URL(res.headers.get("location")!, url);
        if (stop(next)) return next;
        if (next.origin !== new URL(this.origin).origin) throw new Error(`redirected away from the provider, to ${next.href}`);
        [url, init] = [next, { method: "GET" }];
        continue;
      }
      const html = await res.text();
      if (res.status !== 200) throw new Error(`${res.status} at ${url.href}: ${html}`);
      const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(html);
      if (!form) return html;
      const attr = (tag: string, name: string) => new RegExp(`\\b${name}="([^"]*)"`, "i").exec(tag)?.[1];
      const fields = new URLSearchParams();
      for (const input of form[2]!.match(/<input\b[^>]*>/gi) ?? []) {
        const name = attr(input, "name");
        if (name === undefined) continue;
        const given = name === "login" ? this.account : this.fill[name];
        fields.set(name, given ?? unescape(attr(input, "value") ?? ""));
      }
      const action = attr(form[1]!, "action");
      [url, init] = [new URL(action ? unescape(action) : url.href, url), { method: "POST", body: fields.toString() }];
    }
    throw new Error(`no end after 30 pages, at ${url.href}`);
  }
}

function unescape(s: string): string {
  return s
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n)))
    .replace(/&amp;/g, "&")
    .replace(/&quot;/g, '"');
}

/** An ID token for `account` from a real authorization-code login with PKCE. */
export async function codeLoginIdToken(
  p: TestOidcProvider,
  account: string,
  redirect: string,
  scope = "openid profile email groups",
): Promise<string> {
  const config = await client.discovery(new URL(p.issuer), p.clientId, undefined, client.None(), {
    execute: p.issuer.startsWith("http:") ? [client.allowInsecureRequests] : [],
  });
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirect,
    scope,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state,
  });
  const back = await p.authorizationCodeLogin(url, account);
  const tokens = await client.authorizationCodeGrant(config, back, { pkceCodeVerifier: verifier, expectedState: state });
  if (!tokens.id_token) throw new Error("the provider gave no ID token");
  return tokens.id_token;
}
