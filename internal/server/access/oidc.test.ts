// The OIDC verifier against a real provider in this process (test/support/oidc-provider.ts): ID
// tokens from a real authorization-code and device-code login become user and groups; expired,
// foreign-key, wrong-issuer and wrong-audience tokens, unusable claims and unsafe algorithms are
// refused saying why; an unreachable issuer is unavailable and retried no more than once per
// retry interval; an https issuer is trusted through oidc-ca-file.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { readFile } from "node:fs/promises";
import { Code } from "@connectrpc/connect";
import { SignJWT, UnsecuredJWT } from "jose";
import * as client from "openid-client";
import { makeTestCa, type TestCa } from "../../../test/support/pki.js";
import { refusal } from "../../../test/support/refusal.js";
import { codeLoginIdToken, DEVICE_CODE_GRANT, startOidcProvider, type TestOidcProvider } from "../../../test/support/oidc-provider.js";
import { isOidcToken, MAX_GROUPS, OidcVerifier, type OidcSettings } from "./oidc.js";

/** A port nothing listens on (one the system just handed out and took back). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

const REDIRECT = "http://127.0.0.1:1/auth/callback";

const settings = (p: TestOidcProvider, more: Partial<OidcSettings> = {}): OidcSettings => p.settings(more);

/** Settings for an issuer that is not there (the provider's own, once it is, match them). */
const unreachable: OidcSettings = {
  issuer: "",
  clientId: "hypervisor",
  usernameClaim: "sub",
  groupsClaim: "groups",
  usernamePrefix: "oidc:",
  groupsPrefix: "",
  scopes: ["openid"],
};

const codeLogin = (p: TestOidcProvider, account: string, scope?: string) => codeLoginIdToken(p, account, REDIRECT, scope);

/** The refusal `promise` ends with: its code and message. */
const ACCOUNTS = {
  alice: { preferred_username: "alice", email: "alice@example.com", email_verified: true, groups: ["ops", "dev"] },
  bob: { email: "bob@example.com", email_verified: false },
  nameless: { preferred_username: "", groups: "solo" },
  tab: { preferred_username: "ev\til", groups: ["ok"] },
  many: { groups: Array.from({ length: MAX_GROUPS + 1 }, (_, i) => `g${i}`) },
  numbers: { groups: [1, 2] },
};

