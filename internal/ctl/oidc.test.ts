// `login --oidc` against a real OpenID provider in process and a server stub that answers
// GetAuthConfig and checks the bearer of WhoAmI with the server's own OidcVerifier: the device
// login stores the provider's tokens in the context (0600); the next call sends the ID token; an
// ID token near its expiry is refreshed and the new one saved and sent; a refused refresh says to
// log in again; a server without OIDC, Ctrl-C and logout leave the file as they should.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import { OidcVerifier } from "../server/access/oidc.js";
import { DEVICE_CODE_GRANT, startOidcProvider, type TestOidcProvider } from "../../test/support/oidc-provider.js";
import { parseConfig, type OidcCredentials } from "./config-file.js";
import { ExitCode } from "./errors.js";
import { OidcBearer } from "./oidc.js";
import { runCli, startApi, type TestApi } from "./testing.js";

const ACCOUNTS = { alice: { preferred_username: "alice", groups: ["ops", "dev"] } };

/** A server that takes OIDC logins from `p` (none when undefined), remembering each bearer WhoAmI got. */
async function serverFor(p: TestOidcProvider | undefined): Promise<TestApi & { bearers: string[] }> {
  const bearers: string[] = [];
  const verifier = p ? new OidcVerifier(p.settings()) : undefined;
  const api = await startApi((router) =>
    router.service(AccessService, {
      getAuthConfig: () =>
        p ? { oidcIssuer: p.issuer, oidcClientId: p.clientId, oidcScopes: ["openid", "offline_access", "groups"] } : {},
      whoAmI: async (_req, hctx) => {
        const bearer = /^Bearer (.+)$/.exec(hctx.requestHeader.get("authorization") ?? "")?.[1];
        if (bearer === undefined) return { user: "", authenticatedBy: "none" };
        bearers.push(bearer);
        if (!verifier) throw new ConnectError("no OIDC here", Code.Unauthenticated);
        const id = await verifier.verify(bearer);
        return { user: id.user, authenticatedBy: "oidc", groups: id.groups, roles: [] };
      },
    }),
  );
  return Object.assign(api, { bearers });
}

/** The claims of a JWT (read, not verified: the stub server verified it). */
const claimsOf = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as { exp: number; sub: string };

describe("hypervisor-ctl login --oidc", () => {
  let dir: string;
  let n = 0;
  const providers: TestOidcProvider[] = [];
  const servers: TestApi[] = [];
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-ctl-oidc-"));
  });
  after(async () => {
    for (const s of servers) await s.close();
    for (const p of providers) await p.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A provider (ID tokens of `idTokenTtl` s), a server for it, and a config file whose context lab points there. */
  async function setup(idTokenTtl: number, oidc = true) {
    const p = await startOidcProvider({ accounts: ACCOUNTS, idTokenTtl });
    providers.push(p);
    const server = await serverFor(oidc ? p : undefined);
    servers.push(server);
    const file = join(dir, `config-${++n}.yaml`);
    await writeFile(file, `current-context: lab\ncontexts:\n  - name: lab\n    server: ${server.url}\n`, { mode: 0o600 });
    const env = { HYPERVISOR_CONFIG: file };
    const stored = async (): Promise<OidcCredentials | undefined> =>
      parseConfig(await readFile(file, "utf8"), file).contexts[0]!.credentials?.oidc;
    /** `login --oidc`, signing in as `account` at the provider once ctl shows the code. */
    const login = (account = "alice", signal?: AbortSignal, onPrompt?: () => void) => {
      let signing: Promise<void> | undefined;
      return runCli(["login", "--oidc"], {
        env,
        signal,
        onStderr: (all) => {
          const code = /the code ([A-Z0-9-]+)\b/.exec(all)?.[1];
          if (code && !signing) {
            onPrompt?.();
            signing = onPrompt ? Promise.resolve() : p.deviceLogin(code, account);
          }
        },
      }).then(async (r) => {
        await signing;
        return r;
      });
    };
    return { p, server, file, env, stored, login };
  }

  it("stores the provider's tokens in the context (0600) and sends the ID token on the next call", async () => {
    const { p, server, file, env, stored, login } = await setup(3600);
    const r = await login();
    assert.deepEqual(p.grants, [DEVICE_CODE_GRANT]);
    assert.equal(r.code, ExitCode.Ok, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `^To log in to ${server.url}, open ${p.issuer}/device\\?user_code=\\S+ in a browser and check it shows the code [A-Z0-9-]+\\n`,
      ),
    );
    const saved = (await stored())!;
    assert.deepEqual({ issuer: saved.issuer, clientId: saved.clientId }, { issuer: p.issuer, clientId: p.clientId });
    assert.ok(saved.refreshToken, "offline_access gave a refresh token");
    assert.equal(saved.expiresAt, claimsOf(saved.idToken).exp * 1000);
    assert.equal(claimsOf(saved.idToken).sub, "alice");
    assert.deepEqual(server.bearers, [saved.idToken], "login checked the ID token with WhoAmI");
    assert.equal(
      r.stdout,
      `logged in to ${server.url} (context lab) as oidc:alice (groups ops, dev, roles none; until ${new Date(saved.expiresAt).toISOString()}, then refreshed)\n`,
    );
    assert.equal((await stat(file)).mode & 0o777, 0o600);

    const before = await readFile(file, "utf8");
    const who = await runCli(["whoami"], { env });
    assert.equal(who.code, ExitCode.Ok, who.stderr);
    assert.match(who.stdout, /^User:\s+oidc:alice$/m);
    assert.deepEqual(server.bearers, [saved.idToken, saved.idToken], "the stored ID token, not refreshed an hour from expiry");
    assert.deepEqual(p.grants, [DEVICE_CODE_GRANT]);
    assert.equal(await readFile(file, "utf8"), before);

    const view = await runCli(["config", "view"], { env });
    assert.ok(!view.stdout.includes(saved.idToken) && !view.stdout.includes(saved.refreshToken), "config view redacts both tokens");

    const out = await runCli(["logout"], { env });
    assert.equal(out.code, ExitCode.Ok, out.stderr);
    assert.match(
      out.stdout,
      new RegExp(`^logged out of context lab: its OIDC login \\(${p.issuer.replace(/\./g, "\\.")}\\) removed from `),
    );
    assert.equal(await stored(), undefined);
    assert.deepEqual(parseConfig(await readFile(file, "utf8"), file).contexts[0], { name: "lab", server: server.url });
  });

  it("refreshes an ID token within 30 s of its expiry before sending it, saving the new tokens", async () => {
    const { p, server, env, stored, login } = await setup(20);
    assert.equal((await login()).code, ExitCode.Ok);
    const first = (await stored())!;
    assert.deepEqual(p.grants, [DEVICE_CODE_GRANT]);
    const who = await runCli(["whoami"], { env });
    assert.equal(who.code, ExitCode.Ok, who.stderr);
    assert.deepEqual(p.grants, [DEVICE_CODE_GRANT, "refresh_token"], "the ID token (20 s left) was refreshed before the call");
    const second = (await stored())!;
    assert.equal(server.bearers.at(-1), second.idToken, "the refreshed ID token was saved and sent");
    assert.ok(claimsOf(second.idToken).exp >= claimsOf(first.idToken).exp);
    assert.notEqual(second.refreshToken, first.refreshToken, "the provider rotated the refresh token; the new one is kept");
    assert.equal(second.expiresAt, claimsOf(second.idToken).exp * 1000);
  });

  it("takes the login another command refreshed meanwhile rather than refreshing with a rotated-away refresh token", async () => {
    const { p, file, stored, login } = await setup(3600);
    assert.equal((await login()).code, ExitCode.Ok);
    const fresh = (await stored())!;
    assert.ok(p.tokenRequests.includes(DEVICE_CODE_GRANT));
    // This command read the file before the other one saved: its copy is stale and expired.
    const stale = { ...fresh, idToken: "eyJ.stale.x", refreshToken: "rotated-away", expiresAt: Date.now() - 1000 };
    const bearer = new OidcBearer({ credentials: stale, context: "lab", configPath: file });
    const asked = p.tokenRequests.length;
    assert.equal(await bearer.bearer(), fresh.idToken);
    assert.equal(p.tokenRequests.length, asked, "no refresh was asked for");
  });

  it("says to log in again when the provider refuses the refresh, leaving the file as it was", async () => {
    const { file, env, stored, login, server } = await setup(20);
    assert.equal((await login()).code, ExitCode.Ok);
    const text = (await readFile(file, "utf8")).replace(/refresh-token: \S+/, "refresh-token: not-a-refresh-token");
    await writeFile(file, text, { mode: 0o600 });
    const seen = server.bearers.length;
    const r = await runCli(["whoami"], { env });
    assert.equal(r.code, ExitCode.Api);
    assert.match(
      r.stderr,
      /^error: the OIDC login of context lab expired at \S+ and the provider refused to refresh it \(invalid_grant\): log in again: hypervisor-ctl --context lab login --oidc\n$/,
    );
    assert.equal(server.bearers.length, seen, "nothing was sent to the server");
    assert.equal(await readFile(file, "utf8"), text);
    assert.equal((await stored())!.refreshToken, "not-a-refresh-token");
  });

  it("fails clearly at a server without OIDC, and leaves the context alone", async () => {
    const { server, file, login } = await setup(3600, false);
    const before = await readFile(file, "utf8");
    const r = await login();
    assert.equal(r.code, ExitCode.Api);
    assert.equal(
      r.stderr,
      `error: the server at ${server.url} does not take OIDC logins (no oidc-issuer in its settings); ` +
        "log in with an API token instead: hypervisor-ctl login; context lab not changed\n",
    );
    assert.equal(await readFile(file, "utf8"), before);
  });

  it("stops waiting on Ctrl-C (exit 130), storing nothing", async () => {
    const { file, login } = await setup(3600);
    const before = await readFile(file, "utf8");
    const ctrlC = new AbortController();
    const r = await login("alice", ctrlC.signal, () => ctrlC.abort());
    assert.equal(r.code, ExitCode.Interrupted);
    assert.match(r.stderr, /\ninterrupted\n$/);
    assert.equal(await readFile(file, "utf8"), before);
  });

  it("replaces a stored API token (a context holds one bearer), and keeps the token login's own check", async () => {
    const { file, env, stored, login, server } = await setup(3600);
    await writeFile(
      file,
      `current-context: lab\ncontexts:\n  - name: lab\n    server: ${server.url}\n    credentials:\n      token: hvt_abcdefghij.x\n`,
      {
        mode: 0o600,
      },
    );
    assert.equal((await login()).code, ExitCode.Ok);
    const cfg = parseConfig(await readFile(file, "utf8"), file);
    assert.equal(cfg.contexts[0]!.credentials?.token, undefined);
    assert.ok((await stored())?.idToken);
    // The token login checks its token with the server, which refuses this one: nothing changes.
    const text = await readFile(file, "utf8");
    const r = await runCli(["login"], { env, stdin: "hvt_abcdefghij.secret\n" });
    assert.equal(r.code, ExitCode.Api, r.stderr);
    assert.match(r.stderr, /^error: the server at \S+ refused the token: OIDC ID token: malformed .*; context lab not changed\n$/);
    assert.equal(await readFile(file, "utf8"), text);
  });
});