describe("OidcVerifier with a real provider", () => {
  let p: TestOidcProvider;
  before(async () => {
    p = await startOidcProvider({ accounts: ACCOUNTS, redirectUris: [REDIRECT] });
  });
  after(() => p?.close());

  it("turns an ID token from an authorization-code login into the prefixed user and groups", async () => {
    const v = new OidcVerifier(settings(p, { groupsPrefix: "oidc:" }));
    const token = await codeLogin(p, "alice");
    const id = await v.verify(token);
    assert.deepEqual({ ...id, expiresAt: 0 }, { user: "oidc:alice", groups: ["oidc:ops", "oidc:dev"], expiresAt: 0 });
    const exp = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { exp: number };
    assert.equal(id.expiresAt, exp.exp * 1000);
    // Another claim for the name, no prefixes.
    const byName = new OidcVerifier(settings(p, { usernameClaim: "preferred_username", usernamePrefix: "" }));
    assert.deepEqual((await byName.verify(token)).user, "alice");
  });

  it("takes an ID token from a device-code login (the provider's pages driven as the user would)", async () => {
    const config = await client.discovery(new URL(p.issuer), p.clientId, undefined, client.None(), {
      execute: [client.allowInsecureRequests],
    });
    assert.ok(config.serverMetadata().grant_types_supported?.includes(DEVICE_CODE_GRANT));
    const started = await client.initiateDeviceAuthorization(config, { scope: "openid groups offline_access" });
    const [tokens] = await Promise.all([client.pollDeviceAuthorizationGrant(config, started), p.deviceLogin(started.user_code, "alice")]);
    assert.ok(tokens.refresh_token, "offline_access gives a refresh token");
    const id = await new OidcVerifier(settings(p)).verify(tokens.id_token!);
    assert.deepEqual(id.groups, ["ops", "dev"]);
    assert.equal(id.user, "oidc:alice");
  });

  it("reads a groups claim that is one string as one group, and an absent one as none", async () => {
    const v = new OidcVerifier(settings(p));
    assert.deepEqual((await v.verify(await codeLogin(p, "nameless"))).groups, ["solo"]);
    assert.deepEqual((await v.verify(await codeLogin(p, "bob"))).groups, []);
  });

  it("refuses expired, foreign-key, wrong-issuer, wrong-audience and not-yet-valid tokens, saying which", async () => {
    const v = new OidcVerifier(settings(p));
    const cases: [string, Promise<string>, RegExp][] = [
      ["expired", p.mintIdToken({ expiresIn: -120 }), /^OIDC ID token: expired at \d{4}-/],
      ["another key", p.mintIdToken({ key: "other" }), /^OIDC ID token: bad signature: not signed by a key of http:\/\/127\.0\.0\.1:\d+$/],
      [
        "another issuer",
        p.mintIdToken({ issuer: "https://evil.example" }),
        /^OIDC ID token: wrong issuer: issued by "https:\/\/evil\.example", not by/,
      ],
      [
        "another audience",
        p.mintIdToken({ audience: "someone-else" }),
        /^OIDC ID token: wrong audience: for "someone-else", not for this cluster's client "hypervisor"$/,
      ],
      ["from the future", p.mintIdToken({ claims: { nbf: Math.floor(Date.now() / 1000) + 3600 } }), /^OIDC ID token: not valid yet/],
    ];
    for (const [what, minted, message] of cases) {
      const token = await minted;
      const r = await refusal(v.verify(token));
      assert.equal(r.code, Code.Unauthenticated, what);
      assert.match(r.message, message, what);
      assert.ok(!r.message.includes(token.split(".")[2]!), `${what}: the token is not echoed`);
    }
    // Within the clock tolerance an expiry is not yet one.
    assert.equal((await v.verify(await p.mintIdToken({ expiresIn: -5 }))).user, "oidc:alice");
  });

  it("refuses alg none and HMAC tokens (a public client id must not be a key)", async () => {
    const v = new OidcVerifier(settings(p));
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: p.issuer, aud: p.clientId, sub: "alice", iat: now, exp: now + 300 };
    const none = new UnsecuredJWT(claims).encode();
    assert.ok(isOidcToken(none));
    assert.match((await refusal(v.verify(none))).message, /^OIDC ID token: algorithm not accepted/);
    const hs = await new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(p.clientId.padEnd(32, "x")));
    const r = await refusal(v.verify(hs));
    assert.equal(r.code, Code.Unauthenticated);
    assert.match(r.message, /^OIDC ID token: algorithm not accepted/);
  });

  it("refuses unusable username and groups claims from real logins", async () => {
    const named = new OidcVerifier(settings(p, { usernameClaim: "preferred_username" }));
    const cases: [OidcVerifier, string, RegExp][] = [
      [named, "bob", /^OIDC ID token: missing username claim "preferred_username"$/],
      [named, "nameless", /^OIDC ID token: username claim "preferred_username" is empty$/],
      [named, "tab", /^OIDC ID token: username claim "preferred_username" has control characters$/],
      [
        new OidcVerifier(settings(p)),
        "many",
        new RegExp(`^OIDC ID token: groups claim "groups" has ${MAX_GROUPS + 1} groups \\(at most ${MAX_GROUPS}\\)$`),
      ],
      [new OidcVerifier(settings(p)), "numbers", /^OIDC ID token: groups claim "groups": group 0 is not a string \(number\)$/],
      [
        new OidcVerifier(settings(p, { usernameClaim: "email" })),
        "bob",
        /^OIDC ID token: username claim "email": the provider has not verified the address/,
      ],
    ];
    for (const [v, account, message] of cases) {
      const r = await refusal(v.verify(await codeLogin(p, account)));
      assert.equal(r.code, Code.Unauthenticated, account);
      assert.match(r.message, message, account);
    }
    assert.equal(
      (await new OidcVerifier(settings(p, { usernameClaim: "email" })).verify(await codeLogin(p, "alice"))).user,
      "oidc:alice@example.com",
    );
  });

  it("refuses what is not a JWT before asking the issuer anything", async () => {
    const v = new OidcVerifier(settings(p, { issuer: "http://127.0.0.1:9" }));
    for (const bad of ["hvt_abc.def", "eyJhbGciOi.x", "a.b.c", `eyJ${"A".repeat(20_000)}.b.c`]) {
      const r = await refusal(v.verify(bad));
      assert.equal(r.code, Code.Unauthenticated, bad.slice(0, 20));
      assert.match(r.message, /^OIDC ID token: (malformed|longer than)/);
    }
  });
});

describe("OidcVerifier when the issuer is unreachable", () => {
  it("is unavailable with the reason, tries again only after the retry interval, and works once the issuer answers", async (t) => {
    // A stand-in that fails discovery on the port the real provider will take.
    let asked = 0;
    const down = createServer((_req, res) => {
      asked++;
      res.writeHead(503).end("maintenance");
    });
    await new Promise<void>((resolve) => down.listen(0, "127.0.0.1", resolve));
    const closeDown = () =>
      new Promise<void>((resolve) => {
        down.closeAllConnections();
        down.close(() => resolve());
      });
    t.after(closeDown);
    const port = (down.address() as AddressInfo).port;
    const t0 = Date.now();
    let now = t0;
    const v = new OidcVerifier({ ...{ ...unreachable, issuer: `http://127.0.0.1:${port}` } }, { now: () => now, retryMs: 10_000 });
    const first = await refusal(v.verify("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"));
    assert.equal(first.code, Code.Unavailable);
    assert.match(first.message, new RegExp(`^OIDC issuer http://127\\.0\\.0\\.1:${port} unavailable: .*HTTP 503`));
    assert.equal(asked, 1);
    now = t0 + 9_000;
    const soon = await refusal(v.verify("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"));
    assert.equal(soon.code, Code.Unavailable);
    assert.match(soon.message, /\(next attempt in 1 s\)$/);
    assert.equal(asked, 1, "no request within the retry interval");

    await closeDown();
    const p = await startOidcProvider({ accounts: ACCOUNTS, redirectUris: [REDIRECT], port });
    try {
      const token = await codeLogin(p, "alice");
      // The retry interval has passed (the clock is the verifier's; the token's times are real).
      now = Math.max(Date.now(), t0 + 10_000);
      assert.equal((await v.verify(token)).user, "oidc:alice");
    } finally {
      await p.close();
    }
  });

  it("throws from discover() at once, for callers that would rather fail at start", async () => {
    const port = await freePort();
    const r = await refusal(OidcVerifier.discover({ ...unreachable, issuer: `http://127.0.0.1:${port}` }));
    assert.equal(r.code, Code.Unavailable);
    assert.match(r.message, new RegExp(`^OIDC issuer http://127\\.0\\.0\\.1:${port} unavailable: fetch failed: connect ECONNREFUSED`));
  });
});

describe("OidcVerifier with an https issuer", () => {
  let ca: TestCa;
  let p: TestOidcProvider;
  before(async () => {
    ca = await makeTestCa("oidc-test-ca");
    const leaf = await ca.issue("idp", { server: true, ips: ["127.0.0.1"] });
    p = await startOidcProvider({
      accounts: ACCOUNTS,
      redirectUris: [REDIRECT],
      tls: { cert: await readFile(leaf.certFile, "utf8"), key: await readFile(leaf.keyFile, "utf8") },
    });
  });
  after(async () => {
    await p?.close();
    await ca?.remove();
  });

  it("trusts the issuer through oidc-ca-file, and is unavailable without it, naming the TLS failure", async () => {
    assert.match(p.issuer, /^https:/);
    const without = await refusal(new OidcVerifier(settings(p)).verify(await p.mintIdToken()));
    assert.equal(without.code, Code.Unavailable);
    assert.match(without.message, /unavailable: fetch failed: unable to verify the first certificate$/);
    const v = new OidcVerifier(settings(p, { caFile: ca.caFile }));
    assert.equal((await v.verify(await p.mintIdToken({ sub: "alice", claims: { groups: ["ops"] } }))).user, "oidc:alice");
    const missing = await refusal(new OidcVerifier(settings(p, { caFile: `${ca.dir}/nope.crt` })).verify(await p.mintIdToken()));
    assert.equal(missing.code, Code.Unavailable);
    assert.match(missing.message, /oidc-ca-file .*nope\.crt: ENOENT/);
  });
});

describe("isOidcToken", () => {
  it("tells a JWT from an API token", () => {
    assert.equal(isOidcToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"), true);
    assert.equal(isOidcToken("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."), true, "an unsigned JWT is still one (and refused as such)");
    for (const t of ["hvt_abcdefghij.secret", "hvt_eyJ.a.b", "eyJ.a", "abc.def.ghi", "eyJ a.b.c", ""])
      assert.equal(isOidcToken(t), false, t);
  });
});
